"""q/k RMSNorm per head, RoPE and the text/image join of the attention inputs, in one pass on the GPU.

Before attention every block normalises q and k per head (RMSNorm over the head dim), joins the text and
image parts along the sequence and rotates them by the token's RoPE angles. Written as torch ops, Inductor
turned this into one of the largest kernels of a forward (about 9 % of a 384p u15s2 call on an H200, several
times what the bytes it moves would take). `norm_rope` does it in one Triton kernel per part: each row of
``head_dim`` values is read once and written once, into its place in the joined output.

Arithmetic (same roundings as the torch path, `norm_rope_reference`):
``y = bf16(x · rsqrt(mean(x²) + eps) · w)`` in float32 (as `torch.nn.RMSNorm`), then the pair (y₂ₘ, y₂ₘ₊₁) rotated
by (cos, sin) of the table in float32 and rounded once. The sums of squares are added in another order, so
a value can differ from the torch path by one rounding of the output dtype.

`norm_rope` is a torch custom op (`xiaoai::norm_rope`): `torch.compile` keeps it as one opaque call with
symbolic shapes, and CUDA-graph capture records its launches. On the CPU, or without Triton, it runs the
torch reference.
"""

from __future__ import annotations

import functools
import logging

import torch

log = logging.getLogger(__name__)

try:  # Triton comes with CUDA builds of torch; a CPU-only install runs the reference path
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised on machines without Triton
    triton = None  # type: ignore[assignment]
    tl = None  # type: ignore[assignment]


def rms_norm_rows(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim as `torch.nn.RMSNorm` computes it in half precision (the blocks' q/k norms):
    normalise and scale by the weight in float32, round once."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * weight.float()).to(x.dtype)


def rope_rows(x: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (2m, 2m+1) of the last dim of x [B, L, H, D] by a float32 (cos, sin) table [L, D/2, 2]."""
    xf = x.float().reshape(*x.shape[:-1], -1, 2)
    t = table.unsqueeze(1)
    c, s = t[..., 0], t[..., 1]
    x0, x1 = xf[..., 0], xf[..., 1]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).flatten(-2).to(x.dtype)


def norm_rope_reference(
    a: torch.Tensor | None,
    wa: torch.Tensor | None,
    b: torch.Tensor,
    wb: torch.Tensor,
    table: torch.Tensor | None,
    table_offset: int,
    eps: float,
) -> torch.Tensor:
    """``rope(cat([norm(a, wa), norm(b, wb)], dim=1), table[table_offset:])`` for a, b [B, L, H, D]."""
    parts = [rms_norm_rows(b, wb, eps)]
    if a is not None:
        assert wa is not None
        parts.insert(0, rms_norm_rows(a, wa, eps))
    y = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
    if table is None:
        return y.contiguous()
    return rope_rows(y, table[table_offset : table_offset + y.shape[1]])


if triton is not None:

    @triton.jit
    def _round(x, IS_BF16: tl.constexpr):
        """float32 → nearest (ties to even) value of the output dtype, kept in float32. bfloat16 is done on the
        bits, so the GPU and Triton's CPU interpreter (which truncates) round alike."""
        if IS_BF16:
            u = x.to(tl.uint32, bitcast=True)
            u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
            return u.to(tl.float32, bitcast=True)
        else:
            return x.to(tl.float16).to(tl.float32)

    @triton.jit
    def _norm_rope_kernel(
        x_ptr, w_ptr, t_ptr, out_ptr,
        rows, seq, heads,
        sxb, sxl, sxh,
        out_seq, out_l0, t0,
        eps,
        HAS_ROPE: tl.constexpr, IS_BF16: tl.constexpr, D: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        """One program normalises (and rotates) BLOCK_R rows of D values; row r = ((b·seq) + l)·heads + h."""
        pid = tl.program_id(0)
        r = pid * BLOCK_R + tl.arange(0, BLOCK_R)
        ok = r < rows
        h = r % heads
        bl = r // heads
        l_ = bl % seq
        b_ = bl // seq
        d = tl.arange(0, D)
        src = b_.to(tl.int64) * sxb + l_.to(tl.int64) * sxl + h.to(tl.int64) * sxh
        m2 = ok[:, None]
        # one contiguous (vectorised) load per row; the pairs are split in registers, not loaded again
        xf = tl.load(x_ptr + src[:, None] + d[None, :], mask=m2, other=0.0).to(tl.float32)
        inv = tl.rsqrt(tl.sum(xf * xf, axis=1) / D + eps)
        w = tl.load(w_ptr + d).to(tl.float32)
        y = _round(xf * inv[:, None] * w[None, :], IS_BF16)
        if HAS_ROPE:
            pos = (l_ + t0).to(tl.int64) * D  # the table row of this token: D/2 (cos, sin) pairs, contiguous
            cs = tl.load(t_ptr + pos[:, None] + d[None, :], mask=m2, other=0.0)
            c, s = tl.split(tl.reshape(cs, (BLOCK_R, D // 2, 2)))
            y0, y1 = tl.split(tl.reshape(y, (BLOCK_R, D // 2, 2)))
            r0 = _round(y0 * c - y1 * s, IS_BF16)
            r1 = _round(y0 * s + y1 * c, IS_BF16)
            y = tl.reshape(tl.join(r0, r1), (BLOCK_R, D))
        dst = ((b_.to(tl.int64) * out_seq + out_l0 + l_) * heads + h) * D
        tl.store(out_ptr + dst[:, None] + d[None, :], y.to(out_ptr.dtype.element_ty), mask=m2)


def _launch(x: torch.Tensor, w: torch.Tensor, table: torch.Tensor | None, out: torch.Tensor, out_l0: int,
            t0: int, eps: float) -> None:  # fmt: skip
    bsz, seq, heads, d = x.shape
    rows = bsz * seq * heads
    if rows == 0:
        return
    block_r = 32
    grid = (triton.cdiv(rows, block_r),)
    _norm_rope_kernel[grid](
        x, w, table if table is not None else x, out,
        rows, seq, heads,
        x.stride(0), x.stride(1), x.stride(2),
        out.shape[1], out_l0, t0,
        eps,
        HAS_ROPE=table is not None, IS_BF16=x.dtype == torch.bfloat16, D=d, BLOCK_R=block_r,
    )  # fmt: skip


@functools.cache
def kernel_usable(device_type: str) -> bool:
    """Whether the Triton kernel runs for tensors on this device type (CUDA with Triton, or the Triton
    interpreter on the CPU when ``TRITON_INTERPRET=1``, which the tests use)."""
    if triton is None:
        return False
    if device_type == "cuda":
        return True
    import os

    return device_type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1"


def _fits(x: torch.Tensor) -> bool:
    d = x.shape[-1]
    return x.stride(-1) == 1 and d >= 16 and (d & (d - 1)) == 0 and x.dtype in (torch.bfloat16, torch.float16)


@torch.library.custom_op("xiaoai::norm_rope", mutates_args=())
def norm_rope_op(
    a: torch.Tensor | None,
    wa: torch.Tensor | None,
    b: torch.Tensor,
    wb: torch.Tensor,
    table: torch.Tensor | None,
    table_offset: int,
    eps: float,
) -> torch.Tensor:
    """The fused op; see `norm_rope`."""
    use = kernel_usable(b.device.type) and _fits(b) and (a is None or (_fits(a) and a.dtype == b.dtype))
    if not use:
        return norm_rope_reference(a, wa, b, wb, table, table_offset, eps)
    la = 0 if a is None else a.shape[1]
    bsz, lb, heads, d = b.shape
    out = torch.empty(bsz, la + lb, heads, d, device=b.device, dtype=b.dtype)
    tab = None if table is None else table.contiguous()
    if a is not None:
        assert wa is not None
        _launch(a, wa, tab, out, 0, table_offset, eps)
    _launch(b, wb, tab, out, la, table_offset + la, eps)
    return out


@norm_rope_op.register_fake
def _(a, wa, b, wb, table, table_offset, eps):  # type: ignore[no-untyped-def]
    la = 0 if a is None else a.shape[1]
    return b.new_empty(b.shape[0], la + b.shape[1], b.shape[2], b.shape[3])


def norm_rope(
    a: torch.Tensor | None,
    wa: torch.Tensor | None,
    b: torch.Tensor,
    wb: torch.Tensor,
    table: torch.Tensor | None,
    *,
    table_offset: int = 0,
    eps: float,
) -> torch.Tensor:
    """``rope(cat([rmsnorm(a, wa), rmsnorm(b, wb)], dim=1), table[table_offset:])``, contiguous
    [B, La + Lb, H, D]; ``a`` (the text part) is optional, ``table`` None skips the rotation.

    a, b: [B, L, H, D] with a contiguous last dim (strided views of the projections are fine);
    wa, wb: the per-head RMSNorm weights [D]; table: float32 (cos, sin) pairs [≥ offset + La + Lb, D/2, 2].
    """
    return norm_rope_op(a, wa, b, wb, table, int(table_offset), float(eps))
