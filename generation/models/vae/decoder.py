"""Causal VAE decoder: latents [B, latent, T, h, w] (after post_quant_conv) -> pixels [B, 3, F, 8h, 8w]."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .config import VAEConfig
from .layers import NORM_EPS, CausalCache, CausalConv3d, CausalGroupNorm, MidBlock, UpBlock


class Decoder(nn.Module):
    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        widths = list(reversed(cfg.decoder_block_out_channels))
        groups = cfg.decoder_norm_num_groups
        self.conv_in = CausalConv3d(cfg.decoder_in_channels, widths[0], 3)
        blocks = []
        in_ch = widths[0]
        # Block widths run reversed; the up-sample flags and layer counts are indexed without reversal.
        for i, out_ch in enumerate(widths):
            blocks.append(
                UpBlock(in_ch, out_ch, cfg.decoder_layers_per_block[i], groups,
                        spatial=bool(cfg.decoder_spatial_up_sample[i]),
                        temporal=bool(cfg.decoder_temporal_up_sample[i]))
            )
            in_ch = out_ch
        self.up_blocks = nn.ModuleList(blocks)
        self.mid_block = MidBlock(widths[0], groups)
        self.conv_norm_out = CausalGroupNorm(groups, widths[-1], eps=NORM_EPS)
        self.conv_out = CausalConv3d(widths[-1], cfg.decoder_out_channels, 3)

    def forward(self, z: Tensor, cache: CausalCache | None = None) -> Tensor:
        x = self.conv_in(z, cache)
        x = self.mid_block(x, cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(F.silu(self.conv_norm_out(x)), cache)
