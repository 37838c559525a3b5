"""Model code of our Pyramid Flow implementation (DiT variants here, the causal VAE in `vae/`).

Kept import-light: the DiT classes (which import diffusers) load only when `build_dit` is called or
their modules are imported directly.
"""

from generation.models.dit_config import (
    ConfigError,
    DiTConfig,
    FluxDiTConfig,
    MMDiTConfig,
    PyramidDiT,
    model_name_from_config,
)
from generation.models.registry import build_dit

__all__ = [
    "ConfigError",
    "DiTConfig",
    "FluxDiTConfig",
    "MMDiTConfig",
    "PyramidDiT",
    "build_dit",
    "model_name_from_config",
]
