"""A linear layer followed by tanh-GELU, with the GELU applied in the GEMM's epilogue on CUDA.

Every FLUX block has one (the single blocks' MLP input, the two-stream blocks' feed-forwards): as separate
kernels the GEMM writes its [B, L, 4·D] output, and a GELU kernel reads it back and writes it again.
cuBLASLt can apply the GELU (tanh form) to the accumulators before they are stored
(`torch._addmm_activation`), so the second pass is gone. The GELU is then taken of the float32 sum rather
than of its bfloat16 rounding: one rounding fewer, within the bf16 band of the plain path.

`linear_gelu` is a torch custom op (`xiaoai::linear_gelu`), so `torch.compile` keeps the cuBLASLt call
instead of splitting it back into a GEMM and an elementwise kernel. Elsewhere it is `gelu(linear(x))`.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers.models.activations import GELU

log = logging.getLogger(__name__)

# device -> whether the epilogue agreed with gelu(linear(x)) there (checked on its first, eager use)
_AGREES: dict[str, bool] = {}


def _epilogue_runs(x: torch.Tensor) -> bool:
    return x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)


def _plain(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.gelu(F.linear(x, weight, bias), approximate="tanh")


def _epilogue(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    out = torch._addmm_activation(bias, x.reshape(-1, x.shape[-1]), weight.t(), use_gelu=True)
    return out.view(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("xiaoai::linear_gelu", mutates_args=())
def linear_gelu_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The first epilogue call on a device is checked against the plain form on the real inputs (the GELU
    of cuBLASLt's epilogue is the tanh form; PyTorch's own fallback of the same call differs by device);
    where they disagree, or before that check could run (under CUDA-graph capture), the plain form runs."""
    if not _epilogue_runs(x):
        return _plain(x, weight, bias)
    device = str(x.device)
    ok = _AGREES.get(device)
    if ok is None:
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            return _plain(x, weight, bias)
        fast, ref = _epilogue(x, weight, bias), _plain(x, weight, bias)
        err = float((fast.float() - ref.float()).norm() / ref.float().norm().clamp_min(1e-12))
        _AGREES[device] = ok = bool(torch.isfinite(fast).all()) and err < 1e-2
        log.info("GELU in the GEMM epilogue on %s: rel err %.2e against gelu(linear) -> %s", device, err,
                 "used" if ok else "plain form instead")  # fmt: skip
        return fast if ok else ref
    return _epilogue(x, weight, bias) if ok else _plain(x, weight, bias)


@linear_gelu_op.register_fake
def _(x, weight, bias):  # type: ignore[no-untyped-def]
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def linear_gelu(x: torch.Tensor, linear: torch.nn.Linear) -> torch.Tensor:
    """``gelu(linear(x), approximate="tanh")``; on CUDA in half precision, one cuBLASLt GEMM with a GELU
    epilogue."""
    assert linear.bias is not None
    return linear_gelu_op(x, linear.weight, linear.bias)


class EpilogueGELU(GELU):
    """diffusers' `GELU` (projection + tanh GELU, same parameters) through `linear_gelu` when `epilogue`."""

    epilogue = True

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if (
            self.epilogue
            and self.approximate == "tanh"
            and self.proj.bias is not None
            and hidden_states.is_cuda
        ):
            return linear_gelu(hidden_states, self.proj)
        return super().forward(hidden_states)


def use_gelu_epilogue(dit: torch.nn.Module, enabled: bool = True) -> int:
    """Route every tanh-GELU feed-forward projection of `dit` through `EpilogueGELU`, and the FLUX single
    blocks' MLP input through `linear_gelu` (or back with ``enabled=False``). Returns how many it set."""
    count = 0
    for block in getattr(dit, "single_transformer_blocks", []):
        if hasattr(block, "gelu_epilogue"):
            block.gelu_epilogue = enabled
            count += 1
    for m in dit.modules():
        if isinstance(m, GELU) and m.approximate == "tanh":
            if type(m) is GELU:
                m.__class__ = EpilogueGELU
            m.epilogue = enabled  # type: ignore[attr-defined]
            count += 1
    return count
