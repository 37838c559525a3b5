"""Fused input projections of the DiT blocks: one GEMM where the block runs several on the same input.

* every attention module: image-stream q, k, v → one `fused_qkv` projection;
* two-stream blocks: text-stream q, k, v (k, v in SD3's last block, which has no text queries) →
  `fused_added_qkv`;
* FLUX single blocks: q, k, v and the MLP input projection → one `fused_in` projection
  (1920 → 3·1920 + 7680 for miniflux: 4 GEMMs become 1), or q, k, v only where the MLP input runs with
  its GELU in the GEMM epilogue (CUDA).

Exact up to GEMM rounding: each output column is the same dot product, only the kernel differs. The fused
weight is the only copy: the original parameters become views of its rows, so no memory is added and the
state dict keeps its checkpoint names (plus the fused ones). Only for a DiT that stays resident: block
streaming and model moves handle parameters one by one, so call `unfuse_projections` before either.
"""

from __future__ import annotations

import torch
from torch import nn

FUSED_NAMES = ("fused_qkv", "fused_added_qkv", "fused_in")


class FusedLinear(nn.Linear):
    """A Linear whose output is the concatenation of several Linears' outputs; `splits` gives their widths."""

    splits: tuple[int, ...]

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self(x).split(self.splits, dim=-1))


def _fuse(linears: list[nn.Linear]) -> FusedLinear:
    first = linears[0]
    if any(lin.in_features != first.in_features for lin in linears):
        raise ValueError("fused projections must share their input width")
    has_bias = first.bias is not None
    if any((lin.bias is not None) != has_bias for lin in linears):
        raise ValueError("fused projections must all have a bias, or none")
    weight = torch.cat([lin.weight.detach() for lin in linears], dim=0)
    bias = torch.cat([lin.bias.detach() for lin in linears], dim=0) if has_bias else None  # type: ignore[union-attr]
    fused = FusedLinear(first.in_features, weight.shape[0], bias=has_bias, device="meta")
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
    fused.splits = tuple(lin.out_features for lin in linears)
    row = 0
    for lin in linears:  # the originals now read the fused rows: one copy of the weights
        n = lin.out_features
        lin.weight = nn.Parameter(weight[row : row + n], requires_grad=False)
        if bias is not None:
            lin.bias = nn.Parameter(bias[row : row + n], requires_grad=False)
        row += n
    return fused


def _attention_modules(dit: nn.Module) -> list[nn.Module]:
    blocks = list(getattr(dit, "transformer_blocks", []))
    return [b.attn for b in blocks]


def fuse_projections(dit: nn.Module, *, single_mlp: bool = True) -> int:
    """Fuse the input projections of every block of `dit` (idempotent). Returns the number of fused GEMMs.
    ``single_mlp=False`` leaves the FLUX single blocks' MLP input out (it then runs with a GELU epilogue,
    `generation.models.linear_gelu`); a block fused the other way is fused again."""
    count = 0
    with torch.no_grad():
        for attn in _attention_modules(dit):
            if getattr(attn, "fused_qkv", None) is None:
                attn.fused_qkv = _fuse([attn.to_q, attn.to_k, attn.to_v])
                count += 1
            if getattr(attn, "fused_added_qkv", None) is None and getattr(attn, "add_k_proj", None) is not None:
                text = [attn.add_k_proj, attn.add_v_proj]
                if not getattr(attn, "context_pre_only", False):
                    text.insert(0, attn.add_q_proj)
                attn.fused_added_qkv = _fuse(text)
                count += 1
        for block in getattr(dit, "single_transformer_blocks", []):
            current = getattr(block, "fused_in", None)
            if current is not None and (len(current.splits) == 4) != single_mlp:
                del block.fused_in
                current = None
            if current is None:
                a = block.attn
                block.fused_in = _fuse([a.to_q, a.to_k, a.to_v] + ([block.proj_mlp] if single_mlp else []))
                count += 1
    return count


def unfuse_projections(dit: nn.Module) -> None:
    """Drop the fused projections (the original parameters keep their values)."""
    for m in dit.modules():
        for name in FUSED_NAMES:
            if isinstance(getattr(m, name, None), FusedLinear):
                delattr(m, name)


def is_fused(dit: nn.Module) -> bool:
    return any(isinstance(getattr(m, n, None), FusedLinear) for m in dit.modules() for n in FUSED_NAMES)
