"""Token layout of one DiT forward and the position encodings derived from it.

One sample's sequence is ``[text (L_t)] + [clip_0 tokens] + ... + [clip_last tokens]``; every clip is
flattened in (t, y, x) order over its 2x2-patch token grid (SPEC 4.3). Each latent frame is one
temporal group τ, counted across clips (SPEC 4.4); text has τ = 0.

Everything here depends only on clip shapes, so the model builds it once per (unit, stage) and caches
it (SPEC 11 item 6). Tables are built on the CPU in float64 and moved once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

PATCH = 2  # both variants see 2x2 latent patches as one token

ClipShape = tuple[int, int, int]  # latent (frames, height, width)


@dataclass(frozen=True, slots=True)
class TokenLayout:
    clip_shapes: tuple[ClipShape, ...]
    grids: tuple[tuple[int, int], ...]  # token grid (rows, cols) per clip
    frame_tokens: tuple[int, ...]  # tokens of each temporal group τ = 0, 1, ... (one latent frame each)

    @property
    def num_image_tokens(self) -> int:
        return sum(self.frame_tokens)

    @property
    def current_grid(self) -> tuple[int, int]:
        return self.grids[-1]

    @property
    def last_clip_tokens(self) -> int:
        t, _, _ = self.clip_shapes[-1]
        gh, gw = self.grids[-1]
        return t * gh * gw


def token_layout(clip_shapes: Sequence[Sequence[int]]) -> TokenLayout:
    """Layout of the image tokens for clips given as latent (t, h, w), oldest first, current last."""
    if not clip_shapes:
        raise ValueError("at least one clip (the noisy current latent) is required")
    shapes: list[ClipShape] = []
    grids: list[tuple[int, int]] = []
    frames: list[int] = []
    for t, h, w in clip_shapes:
        if t < 1 or h % PATCH or w % PATCH or h < PATCH or w < PATCH:
            raise ValueError(f"clip of latent shape (t={t}, h={h}, w={w}) cannot be cut into 2x2 patches")
        shapes.append((int(t), int(h), int(w)))
        grids.append((h // PATCH, w // PATCH))
        frames.extend([(h // PATCH) * (w // PATCH)] * t)
    return TokenLayout(tuple(shapes), tuple(grids), tuple(frames))


def pack_patches(x: torch.Tensor) -> torch.Tensor:
    """[B, C, t, h, w] -> [B, t·h/2·w/2, 4C] with features ordered (p_y, p_x, c), channel fastest (SPEC 5.2)."""
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // PATCH, PATCH, w // PATCH, PATCH)
    x = x.permute(0, 2, 3, 5, 4, 6, 1)
    return x.reshape(b, t * (h // PATCH) * (w // PATCH), PATCH * PATCH * c)


def unpack_patches(tokens: torch.Tensor, t: int, h: int, w: int) -> torch.Tensor:
    """Inverse of `pack_patches`: [B, t·h/2·w/2, 4C] -> [B, C, t, h, w]."""
    b, n, f = tokens.shape
    c = f // (PATCH * PATCH)
    gh, gw = h // PATCH, w // PATCH
    if n != t * gh * gw:
        raise ValueError(f"{n} tokens do not fill a ({t}, {h}, {w}) latent")
    x = tokens.view(b, t, gh, gw, PATCH, PATCH, c)
    x = x.permute(0, 6, 1, 2, 4, 3, 5)
    return x.reshape(b, c, t, h, w)


def frame_index(layout: TokenLayout) -> torch.Tensor:
    """τ of every image token (int64, CPU)."""
    counts = torch.tensor(layout.frame_tokens, dtype=torch.int64)
    return torch.repeat_interleave(torch.arange(len(layout.frame_tokens), dtype=torch.int64), counts)


def interpolated_coords(n: int, n_current: int) -> torch.Tensor:
    """Positions of n cells on the current axis of n_current cells (align_corners=False), float64."""
    return (torch.arange(n, dtype=torch.float64) + 0.5) * (n_current / n) - 0.5


def flux_image_positions(layout: TokenLayout) -> torch.Tensor:
    """(τ, y, x) per image token, float64 [N, 3]; y, x in the current clip's token grid (SPEC 5.3)."""
    hc, wc = layout.current_grid
    rows: list[torch.Tensor] = []
    tau0 = 0
    for (t, _, _), (gh, gw) in zip(layout.clip_shapes, layout.grids, strict=True):
        ys = interpolated_coords(gh, hc)
        xs = interpolated_coords(gw, wc)
        taus = torch.arange(tau0, tau0 + t, dtype=torch.float64)
        grid = torch.stack(torch.meshgrid(taus, ys, xs, indexing="ij"), dim=-1)  # [t, gh, gw, 3]
        rows.append(grid.reshape(-1, 3))
        tau0 += t
    return torch.cat(rows, dim=0)


def temporal_positions(layout: TokenLayout) -> torch.Tensor:
    """τ per image token as float64 [N, 1] (the single RoPE axis of pyramid_mmdit)."""
    return frame_index(layout).to(torch.float64).unsqueeze(1)


def rope_table(
    positions: torch.Tensor, axes_dims: Sequence[int], theta: float, text_len: int
) -> torch.Tensor:
    """Rotation factors e^{iφ} for [text (position 0); image tokens], complex64 [L_t + N, Σd/2].

    Pair j of an axis with d dims rotates by φ = pos·θ^(−2j/d); axes are laid out one after another.
    Angles, cos and sin in float64 (as the reference), stored as float32 pairs.
    """
    n, n_axes = positions.shape
    if n_axes != len(axes_dims):
        raise ValueError(f"{n_axes} position axes but {len(axes_dims)} rope axes")
    pos = torch.cat([torch.zeros(text_len, n_axes, dtype=torch.float64), positions.to(torch.float64)], dim=0)
    parts = []
    for a, d in enumerate(axes_dims):
        scale = torch.arange(0, d, 2, dtype=torch.float64) / d
        omega = 1.0 / (theta**scale)
        parts.append(pos[:, a, None] * omega[None, :])
    angles = torch.cat(parts, dim=1)
    return torch.complex(torch.cos(angles).to(torch.float32), torch.sin(angles).to(torch.float32))


def rope_cos_sin(table: torch.Tensor) -> torch.Tensor:
    """The complex rotation table [L, D/2] as real (cos, sin) pairs, float32 [L, D/2, 2]."""
    return torch.view_as_real(table.to(torch.complex64)).contiguous()


def apply_rope(x: torch.Tensor, cos_sin: torch.Tensor, *, real: bool = False) -> torch.Tensor:
    """Rotate adjacent pairs (2m, 2m+1) of the last dim of x by cos_sin in fp32: x [B, H, L, D] with a
    table [L, D/2, 2], or x [B, L, H, D] with a table [L, 1, D/2, 2] (any layout the table broadcasts to).

    Eagerly as one complex multiply (fewest kernels). With ``real`` the product is written out in real
    arithmetic (x0·c − x1·s, x0·s + x1·c), which a compiled block fuses with the casts around it
    (Inductor generates no code for complex ops). Both round the same products; they agree to fp32 rounding.
    """
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    if not real:
        return torch.view_as_real(torch.view_as_complex(xf) * torch.view_as_complex(cos_sin)).flatten(-2).to(x.dtype)
    x0, x1 = xf[..., 0], xf[..., 1]
    c, s = cos_sin[..., 0], cos_sin[..., 1]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).to(x.dtype)


def sd3_sincos_table(max_size: int, dim: int, base_size: int) -> torch.Tensor:
    """The SD3 2-D sin-cos table [1, M·M, D] (x coordinate in the first half, y in the second).

    Only used to initialise a model built without a checkpoint; checkpoints carry the table.
    """
    if dim % 4:
        raise ValueError("sin-cos table needs dim divisible by 4")
    coord = torch.arange(max_size, dtype=torch.float64) / (max_size / base_size)
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4.0))

    def axis(p: torch.Tensor) -> torch.Tensor:
        ang = p[:, None] * omega[None, :]
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)

    ys, xs = torch.meshgrid(coord, coord, indexing="ij")
    emb = torch.cat([axis(xs.reshape(-1)), axis(ys.reshape(-1))], dim=1)
    return emb.to(torch.float32).unsqueeze(0)


def sincos_image_embedding(table: torch.Tensor, max_size: int, layout: TokenLayout) -> torch.Tensor:
    """Additive spatial embedding per image token [N, D] for pyramid_mmdit (SPEC 5.4).

    The table is cropped centred to the current token grid; history clips on a coarser grid get that
    crop resized bilinearly (align_corners=False), the same term for every frame of the clip.
    """
    hc, wc = layout.current_grid
    if hc > max_size or wc > max_size:
        raise ValueError(f"token grid {hc}x{wc} exceeds pos_embed_max_size {max_size}")
    dim = table.shape[-1]
    top, left = (max_size - hc) // 2, (max_size - wc) // 2
    crop = table.reshape(1, max_size, max_size, dim)[:, top : top + hc, left : left + wc, :]
    crop = crop.permute(0, 3, 1, 2)  # [1, D, hc, wc]
    parts: list[torch.Tensor] = []
    for (t, _, _), (gh, gw) in zip(layout.clip_shapes, layout.grids, strict=True):
        emb = crop
        if (gh, gw) != (hc, wc):
            emb = F.interpolate(crop, size=(gh, gw), mode="bilinear", align_corners=False, antialias=False)
        emb = emb.flatten(2).transpose(1, 2).reshape(gh * gw, dim)
        parts.append(emb.repeat(t, 1) if t > 1 else emb)
    return torch.cat(parts, dim=0)
