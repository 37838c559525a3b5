"""`to_uint8_frames` converts a few frames at a time (a small memory cap ran out of memory on the float32
copy of the whole video): the bytes are those of the one-shot conversion, for one sample and a batch."""

from __future__ import annotations

import numpy as np
import torch

from generation.decode import to_uint8, to_uint8_frames


def test_chunked_uint8_equals_the_one_shot_conversion() -> None:
    gen = torch.Generator().manual_seed(3)
    for batch in (1, 2):
        pixels = torch.randn(batch, 3, 21, 16, 24, generator=gen) * 1.3
        whole = to_uint8(pixels).numpy()
        for chunk in (1, 8, 64):
            assert np.array_equal(to_uint8_frames(pixels, chunk), whole)
