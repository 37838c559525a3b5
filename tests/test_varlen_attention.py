"""The prefix rule as one varlen flash call (`attend_varlen`): its sequences and key windows.

The flash kernel itself runs on CUDA only; here its documented semantics (sequence i: queries
``[cu_q[i], cu_q[i+1])``, keys ``[cu_k[i], cu_k[i] + seqused_k[i])``) are carried out with plain SDPA on the
CPU, on the offsets our code computes, and compared with the dense reference rule. On a GPU the real call
is compared with the per-group calls on its first use (`_attend_varlen_checked`)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from generation.models.attention import (
    _row_pads,
    attend,
    build_attention_plan,
    rel_l2,
    varlen_offsets,
    varlen_segments,
)


def _kernel_semantics(q, k, v, cu_q, cu_k, used):  # type: ignore[no-untyped-def]
    """What the varlen flash kernel computes, on packed [T, H, D] tensors."""
    out = torch.zeros_like(q)
    for i in range(used.shape[0]):
        q0, q1, k0 = int(cu_q[i]), int(cu_q[i + 1]), int(cu_k[i])
        k1 = k0 + int(used[i])
        if q1 == q0:
            continue
        qs, ks, vs = (x.transpose(0, 1)[None] for x in (q[q0:q1], k[k0:k1], v[k0:k1]))
        out[q0:q1] = F.scaled_dot_product_attention(qs, ks, vs)[0].transpose(0, 1)
    return out


def _via_varlen(q, k, v, plan, image_only, key_valid):  # type: ignore[no-untyped-def]
    b, h, lq, d = q.shape
    seg = varlen_segments(plan, image_only, q.device)
    cu_q, cu_k, used = varlen_offsets(seg, _row_pads(plan, key_valid, seg))
    assert int(cu_q[-1]) == b * lq and bool((cu_q[1:] >= cu_q[:-1]).all())  # the query segments tile the rows
    assert int(used.max()) <= seg.max_k and int((cu_q[1:] - cu_q[:-1]).max()) <= seg.max_q

    def packed(x):  # type: ignore[no-untyped-def]
        return x.transpose(1, 2).reshape(b * x.shape[2], h, d)

    out = _kernel_semantics(packed(q), packed(k), packed(v), cu_q, cu_k, used)
    return out.view(b, lq, h, d).transpose(1, 2)


def _dense(q, k, v, plan, image_only, key_valid):  # type: ignore[no-untyped-def]
    return attend(q, k, v, plan, "dense", image_only=image_only, key_valid=key_valid)


@pytest.mark.parametrize("image_only", [False, True])
@pytest.mark.parametrize("pads", [(0, 0), (3, 0), (2, 5)])
def test_varlen_windows_follow_the_rule_with_pads_cut_per_row(image_only: bool, pads: tuple[int, int]) -> None:
    torch.manual_seed(0)
    lt, frames = 8, (12, 3, 3, 6, 6, 20)
    plan = build_attention_plan(pads, lt, frames, "cpu")
    b, h, d, seq = 2, 2, 16, lt + sum(frames)
    q = torch.randn(b, seq, h, d).transpose(1, 2)  # [B, H, L, D] views of the projections' layout
    k, v = (torch.randn(b, seq, h, d).transpose(1, 2) for _ in range(2))
    if image_only:
        q = q[:, :, lt:]
    got = _via_varlen(q, k, v, plan, image_only, None)
    ref = _dense(q, k, v, plan, image_only, None)
    valid = ~plan.is_pad[:, lt:] if image_only else ~plan.is_pad  # pad queries' outputs are never read
    for row in range(b):
        sel = valid[row]
        assert rel_l2(got[row][:, sel], ref[row][:, sel]) < 1e-5


@pytest.mark.parametrize("image_only", [False, True])
def test_varlen_windows_with_text_bucket_pads_from_the_device_mask(image_only: bool) -> None:
    torch.manual_seed(1)
    lt, frames = 16, (10, 4, 4, 9)
    plan = build_attention_plan((0, 0), lt, frames, "cpu")  # the bucket's plan: no pads cut, a key mask instead
    b, h, d, seq = 2, 2, 8, lt + sum(frames)
    key_valid = torch.ones(b, seq, dtype=torch.bool)
    key_valid[0, :5] = False  # row 0: 11 valid text tokens, pads first (the bucket's order)
    key_valid[1, :13] = False  # row 1: 3 valid
    q = torch.randn(b, seq, h, d).transpose(1, 2)
    k, v = (torch.randn(b, seq, h, d).transpose(1, 2) for _ in range(2))
    if image_only:
        q = q[:, :, lt:]
    got = _via_varlen(q, k, v, plan, image_only, key_valid)
    ref = _dense(q, k, v, plan, image_only, key_valid)
    for row in range(b):
        sel = key_valid[row, lt:] if image_only else key_valid[row]  # what a valid token can read
        assert rel_l2(got[row][:, sel], ref[row][:, sel]) < 1e-5


def test_segments_are_built_once_per_plan_and_mode() -> None:
    plan = build_attention_plan((1, 0), 4, (6, 6), "cpu")
    first = varlen_segments(plan, False, torch.device("cpu"))
    assert varlen_segments(plan, False, torch.device("cpu")) is first
    assert varlen_segments(plan, True, torch.device("cpu")) is not first
    assert first.max_q == 4 + 6 and first.max_k == 16 and first.q_lo.shape[0] == 1 + 2  # the pads, text + frame 0, frame 1


def test_the_varlen_path_is_taken_only_after_it_agreed_on_a_call_with_two_frames(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import generation.models.attention as att

    torch.manual_seed(2)
    monkeypatch.setattr(att, "_VARLEN", {})
    calls: list[str] = []

    def emulated(q, k, v, plan, image_only, key_valid):  # type: ignore[no-untyped-def]
        calls.append("varlen")
        return _via_varlen(q, k, v, plan, image_only, key_valid)

    monkeypatch.setattr(att, "attend_varlen", emulated)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)  # a CPU build has no CUDA
    b, h, d, lt = 2, 2, 8, 4

    def inputs(frames):  # type: ignore[no-untyped-def]
        seq = lt + sum(frames)
        return [torch.randn(b, seq, h, d).transpose(1, 2) for _ in range(3)]

    one = build_attention_plan((0, 0), lt, (6,), "cpu")
    att._attend_varlen_checked(*inputs((6,)), one, False, None)
    assert att._VARLEN == {} and calls == []  # one frame: no overlapping windows to check, undecided
    two = build_attention_plan((1, 0), lt, (6, 6), "cpu")
    q, k, v = inputs((6, 6))
    out = att._attend_varlen_checked(q, k, v, two, False, None)
    assert att._VARLEN == {"cpu": True} and calls == ["varlen"]
    ref = attend(q, k, v, two, "prefix")
    assert rel_l2(out[1], ref[1]) < 1e-5  # row 1 has no pads: every output is read
    att._attend_varlen_checked(q, k, v, two, False, None)
    assert calls == ["varlen", "varlen"]  # decided: no second check, the varlen call from now on

    # a kernel that gets the windows wrong (here: every key of the row) is found out and never used again
    monkeypatch.setattr(att, "_VARLEN", {})
    monkeypatch.setattr(att, "attend_varlen", lambda q, k, v, *_a: F.scaled_dot_product_attention(q, k, v))
    out = att._attend_varlen_checked(q, k, v, two, False, None)
    assert att._VARLEN == {"cpu": False}
    assert rel_l2(out[1], ref[1]) < 1e-6  # the per-group calls' result was returned
