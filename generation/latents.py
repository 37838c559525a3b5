"""Latent normalisation between the VAE space and the DiT space (SPEC §2).

z_model = (z_vae - shift) * scale; frame 0 uses per-variant image constants, later frames the video ones.
Constants come from generation/data/pipeline_constants.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

CONSTANTS_PATH = Path(__file__).parent / "data" / "pipeline_constants.json"


@lru_cache(maxsize=1)
def pipeline_constants() -> dict:
    return json.loads(CONSTANTS_PATH.read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class LatentNorm:
    image_shift: float
    image_scale: float
    video_shift: float
    video_scale: float


def latent_norm(model_name: str) -> LatentNorm:
    c = pipeline_constants()["vae_latent_normalisation"]
    if model_name not in c["first_frame"]:
        raise ValueError(f"unknown model name {model_name!r}")
    first = c["first_frame"][model_name]
    later = c["later_frames"]
    return LatentNorm(first["shift"], first["scale"], later["shift"], later["scale"])


def normalize_image_latent(z_vae: torch.Tensor, norm: LatentNorm) -> torch.Tensor:
    """VAE latent of a single (first) frame → model space."""
    return (z_vae - norm.image_shift) * norm.image_scale


def denormalize(latents: torch.Tensor, norm: LatentNorm, *, first_frame_index: int = 0) -> torch.Tensor:
    """Model-space latents [B,C,T,h,w] → VAE space. Frame `first_frame_index` of the video (global index 0)
    gets the image constants; use first_frame_index=-1 for a slice that does not contain frame 0."""
    out = latents.clone()
    if first_frame_index == 0:
        out[:, :, :1] = latents[:, :, :1] / norm.image_scale + norm.image_shift
        out[:, :, 1:] = latents[:, :, 1:] / norm.video_scale + norm.video_shift
    else:
        out = latents / norm.video_scale + norm.video_shift
    return out


def prompt_suffix() -> str:
    return pipeline_constants()["prompt_suffix_added_to_positive_prompt"]


def default_negative_prompt() -> str:
    return pipeline_constants()["default_negative_prompt"]
