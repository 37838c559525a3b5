"""Where the sampler's randomness comes from.

`GeneratorNoise` draws everything from one seeded torch.Generator on the latents' device.
`ReplayNoise` hands out stored tensors (the parity fixtures' recorded draws) at the same points:
initial noise before resizing, block noise before the beta scaling, VAE posterior eps.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import torch

from generation.sampling.block_noise import sample_block_noise


class NoiseSource(Protocol):
    def initial(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor: ...

    def posterior(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor: ...

    def block(
        self, unit: int, stage: int, shape: tuple[int, ...], *, gamma: float, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor: ...


class GeneratorNoise:
    """Seeded draws on the target device (one generator per device, created lazily)."""

    def __init__(self, seed: int) -> None:
        self.seed = int(seed)
        self._gens: dict[str, torch.Generator] = {}

    def _gen(self, device: torch.device) -> torch.Generator:
        key = str(torch.device(device))
        if key not in self._gens:
            self._gens[key] = torch.Generator(device=device).manual_seed(self.seed)
        return self._gens[key]

    def initial(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=self._gen(device), device=device, dtype=torch.float32).to(dtype)

    def posterior(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(shape, generator=self._gen(device), device=device, dtype=torch.float32).to(dtype)

    def block(
        self, unit: int, stage: int, shape: tuple[int, ...], *, gamma: float, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return sample_block_noise(shape, gamma=gamma, generator=self._gen(device), device=device, dtype=dtype)


class ReplayNoise:
    """Replays stored draws named like the parity fixtures:
    `noise.initial_latents`, `noise.vae_posterior`, `noise.block.unit{u}.stage{s}` (u counts generated units)."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self.tensors = tensors
        self.used: list[str] = []

    def _take(self, name: str, shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        if name not in self.tensors:
            raise KeyError(f"stored noise {name!r} missing")
        t = self.tensors[name]
        if tuple(t.shape) != tuple(shape):
            raise ValueError(f"stored noise {name!r} has shape {tuple(t.shape)}, sampler asked for {tuple(shape)}")
        self.used.append(name)
        return t.to(device=device, dtype=dtype)

    def initial(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._take("noise.initial_latents", shape, device, dtype)

    def posterior(self, shape: tuple[int, ...], *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        return self._take("noise.vae_posterior", shape, device, dtype)

    def block(
        self, unit: int, stage: int, shape: tuple[int, ...], *, gamma: float, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        return self._take(f"noise.block.unit{unit}.stage{stage}", shape, device, dtype)
