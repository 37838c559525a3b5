"""Optional CUDA-graph replay of a Pyramid DiT forward, one graph per (unit, stage) layout.

At 384p an eager DiT forward is bound by the host (kernel launches), not the GPU: on one H100 a
flux forward at unit 0 takes 40 ms eager and 6.6 ms replayed from a CUDA graph. The sampler calls the
DiT 10-20 times per (unit, stage) with identical shapes, so capturing once per layout and replaying
pays off. The forward has no host syncs, and a replay gives the eager result bit for bit.

Use only when the whole DiT lives on one CUDA device (no CPU offload hooks) and runs without grad.
Anything else (CPU tensors, grad enabled) runs eagerly.
"""

from __future__ import annotations

import logging
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from generation.models.dit_base import PyramidDiTBase

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Captured:
    graph: torch.cuda.CUDAGraph
    clips: list[torch.Tensor]
    text: torch.Tensor
    pooled: torch.Tensor
    timestep: torch.Tensor
    out: torch.Tensor
    plan: Any  # the DiT forward plan the graph reads (rope tables, masks): kept alive with the graph
    # What each static clip last received: (source, its version counter). History clips are the same
    # tensors at every step of a (unit, stage), so they are copied once, not at every replay.
    last: list[tuple[weakref.ref[torch.Tensor], int] | None]
    mask: torch.Tensor | None = None  # static text mask, when the graph reads it (DiT `text_bucket` mode)


def _copy_if_changed(cap: _Captured, clips: list[torch.Tensor]) -> int:
    copied = 0
    for i, (dst, src) in enumerate(zip(cap.clips, clips, strict=True)):
        seen = cap.last[i]
        if seen is not None and seen[0]() is src and src._version == seen[1]:
            continue
        dst.copy_(src)
        cap.last[i] = (weakref.ref(src), src._version)
        copied += 1
    return copied


class GraphedDiT(nn.Module):
    """Same call contract as the wrapped DiT (`PyramidDiT`); replays a CUDA graph per input layout."""

    def __init__(self, dit: PyramidDiTBase, *, max_graphs: int = 141) -> None:
        """max_graphs: graphs kept (least recently used dropped). The default holds every (unit, stage) of a
        384p and a 768p video (3 × (16 + 31)); each costs its static clips and output, a few MB at 768p. The
        static text, pooled text, timestep and mask are one buffer per shape, shared by every graph (each
        replay copies its inputs in first, and replays run one after another)."""
        super().__init__()
        self.dit = dit
        self.model_name = dit.model_name
        self.config = dit.config
        self.max_graphs = max_graphs
        self._graphs: OrderedDict[Hashable, _Captured] = OrderedDict()
        self._shared: dict[Hashable, torch.Tensor] = {}
        self._pool: Any = None
        self._warm = False
        self._warm_stream: torch.cuda.Stream | None = None
        self.captures = 0

    @property
    def dtype(self) -> torch.dtype:
        return self.dit.dtype

    @property
    def device(self) -> torch.device:
        return self.dit.device

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def clear(self) -> None:
        """Drop every captured graph and their memory pool (the next forward of a layout captures again)."""
        self._graphs.clear()
        self._shared.clear()
        self._pool = None

    def _static(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """The static buffer every graph reads ``name`` from (one per shape, dtype and device), holding
        ``value``."""
        key = (name, tuple(value.shape), value.dtype, value.device)
        buf = self._shared.get(key)
        if buf is None:
            buf = self._shared[key] = value.clone()
        else:
            buf.copy_(value)
        return buf

    def forward(
        self,
        clips: list[torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor,
        pooled_projections: torch.Tensor,
        timestep: torch.Tensor,
    ) -> torch.Tensor:
        args = (clips, encoder_hidden_states, encoder_attention_mask, pooled_projections, timestep)
        if (
            torch.is_grad_enabled()
            or not clips[-1].is_cuda
            or not isinstance(timestep, torch.Tensor)
            or timestep.device != clips[-1].device
        ):
            return self.dit(*args)
        key = self.key(*args)
        cap = self._graphs.get(key)
        if cap is None:
            cap = self._capture(key, *args)
        else:
            self._graphs.move_to_end(key)
        _copy_if_changed(cap, clips)
        if cap.mask is not None:
            cap.mask.copy_(encoder_attention_mask)
        cap.text.copy_(encoder_hidden_states)
        cap.pooled.copy_(pooled_projections)
        cap.timestep.copy_(timestep)
        cap.graph.replay()
        return cap.out.clone()

    def key(self, *args: Any) -> Hashable:
        """What a captured graph for these forward arguments is specific to: shapes, dtypes, the text mask
        (or, with the DiT's `text_bucket`, only its bucket), the device and the attention settings."""
        clips, text, mask, pooled, timestep = args
        _, text_key = self.dit.text_key(mask)
        return (
            tuple((tuple(c.shape), c.dtype) for c in clips), tuple(text.shape), text.dtype,
            tuple(pooled.shape), pooled.dtype, tuple(timestep.shape), timestep.dtype,
            text_key, clips[-1].device, self.dit.attention_backend, self.dit.merge_tokens, self.dit.text_bucket,
        )  # fmt: skip

    def _capture(
        self,
        key: Hashable,
        clips: list[torch.Tensor],
        text: torch.Tensor,
        mask: torch.Tensor,
        pooled: torch.Tensor,
        timestep: torch.Tensor,
    ) -> _Captured:
        s_clips = [c.clone() for c in clips]
        s_text, s_pooled, s_t = self._static("text", text), self._static("pooled", pooled), self._static("t", timestep)
        s_mask = None
        if self.dit.text_bucket:  # the graph reads the mask on the device: a static copy, refreshed per call
            s_mask = self._static("mask", mask)
            self.dit.text_key(s_mask)  # its host copy is read now, outside the capture (a device sync)
            mask = s_mask
        plan = self.dit.forward_plan(s_clips, mask)  # host-side work and H2D copies stay outside capture
        if self.dit.attention_backend == "dense":
            plan.attention.dense_mask()
        # The SDPA kernels are `attend`'s (SAFE_SDPA: no cuDNN, which crashed on replay). Library handles /
        # workspaces are created by one eager run first. Compiled blocks get one per
        # layout: a first launch may compile or autotune a kernel, which cannot happen under capture.
        if not self._warm or getattr(self.dit, "compiled", False):
            if self._warm_stream is None:  # one stream: the allocator caches memory per stream
                self._warm_stream = torch.cuda.Stream()
            stream = self._warm_stream
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self.dit(s_clips, s_text, mask, s_pooled, s_t)
            torch.cuda.current_stream().wait_stream(stream)
            self._warm = True
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            out = self.dit(s_clips, s_text, mask, s_pooled, s_t)
        if self._pool is None:
            self._pool = graph.pool()
        cap = _Captured(graph, s_clips, s_text, s_pooled, s_t, out, plan, [None] * len(s_clips), s_mask)
        self._graphs[key] = cap
        while len(self._graphs) > self.max_graphs:
            self._graphs.popitem(last=False)
        self.captures += 1
        log.debug("captured DiT CUDA graph #%d for clips %s", self.captures, [tuple(c.shape) for c in clips])
        return cap
