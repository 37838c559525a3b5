"""Causal VAE encoder: pixels [B, 3, F, H, W] -> raw moments before quant_conv [B, 2*latent, T, H/8, W/8]."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .config import VAEConfig
from .layers import NORM_EPS, CausalCache, CausalConv3d, CausalGroupNorm, DownBlock, MidBlock


class Encoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = cfg.encoder_block_out_channels
        groups = cfg.encoder_norm_num_groups
        self.conv_in = CausalConv3d(cfg.encoder_in_channels, widths[0], 3)
        blocks = []
        in_ch = widths[0]
        for i, out_ch in enumerate(widths):
            blocks.append(
                DownBlock(in_ch, out_ch, cfg.encoder_layers_per_block[i], groups,
                          spatial=bool(cfg.encoder_spatial_down_sample[i]),
                          temporal=bool(cfg.encoder_temporal_down_sample[i]))
            )
            in_ch = out_ch
        self.down_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(widths[-1], groups)
        self.conv_norm_out = CausalGroupNorm(groups, widths[-1], eps=NORM_EPS)
        # Always mean | logvar, as the reference builds it.
        self.conv_out = CausalConv3d(widths[-1], 2 * cfg.encoder_out_channels, 3)

    def forward(self, x: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = block(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.conv_norm_out(x)), cache)
