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
    GPU = "gpu"  # everything resident on the execution device
    TEXT_OFFLOAD = "text_offload"  # DiT + VAE resident; text encoders brought in only to encode
    MODEL_OFFLOAD = "model_offload"  # each component on the device only while it runs
    SEQUENTIAL_OFFLOAD = "sequential_offload"  # DiT/text blocks streamed one at a time (some may stay resident)


def cap_cuda_memory(device: torch.device, gib: float) -> float:
    """Cap this process's CUDA allocator on `device` at `gib` GiB (a small card simulated on a big one);
    returns the fraction set. A bare ``cuda`` device means the current one: torch wants an index here."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    fraction = min(1.0, gib * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, index)
    return fraction


def streamable_blocks(module: nn.Module) -> list[nn.Module]:
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
    """Forward hooks that bring each streamed block to `device` just before it runs and drop it after.

    The first `resident_blocks` blocks stay on the device for good (a partly fitting model streams only
    the rest). Streamed blocks keep one host copy of their weights (pinned when the device is CUDA, so
    the upload is an asynchronous DMA ordered on the compute stream); after the block ran, its
    parameters point back at that host copy, so nothing is copied device→host (inference only: the
    weights never change).
    """

    def __init__(self, module: nn.Module, device: torch.device, offload_device: torch.device, *,
                 resident_blocks: int = 0) -> None:  # fmt: skip
        self.module = module
        self.device = device
        self.offload_device = offload_device
        blocks = streamable_blocks(module)
        self.resident = blocks[: max(0, resident_blocks)]
        self.blocks = blocks[len(self.resident):]
        self.loads = 0
        streamed_ids = {id(b) for b in self.blocks}
        inside: set[int] = set()
        for b in self.blocks:
            inside.update(id(x) for x in b.modules())
        for m in module.modules():
            if id(m) not in inside and id(m) not in streamed_ids:
                _move_direct(m, device)
        pin = device.type == "cuda" and offload_device.type == "cpu"
        self._host: dict[int, list[tuple[nn.Module, str, bool, torch.Tensor]]] = {}
        self.handles = []
        for b in self.blocks:
            entries = []
            for m in b.modules():
                for name, t in list(m._parameters.items()) + list(m._buffers.items()):
                    if t is None:
                        continue
                    host = t.data.to(offload_device)
                    if pin:
                        host = host.pin_memory()
                    is_param = name in m._parameters
                    entries.append((m, name, is_param, host))
                    self._point(m, name, is_param, host)
            self._host[id(b)] = entries
            self.handles.append(b.register_forward_pre_hook(self._pre))
            self.handles.append(b.register_forward_hook(self._post))

    @staticmethod
    def _point(m: nn.Module, name: str, is_param: bool, data: torch.Tensor) -> None:
        if is_param:
            m._parameters[name].data = data  # type: ignore[union-attr]
        else:
            m._buffers[name] = data

    def _pre(self, block: nn.Module, _args) -> None:
        for m, name, is_param, host in self._host[id(block)]:
            self._point(m, name, is_param, host.to(self.device, non_blocking=True))
        self.loads += 1

    def _post(self, block: nn.Module, _args, _out) -> None:
        for m, name, is_param, host in self._host[id(block)]:
            self._point(m, name, is_param, host)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


class PlacementManager:
    def __init__(self, placement: Placement | str, device: torch.device, offload_device: torch.device | None = None,
                 *, resident_blocks: int = 0) -> None:  # fmt: skip
        self.placement = Placement(placement)
        self.device = torch.device(device)
        self.offload_device = offload_device or torch.device("cpu")
        self.resident_blocks = resident_blocks  # SEQUENTIAL_OFFLOAD: DiT blocks kept on the device
        self.streamers: list[BlockStreamer] = []
        self.resident: list[nn.Module] = []  # whole modules that stay on the device
        self.moves: list[tuple[str, str]] = []  # (module class, device) log of every whole-module move

    @property
    def hooked(self) -> list[nn.Module]:
        return [s.module for s in self.streamers]

    def prepare(self, *, streamed: Iterable[nn.Module], swapped: Iterable[nn.Module]) -> None:
        """`streamed` = DiT first, then the text models (block streaming in SEQUENTIAL_OFFLOAD), `swapped` =
        the VAE."""
        streamed = list(streamed)
        swapped = list(swapped)
        if self.placement is Placement.GPU:
            for m in streamed + swapped:
                self._move(m, self.device)
            self.resident = streamed + swapped
            return
        if self.placement is Placement.TEXT_OFFLOAD:
            dit, text = streamed[:1], streamed[1:]
            for m in dit + swapped:
                self._move(m, self.device)
            for m in text:
                self._move(m, self.offload_device)
            self.resident = dit + swapped
            return
        if self.placement is Placement.SEQUENTIAL_OFFLOAD:
            for i, m in enumerate(streamed):
                if streamable_blocks(m):
                    keep = self.resident_blocks if i == 0 else 0
                    self.streamers.append(BlockStreamer(m, self.device, self.offload_device, resident_blocks=keep))
                    log.info("sequential offload: streaming %d blocks of %s (%d resident)",
                             len(self.streamers[-1].blocks), type(m).__name__, len(self.streamers[-1].resident))
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
        fixed = self.hooked + self.resident
        moved = [m for m in modules if not any(m is h for h in fixed)]
        for m in moved:
            self._move(m, self.device)
        try:
            yield
        finally:
            for m in moved:
                self._move(m, self.offload_device)
            if moved and self.device.type == "cuda":
                torch.cuda.empty_cache()
