"""pyramid_mmdit: the SD3-like MM-DiT of Pyramid Flow (SPEC 5.4).

Built from diffusers' SD3 `JointTransformerBlock`s with the checkpoint's names (`attn.norm_add_q/k`
instead of diffusers' `norm_added_q/k`) and the reference's q/k RMSNorm eps (1e-5). Patch embedding
with the stored sin-cos table (cropped / interpolated per clip), temporal RoPE, the attention plan and
output slicing are ours.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from diffusers.models.attention import JointTransformerBlock
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn

from generation.models.attention import DEFAULT_MERGE_TOKENS, Backend, PyramidAttnProcessor
from generation.models.dit_base import PyramidDiTBase
from generation.models.dit_config import MMDiTConfig, ModelName
from generation.models.positions import (
    PATCH,
    TokenLayout,
    rope_cos_sin,
    rope_table,
    sd3_sincos_table,
    sincos_image_embedding,
    temporal_positions,
    unpack_patches,
)

log = logging.getLogger(__name__)

_RENAMES = {"norm_added_q": "norm_add_q", "norm_added_k": "norm_add_k"}


class PatchEmbedding(nn.Module):
    """Per-frame 2x2 patch convolution plus the stored 2-D sin-cos table (`pos_embed.pos_embed`)."""

    def __init__(self, in_channels: int, dim: int, max_size: int, base_size: int) -> None:
        super().__init__()
        self.max_size = max_size
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=PATCH, stride=PATCH)
        self.register_buffer("pos_embed", sd3_sincos_table(max_size, dim, base_size), persistent=True)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """[B, C, t, h, w] -> [B, t·h/2·w/2, D] in (t, y, x) order (no position term)."""
        b, c, t, h, w = clip.shape
        x = self.proj(clip.transpose(1, 2).reshape(b * t, c, h, w))  # [B·t, D, h/2, w/2]
        x = x.flatten(2).transpose(1, 2)  # [B·t, h/2·w/2, D]
        return x.reshape(b, t * x.shape[1], x.shape[2])


def _adapt_attention(attn: nn.Module, head_dim: int, eps: float) -> None:
    """Checkpoint names for the text-stream q/k norms, the reference eps, and fused RMSNorm kernels.

    torch's `nn.RMSNorm` has the same single `weight` parameter and formula as diffusers' RMSNorm
    (variance in fp32) but runs as one kernel instead of five.
    """
    modules = OrderedDict()
    for name, mod in attn._modules.items():
        name = _RENAMES.get(name, name)
        if name in ("norm_q", "norm_k", "norm_add_q", "norm_add_k"):
            if mod is None:
                raise RuntimeError(f"diffusers JointTransformerBlock has no attn.{name}; layout changed?")
            mod = nn.RMSNorm(head_dim, eps=eps, elementwise_affine=True)
        modules[name] = mod
    attn._modules = modules


class PyramidMMDiT(PyramidDiTBase):
    model_name: ModelName = "pyramid_mmdit"

    def __init__(
        self,
        config: MMDiTConfig,
        *,
        attention_backend: Backend = "prefix",
        merge_tokens: int = DEFAULT_MERGE_TOKENS,
    ) -> None:
        super().__init__(attention_backend, merge_tokens)
        self.config = config
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        out_channels = config.out_channels or config.in_channels

        self.pos_embed = PatchEmbedding(
            config.in_channels, dim, config.pos_embed_max_size, config.sample_size // config.patch_size
        )
        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, config.pooled_projection_dim)
        self.context_embedder = nn.Linear(config.joint_attention_dim, config.caption_projection_dim)
        self.transformer_blocks = nn.ModuleList(
            [
                JointTransformerBlock(
                    dim, heads, head_dim, context_pre_only=(i == config.num_layers - 1), qk_norm=config.qk_norm
                )
                for i in range(config.num_layers)
            ]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * out_channels)

        processor = PyramidAttnProcessor("norm_add_q", "norm_add_k")
        for block in self.transformer_blocks:
            _adapt_attention(block.attn, head_dim, config.qk_norm_eps)
            block.attn.set_processor(processor)

    def _plan_key_extra(self) -> tuple[object, ...]:
        table = self.pos_embed.pos_embed
        return (table._version, table.data_ptr())

    def _position_tables(
        self, layout: TokenLayout, text_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        cfg = self.config
        rope = rope_table(temporal_positions(layout), [cfg.attention_head_dim], cfg.rope_theta, text_len)
        with torch.no_grad():
            pos = sincos_image_embedding(self.pos_embed.pos_embed, cfg.pos_embed_max_size, layout).to(dtype)
        return rope_cos_sin(rope).to(device), pos

    def forward(
        self,
        clips: list[torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity of the last clip, [B, 16, t, h, w]; clips oldest -> newest (see SPEC 4.1)."""
        self._check_inputs(
            clips, encoder_hidden_states, encoder_attention_mask, pooled_projections, self.config.latent_channels
        )
        dtype = self.dtype
        plan = self.forward_plan(clips, encoder_attention_mask)
        batch = encoder_hidden_states.shape[0]

        hidden = torch.cat([self.pos_embed(c.to(dtype)) for c in clips], dim=1)
        assert plan.pos_embed is not None
        hidden = hidden + plan.pos_embed
        text_in, ctx = self.text_and_context(encoder_hidden_states.to(dtype), encoder_attention_mask, plan)
        text = self.context_embedder(text_in)
        temb = self.time_text_embed(
            self.batch_timestep(timestep, batch, hidden.device), pooled_projections.to(dtype)
        )

        kwargs = {"ctx": ctx}
        run = self.runners
        for block in self.transformer_blocks:
            text, hidden = run.joint(block, hidden, text, temb, kwargs)

        t, h, w = plan.layout.clip_shapes[-1]
        hidden = hidden[:, -plan.layout.last_clip_tokens :]
        hidden = self.proj_out(self.norm_out(hidden, temb))
        return unpack_patches(hidden, t, h, w)
