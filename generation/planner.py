"""Memory planner: the fastest placement of the models that fits the GPU's memory (or a configured cap).

Candidates, fastest first (SPEC §8 lists the reference's equivalents):

1. ``gpu``: everything resident, streamed VAE decode overlapped with sampling.
2. ``text_offload``: DiT + VAE resident; the text encoders come in only to encode and leave again, so the
   T5 (≈9.5 GB in bf16) is not resident while the DiT samples and the VAE decodes.
3. ``model_offload``: one component on the GPU at a time (text → DiT → VAE); decode after sampling.
4. ``sequential_offload``: the DiT keeps as many blocks resident as fit and streams the rest from pinned
   host memory at every forward; text encoders are streamed block by block.

The plan is a pure function of byte counts, so it is tested on the CPU. Model bytes come from the loaded
modules; working sets (activations of one DiT forward at the largest layout, the VAE decoder's working set)
come from `working_set`, which is based on H200 measurements (benchmarks/RESULTS.md) with a margin. The
generator falls back to the next candidate if a run still runs out of memory (`fallback`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from generation.memory import Placement, streamable_blocks

log = logging.getLogger(__name__)

GiB = 2**30
RESERVE_BYTES = int(0.5 * GiB)  # CUDA context, cuBLAS/cuDNN workspaces, fragmentation

# Decoder working set (bytes beyond the VAE weights) of the temporally chunked decode (one latent frame at
# a time, as the streaming decoder runs it), per variant and tile size (None = untiled).
# 384p, 256 px tiles: measured on an H200 as peak − weights of the all-on-GPU streamed run (9.27 − 4.30
# GiB, so it also holds the DiT's working set: an upper bound). Untiled and 768p: the H100 measurements
# of the same decode modes in generation/models/vae/bench.py (peak − 0.62 GiB of weights).
DECODE_WORKING_SET = {"384p": int(5.0 * GiB), "768p": int(16.4 * GiB)}
DECODE_WORKING_SET_UNTILED = {"384p": int(7.8 * GiB), "768p": int(31.3 * GiB)}
# The decode after sampling (model and sequential offload) runs tile by tile, one tile's causal caches alive
# at a time (`CausalVideoVAE.decode`). Its peak of live tensors, counted on the meta device by
# benchmarks/live_memory.py for a 5 s (384p) / 10 s (768p) video, decoded video included, times 1.35: the
# ratio of the GPU peaks above to the same count of the streamed decode (1.13-1.32), rounded up.
LIVE_TO_CUDA = 1.35
DECODE_AFTER_LIVE_GIB = {("384p", 256): 1.69, ("384p", 128): 0.684, ("768p", 256): 3.903, ("768p", 128): 3.1}
# CUDA graphs keep their memory pool (the activations of every captured forward) while the VAE decodes after
# sampling, so a resident DiT with graphs holds it beside the decode: H200, miniflux 384p, 8 GiB cap: 2.15 GiB
# in private pools against a `sampling` estimate of 1.76 GiB (the run ran out of memory in the decode when
# the planner did not count it). The pool is taken as this multiple of the estimate.
GRAPH_POOL_PER_SAMPLING = 1.25
# DiT working set per token of the largest forward (CFG batch 2, bf16): activations of one block with
# its MLP, attention outputs, the residual stream and the final projection, with a 2x margin.
DIT_BYTES_PER_TOKEN = {"pyramid_flux": 160 * 1920, "pyramid_mmdit": 160 * 1536}


def _bytes(module: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


@dataclass(frozen=True)
class Footprint:
    """Bytes of each component as loaded (in the run dtype)."""

    dit: int
    dit_blocks: tuple[int, ...]  # bytes of each streamable DiT block, in order
    text: int
    text_largest_block: int  # the largest block any text model streams (sequential offload)
    vae: int

    @classmethod
    def of(cls, dit: nn.Module, text_models: list[nn.Module], vae: nn.Module) -> Footprint:
        blocks = tuple(_bytes(b) for b in streamable_blocks(dit))
        text_blocks = [_bytes(b) for m in text_models for b in streamable_blocks(m)]
        return cls(dit=_bytes(dit), dit_blocks=blocks, text=sum(_bytes(m) for m in text_models),
                   text_largest_block=max(text_blocks, default=0), vae=_bytes(vae))  # fmt: skip

    @property
    def dit_rest(self) -> int:
        """DiT bytes outside the streamable blocks (embeddings, norms, projections): always resident."""
        return self.dit - sum(self.dit_blocks)


@dataclass(frozen=True)
class WorkingSet:
    sampling: int  # one DiT forward at the largest layout
    decode: int  # the VAE decoder with 256 px tiles, streamed (every tile's caches alive)
    decode_untiled: int = 0  # the VAE decoder without tiles (faster: no overlap, no seams); 0 = unknown
    decode_after: tuple[tuple[int, int], ...] = ()  # (tile px, bytes): the tile-by-tile decode after sampling

    def untiled(self) -> WorkingSet | None:
        """The same with the untiled decode, when its size is known."""
        if not self.decode_untiled:
            return None
        return WorkingSet(sampling=self.sampling, decode=self.decode_untiled, decode_untiled=self.decode_untiled)

    def after(self, tile: int) -> int:
        """Working set of the tile-by-tile decode after sampling (the streamed figure when not measured)."""
        return dict(self.decode_after).get(tile) or (self.decode if tile >= 256 else self.decode // 4)


# Tokens of the largest DiT forward (last unit, last stage, text included) as a line through the sequence
# lengths of SPEC §11 (384p unit 15: 3,068; 768p unit 15: 11,888; 768p unit 30: 15,488).
_TOKENS_LINE = {"384p": (2168, 60), "768p": (8288, 240)}


def largest_tokens(variant: str, temp: int) -> int:
    base, per_unit = _TOKENS_LINE.get(variant, _TOKENS_LINE["768p"])
    return base + per_unit * max(0, temp - 1)


def working_set(model_name: str, variant: str, temp: int) -> WorkingSet:
    per_token = DIT_BYTES_PER_TOKEN.get(model_name, DIT_BYTES_PER_TOKEN["pyramid_flux"])
    key = variant if variant in DECODE_WORKING_SET else "768p"
    after = tuple((tile, int(DECODE_AFTER_LIVE_GIB[(key, tile)] * LIVE_TO_CUDA * GiB)) for tile in (256, 128))
    return WorkingSet(sampling=largest_tokens(variant, temp) * per_token * 2, decode=DECODE_WORKING_SET[key],
                      decode_untiled=DECODE_WORKING_SET_UNTILED[key], decode_after=after)  # fmt: skip


@dataclass(frozen=True)
class PlacementPlan:
    placement: Placement
    resident_blocks: int = 0  # sequential offload: DiT blocks that stay on the GPU
    stream_decode: bool = True  # decode units while later ones sample (only when the VAE stays resident)
    decode_tile: int | None = 256  # VAE decode tile (px); None: untiled (fits); 128: 256 px does not fit
    budget: int = 0
    need: int = 0  # estimated peak of this plan
    reason: str = ""
    fits: bool = True
    rejected: tuple[str, ...] = field(default_factory=tuple)  # why faster candidates were not chosen

    def describe(self) -> str:
        extra = f", {self.resident_blocks} DiT blocks resident" if self.placement is Placement.SEQUENTIAL_OFFLOAD else ""
        extra += ", untiled decode" if self.decode_tile is None else f", {self.decode_tile} px decode tiles"
        return (f"{self.placement.value}{extra} (need ≈{self.need / GiB:.1f} GiB of {self.budget / GiB:.1f} GiB"
                f"{'' if self.fits else ', DOES NOT FIT'}): {self.reason}")


ORDER = (Placement.GPU, Placement.TEXT_OFFLOAD, Placement.MODEL_OFFLOAD, Placement.SEQUENTIAL_OFFLOAD)


def plan_placement(fp: Footprint, ws: WorkingSet, budget: int, *, start: Placement = Placement.GPU) -> PlacementPlan:
    """The first candidate (from `start` on, in ORDER) whose estimated peak fits in `budget` bytes.

    Each of the first three candidates is tried with the untiled decode first (faster), then 256 px tiles.
    Between ``text_offload`` and ``model_offload`` come the two resident ones once more with the decode
    after sampling (not streamed), tile by tile: the decode's working set no longer sits beside the
    sampler's, and the DiT stays resident with its graphs (model offload captures them for every job).
    """
    rejected: list[str] = []
    untiled = ws.untiled()
    first = ORDER.index(start)
    resident = [c for c in (Placement.GPU, Placement.TEXT_OFFLOAD) if ORDER.index(c) >= first]
    for candidate in ORDER[first:]:
        if candidate is Placement.MODEL_OFFLOAD:
            pool = int(GRAPH_POOL_PER_SAMPLING * ws.sampling)  # the graphs' pool stays during the decode
            for late in resident:
                text = fp.text if late is Placement.GPU else 0
                for tile in (256, 128):
                    need = max(fp.dit + fp.vae + fp.text, fp.dit + fp.vae + text + pool + ws.after(tile))
                    if need <= budget:
                        return PlacementPlan(late, stream_decode=False, decode_tile=tile, budget=budget, need=need,
                                             reason="resident; decoded after sampling, tile by tile",
                                             rejected=tuple(rejected))  # fmt: skip
                rejected.append(f"{late.value} with the decode after sampling: needs ≈{need / GiB:.1f} GiB")
        if candidate is Placement.SEQUENTIAL_OFFLOAD:
            return _sequential(fp, ws, budget, rejected)
        need = 0
        for tile, w in ((None, untiled), (256, ws)):
            if w is None:
                continue
            need, reason, stream = _need(candidate, fp, w, tile)
            if need <= budget:
                return PlacementPlan(candidate, stream_decode=stream, decode_tile=tile, budget=budget, need=need,
                                     reason=reason, rejected=tuple(rejected))  # fmt: skip
        rejected.append(f"{candidate.value}: needs ≈{need / GiB:.1f} GiB")
    raise AssertionError("unreachable: sequential offload always returns a plan")


def _need(candidate: Placement, fp: Footprint, ws: WorkingSet, tile: int | None) -> tuple[int, str, bool]:
    """(estimated peak, reason, streamed decode) of one of the resident / model-offload candidates."""
    if candidate is Placement.GPU:
        return fp.text + fp.dit + fp.vae + ws.sampling + ws.decode, "everything resident", True
    if candidate is Placement.TEXT_OFFLOAD:
        need = max(fp.dit + fp.vae + fp.text, fp.dit + fp.vae + ws.sampling + ws.decode)
        return need, "text encoders on the GPU only while encoding", True
    # the decode after sampling runs tile by tile when tiled (untiled: the streamed figure, one tile)
    decode = ws.decode if tile is None else ws.after(tile)
    need = max(fp.text, fp.dit + ws.sampling, fp.vae + decode)
    return need, "one component on the GPU at a time", False


def _blocks_fitting(blocks: tuple[int, ...], room: int) -> int:
    keep = 0
    for b in blocks:
        if room - b < 0:
            break
        room -= b
        keep += 1
    return keep


def _sequential(fp: Footprint, ws: WorkingSet, budget: int, rejected: list[str]) -> PlacementPlan:
    """As many DiT blocks resident as fit beside the sampling working set *and* beside the decode that
    follows it (the resident blocks stay on the GPU while the VAE decodes). 128 px tiles are chosen when
    they let more blocks stay: a resident block saves its upload at every one of the video's DiT calls."""
    fixed = fp.dit_rest + ws.sampling + 2 * max(fp.dit_blocks, default=0)  # 2: one in use, one arriving
    keep_sampling = _blocks_fitting(fp.dit_blocks, budget - fixed)
    options = []
    for tile in (256, 128):
        keep = min(keep_sampling, _blocks_fitting(fp.dit_blocks, budget - fp.dit_rest - fp.vae - ws.after(tile)))
        options.append((keep, tile))
    keep, tile = max(options, key=lambda o: (o[0], o[1]))  # most blocks resident, then the larger tile
    resident = fp.dit_rest + sum(fp.dit_blocks[:keep])
    need = max(fixed + sum(fp.dit_blocks[:keep]), resident + fp.vae + ws.after(tile),
               fp.text_largest_block + int(0.5 * GiB))  # fmt: skip
    return PlacementPlan(Placement.SEQUENTIAL_OFFLOAD, resident_blocks=keep, stream_decode=False, decode_tile=tile,
                         budget=budget, need=need,
                         reason=f"streams {len(fp.dit_blocks) - keep} of {len(fp.dit_blocks)} DiT blocks "
                                f"from pinned host memory at every step",
                         fits=need <= budget, rejected=tuple(rejected))  # fmt: skip


def fallback(plan: PlacementPlan) -> Placement | None:
    """The next slower candidate after an out-of-memory error (None: nothing slower is left)."""
    i = ORDER.index(plan.placement)
    return ORDER[i + 1] if i + 1 < len(ORDER) else None


def gpu_budget(device: torch.device, cap_gib: float | None) -> int:
    """Bytes the planner may use on `device`: the configured cap, else the free memory, minus a reserve."""
    if cap_gib is not None:
        return int(cap_gib * GiB) - RESERVE_BYTES
    if device.type != "cuda":
        return 1 << 62  # no limit worth planning for on the CPU
    free, _total = torch.cuda.mem_get_info(device)
    return int(free) - RESERVE_BYTES
