"""Where the models live while a job runs (SPEC §8).

GPU: everything stays on the accelerator. MODEL_OFFLOAD: each component is kept on the CPU and moved to
the accelerator only while it runs. SEQUENTIAL_OFFLOAD: the DiT and text models get accelerate `cpu_offload`
hooks (weights streamed per sub-module at every forward); the VAE is handled like MODEL_OFFLOAD.
On a CPU-only machine the moves are CPU→CPU, but the same code paths (moves, hooks) run.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import StrEnum

import torch
from torch import nn

log = logging.getLogger(__name__)


class Placement(StrEnum):
    GPU = "gpu"
    MODEL_OFFLOAD = "model_offload"
    SEQUENTIAL_OFFLOAD = "sequential_offload"


class PlacementManager:
    def __init__(self, placement: Placement | str, device: torch.device, offload_device: torch.device | None = None):
        self.placement = Placement(placement)
        self.device = torch.device(device)
        self.offload_device = offload_device or torch.device("cpu")
        self.hooked: list[nn.Module] = []
        self.moves: list[tuple[str, str]] = []  # (module class, device) log of every move, for checks

    def prepare(self, *, streamed: Iterable[nn.Module], swapped: Iterable[nn.Module]) -> None:
        """`streamed` = DiT and text models (sequential hooks in SEQUENTIAL_OFFLOAD), `swapped` = the VAE."""
        streamed = list(streamed)
        swapped = list(swapped)
        if self.placement is Placement.GPU:
            for m in streamed + swapped:
                self._move(m, self.device)
            return
        if self.placement is Placement.SEQUENTIAL_OFFLOAD:
            from accelerate import cpu_offload

            for m in streamed:
                self._move(m, self.offload_device)
                cpu_offload(m, execution_device=self.device, offload_buffers=True)
                self.hooked.append(m)
            for m in swapped:
                self._move(m, self.offload_device)
            return
        for m in streamed + swapped:
            self._move(m, self.offload_device)

    def _move(self, module: nn.Module, device: torch.device) -> None:
        module.to(device)
        self.moves.append((type(module).__name__, str(device)))

    @contextmanager
    def use(self, *modules: nn.Module) -> Iterator[None]:
        """Have `modules` on the execution device for the duration of the block."""
        if self.placement is Placement.GPU:
            yield
            return
        moved = [m for m in modules if m not in self.hooked]
        for m in moved:
            self._move(m, self.device)
        try:
            yield
        finally:
            for m in moved:
                self._move(m, self.offload_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
