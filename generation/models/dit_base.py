"""What both Pyramid Flow DiT variants share: the forward plan (layout, attention plan, position
tables), its cache, the text re-ordering and the input checks of the forward contract."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
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
from generation.models.blocks import BlockRunners, keep_attention_eager
from generation.models.norm_rope import kernel_usable
from generation.models.positions import TokenLayout, token_layout

log = logging.getLogger(__name__)


def bucketed_text_len(valid: torch.Tensor, bucket: int) -> int:
    """Text tokens kept with `text_bucket`: the longest row's valid count rounded up to the bucket."""
    longest = int(valid.sum(dim=1).max())
    return min(valid.shape[1], max(bucket, -(-longest // bucket) * bucket))


def masked_text_order(mask: torch.Tensor, text_len: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """On the mask's device, no host sync (so inside a CUDA graph): the pads-first order keeping the last
    `text_len` text tokens of each row (all its valid ones), and the key mask of the whole sequence
    (bool [B, seq_len]: False at the kept pads)."""
    valid = mask != 0
    order = torch.argsort(valid.to(torch.int8), dim=1, stable=True)[:, valid.shape[1] - text_len :]
    text_valid = torch.gather(valid, 1, order)
    return order, torch.cat([text_valid, text_valid.new_ones(valid.shape[0], seq_len - text_len)], dim=1)


@dataclass(frozen=True, slots=True)
class ForwardPlan:
    layout: TokenLayout
    attention: AttentionPlan
    # int64 [B, L_t'] on the model device: pads first, shared pads dropped. None with `text_bucket`: the
    # order is then computed from the mask on the device at each forward (`text_and_context`)
    text_order: torch.Tensor | None
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
        # 0: each CFG row's text pads are cut out of its attention ranges, so plans (and CUDA graphs) are
        # per text mask. > 0: pads are masked out by a key mask read from the device, the text is kept to a
        # multiple of `text_bucket` tokens, and one plan (one graph) serves every mask of that bucket.
        self.text_bucket = 0
        # q/k norms, text/image join and RoPE in one Triton kernel where Triton runs (`norm_rope`); off
        # gives the torch ops (Inductor's kernels when compiled), for comparison
        self.norm_rope_kernel = True
        # on CUDA, tanh-GELU projections with the GELU in the GEMM epilogue (`linear_gelu`); read by the
        # pipeline when it places the DiT
        self.gelu_epilogue = True
        # on CUDA, the prefix rule as one varlen flash call per attention (`attend_varlen`), checked on first use
        self.varlen_attention = True

    def compile_blocks(self, enabled: bool = True, **options: object) -> None:
        """Run the transformer blocks under `torch.compile` (exact up to floating-point reassociation by the
        fused kernels). The first forward of each block kind compiles; see `BlockRunners.compiled_with`.
        The attention modules stay out of the traced graphs (`keep_attention_eager`)."""
        self.runners = BlockRunners.compiled_with(**options) if enabled else BlockRunners.eager()
        blocks = [*getattr(self, "transformer_blocks", []), *getattr(self, "single_transformer_blocks", [])]
        keep_attention_eager([b.attn for b in blocks], enabled)

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
        valid, text_key = self.text_key(encoder_attention_mask)
        shapes = tuple((int(c.shape[2]), int(c.shape[3]), int(c.shape[4])) for c in clips)
        key = (shapes, text_key, str(device), dtype, self.merge_tokens, *self._plan_key_extra())
        build: Callable[[], ForwardPlan] = lambda: self._build_plan(shapes, valid, device, dtype)  # noqa: E731
        return self.plan_cache.get(key, build)

    def text_key(self, encoder_attention_mask: torch.Tensor) -> tuple[torch.Tensor, Hashable]:
        """(host copy of the valid mask, what plans and graphs depend on): the mask itself, or with
        `text_bucket` only the number of text tokens kept."""
        valid, signature = self._mask_reader(encoder_attention_mask)
        if not self.text_bucket:
            return valid, signature
        return valid, ("text_bucket", bucketed_text_len(valid, self.text_bucket))

    def _build_plan(
        self, shapes: tuple[tuple[int, int, int], ...], valid: torch.Tensor, device: torch.device, dtype: torch.dtype
    ) -> ForwardPlan:
        layout = token_layout(shapes)
        order: torch.Tensor | None
        if self.text_bucket:  # pads masked by key at each forward: the plan only knows the kept length
            text_len = bucketed_text_len(valid, self.text_bucket)
            order, pads = None, (0,) * valid.shape[0]
        else:
            order, pads = text_order(valid)
            # Padding is isolated (a pad token attends to pads only, and nothing else attends to it), so text
            # pads never reach an image token: the pads every row has are dropped from the sequence (exact).
            drop = min(min(pads), valid.shape[1] - 1)
            order, pads = order[:, drop:].to(device), tuple(p - drop for p in pads)
            text_len = valid.shape[1] - drop
        attention = build_attention_plan(pads, text_len, layout.frame_tokens, device, merge_tokens=self.merge_tokens)
        rope, pos = self._position_tables(layout, text_len, device, dtype)
        log.debug(
            "built DiT forward plan: clips=%s text_pads=%s tokens=%d calls=%d",
            shapes, pads, attention.seq_len, len(attention.calls_all),
        )
        return ForwardPlan(layout, attention, order, rope, pos)

    def context(self, plan: ForwardPlan, key_valid: torch.Tensor | None = None) -> AttnContext:
        norm_rope = self.norm_rope_kernel and kernel_usable(plan.attention.tau.device.type)
        varlen = self.varlen_attention and plan.attention.tau.device.type == "cuda"
        return AttnContext(plan.attention, plan.rope, self.attention_backend, self.runners.compiled, key_valid,
                           norm_rope, varlen)  # fmt: skip

    def text_and_context(
        self, text: torch.Tensor, encoder_attention_mask: torch.Tensor, plan: ForwardPlan
    ) -> tuple[torch.Tensor, AttnContext]:
        """The text tokens in the plan's order, and the attention context of this forward."""
        if plan.text_order is not None:
            return self.reorder_text(text, plan.text_order), self.context(plan)
        order, key_valid = masked_text_order(encoder_attention_mask, plan.attention.text_len, plan.attention.seq_len)
        return self.reorder_text(text, order), self.context(plan, key_valid)

    @staticmethod
    def reorder_text(x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Gather text tokens [B, L_t, F] into a pads-first order [B, L_t'] (without the dropped pads)."""
        return torch.gather(x, 1, order[:, :, None].expand(-1, -1, x.shape[-1]))

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
