"""Typed configuration of the causal video VAE.

`VAEConfig.from_dict` reads the `causal_video_vae/config.json` of a released checkpoint (or the tiny
fixture configs). Every structural key is a field here; diffusers metadata (`_class_name`,
`_diffusers_version`, any other `_`-prefixed key) is accepted and ignored; anything else is rejected so
that a config we do not understand never silently builds the wrong network.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

_DOWN_BLOCK = "DownEncoderBlockCausal3D"
_UP_BLOCK = "UpDecoderBlockCausal3D"
_CONV_TYPE = "causal_vae_conv"


class VAEConfigError(ValueError):
    """The config cannot describe a network this implementation builds."""


@dataclass(frozen=True, slots=True)
class VAEConfig:
    encoder_in_channels: int = 3
    encoder_out_channels: int = 16
    encoder_layers_per_block: tuple[int, ...] = (2, 2, 2, 2)
    encoder_down_block_types: tuple[str, ...] = (_DOWN_BLOCK,) * 4
    encoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    encoder_spatial_down_sample: tuple[bool, ...] = (True, True, True, False)
    encoder_temporal_down_sample: tuple[bool, ...] = (True, True, True, False)
    encoder_block_dropout: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    encoder_act_fn: str = "silu"
    encoder_norm_num_groups: int = 32
    # The reference always builds a doubled (mean | logvar) encoder output, whatever this says.
    encoder_double_z: bool = True
    encoder_type: str = _CONV_TYPE
    decoder_in_channels: int = 16
    decoder_out_channels: int = 3
    decoder_layers_per_block: tuple[int, ...] = (3, 3, 3, 3)
    decoder_up_block_types: tuple[str, ...] = (_UP_BLOCK,) * 4
    decoder_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    decoder_spatial_up_sample: tuple[bool, ...] = (True, True, True, False)
    decoder_temporal_up_sample: tuple[bool, ...] = (True, True, True, False)
    decoder_block_dropout: tuple[float, ...] = (0.0, 0.0, 0.0, 0.0)
    decoder_act_fn: str = "silu"
    decoder_norm_num_groups: int = 32
    decoder_type: str = _CONV_TYPE
    sample_size: int = 256  # default tile size in pixels
    scaling_factor: float = 0.13025  # not used: the pipeline normalises latents itself
    # The reference always builds post_quant_conv (the released configs say true).
    add_post_quant_conv: bool = True
    interpolate: bool = False
    downsample_scale: int = 8

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VAEConfig:
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            if key.startswith("_"):
                continue  # diffusers metadata such as _class_name / _diffusers_version
            if key not in known:
                raise VAEConfigError(f"unknown causal VAE config key {key!r}")
            kwargs[key] = tuple(value) if isinstance(value, list) else value
        cfg = cls(**kwargs)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        n_enc = len(self.encoder_block_out_channels)
        for name in ("encoder_layers_per_block", "encoder_down_block_types", "encoder_spatial_down_sample",
                     "encoder_temporal_down_sample", "encoder_block_dropout"):
            if len(getattr(self, name)) != n_enc:
                raise VAEConfigError(f"{name} must have {n_enc} entries like encoder_block_out_channels")
        n_dec = len(self.decoder_block_out_channels)
        for name in ("decoder_layers_per_block", "decoder_up_block_types", "decoder_spatial_up_sample",
                     "decoder_temporal_up_sample", "decoder_block_dropout"):
            if len(getattr(self, name)) != n_dec:
                raise VAEConfigError(f"{name} must have {n_dec} entries like decoder_block_out_channels")
        for t in self.encoder_down_block_types:
            if t != _DOWN_BLOCK:
                raise VAEConfigError(f"unsupported encoder block type {t!r} (only {_DOWN_BLOCK})")
        for t in self.decoder_up_block_types:
            if t != _UP_BLOCK:
                raise VAEConfigError(f"unsupported decoder block type {t!r} (only {_UP_BLOCK})")
        for name in ("encoder_type", "decoder_type"):
            if getattr(self, name) != _CONV_TYPE:
                raise VAEConfigError(f"unsupported {name} {getattr(self, name)!r} (only {_CONV_TYPE!r})")
        for name in ("encoder_act_fn", "decoder_act_fn"):
            if getattr(self, name) not in ("silu", "swish"):
                raise VAEConfigError(f"unsupported {name} {getattr(self, name)!r} (only 'silu')")
        if self.interpolate:
            raise VAEConfigError("interpolate=True is not supported (the reference does not implement it either)")
        if self.decoder_in_channels != self.encoder_out_channels:
            raise VAEConfigError("decoder_in_channels must equal encoder_out_channels")
        for channels, groups, side in (
            (self.encoder_block_out_channels, self.encoder_norm_num_groups, "encoder"),
            (self.decoder_block_out_channels, self.decoder_norm_num_groups, "decoder"),
        ):
            for c in channels:
                if c % groups:
                    raise VAEConfigError(f"{side} channels {c} not divisible by {groups} norm groups")

    # ------------------------------------------------------------------ derived values
    @property
    def latent_channels(self) -> int:
        return self.encoder_out_channels

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.encoder_temporal_down_sample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** sum(bool(s) for s in self.encoder_spatial_down_sample)
