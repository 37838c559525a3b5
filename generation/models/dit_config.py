"""Typed configurations of the two Pyramid Flow DiT variants and the rule that names a config's variant.

A checkpoint's ``config.json`` (a diffusers-style dict) is turned into a frozen dataclass by
``from_dict``. Keys that only switch behaviour in the reference (flash attention, gradient
checkpointing, the temporal-causal switch, ...) are accepted and ignored: this implementation always
runs the released behaviour (temporal-causal attention, interpolated history positions, temporal RoPE).
Unknown keys are rejected so that a structurally different checkpoint never loads silently.

This module imports no torch and no model class, so that reading configs stays cheap and the model
modules can import their config without a cycle; `generation.models.registry` builds the models.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ModelName = Literal["pyramid_flux", "pyramid_mmdit"]
AttentionBackend = Literal["prefix", "dense"]

# Keys of the reference configs that change behaviour but no parameter shapes. The values the released
# checkpoints use are the only behaviour implemented here; other values are logged, not honoured.
_BEHAVIOUR_KEYS: dict[str, Any] = {
    "_class_name": None,
    "_diffusers_version": None,
    "_name_or_path": None,
    "use_flash_attn": None,  # reference varlen path drops temporal causality; never reproduced
    "use_gradient_checkpointing": None,
    "gradient_checkpointing_ratio": None,
    "use_temporal_causal": True,
    "interp_condition_pos": True,
    "use_t5_mask": True,
    "add_temp_pos_embed": True,
    "temp_pos_embed_type": "rope",
}


class ConfigError(ValueError):
    """A config dict that does not describe a supported DiT structure."""


def _split_keys(cls_name: str, d: Mapping[str, Any], known: set[str]) -> dict[str, Any]:
    structural: dict[str, Any] = {}
    for key, value in d.items():
        if key in known:
            structural[key] = value
        elif key in _BEHAVIOUR_KEYS:
            expected = _BEHAVIOUR_KEYS[key]
            if expected is not None and value != expected:
                log.warning(
                    "%s: config key %r=%r is not honoured; the released behaviour (%r) is used",
                    cls_name, key, value, expected,
                )
        else:
            raise ConfigError(f"{cls_name}: unknown config key {key!r}")
    return structural


@dataclass(frozen=True, slots=True)
class FluxDiTConfig:
    """miniFLUX DiT (`PyramidFluxTransformer`). Defaults are the released checkpoint's values."""

    patch_size: int = 1
    in_channels: int = 64
    out_channels: int | None = None
    num_layers: int = 8
    num_single_layers: int = 16
    attention_head_dim: int = 64
    num_attention_heads: int = 30
    joint_attention_dim: int = 4096
    pooled_projection_dim: int = 768
    axes_dims_rope: tuple[int, ...] = (16, 24, 24)
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.patch_size != 1:
            raise ConfigError(f"FluxDiTConfig: patch_size must be 1 (2x2 packing is done outside), got {self.patch_size}")
        if self.in_channels % 4:
            raise ConfigError(f"FluxDiTConfig: in_channels {self.in_channels} is not 4 x latent channels")
        if self.out_channels is not None and self.out_channels != self.in_channels:
            raise ConfigError("FluxDiTConfig: out_channels must equal in_channels")
        if len(self.axes_dims_rope) != 3 or sum(self.axes_dims_rope) != self.attention_head_dim:
            raise ConfigError(
                f"FluxDiTConfig: axes_dims_rope {self.axes_dims_rope} must be 3 axes summing to "
                f"attention_head_dim {self.attention_head_dim}"
            )
        if any(d % 2 for d in self.axes_dims_rope):
            raise ConfigError("FluxDiTConfig: every axes_dims_rope entry must be even")

    @property
    def inner_dim(self) -> int:
        return self.attention_head_dim * self.num_attention_heads

    @property
    def latent_channels(self) -> int:
        return self.in_channels // 4

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FluxDiTConfig:
        known = {f.name for f in fields(cls)}
        s = _split_keys(cls.__name__, d, known)
        if "axes_dims_rope" in s:
            s["axes_dims_rope"] = tuple(int(x) for x in s["axes_dims_rope"])
        return cls(**s)


@dataclass(frozen=True, slots=True)
class MMDiTConfig:
    """SD3-like MM-DiT (`PyramidDiffusionMMDiT`). Defaults are the released checkpoint's values."""

    sample_size: int = 128
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int | None = None
    num_layers: int = 24
    attention_head_dim: int = 64
    num_attention_heads: int = 24
    caption_projection_dim: int = 1536
    pooled_projection_dim: int = 2048
    joint_attention_dim: int = 4096
    pos_embed_max_size: int = 192
    pos_embed_type: str = "sincos"
    max_num_frames: int = 200
    qk_norm: str = "rms_norm"
    qk_norm_eps: float = 1e-5  # the reference's value (diffusers SD3 uses 1e-6), SPEC 5.4
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        if self.patch_size != 2:
            raise ConfigError(f"MMDiTConfig: only patch_size 2 is supported, got {self.patch_size}")
        if self.out_channels is not None and self.out_channels != self.in_channels:
            raise ConfigError("MMDiTConfig: out_channels must equal in_channels")
        if self.pos_embed_type != "sincos":
            raise ConfigError(f"MMDiTConfig: pos_embed_type {self.pos_embed_type!r} is not supported (only 'sincos')")
        if self.qk_norm != "rms_norm":
            raise ConfigError(f"MMDiTConfig: qk_norm {self.qk_norm!r} is not supported (only 'rms_norm')")
        if self.caption_projection_dim != self.inner_dim:
            raise ConfigError(
                f"MMDiTConfig: caption_projection_dim {self.caption_projection_dim} must equal "
                f"heads x head_dim = {self.inner_dim}"
            )
        if self.attention_head_dim % 2:
            raise ConfigError("MMDiTConfig: attention_head_dim must be even (RoPE pairs)")

    @property
    def inner_dim(self) -> int:
        return self.attention_head_dim * self.num_attention_heads

    @property
    def latent_channels(self) -> int:
        return self.in_channels

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> MMDiTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**_split_keys(cls.__name__, d, known))


DiTConfig = FluxDiTConfig | MMDiTConfig

_CLASS_NAMES: dict[str, ModelName] = {
    "PyramidFluxTransformer": "pyramid_flux",
    "PyramidDiffusionMMDiT": "pyramid_mmdit",
}


def model_name_from_config(d: Mapping[str, Any]) -> ModelName | None:
    """Name the variant of a config dict: by `_class_name`, else by its distinctive structural keys."""
    cls_name = d.get("_class_name")
    if isinstance(cls_name, str) and cls_name in _CLASS_NAMES:
        return _CLASS_NAMES[cls_name]
    if "num_single_layers" in d or "axes_dims_rope" in d:
        return "pyramid_flux"
    if "pos_embed_max_size" in d or "caption_projection_dim" in d:
        return "pyramid_mmdit"
    return None


class PyramidDiT(Protocol):
    """The forward contract the sampler uses (both variants implement it)."""

    model_name: ModelName
    config: DiTConfig

    def __call__(
        self,
        clips: list[torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor: ...
