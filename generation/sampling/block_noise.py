"""Correlated 2x2 block noise for the corrective renoising between pyramid stages (SPEC §6.2).

Closed form: per block z ~ N(0, I_4), n = sqrt(1+g)(z - mean z) + sqrt(1-3g) mean z, which has the
covariance (1+g) I - g 11^T (singular, rank 3, at g = 1/3). One vectorised draw, no per-block loop.
"""

from __future__ import annotations

import math

import torch


def block_noise_from_normal(z: torch.Tensor, gamma: float) -> torch.Tensor:
    """Map standard normals z [..., h2, w2, 4] to block noise laid out as [..., 2*h2, 2*w2]."""
    mean = z.mean(dim=-1, keepdim=True)
    n = math.sqrt(1.0 + gamma) * (z - mean)
    rest = 1.0 - 3.0 * gamma
    if rest > 1e-12:
        n = n + math.sqrt(rest) * mean
    *lead, h2, w2, _ = n.shape
    n = n.reshape(*lead, h2, w2, 2, 2)  # (p, q) = in-block (row, col)
    n = n.movedim(-2, -3)  # [..., h2, p, w2, q]
    return n.reshape(*lead, h2 * 2, w2 * 2)


def sample_block_noise(
    shape: tuple[int, ...],
    *,
    gamma: float = 1 / 3,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Block noise of `shape` [..., H, W] (H, W even), drawn on `device` in one call."""
    *lead, h, w = shape
    if h % 2 or w % 2:
        raise ValueError(f"block noise needs even spatial size, got {h}x{w}")
    if generator is not None and device is None:
        device = generator.device
    z = torch.randn(*lead, h // 2, w // 2, 4, generator=generator, device=device, dtype=torch.float32)
    return block_noise_from_normal(z, gamma).to(dtype)
