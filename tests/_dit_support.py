"""Tiny random DiTs and inputs shared by the DiT tests."""

from __future__ import annotations

import torch

from generation.models import build_dit


def tiny_dit(name: str, seed: int = 0, *, single_layers: int = 1) -> torch.nn.Module:
    """A tiny pyramid_flux / pyramid_mmdit with every weight drawn N(0, 0.2) (adaLN-zero style zero weights
    would hide errors)."""
    torch.manual_seed(seed)
    if name == "pyramid_flux":
        cfg = {"num_layers": 1, "num_single_layers": single_layers, "attention_head_dim": 16,
               "num_attention_heads": 2, "axes_dims_rope": [4, 6, 6], "joint_attention_dim": 12,
               "pooled_projection_dim": 8}  # fmt: skip
    else:
        cfg = {"num_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2, "caption_projection_dim": 32,
               "joint_attention_dim": 12, "pooled_projection_dim": 8, "pos_embed_max_size": 24, "sample_size": 32}
    model = build_dit(name, cfg).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.2)
    return model


def random_dit_inputs(batch_valid, text_len: int, clip_shapes, seed: int):  # type: ignore[no-untyped-def]
    """(clips, text, mask, pooled, timestep) for `tiny_dit`; row b has batch_valid[b] valid text tokens."""
    g = torch.Generator().manual_seed(seed)
    b = len(batch_valid)
    clips = [torch.randn(b, 16, t, h, w, generator=g) for t, h, w in clip_shapes]
    text = torch.randn(b, text_len, 12, generator=g)
    mask = torch.zeros(b, text_len, dtype=torch.int64)
    for i, n in enumerate(batch_valid):
        mask[i, :n] = 1
    pooled = torch.randn(b, 8, generator=g)
    timestep = torch.rand(b, generator=g) * 1000
    return clips, text, mask, pooled, timestep
