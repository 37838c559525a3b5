"""VAE glue of the pipeline: image → model-space first-frame latent, model-space latents → uint8 frames.

`decode_to_frames` is the one full-decode entry point (reference save_memory mode: temporal window 1,
256 px tiles when tiling is on). `StreamingFrameDecoder` decodes finished units while later ones are
still being sampled (causal caches kept between pushes); its output equals the full decode up to rounding.
"""

from __future__ import annotations

import logging
from typing import Protocol

import numpy as np
import torch

from generation.latents import LatentNorm, denormalize, normalize_image_latent
from generation.sampling.noise import NoiseSource

log = logging.getLogger(__name__)

DECODE_TILE = 256  # pixels, reference save_memory=True
ENCODE_TILE = 256  # pixels, reference encode default


class VAELike(Protocol):
    def encode_moments(
        self, x: torch.Tensor, *, chunk_window: int | None = None, tile_size: int | None = None
    ) -> torch.Tensor: ...

    def decode(self, z: torch.Tensor, *, chunk_window: int | None = None, tile_size: int | None = None) -> torch.Tensor: ...

    def stream_decoder(self, tile_size: int | None = None): ...


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[B, 3, F, H, W] in ~[-1, 1] → uint8 [B*F, H, W, 3] on the same device: x*127.5 + 127.5, clamp,
    truncate (reference)."""
    x = pixels.to(torch.float32).mul(127.5).add(127.5).clamp(0, 255).to(torch.uint8)
    b, c, f, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * f, h, w, c)


# Frames converted per step by `to_uint8_frames`: the float32 copy of a whole 5 s 384p video is 342 MiB,
# which under a small memory cap was the one allocation too many after sampling.
UINT8_CHUNK_FRAMES = 8


def to_uint8_frames(pixels: torch.Tensor, chunk_frames: int = UINT8_CHUNK_FRAMES) -> np.ndarray:
    """`to_uint8` to the host a few frames at a time (same bytes, the device holds one chunk's copy)."""
    f = pixels.shape[2]
    parts = [to_uint8(pixels[:, :, i : i + chunk_frames]).cpu() for i in range(0, f, chunk_frames)]
    if pixels.shape[0] > 1:  # [B, F] order of `to_uint8` is batch-major: regroup the chunks per sample
        b = pixels.shape[0]
        per = [p.reshape(b, -1, *p.shape[1:]) for p in parts]
        return torch.cat(per, dim=1).reshape(-1, *parts[0].shape[1:]).numpy()
    return torch.cat(parts, dim=0).numpy()


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] → [1, 3, 1, H, W] in [-1, 1] (ToTensor + Normalize(0.5, 0.5))."""
    t = torch.from_numpy(np.ascontiguousarray(image)).to(torch.float32) / 255.0
    t = (t - 0.5) / 0.5
    return t.permute(2, 0, 1)[None, :, None]


def encode_image_latent(
    vae: VAELike,
    image: np.ndarray,
    norm: LatentNorm,
    noise: NoiseSource,
    *,
    device: torch.device,
    dtype: torch.dtype,
    tiling: bool = True,
) -> torch.Tensor:
    """Posterior *sample* of the image (mean + std * eps) normalised with the first-frame constants."""
    from generation.models.vae import CausalVideoVAE

    x = image_to_tensor(image).to(device=device, dtype=dtype)
    moments = vae.encode_moments(x, chunk_window=None, tile_size=ENCODE_TILE if tiling else None)
    mean = CausalVideoVAE.posterior_mean(moments)
    eps = noise.posterior(tuple(mean.shape), device=mean.device, dtype=torch.float32).to(mean.dtype)
    z = CausalVideoVAE.posterior_sample(moments, eps)
    return normalize_image_latent(z, norm)


def decode_to_frames(
    vae: VAELike,
    latents: torch.Tensor,
    norm: LatentNorm,
    *,
    tiling: bool = True,
    dtype: torch.dtype | None = None,
    save_memory: bool = True,
    tile_size: int | None = None,
) -> np.ndarray:
    """Model-space latents [B, C, T, h, w] → uint8 frames [B*F, H, W, 3]. save_memory (the reference default):
    temporal window 1 and 256 px tiles; otherwise window 2 and 512 px tiles (tiles only when tiling is on)."""
    z = denormalize(latents, norm)
    if dtype is not None:
        z = z.to(dtype)
    window, tile = (1, DECODE_TILE) if save_memory else (2, 2 * DECODE_TILE)
    tile = tile_size or tile
    pixels = vae.decode(z, chunk_window=window, tile_size=tile if tiling else None)
    return to_uint8_frames(pixels)


_DECODE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def decode_stream(device: torch.device) -> torch.cuda.Stream:
    """The one side stream per device that streamed decodes run on. One, not one per video: the caching
    allocator keeps freed memory per stream, so every new stream would hold its own decode working set."""
    if device not in _DECODE_STREAMS:
        _DECODE_STREAMS[device] = torch.cuda.Stream(device)
    return _DECODE_STREAMS[device]


class StreamingFrameDecoder:
    """Push each finished model-space latent frame (in order). Decoded frames stay on the device as uint8
    (no host sync inside the sampling loop); `frames()` copies them to the host once at the end.

    With ``side_stream`` (CUDA only) the decode runs on its own CUDA stream: it waits for the latent it is
    given and then overlaps with the DiT forwards of later units, which leave the GPU partly idle at the
    small pyramid stages. The arithmetic is the same as on the main stream.
    """

    def __init__(self, vae: VAELike, norm: LatentNorm, *, tiling: bool = True, dtype: torch.dtype | None = None,
                 tile_size: int = DECODE_TILE, side_stream: bool = False):  # fmt: skip
        self._stream = vae.stream_decoder(tile_size=tile_size if tiling else None)
        self._norm = norm
        self._dtype = dtype
        self._count = 0
        self._side: torch.cuda.Stream | None = None
        if side_stream and torch.cuda.is_available():
            device = next(iter(vae.parameters())).device if isinstance(vae, torch.nn.Module) else None
            if device is not None and device.type == "cuda":
                self._side = decode_stream(device)
        self.chunks: list[torch.Tensor] = []

    def _decode(self, latent: torch.Tensor) -> torch.Tensor:
        z = denormalize(latent, self._norm, first_frame_index=0 if self._count == 0 else -1)
        if self._dtype is not None:
            z = z.to(self._dtype)
        self._count += latent.shape[2]
        return to_uint8(self._stream.push(z))

    def push(self, latent: torch.Tensor) -> torch.Tensor:
        """Decode one latent unit; with a side stream the returned frames are ready only after `frames()`."""
        if self._side is None:
            frames = self._decode(latent)
        else:
            self._side.wait_stream(torch.cuda.current_stream(latent.device))
            with torch.cuda.stream(self._side):
                frames = self._decode(latent)
            latent.record_stream(self._side)  # the main stream must not reuse it before the decode read it
        self.chunks.append(frames)
        return frames

    def frames(self) -> np.ndarray:
        if self._side is not None:
            torch.cuda.current_stream(self._side.device).wait_stream(self._side)
        # to the host chunk by chunk: no second device copy of the whole video
        return torch.cat([c.cpu() for c in self.chunks], dim=0).numpy()
