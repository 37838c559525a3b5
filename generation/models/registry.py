"""Builds a DiT from its config: the one place that knows which class serves which model name.

Configs (`dit_config`) import no model class; the model modules import their config; this module imports
both, so there is no import cycle. The model-type rule (`model_name_from_config`) is the same one the
checkpoint loader uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from generation.models.dit_config import (
    AttentionBackend,
    ConfigError,
    FluxDiTConfig,
    MMDiTConfig,
    PyramidDiT,
    model_name_from_config,
)

__all__ = ["build_dit", "model_name_from_config"]


def build_dit(
    model_name: str,
    config: Mapping[str, Any] | FluxDiTConfig | MMDiTConfig,
    *,
    attention_backend: AttentionBackend = "prefix",
) -> PyramidDiT:
    """Build (randomly initialised) DiT of the named variant; load weights with `load_state_dict`.

    Honours an active ``torch.device("meta")`` context, so full-size shape checks cost no memory.
    """
    if model_name == "pyramid_flux":
        from generation.models.dit_flux import PyramidFluxDiT  # imports diffusers: only when building

        cfg = config if isinstance(config, FluxDiTConfig) else None
        if cfg is None:
            if isinstance(config, MMDiTConfig):
                raise ConfigError("pyramid_flux needs a FluxDiTConfig, got MMDiTConfig")
            cfg = FluxDiTConfig.from_dict(config)
        return PyramidFluxDiT(cfg, attention_backend=attention_backend)
    if model_name == "pyramid_mmdit":
        from generation.models.dit_mmdit import PyramidMMDiT  # imports diffusers: only when building

        mcfg = config if isinstance(config, MMDiTConfig) else None
        if mcfg is None:
            if isinstance(config, FluxDiTConfig):
                raise ConfigError("pyramid_mmdit needs an MMDiTConfig, got FluxDiTConfig")
            mcfg = MMDiTConfig.from_dict(config)
        return PyramidMMDiT(mcfg, attention_backend=attention_backend)
    raise ConfigError(f"unknown DiT model_name {model_name!r} (expected 'pyramid_flux' or 'pyramid_mmdit')")
