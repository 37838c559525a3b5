"""The loaded parts of one generator: DiT, VAE, text encoder, with their dtype/device and label."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from generation.limits import VARIANT_MAX_TEMP  # noqa: F401 - re-exported (its torch-free home)
from generation.text_encoders import PromptEncoder

# Pixel (width, height) per variant of the released checkpoints (SPEC §6.6); max latent frames: generation.limits.
VARIANT_RESOLUTION: dict[str, tuple[int, int]] = {"384p": (640, 384), "768p": (1280, 768)}


@dataclass
class PipelineComponents:
    model_name: str  # "pyramid_flux" | "pyramid_mmdit"
    variant: str  # "384p" | "768p"
    dit: nn.Module
    vae: nn.Module
    text: PromptEncoder | None
    dtype: torch.dtype
    device: torch.device
    label: str = ""  # non-empty for demo weights, e.g. the tiny random model
    resolution: dict[str, tuple[int, int]] | None = None  # overrides VARIANT_RESOLUTION (tiny model)

    def size_for(self, resolution: str) -> tuple[int, int]:
        table = self.resolution or VARIANT_RESOLUTION
        return table[resolution]

    def supports(self, resolution: str) -> bool:
        table = self.resolution or VARIANT_RESOLUTION
        if resolution not in table:
            return False
        if self.resolution is not None:
            return True
        # a 384p checkpoint makes 384p videos, a 768p checkpoint both (the maintainers trained 768p after 384p,
        # but only the fixed training resolution is supported per checkpoint)
        return resolution == self.variant
