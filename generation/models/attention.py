"""Padding-isolated, temporal-causal attention of the Pyramid Flow DiTs (SPEC 4.4), two exact backends.

Rule, for query i and key j of one sample: ``allowed(i, j) = (pad_i == pad_j) and (τ_i >= τ_j)``.

Sequence layout used by every attention call of one forward (the model arranges it once):
``[text pads of row b][valid text of row b][image tokens sorted by τ]`` — the text of each row is
*left*-padded (the model permutes the text tokens once per forward; text tokens all sit at RoPE position
0 and the rule is permutation-invariant, so this changes nothing but the order of the discarded text
outputs). With that layout every query of group τ sees a *contiguous* key range:

* pad queries of row b            -> keys ``[0, p_b)``
* valid text + frame-0 image      -> keys ``[p_b, end_0)``
* image queries of frame τ >= 1   -> keys ``[p_b, end_τ)``

Backends:

* ``"dense"``: the reference's behaviour, one SDPA call with a boolean ``[B, 1, L, L]`` mask.
* ``"prefix"``: unmasked SDPA calls per temporal group over those contiguous ranges (one call for the
  whole batch when all rows have the same text length, else one per row). Runs of small groups are
  merged into one call with a small block mask (still exact) to limit launches.

Both are exact; the plan (ranges, masks) is built once per (clip shapes, text mask) and reused.

On CUDA the prefix rule runs as one varlen flash call per attention instead (`attend_varlen`): every (row,
temporal group) is a sequence of the packed layout with its own key window, so nothing is masked, however
small the frames and whatever the text pads. It is checked against the per-group calls on the first eager call
with two frames or more on each device, and the per-group calls stay where it disagrees or cannot run.

With a key mask on the text (the DiT's ``text_bucket`` mode, where pads stay in the sequence so that one
CUDA graph serves a whole bucket of prompt lengths), the prefix backend attends the text keys apart, in one
masked call for all queries, and each group's image keys in unmasked (flash) calls; the two parts are
merged exactly by their log-sum-exp. That split is checked against the masked calls on its first use.

Measured on one H100 (bf16, full-size random weights, CFG batch 2, text lengths 20/77, CUDA-graph
replay of the whole DiT forward, ms): flux 768p u15 s2 (L=11,888) dense 395.7 / prefix 247-252;
u30 (L=15,488) 605.1 / 365.0; mmdit 768p u15 s2 315.5 / 204.7; 384p u15 s2 (L=3,068) flux
57.2 / 52.9, mmdit 47.1 / 45.2. bf16 prefix and bf16 dense are equally far from an fp32 dense forward
(rel-L2 1.3e-2 to 1.5e-2 on random weights). Eager forwards at 384p are host-bound (flux u0 s0: 40 ms
eager vs 6.6 ms replayed); the forward has no host syncs, so CUDA-graph capture per (unit, stage) works
(replay output equal to eager, bitwise).
"""

from __future__ import annotations

import functools
import logging
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from generation.models.norm_rope import norm_rope
from generation.models.positions import apply_rope

log = logging.getLogger(__name__)

Backend = Literal["prefix", "dense"]
# The SDPA kernels a CUDA forward may use, eager or captured into a CUDA graph, so that both pick the same
# kernel and a replayed graph gives the eager result bit for bit. cuDNN attention is left out: on an H200
# with PyTorch 2.11 a graph holding it segfaulted on replay once later graphs had been captured (measured;
# see benchmarks/RESULTS.md). Flash and memory-efficient kernels are plain launches and replay safely.
SAFE_SDPA = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
DEFAULT_MERGE_TOKENS = 256  # frames are merged into one masked call while their queries fit in this (H100 sweep)


@dataclass(frozen=True, slots=True)
class _Call:
    rows: slice  # batch rows
    q0: int  # query token range [q0, q1) in sequence coordinates
    q1: int
    k0: int  # key token range [k0, k1)
    k1: int
    mask: torch.Tensor | None  # bool [rows, 1, q1-q0, k1-k0] (True = attend) or None


@dataclass(eq=False)
class AttentionPlan:
    """Everything attention needs for one token layout; build with `build_attention_plan`."""

    batch: int
    text_len: int
    pad_counts: tuple[int, ...]  # per row: the first pad_counts[b] text tokens are padding
    frame_tokens: tuple[int, ...]
    is_pad: torch.Tensor  # bool [B, L]
    tau: torch.Tensor  # int64 [L]
    calls_all: tuple[_Call, ...]
    calls_image: tuple[_Call, ...]
    _dense: torch.Tensor | None = field(default=None, repr=False)
    _varlen: dict[bool, VarlenSegments] = field(default_factory=dict, repr=False)  # by image_only

    @property
    def seq_len(self) -> int:
        return self.text_len + sum(self.frame_tokens)

    def allowed(self, q0: int, q1: int, k0: int, k1: int) -> torch.Tensor:
        """The rule on a window: bool [B, 1, q1-q0, k1-k0]."""
        pad = self.is_pad
        same_pad = pad[:, q0:q1, None] == pad[:, None, k0:k1]
        causal = self.tau[q0:q1, None] >= self.tau[None, k0:k1]
        return (same_pad & causal[None]).unsqueeze(1)

    def dense_mask(self) -> torch.Tensor:
        if self._dense is None:
            self._dense = self.allowed(0, self.seq_len, 0, self.seq_len)
        return self._dense


def _segments(frame_tokens: Sequence[int], merge_tokens: int) -> list[tuple[int, int]]:
    """Greedy runs [a, m] of consecutive frames whose total query count stays <= merge_tokens."""
    segs: list[tuple[int, int]] = []
    a = 0
    n = len(frame_tokens)
    while a < n:
        m, total = a, frame_tokens[a]
        while m + 1 < n and total + frame_tokens[m + 1] <= merge_tokens:
            m += 1
            total += frame_tokens[m]
        segs.append((a, m))
        a = m + 1
    return segs


def build_attention_plan(
    pad_counts: Sequence[int],
    text_len: int,
    frame_tokens: Sequence[int],
    device: torch.device | str,
    *,
    merge_tokens: int = DEFAULT_MERGE_TOKENS,
) -> AttentionPlan:
    """Plan for a batch whose row b has ``pad_counts[b]`` leading text pads (left-padded layout)."""
    pads = tuple(int(p) for p in pad_counts)
    frames = tuple(int(n) for n in frame_tokens)
    if any(p < 0 or p > text_len for p in pads):
        raise ValueError(f"pad counts {pads} outside [0, {text_len}]")
    if not frames or any(n <= 0 for n in frames):
        raise ValueError(f"bad frame token counts {frames}")
    batch, lt = len(pads), text_len
    seq = lt + sum(frames)
    ends: list[int] = []
    acc = lt
    for n in frames:
        acc += n
        ends.append(acc)
    starts = [e - n for e, n in zip(ends, frames, strict=True)]

    tau = torch.cat(
        [
            torch.zeros(lt, dtype=torch.int64),
            torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(frames, dtype=torch.int64)),
        ]
    )
    is_pad = torch.arange(seq)[None, :] < torch.tensor(pads, dtype=torch.int64)[:, None]
    plan = AttentionPlan(batch, lt, pads, frames, is_pad.to(device), tau.to(device), (), ())

    uniform = len(set(pads)) == 1
    row_groups: list[tuple[slice, int]] = (
        [(slice(None), pads[0])] if uniform else [(slice(b, b + 1), pads[b]) for b in range(batch)]
    )
    k_min = min(pads)

    def calls_for(q_lo: int) -> tuple[_Call, ...]:
        calls: list[_Call] = []
        for a, m in _segments(frames, merge_tokens):
            k1 = ends[m]
            q0 = max(0 if a == 0 else starts[a], q_lo)
            if a == m:  # one temporal group: unmasked contiguous ranges
                for rows, p in row_groups:
                    if a == 0 and q_lo == 0 and p > 0:
                        calls.append(_Call(rows, 0, p, 0, p, None))  # pads see only pads
                    calls.append(_Call(rows, max(q0, p), k1, p, k1, None))
            else:  # merged run of small groups: one call with the rule as a block mask
                k0 = 0 if (a == 0 and q_lo == 0) else k_min
                calls.append(_Call(slice(None), q0, k1, k0, k1, plan.allowed(q0, k1, k0, k1)))
        return tuple(c for c in calls if c.q1 > c.q0)

    plan.calls_all = calls_for(0)
    plan.calls_image = calls_for(lt)
    if torch.device(device).type == "cuda":  # the varlen call's tensors, made now (never under capture)
        plan._varlen = {mode: build_varlen_segments(plan, mode, device) for mode in (False, True)}
    return plan


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttentionPlan,
    backend: Backend = "prefix",
    *,
    image_only: bool = False,
    key_valid: torch.Tensor | None = None,
    varlen: bool = False,
) -> torch.Tensor:
    """Attention under the Pyramid Flow rule.

    q: [B, H, Lq, D] where Lq = L (all queries) or the image part only (``image_only``); k, v: [B, H, L, D].
    key_valid: bool [B, L], False at text pads the plan does not cut out (its pad counts are then zero):
    every query skips those keys. Pad queries then see the valid keys, not the pads; their outputs are
    never read (no valid token attends to a pad), so every other output follows the rule exactly.
    varlen: the prefix rule as one varlen flash call (`attend_varlen`) where it runs and was checked.
    Returns [B, H, Lq, D].
    """
    if q.is_cuda:
        with sdpa_kernel(SAFE_SDPA):
            if varlen and backend == "prefix" and varlen_usable(q):
                return _attend_varlen_checked(q, k, v, plan, image_only, key_valid)
            return _attend(q, k, v, plan, backend, image_only, key_valid)
    return _attend(q, k, v, plan, backend, image_only, key_valid)


def _with_keys(mask: torch.Tensor | None, key_valid: torch.Tensor | None, rows: slice, k0: int, k1: int,
               text_len: int) -> torch.Tensor | None:  # fmt: skip
    if key_valid is None or k0 >= text_len:  # no text keys in the range: nothing to mask
        return mask
    keys = key_valid[rows, None, None, k0:k1]
    return keys if mask is None else mask & keys


def _attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttentionPlan,
    backend: Backend,
    image_only: bool,
    key_valid: torch.Tensor | None = None,
) -> torch.Tensor:
    lt = plan.text_len
    if backend == "dense":
        mask = _with_keys(plan.dense_mask(), key_valid, slice(None), 0, plan.seq_len, lt)
        assert mask is not None
        if image_only:
            mask = mask[:, :, lt:]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    if backend != "prefix":
        raise ValueError(f"unknown attention backend {backend!r}")
    if key_valid is not None:
        return _attend_key_masked(q, k, v, plan, image_only, key_valid)
    return _attend_calls(q, k, v, plan, image_only, key_valid)


def _attend_calls(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttentionPlan,
    image_only: bool,
    key_valid: torch.Tensor | None,
) -> torch.Tensor:
    """The plan's calls as they are (a key mask, if given, added to every call's mask)."""
    lt = plan.text_len
    calls = plan.calls_image if image_only else plan.calls_all
    base = lt if image_only else 0
    if len(calls) == 1:
        c = calls[0]
        if c.rows == slice(None) and c.q0 - base == 0 and c.q1 - base == q.shape[2]:
            return F.scaled_dot_product_attention(
                q, k[:, :, c.k0 : c.k1], v[:, :, c.k0 : c.k1],
                attn_mask=_with_keys(c.mask, key_valid, c.rows, c.k0, c.k1, lt),
            )  # fmt: skip
    out = torch.empty_like(q)
    for c in calls:
        qs, qe = c.q0 - base, c.q1 - base
        out[c.rows, :, qs:qe] = F.scaled_dot_product_attention(
            q[c.rows, :, qs:qe], k[c.rows, :, c.k0 : c.k1], v[c.rows, :, c.k0 : c.k1],
            attn_mask=_with_keys(c.mask, key_valid, c.rows, c.k0, c.k1, lt),
        )  # fmt: skip
    return out


def _flash_lse_ok(q: torch.Tensor) -> bool:
    return (
        q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] % 8 == 0
        and q.shape[-1] <= 256
        and _capability(q.device)[0] >= 8
    )


@functools.cache
def _capability(device: torch.device) -> tuple[int, int]:
    return torch.cuda.get_device_capability(device)


def sdpa_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and its log-sum-exp per query: ([B, H, Lq, D], float32 [B, H, Lq]).

    Unmasked on CUDA: the flash kernel where it runs (half precision, sm80+), else the memory-efficient one,
    which also takes an additive ``bias`` ([B, H, Lq, Lk], broadcast strides allowed). On the CPU, PyTorch's
    own flash implementation. The log-sum-exp lets two key ranges be attended apart and merged exactly
    (`merge_by_lse`)."""
    lq = q.shape[2]
    if q.is_cuda:
        if bias is None and _flash_lse_ok(q):
            out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
        else:
            out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, bias, True)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, attn_mask=bias)
    return out, lse[..., :lq]


def merge_by_lse(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor,
                 into: torch.Tensor) -> torch.Tensor:  # fmt: skip
    """Softmax attention over the union of two disjoint key sets, from each set's output and log-sum-exp:
    ``out_b + w * (out_a - out_b)`` with ``w = sigmoid(lse_a - lse_b)``, written into ``into``. The weight
    is rounded to the outputs' dtype (one fused pass; in bf16 an error of the output's own rounding).
    ``lse_a = +inf`` gives ``out_a`` exactly (a result that already covers both sets)."""
    w = torch.sigmoid(lse_a - lse_b).unsqueeze(-1).to(out_a.dtype)
    return torch.lerp(out_b, out_a, w, out=into)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 distance of ``a`` from ``b``, in float32."""
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))


# Additive score of a masked text key: exp() of it is 0 beside any real score, it is finite in fp16/bf16, and
# it stays finite when a kernel scales it (a row without valid text gets weight 0 in the merge, not NaN).
_MASKED_BIAS = -30000.0
# device -> whether the split (text apart, merged by log-sum-exp) agreed with the masked calls there
_SPLIT: dict[str, bool] = {}


def _attend_key_masked(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttentionPlan,
    image_only: bool,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """Text pads masked by key (`text_bucket`): the split of `_attend_text_split` (flash for the image keys),
    checked once per device against the plan's calls with the key mask in each (the memory-efficient
    kernel: slower, but nothing to merge). The check runs on the first, eager forward (the generator warms
    up before any CUDA graph capture); where the two disagree, the masked calls are used from then on."""
    device = str(q.device)
    ok = _SPLIT.get(device)
    if ok is None and q.is_cuda and torch.cuda.is_current_stream_capturing():
        ok = False  # undecided under capture (no host sync there): the masked calls, which need no check
    elif ok is None:
        split = _attend_text_split(q, k, v, plan, image_only, key_valid)
        ref = _attend_calls(q, k, v, plan, image_only, key_valid)
        err = rel_l2(split, ref)
        _SPLIT[device] = agree = bool(torch.isfinite(split).all()) and err < 2e-2
        log.info("text split attention on %s: rel err %.2e against masked calls -> %s", device, err,
                 "used" if agree else "masked calls instead")  # fmt: skip
        return split if agree else ref
    if ok:
        return _attend_text_split(q, k, v, plan, image_only, key_valid)
    return _attend_calls(q, k, v, plan, image_only, key_valid)


# device -> whether the fused masked kernel agreed with the float32 reference there (checked on first use)
_FUSED_TEXT: dict[str, bool] = {}


def _text_part(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of every query over the text keys (bool ``valid`` [B, L_t]), and its log-sum-exp.

    One masked kernel call (the memory-efficient kernel with an additive bias; on the CPU PyTorch's flash).
    Its first use on a device is checked against the same in float32 matmuls on the real inputs; that first
    call is eager (the generator warms up before any CUDA graph capture). Where the kernel refuses the bias
    or disagrees, every later call takes the float32 matmuls (about 14 ms per u15s2 call on an H200)."""
    device = str(q.device)
    ok = _FUSED_TEXT.get(device)
    if ok is False or (q.is_cuda and k.shape[2] % 16):  # the CUDA kernel wants 16-aligned bias rows
        return _text_part_fp32(q, k, v, valid)
    if ok is None and q.is_cuda and torch.cuda.is_current_stream_capturing():
        return _text_part_fp32(q, k, v, valid)  # no host sync under capture: decide on an eager call
    try:
        fused = _text_part_fused(q, k, v, valid)
    except RuntimeError as exc:
        log.warning("fused masked text attention unavailable on %s (%s): float32 matmuls instead", device, exc)
        _FUSED_TEXT[device] = False
        return _text_part_fp32(q, k, v, valid)
    if ok is None:
        ref = _text_part_fp32(q, k, v, valid)
        err = rel_l2(fused[0], ref[0])
        lse_err = float((fused[1] - ref[1]).abs().max())
        _FUSED_TEXT[device] = agree = err < 2e-2 and lse_err < 5e-2
        log.info("fused masked text attention on %s: rel err %.2e, lse err %.2e -> %s", device, err, lse_err,
                 "used" if agree else "float32 matmuls instead")  # fmt: skip
        if not agree:
            return ref
    return fused


def _text_part_fused(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    b, h, lq, _ = q.shape
    lt = k.shape[2]
    bias = torch.zeros(b, lt, device=q.device, dtype=q.dtype).masked_fill(~valid, _MASKED_BIAS)
    return sdpa_with_lse(q, k, v, bias[:, None, None, :].expand(b, h, lq, lt))


def _text_part_fp32(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    scores = scores + torch.zeros_like(valid, dtype=torch.float32).masked_fill(~valid, _MASKED_BIAS)[:, None, None, :]
    return torch.matmul(torch.softmax(scores, dim=-1), v.float()).to(q.dtype), torch.logsumexp(scores, dim=-1)


def _attend_text_split(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    plan: AttentionPlan,
    image_only: bool,
    key_valid: torch.Tensor,
) -> torch.Tensor:
    """The prefix backend with a key mask on the text (DiT `text_bucket` mode), keeping flash for images.

    A mask on a call's keys would move it to the memory-efficient kernel. Only text keys are ever masked,
    and every query sees the same text keys (its row's valid ones), so the text part is one masked call
    for all queries (at most a bucket of keys), each temporal group's image keys an unmasked call, both
    with their log-sum-exp, merged exactly (`merge_by_lse`). The plan's merged runs of small frames
    already carry a mask: they are attended whole, text included, as before."""
    lt = plan.text_len
    calls = plan.calls_image if image_only else plan.calls_all
    base = lt if image_only else 0
    b, h, lq, _ = q.shape
    out_text, lse_text = _text_part(q, k[:, :, :lt], v[:, :, :lt], key_valid[:, :lt])
    out_img = torch.empty_like(q)
    lse_img = torch.empty((b, h, lq), device=q.device, dtype=torch.float32)
    for c in calls:
        qs, qe = c.q0 - base, c.q1 - base
        if c.mask is None and c.k0 == 0 and c.k1 > lt:  # all the text, then image keys: split
            o, lse = sdpa_with_lse(q[c.rows, :, qs:qe], k[c.rows, :, lt : c.k1], v[c.rows, :, lt : c.k1])
            out_img[c.rows, :, qs:qe] = o
            lse_img[c.rows, :, qs:qe] = lse
        else:  # a masked run of merged frames (or any other range): the whole rule in one call, kept whole
            out_img[c.rows, :, qs:qe] = F.scaled_dot_product_attention(
                q[c.rows, :, qs:qe], k[c.rows, :, c.k0 : c.k1], v[c.rows, :, c.k0 : c.k1],
                attn_mask=_with_keys(c.mask, key_valid, c.rows, c.k0, c.k1, lt),
            )  # fmt: skip
            lse_img[c.rows, :, qs:qe] = float("inf")
    return merge_by_lse(out_img, lse_img, out_text, lse_text, into=torch.empty_like(q))


# ---------------------------------------------------------------------------------------------------
# The whole prefix rule in one varlen flash call


@dataclass(frozen=True, slots=True)
class VarlenSegments:
    """The rule of one plan as varlen "sequences", per batch row, in order:

    * the row's pad queries, keys = the pads (``[0, P)``, P the row's pad count; outputs never read),
    * the valid text and frame 0, keys ``[P, end_0)``,
    * each later frame τ, keys ``[P, end_τ)``.

    Query segments tile each row (so the packed queries are the row-major [B·L, H, D] view itself, no copy);
    key windows start at P and overlap, which the flash kernel allows through ``seqused_k``. With
    ``image_only`` the queries are the image tokens only (no pad or text sequences of queries). Every tensor
    here is made when the plan is built, outside any CUDA-graph capture; `varlen_offsets` only computes."""

    q_lo: torch.Tensor  # int32 [S] query start within the row (P where `from_pads_lo`); each ends where the next starts
    k_hi: torch.Tensor  # int32 [S] key end within the row (P where `is_pads`)
    is_pads: torch.Tensor  # bool [S]: the pad-query sequence (keys start at 0)
    from_pads_lo: torch.Tensor  # bool [S]: starts right after the pads (the text + frame 0 sequence)
    row_q: torch.Tensor  # int32 [B, 1]: each row's first query in the packed layout
    row_k: torch.Tensor  # int32 [B, 1]
    ends: torch.Tensor  # int32 [2]: packed query and key counts (the last offsets)
    pads: torch.Tensor  # int32 [B]: the plan's own pad counts (without a key mask)
    max_q: int
    max_k: int


def build_varlen_segments(plan: AttentionPlan, image_only: bool, device: torch.device | str) -> VarlenSegments:
    lt = plan.text_len
    ends, acc = [], lt
    for n in plan.frame_tokens:
        acc += n
        ends.append(acc)
    starts = [e - n for e, n in zip(ends, plan.frame_tokens, strict=True)]
    rows: list[tuple[int, int, bool, bool]] = []  # (q_lo, k_hi, is_pads, from_pads_lo)
    if image_only:
        rows += [(s - lt, e, False, False) for s, e in zip(starts, ends, strict=True)]
        max_q = max(plan.frame_tokens)
    else:
        rows.append((0, 0, True, False))
        rows.append((0, ends[0], False, True))
        rows += [(s, e, False, False) for s, e in zip(starts[1:], ends[1:], strict=True)]
        max_q = max(ends[0], max(plan.frame_tokens))
    cols = list(zip(*rows, strict=True))
    b, lk = plan.batch, plan.seq_len
    lq = lk - lt if image_only else lk
    i32 = {"dtype": torch.int32, "device": device}
    return VarlenSegments(
        torch.tensor(cols[0], **i32), torch.tensor(cols[1], **i32),  # type: ignore[arg-type]
        torch.tensor(cols[2], device=device), torch.tensor(cols[3], device=device),
        (torch.arange(b, **i32) * lq)[:, None], (torch.arange(b, **i32) * lk)[:, None],  # type: ignore[arg-type]
        torch.tensor([b * lq, b * lk], **i32), torch.tensor(plan.pad_counts, **i32),  # type: ignore[arg-type]
        max_q, lk,
    )  # fmt: skip


def varlen_segments(plan: AttentionPlan, image_only: bool, device: torch.device) -> VarlenSegments:
    seg = plan._varlen.get(image_only)
    if seg is None:  # plans are built with theirs; this serves plans made before (or by hand, in tests)
        seg = plan._varlen[image_only] = build_varlen_segments(plan, image_only, device)
    return seg


def varlen_offsets(seg: VarlenSegments, pads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cu_seqlens_q [N+1], cu_seqlens_k [N+1], seqused_k [N]) for rows with ``pads`` (int32 [B] on the device;
    device ops only, so a CUDA graph may capture it with data-dependent pad counts). Sequence i of the packed
    layout has queries ``[cu_q[i], cu_q[i+1])`` and keys ``[cu_k[i], cu_k[i] + seqused_k[i])``."""
    p = pads.to(torch.int32)[:, None]
    q_lo = torch.where(seg.from_pads_lo, p, seg.q_lo)
    k_lo = torch.where(seg.is_pads, torch.zeros_like(p), p)
    k_hi = torch.where(seg.is_pads, p, seg.k_hi)
    cu_q = torch.cat([(seg.row_q + q_lo).flatten(), seg.ends[:1]])
    cu_k = torch.cat([(seg.row_k + k_lo).flatten(), seg.ends[1:]])
    return cu_q, cu_k, (k_hi - k_lo).flatten()


def _row_pads(plan: AttentionPlan, key_valid: torch.Tensor | None, seg: VarlenSegments) -> torch.Tensor:
    if key_valid is None:
        return seg.pads
    return (plan.text_len - key_valid[:, : plan.text_len].sum(dim=1)).to(torch.int32)


def varlen_usable(q: torch.Tensor) -> bool:
    return _flash_lse_ok(q)


def attend_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan, image_only: bool,
                  key_valid: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    """The prefix rule (pads, text, frame-causal image keys) as one varlen flash call, exact like the
    per-group calls, for [B, H, L, D] views of [B, L, H, D] tensors. No mask anywhere: each (row, frame) is
    its own sequence with its own key window; the text pads of `text_bucket` only shift the windows' starts,
    which are computed on the device."""
    b, h, lq, d = q.shape
    seg = varlen_segments(plan, image_only, q.device)
    cu_q, cu_k, used = varlen_offsets(seg, _row_pads(plan, key_valid, seg))

    def packed(x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2).reshape(b * x.shape[2], h, d)  # a view for the projections' layout

    out = torch.ops.aten._flash_attention_forward(
        packed(q), packed(k), packed(v), cu_q, cu_k, seg.max_q, seg.max_k, 0.0, False, False, seqused_k=used
    )[0]
    return out.view(b, lq, h, d).transpose(1, 2)


# device -> whether the varlen call agreed with the per-group calls there (checked on first, eager use)
_VARLEN: dict[str, bool] = {}


def _attend_varlen_checked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: AttentionPlan,
                           image_only: bool, key_valid: torch.Tensor | None) -> torch.Tensor:  # fmt: skip
    device = str(q.device)
    ok = _VARLEN.get(device)
    if ok is None and (torch.cuda.is_current_stream_capturing() or len(plan.frame_tokens) < 2):
        # undecided: the per-group calls, which need no check. The check waits for an eager call with two
        # frames or more: only there do the key windows overlap, which is what `seqused_k` must get right
        ok = False
    elif ok is None:
        ref = _attend(q, k, v, plan, "prefix", image_only, key_valid)
        try:
            fast = attend_varlen(q, k, v, plan, image_only, key_valid)
            # the rows that are read: pad queries' outputs are discarded (and the two forms give them different keys)
            read = None if image_only else (key_valid if key_valid is not None else ~plan.is_pad)
            err = rel_l2(fast, ref) if read is None else rel_l2(fast.transpose(1, 2)[read], ref.transpose(1, 2)[read])
            agree = bool(torch.isfinite(fast).all()) and err < 2e-2
        except (RuntimeError, TypeError) as exc:  # an older torch without seqused_k, a kernel that refuses
            log.warning("varlen flash attention unavailable on %s (%s): per-group calls instead", device, exc)
            err, agree = float("nan"), False
        _VARLEN[device] = agree
        log.info("varlen flash attention on %s: rel err %.2e against the per-group calls -> %s", device, err,
                 "used" if agree else "per-group calls instead")  # fmt: skip
        return fast if agree else ref
    if ok:
        return attend_varlen(q, k, v, plan, image_only, key_valid)
    return _attend(q, k, v, plan, "prefix", image_only, key_valid)


# Under torch.compile the blocks are traced with symbolic sequence lengths, but the attention calls are
# driven by the plan's Python ints (ranges, masks per layout). Keeping `attend` out of the traced graph
# lets one compiled graph serve every layout; the projections, norms and RoPE around it are fused.
_attend_eager = torch.compiler.disable(attend)


# ---------------------------------------------------------------------------------------------------
# Glue: the processor installed on the diffusers attention modules, and the per-forward context


@dataclass(frozen=True, slots=True)
class AttnContext:
    """What every attention call of one forward needs (passed through the blocks' attention kwargs)."""

    plan: AttentionPlan
    rope: torch.Tensor | None  # float32 [L, D/2, 2] (cos, sin) rotation table, or None
    backend: Backend
    compiled: bool = False  # the blocks run under torch.compile: attention stays eager (a graph break)
    key_valid: torch.Tensor | None = None  # bool [B, L]: False at text pads (DiT `text_bucket` mode)
    norm_rope: bool = False  # q/k norms, the text/image join and RoPE in one kernel where it runs (`norm_rope`)
    varlen: bool = False  # the prefix rule as one varlen flash call where it runs (`attend_varlen`)


def _rms_weight_eps(norm: Any) -> tuple[torch.Tensor, float] | None:
    """(weight, eps) of a `torch.nn.RMSNorm` with a weight and an explicit eps, else None."""
    if isinstance(norm, torch.nn.RMSNorm) and norm.weight is not None and norm.eps is not None:
        return norm.weight, float(norm.eps)
    return None


def _fused_qk(
    attn: Any, q: torch.Tensor, k: torch.Tensor, text: tuple[torch.Tensor | None, torch.Tensor] | None,
    rope: torch.Tensor | None, lt: int, image_only: bool, added: tuple[str, str],
) -> tuple[torch.Tensor, torch.Tensor] | None:  # fmt: skip
    """q and k through `norm_rope` ([B, L, H, D] raw projections in, normalised, joined, rotated out), or
    None where the norms are not plain RMSNorms (the caller then runs the torch ops). The caller decided
    that the kernel runs on this device (`AttnContext.norm_rope`)."""
    nq, nk = _rms_weight_eps(attn.norm_q), _rms_weight_eps(attn.norm_k)
    if nq is None or nk is None:
        return None
    if text is None:
        return (norm_rope(None, None, q, nq[0], rope, eps=nq[1]), norm_rope(None, None, k, nk[0], rope, eps=nk[1]))
    tq, tk = text
    naq, nak = _rms_weight_eps(getattr(attn, added[0], None)), _rms_weight_eps(getattr(attn, added[1], None))
    if nak is None or nak[1] != nk[1] or (not image_only and (naq is None or naq[1] != nq[1])):
        return None
    k = norm_rope(tk, nak[0], k, nk[0], rope, eps=nk[1])
    if image_only:
        return norm_rope(None, None, q, nq[0], rope, table_offset=lt, eps=nq[1]), k
    assert naq is not None and tq is not None
    return norm_rope(tq, naq[0], q, nq[0], rope, eps=nq[1]), k


class PyramidAttnProcessor:
    """Attention processor for diffusers' `FluxAttention` / `Attention` modules, routed to `attend`.

    Joint (double-stream) modules get image states plus ``encoder_hidden_states`` (text) and return
    ``(image_out, text_out)``; single-stream modules get the joined ``[text; image]`` sequence and return
    the attention output without projection. q/k RMSNorm per head, then RoPE in fp32, then attention.
    A context-pre-only module (last MM-DiT block) computes image queries only and returns ``(out, None)``.
    """

    def __init__(self, added_q_norm: str = "norm_added_q", added_k_norm: str = "norm_added_k") -> None:
        self.added_q_norm = added_q_norm
        self.added_k_norm = added_k_norm

    def __call__(
        self,
        attn: Any,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_rotary_emb: Any = None,
        ctx: AttnContext | None = None,
        qkv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    ) -> Any:
        """``qkv``: the image-stream projections already computed by the caller (a FLUX single block whose
        fused input projection also yields its MLP input); otherwise they come from ``attn.fused_qkv``
        (`generation.models.fusion`) or from ``to_q`` / ``to_k`` / ``to_v``."""
        if ctx is None:
            raise RuntimeError("PyramidAttnProcessor needs the forward's AttnContext (call through the PyramidDiT)")
        if attention_mask is not None:
            raise ValueError("PyramidAttnProcessor builds its own mask; attention_mask must be None")
        b, n, _ = hidden_states.shape
        heads = attn.heads
        fused = getattr(attn, "fused_qkv", None)
        if qkv is not None:
            q, k, v = qkv
        elif fused is not None:
            q, k, v = fused.parts(hidden_states)
        else:
            q, k, v = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        # Everything stays in the projections' [B, L, H, D] layout: norms, RoPE and the text/image join
        # are row-wise, and attention takes [B, H, L, D] *views* of it (SDPA reads strided q/k/v and
        # writes its output in this layout), so no transposed copies are made on either side.
        d = q.shape[-1] // heads
        q, k, v = q.view(b, n, heads, d), k.view(b, n, heads, d), v.view(b, n, heads, d)
        image_only = False
        lt = 0
        text_qk: tuple[torch.Tensor | None, torch.Tensor] | None = None
        if encoder_hidden_states is not None:
            lt = encoder_hidden_states.shape[1]
            image_only = bool(getattr(attn, "context_pre_only", False))
            fused_text = getattr(attn, "fused_added_qkv", None)
            if fused_text is not None:
                text = fused_text.parts(encoder_hidden_states)
                tq_lin, tk_lin, tv_lin = (None, *text) if image_only else text
            else:
                tk_lin, tv_lin = attn.add_k_proj(encoder_hidden_states), attn.add_v_proj(encoder_hidden_states)
                tq_lin = None if image_only else attn.add_q_proj(encoder_hidden_states)
            text_qk = (None if tq_lin is None else tq_lin.view(b, lt, heads, d), tk_lin.view(b, lt, heads, d))
            v = torch.cat([tv_lin.view(b, lt, heads, d), v], dim=1)
        fused_qk = None
        if ctx.norm_rope:
            fused_qk = _fused_qk(attn, q, k, text_qk, ctx.rope, lt, image_only,
                                 (self.added_q_norm, self.added_k_norm))  # fmt: skip
        if fused_qk is not None:
            q, k = fused_qk
        else:
            q, k = attn.norm_q(q), attn.norm_k(k)
            if text_qk is not None:
                tq, tk = text_qk
                k = torch.cat([getattr(attn, self.added_k_norm)(tk), k], dim=1)
                if tq is not None:
                    q = torch.cat([getattr(attn, self.added_q_norm)(tq), q], dim=1)
            if ctx.rope is not None:
                table = ctx.rope.unsqueeze(1)  # [L, 1, D/2, 2]: one rotation per token, shared by the heads
                q = apply_rope(q, table[ctx.plan.text_len :] if image_only else table, real=ctx.compiled)
                k = apply_rope(k, table, real=ctx.compiled)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        o = (_attend_eager if ctx.compiled else attend)(
            q, k, v, ctx.plan, ctx.backend, image_only=image_only, key_valid=ctx.key_valid, varlen=ctx.varlen
        )
        o = o.transpose(1, 2).reshape(b, o.shape[2], heads * d).to(hidden_states.dtype)
        if encoder_hidden_states is None:
            return o
        if image_only:
            return attn.to_out[1](attn.to_out[0](o)), None
        txt, img = o[:, :lt], o[:, lt:]
        return attn.to_out[1](attn.to_out[0](img)), attn.to_add_out(txt)


# ---------------------------------------------------------------------------------------------------
# Text mask handling and the plan cache


class HostMaskReader:
    """Host copy of the text mask, read once per mask tensor object (no device sync on repeated steps).

    The sampler passes the same mask tensor at every step; a new tensor object (or an in-place edit,
    seen through the tensor version counter) is read again.
    """

    def __init__(self) -> None:
        self._ref: weakref.ref[torch.Tensor] | None = None
        self._version = -1
        self._value: tuple[torch.Tensor, bytes] | None = None

    def __call__(self, mask: torch.Tensor) -> tuple[torch.Tensor, bytes]:
        """(bool [B, L_t] CPU copy of ``mask != 0``, a hashable signature of it)."""
        if self._ref is not None and self._ref() is mask and mask._version == self._version:
            assert self._value is not None
            return self._value
        valid = (mask.detach() != 0).to("cpu")
        value = (valid, bytes(str(tuple(valid.shape)), "ascii") + valid.numpy().tobytes())
        self._ref, self._version, self._value = weakref.ref(mask), mask._version, value
        return value


def text_order(valid: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Per-row permutation putting pads first (stable), and the pad count of each row.

    valid: bool [B, L_t] on the CPU. Returns (int64 [B, L_t] gather index, pad counts).
    """
    order = torch.argsort(valid.to(torch.int8), dim=1, stable=True)
    pads = tuple(int(x) for x in (~valid).sum(dim=1).tolist())
    return order, pads


class PlanCache:
    """Small LRU cache for per-layout forward plans."""

    def __init__(self, max_entries: int = 8) -> None:
        self.max_entries = max_entries
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self.builds = 0  # number of cache misses (tests check that repeated steps do not rebuild)

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = build()
        self.builds += 1
        self._items[key] = value
        while len(self._items) > self.max_entries:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()
