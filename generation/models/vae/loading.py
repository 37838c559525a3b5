"""Load a `causal_video_vae/` checkpoint folder (diffusers layout) into `CausalVideoVAE`. Local files only."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file

from .config import VAEConfig
from .model import CausalVideoVAE

log = logging.getLogger(__name__)

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        path = folder / name
        if path.is_file():
            if path.suffix == ".safetensors":
                return load_file(path)
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    raise FileNotFoundError(f"no VAE weights in {folder} (looked for {', '.join(WEIGHT_FILES)})")


def load_causal_vae(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    device: str | torch.device = "cpu",
) -> CausalVideoVAE:
    """Build from `config.json` (on the meta device, no random init) and load the weights strictly."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    config = VAEConfig.from_dict(json.loads(config_path.read_text()))
    with torch.device("meta"):
        vae = CausalVideoVAE(config)
    state = read_state_dict(folder)
    vae.load_state_dict(state, strict=True, assign=True)
    vae = vae.to(device=device, dtype=dtype).eval()
    log.info("loaded causal VAE from %s (%d tensors, dtype=%s, device=%s)", folder, len(state), dtype, device)
    return vae
