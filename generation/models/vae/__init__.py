"""Causal video VAE of Pyramid Flow (our implementation; checkpoint-compatible parameter names)."""

from .config import VAEConfig, VAEConfigError
from .layers import CausalCache
from .model import CausalVideoVAE, chunk_bounds
from .streaming import StreamDecoder
from .tiling import TilePlan

__all__ = ["CausalCache", "CausalVideoVAE", "StreamDecoder", "TilePlan", "VAEConfig", "VAEConfigError", "chunk_bounds"]
