"""pyramid_flux: the miniFLUX DiT of Pyramid Flow (SPEC 5.1-5.3).

Built from diffusers' FLUX blocks (same state-dict names and shapes as the checkpoint); the top-level
forward — multi-clip packing, interpolated 3-axis RoPE positions, the attention plan, output slicing —
is ours, and every attention call goes through `generation.models.attention`.
"""

from __future__ import annotations

import logging

import torch
from diffusers.models.embeddings import CombinedTimestepTextProjEmbeddings
from diffusers.models.normalization import AdaLayerNormContinuous
from diffusers.models.transformers.transformer_flux import FluxTransformerBlock
from torch import nn

from generation.models.attention import DEFAULT_MERGE_TOKENS, Backend, PyramidAttnProcessor
from generation.models.blocks import JoinedSingleBlock
from generation.models.dit_base import PyramidDiTBase
from generation.models.dit_config import FluxDiTConfig, ModelName
from generation.models.positions import (
    TokenLayout,
    flux_image_positions,
    pack_patches,
    rope_cos_sin,
    rope_table,
    unpack_patches,
)

log = logging.getLogger(__name__)


class PyramidFluxDiT(PyramidDiTBase):
    model_name: ModelName = "pyramid_flux"

    def __init__(
        self,
        config: FluxDiTConfig,
        *,
        attention_backend: Backend = "prefix",
        merge_tokens: int = DEFAULT_MERGE_TOKENS,
    ) -> None:
        super().__init__(attention_backend, merge_tokens)
        self.config = config
        dim, heads, head_dim = config.inner_dim, config.num_attention_heads, config.attention_head_dim
        out_channels = config.out_channels or config.in_channels

        self.time_text_embed = CombinedTimestepTextProjEmbeddings(dim, config.pooled_projection_dim)
        self.context_embedder = nn.Linear(config.joint_attention_dim, dim)
        self.x_embedder = nn.Linear(config.in_channels, dim)
        self.transformer_blocks = nn.ModuleList(
            [FluxTransformerBlock(dim, heads, head_dim) for _ in range(config.num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [JoinedSingleBlock(dim, heads, head_dim) for _ in range(config.num_single_layers)]
        )
        self.norm_out = AdaLayerNormContinuous(dim, dim, elementwise_affine=False, eps=1e-6)
        self.proj_out = nn.Linear(dim, config.patch_size * config.patch_size * out_channels)

        processor = PyramidAttnProcessor("norm_added_q", "norm_added_k")
        for block in [*self.transformer_blocks, *self.single_transformer_blocks]:
            block.attn.set_processor(processor)

    def _position_tables(
        self, layout: TokenLayout, text_len: int, device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        table = rope_table(flux_image_positions(layout), self.config.axes_dims_rope, self.config.rope_theta, text_len)
        return rope_cos_sin(table).to(device), None

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

        tokens = torch.cat([pack_patches(c.to(dtype)) for c in clips], dim=1)
        hidden = self.x_embedder(tokens)
        text_in, ctx = self.text_and_context(encoder_hidden_states.to(dtype), encoder_attention_mask, plan)
        text = self.context_embedder(text_in)
        temb = self.time_text_embed(
            self.batch_timestep(timestep, batch, hidden.device), pooled_projections.to(dtype)
        )

        kwargs = {"ctx": ctx}
        run = self.runners
        for block in self.transformer_blocks:
            text, hidden = run.joint(block, hidden, text, temb, kwargs)
        joined = torch.cat([text, hidden], dim=1)
        for block in self.single_transformer_blocks:
            joined = run.single(block, joined, temb, kwargs)
        hidden = joined[:, text.shape[1] :]

        t, h, w = plan.layout.clip_shapes[-1]
        hidden = hidden[:, -plan.layout.last_clip_tokens :]
        hidden = self.proj_out(self.norm_out(hidden, temb))
        return unpack_patches(hidden, t, h, w)
