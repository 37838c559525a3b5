"""Piecewise (streaming) decoding that keeps the causal conv caches between calls.

`StreamDecoder.push(z)` decodes the next latent frames of one video and returns their pixel frames.
The first push is the start of the video (its first latent frame gives one pixel frame, every later
latent frame gives `temporal_factor` frames). Concatenating all returned frames equals decoding the
whole latent at once, up to float rounding, because every temporal op is causal and the rest acts per
frame. With a tile size, every spatial tile keeps its own cache and the seams are blended per push,
which equals the reference's tiled + temporally chunked decode.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from torch import Tensor

from .layers import CausalCache
from .tiling import TilePlan

if TYPE_CHECKING:
    from .model import CausalVideoVAE

log = logging.getLogger(__name__)


class StreamDecoder:
    def __init__(self, vae: CausalVideoVAE, tile_size: int | None = None) -> None:
        self._vae = vae
        self._tile_size = tile_size
        self._plan: TilePlan | None = None
        self._caches: list[list[CausalCache]] | None = None
        self._hw: tuple[int, int] | None = None
        self.latent_frames_in = 0
        self.frames_out = 0

    def push(self, z: Tensor) -> Tensor:
        """Decode the next latent frames `[B, C, t, h, w]` -> pixel frames `[B, 3, f, 8h, 8w]`."""
        if z.dim() != 5 or z.shape[2] == 0:
            raise ValueError(f"expected latent frames [B, C, t>0, h, w], got {tuple(z.shape)}")
        hw = (z.shape[-2], z.shape[-1])
        if self._caches is None:
            self._start(hw)
        elif hw != self._hw:
            raise ValueError(f"latent size changed within a stream: {self._hw} -> {hw}")
        assert self._caches is not None
        if self._plan is None:
            out = self._vae.decode_piece(z, self._caches[0][0])
        else:
            tiles = self._plan.split(z)
            decoded = [
                [self._vae.decode_piece(tile, self._caches[i][j]) for j, tile in enumerate(row)]
                for i, row in enumerate(tiles)
            ]
            out = self._plan.merge(decoded)
        self.latent_frames_in += z.shape[2]
        self.frames_out += out.shape[2]
        log.debug("vae stream push: %d latent -> %d frames (total %d)", z.shape[2], out.shape[2], self.frames_out)
        return out

    def _start(self, hw: tuple[int, int]) -> None:
        self._hw = hw
        if self._tile_size is not None:
            plan = TilePlan.for_decode(self._tile_size, self._vae.config.downsample_scale)
            if plan.needed(*hw):
                self._plan = plan
        if self._plan is None:
            self._caches = [[CausalCache()]]
        else:
            self._caches = [
                [CausalCache() for _ in self._plan.starts(hw[1])] for _ in self._plan.starts(hw[0])
            ]

    def cache_bytes(self) -> int:
        if self._caches is None:
            return 0
        return sum(c.nbytes() for row in self._caches for c in row)
