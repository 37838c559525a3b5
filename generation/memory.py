"""Where the models live while a job runs (SPEC §8).

GPU: everything stays on the accelerator. MODEL_OFFLOAD: each component is kept on the CPU and moved to
the accelerator only while it runs. SEQUENTIAL_OFFLOAD: the repeated blocks of the DiT and of the text
models (every element of their nn.ModuleLists) stay on the CPU and are streamed to the accelerator one
block at a time by forward hooks; the small remaining parameters (embeddings, norms, projections) stay
on the accelerator. The VAE is handled as in MODEL_OFFLOAD. On a CPU-only machine the moves are
CPU→CPU, but the same code paths (moves, hooks) run.
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


def _streamable_blocks(module: nn.Module) -> list[nn.Module]:
    """Elements of the outermost ModuleLists below `module`."""
    blocks: list[nn.Module] = []

    def visit(m: nn.Module) -> None:
        for child in m.children():
            if isinstance(child, nn.ModuleList):
                blocks.extend(child)
            else:
                visit(child)

    visit(module)
    return blocks


def _move_direct(m: nn.Module, device: torch.device) -> None:
    """Move only m's own parameters/buffers (not its children's)."""
    for p in m._parameters.values():
        if p is not None:
            p.data = p.data.to(device)
    for k, b in list(m._buffers.items()):
        if b is not None:
            m._buffers[k] = b.to(device)


class BlockStreamer:
    """Forward hooks that bring each block to `device` just before it runs and send it back after."""

    def __init__(self, module: nn.Module, device: torch.device, offload_device: torch.device) -> None:
        self.module = module
        self.device = device
        self.offload_device = offload_device
        self.blocks = _streamable_blocks(module)
        self.loads = 0
        block_ids = {id(b) for b in self.blocks}
        inside: set[int] = set()
        for b in self.blocks:
            inside.update(id(x) for x in b.modules())
        for m in module.modules():
            if id(m) not in inside and id(m) not in block_ids:
                _move_direct(m, device)
        self.handles = []
        for b in self.blocks:
            b.to(offload_device)
            self.handles.append(b.register_forward_pre_hook(self._pre))
            self.handles.append(b.register_forward_hook(self._post))

    def _pre(self, block: nn.Module, _args) -> None:
        block.to(self.device, non_blocking=True)
        self.loads += 1

    def _post(self, block: nn.Module, _args, _out) -> None:
        block.to(self.offload_device)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class PlacementManager:
    def __init__(self, placement: Placement | str, device: torch.device, offload_device: torch.device | None = None):
        self.placement = Placement(placement)
        self.device = torch.device(device)
        self.offload_device = offload_device or torch.device("cpu")
        self.streamers: list[BlockStreamer] = []
        self.moves: list[tuple[str, str]] = []  # (module class, device) log of every whole-module move

    @property
    def hooked(self) -> list[nn.Module]:
        return [s.module for s in self.streamers]

    def prepare(self, *, streamed: Iterable[nn.Module], swapped: Iterable[nn.Module]) -> None:
        """`streamed` = DiT and text models (block streaming in SEQUENTIAL_OFFLOAD), `swapped` = the VAE."""
        streamed = list(streamed)
        swapped = list(swapped)
        if self.placement is Placement.GPU:
            for m in streamed + swapped:
                self._move(m, self.device)
            return
        if self.placement is Placement.SEQUENTIAL_OFFLOAD:
            for m in streamed:
                if _streamable_blocks(m):
                    self.streamers.append(BlockStreamer(m, self.device, self.offload_device))
                    log.info("sequential offload: streaming %d blocks of %s", len(self.streamers[-1].blocks),
                             type(m).__name__)
                else:
                    self._move(m, self.offload_device)
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
        hooked = self.hooked
        moved = [m for m in modules if not any(m is h for h in hooked)]
        for m in moved:
            self._move(m, self.device)
        try:
            yield
        finally:
            for m in moved:
                self._move(m, self.offload_device)
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
