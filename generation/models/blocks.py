"""How the DiTs call their transformer blocks, eagerly or under `torch.compile`.

The blocks are diffusers modules (checkpoint names and shapes); these functions are the one place that
calls them, so compiling a DiT means swapping these functions for compiled ones (`BlockRunners`).

* `run_joint_block`: a two-stream block (FLUX double block, SD3 joint block): (text, image) in and out.
* `run_single_block`: a FLUX single-stream block (`JoinedSingleBlock`) on the joined ``[text; image]``
  sequence. The joined sequence is kept across all single blocks (diffusers joins and splits it inside
  every block: one copy of the whole residual stream per block); the arithmetic is the block's own.

Blocks are always called as modules, so hooks on them (the sequential offload's block streaming) run.

Compiled with ``dynamic=True`` the sequence length is symbolic, and the attention modules are left out of the traced
graph (`generation.models.attention`), so one compiled graph serves every (unit, stage) layout.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock
from torch import nn

from generation.models.linear_gelu import linear_gelu

log = logging.getLogger(__name__)


def run_joint_block(
    block: nn.Module, hidden: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, kwargs: dict[str, Any]
) -> tuple[torch.Tensor, torch.Tensor]:
    return block(hidden, text, temb, joint_attention_kwargs=kwargs)


class JoinedSingleBlock(FluxSingleTransformerBlock):
    """diffusers' FLUX single-stream block (same parameters and names) working on the joined sequence."""

    def forward(  # type: ignore[override]
        self, x: torch.Tensor, temb: torch.Tensor, attention_kwargs: dict[str, Any]
    ) -> torch.Tensor:
        """x: [B, L_t + N, D] → the same after the block."""
        normed, gate = self.norm(x, emb=temb)
        fused = getattr(self, "fused_in", None)  # generation.models.fusion: q, k, v (and the MLP) in one GEMM
        parts = fused.parts(normed) if fused is not None else None
        if parts is not None and len(parts) == 4:
            mlp = self.act_mlp(parts[3])
        elif self.gelu_epilogue and normed.is_cuda:
            mlp = linear_gelu(normed, self.proj_mlp)
        else:
            mlp = self.act_mlp(self.proj_mlp(normed))
        if parts is not None:
            attn = self.attn(hidden_states=normed, qkv=parts[:3], **attention_kwargs)
        else:
            attn = self.attn(hidden_states=normed, **attention_kwargs)
        out = x + gate.unsqueeze(1) * self._project_out(attn, mlp)
        if out.dtype == torch.float16:
            out = out.clip(-65504, 65504)
        return out


    gelu_epilogue = False  # set by `generation.models.linear_gelu.use_gelu_epilogue`

    # The output projection over [attn; mlp] as two GEMMs accumulating into one output, instead of one GEMM
    # over their concatenation: the concatenated copy ([B, L, 5·D] written and read again in each of the
    # 16 blocks) is not made. Each output is the same dot product, summed in two parts. False: the
    # concatenation, for comparison.
    split_out_proj = True

    def _project_out(self, attn: torch.Tensor, mlp: torch.Tensor) -> torch.Tensor:
        if not self.split_out_proj:
            return self.proj_out(torch.cat([attn, mlp], dim=2))
        w, width = self.proj_out.weight, attn.shape[-1]
        first = torch.nn.functional.linear(attn, w[:, :width], self.proj_out.bias)
        flat = torch.addmm(first.reshape(-1, first.shape[-1]), mlp.reshape(-1, mlp.shape[-1]), w[:, width:].t())
        return flat.view(first.shape)


def run_single_block(block: nn.Module, x: torch.Tensor, temb: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    return block(x, temb, kwargs)


def keep_attention_eager(modules: list[nn.Module], enabled: bool = True) -> None:
    """Keep each attention module out of the graphs `torch.compile` traces (``enabled=False`` undoes it).

    Inside an attention module nothing is left for Inductor to fuse: the projections are GEMMs, the q/k norms,
    the join and RoPE are one kernel of our own (`norm_rope`), attention is flash (`attend`), and the rest are
    views. Traced, it was most of the compile time at start-up (each module is a graph break with frames of
    its own, traced again for the two-stream and the single-stream calls; see benchmarks/RESULTS.md §8). Its
    kernels are the same eagerly, and a CUDA graph replays them alike. Whatever `forward` the module has (a
    hook's wrapper too) is the one kept eager, and put back on undo."""
    for module in modules:
        original = vars(module).get("_traced_forward_replaced")
        if enabled and original is None:
            module._traced_forward_replaced = ("forward" in vars(module), module.forward)
            module.forward = torch.compiler.disable(module.forward)  # type: ignore[method-assign]
        elif not enabled and original is not None:
            had_own, forward = original
            del module._traced_forward_replaced
            if had_own:
                module.forward = forward  # type: ignore[method-assign]
            else:
                del module.forward


JointFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, dict[str, Any]],
                   tuple[torch.Tensor, torch.Tensor]]  # fmt: skip
SingleFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, dict[str, Any]], torch.Tensor]


@dataclass(frozen=True, slots=True)
class BlockRunners:
    joint: JointFn = run_joint_block
    single: SingleFn = run_single_block
    compiled: bool = False

    @staticmethod
    def eager() -> BlockRunners:
        return BlockRunners()

    @staticmethod
    def compiled_with(**options: Any) -> BlockRunners:
        """`torch.compile`d runners (dynamic shapes; default mode, since the caller replays CUDA graphs).

        Compilation itself happens on the first call of each block kind (tens of seconds, cached on disk by
        Inductor); the caller must make that first call outside CUDA-graph capture.
        """
        import torch._dynamo

        # One entry per block kind and per graph-break piece (attention splits each block in two); the
        # default limit of 8 is shared by every model compiled in the process.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 512
        )
        # Duck sizing would guard "these two sizes are equal" whenever a text length and a token count happen
        # to coincide in the first layout, and recompile (seconds, mid-video) when a later layout breaks it.
        import torch.fx.experimental._config as fx_config

        fx_config.use_duck_shape = False
        opts = {"dynamic": True, **options}
        log.info("DiT blocks will run under torch.compile (%s)", opts)
        return BlockRunners(joint=torch.compile(run_joint_block, **opts),
                            single=torch.compile(run_single_block, **opts), compiled=True)  # fmt: skip
