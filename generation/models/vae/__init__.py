"""Causal video VAE of Pyramid Flow (our implementation; checkpoint-compatible parameter names)."""

from .config import VAEConfig, VAEConfigError
from .layers import CausalCache
from .loading import load_causal_vae
from .model import CausalVideoVAE, chunk_bounds
from .streaming import StreamDecoder
from .tiling import TilePlan

__all__ = ["CausalCache", "CausalVideoVAE", "StreamDecoder", "TilePlan", "VAEConfig", "VAEConfigError", "chunk_bounds",
           "load_causal_vae"]
