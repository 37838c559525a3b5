"""What both Pyramid Flow DiT variants share: the forward plan (layout, attention plan, position
tables), its cache, the text re-ordering and the input checks of the forward contract."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from generation.models.attention import (
    DEFAULT_MERGE_TOKENS,
    AttentionPlan,
    AttnContext,
    Backend,
    HostMaskReader,
    PlanCache,
    build_attention_plan,
    text_order,
)
from generation.models.blocks import BlockRunners
from generation.models.positions import TokenLayout, token_layout

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    layout: TokenLayout
    attention: AttentionPlan
    text_order: torch.Tensor  # int64 [B, L_t'] on the model device: pads first, shared pads dropped
    rope: torch.Tensor | None  # float32 [L, D/2, 2] (cos, sin)
    pos_embed: torch.Tensor | None  # additive image-token embedding [N, D] (mmdit), model dtype


class PyramidDiTBase(nn.Module):
    """Base of `PyramidFluxDiT` / `PyramidMMDiT`; subclasses fill `_position_tables` and `forward`."""

    def __init__(self, attention_backend: Backend = "prefix", merge_tokens: int = DEFAULT_MERGE_TOKENS) -> None:
        super().__init__()
        self.attention_backend: Backend = attention_backend
        self.merge_tokens = merge_tokens
        self.plan_cache = PlanCache()
        self._mask_reader = HostMaskReader()
        self.runners = BlockRunners.eager()

    def compile_blocks(self, enabled: bool = True, **options: object) -> None:
        """Run the transformer blocks under `torch.compile` (exact up to floating-point reassociation by the
        fused kernels). The first forward of each block kind compiles; see `BlockRunners.compiled_with`."""
        self.runners = BlockRunners.compiled_with(**options) if enabled else BlockRunners.eager()

    @property
    def compiled(self) -> bool:
        return self.runners.compiled

    def probe_inputs(self, latent_height: int, latent_width: int, text_len: int = 8) -> tuple:
        """Zero inputs of one first-frame forward (CFG batch 2, two prompt lengths): the warm-up forward that
        compiles the blocks. With dynamic shapes, one forward serves every later layout."""
        device, dtype = self.device, self.dtype
        cfg = self.config
        mask = torch.ones(2, text_len, dtype=torch.long, device=device)
        mask[0, text_len // 2 :] = 0
        return ([torch.zeros(2, cfg.latent_channels, 1, latent_height, latent_width, device=device, dtype=dtype)],
                torch.zeros(2, text_len, cfg.joint_attention_dim, device=device, dtype=dtype), mask,
                torch.zeros(2, cfg.pooled_projection_dim, device=device, dtype=dtype),
                torch.full((2,), 999.0, device=device, dtype=dtype))  # fmt: skip

    def set_attention_backend(self, backend: Backend) -> None:
        if backend not in ("prefix", "dense"):
            raise ValueError(f"unknown attention backend {backend!r}")
        self.attention_backend = backend

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def _position_tables(
        self, layout: TokenLayout, text_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        raise NotImplementedError

    def _plan_key_extra(self) -> tuple[object, ...]:
        return ()

    def _check_inputs(
        self,
        clips: Sequence[torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        latent_channels: int,
    ) -> None:
        if not clips:
            raise ValueError("clips must hold at least the current noisy latent")
        b = encoder_hidden_states.shape[0]
        for i, c in enumerate(clips):
            if c.dim() != 5 or c.shape[0] != b or c.shape[1] != latent_channels:
                raise ValueError(
                    f"clip {i} has shape {tuple(c.shape)}; expected [{b}, {latent_channels}, t, h, w]"
                )
        if tuple(encoder_attention_mask.shape) != tuple(encoder_hidden_states.shape[:2]):
            raise ValueError(
                f"encoder_attention_mask {tuple(encoder_attention_mask.shape)} does not match "
                f"encoder_hidden_states {tuple(encoder_hidden_states.shape)}"
            )
        if pooled_projections.shape[0] != b:
            raise ValueError("pooled_projections batch differs from encoder_hidden_states")

    def forward_plan(self, clips: Sequence[torch.Tensor], encoder_attention_mask: torch.Tensor) -> ForwardPlan:
        """The cached plan for these clip shapes and this text mask (built on the first step only).

        The text mask is read to the host once per mask tensor object: pass the same tensor at every
        step to avoid a device sync per forward.
        """
        device, dtype = self.device, self.dtype
        valid, signature = self._mask_reader(encoder_attention_mask)
        shapes = tuple((int(c.shape[2]), int(c.shape[3]), int(c.shape[4])) for c in clips)
        key = (shapes, signature, str(device), dtype, self.merge_tokens, *self._plan_key_extra())
        build: Callable[[], ForwardPlan] = lambda: self._build_plan(shapes, valid, device, dtype)  # noqa: E731
        return self.plan_cache.get(key, build)

    def _build_plan(
        self, shapes: tuple[tuple[int, int, int], ...], valid: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> ForwardPlan:
        layout = token_layout(shapes)
        order, pads = text_order(valid)
        # Padding is isolated (a pad token attends to pads only, and nothing else attends to it), so text
        # pads never reach an image token: the pads every row has are dropped from the sequence (exact).
        drop = min(min(pads), valid.shape[1] - 1)
        order, pads = order[:, drop:], tuple(p - drop for p in pads)
        text_len = valid.shape[1] - drop
        attention = build_attention_plan(pads, text_len, layout.frame_tokens, device, merge_tokens=self.merge_tokens)
        rope, pos = self._position_tables(layout, text_len, device, dtype)
        log.debug(
            "built DiT forward plan: clips=%s text_pads=%s tokens=%d calls=%d",
            shapes, pads, attention.seq_len, len(attention.calls_all),
        )
        return ForwardPlan(layout, attention, order.to(device), rope, pos)

    def context(self, plan: ForwardPlan) -> AttnContext:
        return AttnContext(plan.attention, plan.rope, self.attention_backend, self.runners.compiled)

    @staticmethod
    def reorder_text(x: torch.Tensor, plan: ForwardPlan) -> torch.Tensor:
        """Gather text tokens [B, L_t, F] into the plan's pads-first order, without the shared pads."""
        idx = plan.text_order
        return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[-1]))

    @staticmethod
    def batch_timestep(timestep: torch.Tensor | float, batch: int, device: torch.device) -> torch.Tensor:
        t = torch.as_tensor(timestep, device=device)
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"timestep must be a scalar or [{batch}], got {tuple(t.shape)}")
        return t

    def _load_from_state_dict(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        # Cached tables may depend on loaded buffers (the mmdit sin-cos table): drop them on load.
        self.plan_cache.clear()
        return super()._load_from_state_dict(*args, **kwargs)
