"""`CausalVideoVAE`: the reference's causal video VAE with checkpoint-compatible parameter names.

Public API (the sampler codes against it):
  encode_moments(x, chunk_window=, tile_size=) -> [B, 2*latent, T, h, w] raw moments (mean | logvar)
  posterior_sample / posterior_mean / posterior_std (static, on moments)
  decode(z, chunk_window=, tile_size=) -> [B, 3, F, H, W]
  stream_decoder(tile_size=) -> StreamDecoder (push latent frames, get pixel frames)
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import Tensor, nn

from .config import VAEConfig
from .decoder import Decoder
from .encoder import Encoder
from .layers import CausalCache, CausalConv3d
from .streaming import StreamDecoder
from .tiling import TilePlan

log = logging.getLogger(__name__)

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


def chunk_bounds(num_frames: int, window: int) -> list[tuple[int, int]]:
    """First chunk of window + 1 frames, then chunks of `window` frames, then the rest (reference rule)."""
    if window < 1:
        raise ValueError(f"chunk window must be >= 1, got {window}")
    bounds = [(0, min(window + 1, num_frames))]
    start = bounds[0][1]
    while start < num_frames:
        bounds.append((start, min(start + window, num_frames)))
        start += window
    return bounds


class CausalVideoVAE(nn.Module):
    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        moments = 2 * config.encoder_out_channels
        self.quant_conv = CausalConv3d(moments, moments, 1)
        self.post_quant_conv = CausalConv3d(config.encoder_out_channels, config.encoder_out_channels, 1)

    @classmethod
    def from_config_dict(cls, d: dict[str, Any]) -> CausalVideoVAE:
        return cls(VAEConfig.from_dict(d))

    # ------------------------------------------------------------------ encode
    def encode_piece(self, x: Tensor, cache: CausalCache | None) -> Tensor:
        """Encoder + quant_conv on consecutive pixel frames; `cache` carries the causal context."""
        return self.quant_conv(self.encoder(x, cache), cache)

    def _encode_untiled(self, x: Tensor, chunk_window: int | None) -> Tensor:
        if chunk_window is None:
            return self.encode_piece(x, None)
        cache = CausalCache()
        return torch.cat([self.encode_piece(x[:, :, a:b], cache) for a, b in chunk_bounds(x.shape[2], chunk_window)],
                         dim=2)

    def encode_moments(self, x: Tensor, *, chunk_window: int | None = None, tile_size: int | None = None) -> Tensor:
        """Pixels `[B, 3, F, H, W]` in [-1, 1] -> raw moments `[B, 2*latent, T, H/8, W/8]` (mean | logvar).

        chunk_window: encode `window + 1` frames, then `window` frames at a time (must be a multiple of
        the temporal factor 8, and F = 1 + 8k). tile_size: sample-space tile in pixels; tiles only when
        H or W exceeds it (reference rule), None = never.
        """
        if x.dim() != 5:
            raise ValueError(f"expected pixels [B, C, F, H, W], got {tuple(x.shape)}")
        if chunk_window is not None:
            factor = self.config.temporal_factor
            if chunk_window < 1 or chunk_window % factor:
                raise ValueError(f"encode chunk_window must be a positive multiple of {factor}, got {chunk_window}")
            if (x.shape[2] - 1) % factor:
                raise ValueError(f"chunked encode needs 1 + {factor}k frames, got {x.shape[2]}")
        log.debug("vae encode %s chunk_window=%s tile_size=%s", tuple(x.shape), chunk_window, tile_size)
        if tile_size is not None:
            plan = TilePlan.for_encode(tile_size, self.config.downsample_scale)
            if plan.needed(x.shape[-2], x.shape[-1]):
                return plan.apply(x, lambda tile: self._encode_untiled(tile, chunk_window))
        return self._encode_untiled(x, chunk_window)

    @staticmethod
    def posterior_mean(moments: Tensor) -> Tensor:
        return moments.chunk(2, dim=1)[0]

    @staticmethod
    def posterior_logvar(moments: Tensor) -> Tensor:
        return moments.chunk(2, dim=1)[1].clamp(LOGVAR_MIN, LOGVAR_MAX)

    @staticmethod
    def posterior_std(moments: Tensor) -> Tensor:
        return torch.exp(0.5 * CausalVideoVAE.posterior_logvar(moments))

    @staticmethod
    def posterior_sample(moments: Tensor, eps: Tensor) -> Tensor:
        """mean + std * eps, with the log-variance clamped to [-30, 20] (eps: standard normal, latent shape)."""
        mean = CausalVideoVAE.posterior_mean(moments)
        if eps.shape != mean.shape:
            raise ValueError(f"eps shape {tuple(eps.shape)} != latent shape {tuple(mean.shape)}")
        return mean + CausalVideoVAE.posterior_std(moments) * eps

    # ------------------------------------------------------------------ decode
    def decode_piece(self, z: Tensor, cache: CausalCache | None) -> Tensor:
        """post_quant_conv + decoder on consecutive latent frames; `cache` carries the causal context.

        With `cache=None` (or an empty cache) the piece is treated as the start of a video.
        """
        return self.decoder(self.post_quant_conv(z, cache), cache)

    def stream_decoder(self, tile_size: int | None = None) -> StreamDecoder:
        return StreamDecoder(self, tile_size=tile_size)

    def decode(self, z: Tensor, *, chunk_window: int | None = None, tile_size: int | None = None) -> Tensor:
        """Latents `[B, latent, T, h, w]` -> pixels `[B, 3, 1 + 8(T-1), 8h, 8w]` (not clamped).

        chunk_window: None = whole video in one pass; w = first w + 1 latent frames, then w at a time,
        through the causal caches. tile_size: sample-space tile in pixels (e.g. 256), used only when the
        latent exceeds tile_size / 8 in H or W; None = untiled.
        """
        if z.dim() != 5:
            raise ValueError(f"expected latents [B, C, T, h, w], got {tuple(z.shape)}")
        log.debug("vae decode %s chunk_window=%s tile_size=%s", tuple(z.shape), chunk_window, tile_size)
        if chunk_window is None:
            if tile_size is not None:
                plan = TilePlan.for_decode(tile_size, self.config.downsample_scale)
                if plan.needed(z.shape[-2], z.shape[-1]):
                    return plan.apply(z, lambda tile: self.decode_piece(tile, None))
            return self.decode_piece(z, None)
        bounds = chunk_bounds(z.shape[2], chunk_window)
        plan = TilePlan.for_decode(tile_size, self.config.downsample_scale) if tile_size is not None else None
        if plan is not None and plan.needed(z.shape[-2], z.shape[-1]):
            # Tile-major: each tile runs through all its frames with its own causal caches, which are freed
            # before the next tile starts. Time-major order (the streamed decode, which must follow the
            # sampler) keeps every tile's caches alive at once: 3.4 GiB of the 3.6 GiB peak of a 384p
            # decode with 128 px tiles (benchmarks/live_memory.py). Same arithmetic, same frames.
            def tile_video(tile: Tensor) -> Tensor:
                cache = CausalCache()
                return torch.cat([self.decode_piece(tile[:, :, a:b], cache) for a, b in bounds], dim=2)

            return plan.apply(z, tile_video)
        stream = self.stream_decoder(tile_size=tile_size)
        return torch.cat([stream.push(z[:, :, a:b]) for a, b in bounds], dim=2)
