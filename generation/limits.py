"""What each generator can make: resolution × duration, without importing torch.

Pyramid Flow (the released checkpoints and the tiny random-weight model alike) makes at most
`VARIANT_MAX_TEMP[resolution]` latent frames; a request of `duration_s` needs `DURATION_TO_TEMP[duration_s]`.
So 384p makes 5 s videos only and 768p makes 5 s and 10 s (the reference demo's limits). The synthetic test
generator makes every combination. The bot offers, prices and accepts only what `serves` allows, so a
request the worker would refuse is refused in the chat, before any quota is spent.
"""

from __future__ import annotations

# Max latent frames per resolution, and latent frames per duration (1 + 8 * (temp - 1) frames at 24 fps).
VARIANT_MAX_TEMP: dict[str, int] = {"384p": 16, "768p": 31}
DURATION_TO_TEMP: dict[int, int] = {5: 16, 10: 31}


def serves(generator: str, resolution: str, duration_s: int) -> bool:
    """Whether `generator` ("pyramid_flow" or "synthetic") makes a `duration_s` video at `resolution`."""
    if generator == "synthetic":
        return True
    temp = DURATION_TO_TEMP.get(int(duration_s))
    return temp is not None and temp <= VARIANT_MAX_TEMP.get(resolution, 0)
