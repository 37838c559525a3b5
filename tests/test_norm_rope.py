"""The fused q/k norm + join + RoPE kernel (`generation.models.norm_rope`) and the split output projection
of the FLUX single blocks.

The Triton kernel is run by Triton's CPU interpreter (``TRITON_INTERPRET=1``, set before Triton is imported,
so in a child process): the same kernel source the GPU compiles, checked against the torch ops it replaces.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import torch

from generation.models.norm_rope import norm_rope_reference, rms_norm_rows, rope_rows
from tests._dit_support import random_dit_inputs, tiny_dit

_CHILD = textwrap.dedent(
    """
    import json, torch
    from generation.models.norm_rope import kernel_usable, norm_rope, norm_rope_reference
    from generation.models.attention import rel_l2
    from tests._dit_support import random_dit_inputs, tiny_dit
    out = {"usable": kernel_usable("cpu"), "ops": []}
    torch.manual_seed(0)
    B, La, Lb, H, D = 2, 5, 37, 3, 64
    fused = torch.randn(B, La + Lb, H * D * 3, dtype=torch.bfloat16)
    b = fused[:, La:, H * D : 2 * H * D].view(B, Lb, H, D)  # a strided view, as the fused projection gives
    a = torch.randn(B, La, H, D, dtype=torch.bfloat16)
    wa, wb = torch.randn(D, dtype=torch.bfloat16), torch.randn(D, dtype=torch.bfloat16)
    table = torch.randn(La + Lb + 3, D // 2, 2)
    for t, off, with_text in [(table, 0, True), (table, 3, False), (None, 0, True), (table, 0, False)]:
        aa, ww = (a, wa) if with_text else (None, None)
        got = norm_rope(aa, ww, b, wb, t, table_offset=off, eps=1e-6)
        ref = norm_rope_reference(aa, ww, b, wb, t, off, 1e-6)
        out["ops"].append({"shape": list(got.shape), "ref_shape": list(ref.shape),
                           "max_diff": float((got.float() - ref.float()).abs().max()),
                           "contiguous": got.is_contiguous()})
    for name in ("pyramid_flux", "pyramid_mmdit"):
        dit = tiny_dit(name).to(torch.bfloat16)
        shapes = [(2, 2, 4), (1, 4, 6)] if name == "pyramid_flux" else [(2, 4, 4), (1, 8, 8)]
        args = random_dit_inputs([5, 3], 6, shapes, seed=1)
        args = ([c.to(torch.bfloat16) for c in args[0]], args[1].to(torch.bfloat16), args[2],
                args[3].to(torch.bfloat16), args[4])
        with torch.no_grad():
            dit.norm_rope_kernel = True
            fast = dit(*args)
            used = dit.context(dit.forward_plan(args[0], args[2])).norm_rope
            dit.norm_rope_kernel = False
            plain = dit(*args)
        out[name] = {"used": used, "rel": rel_l2(fast, plain), "finite": bool(torch.isfinite(fast).all())}
    # traced by torch.compile with symbolic shapes: the op stays one opaque call, the same values come out
    dit = tiny_dit("pyramid_flux").to(torch.bfloat16)
    layouts = [[(2, 2, 4), (1, 4, 6)], [(3, 2, 4), (1, 4, 6)]]
    runs = [random_dit_inputs([5, 3], 6, shapes, seed=i) for i, shapes in enumerate(layouts)]
    runs = [([c.to(torch.bfloat16) for c in r[0]], r[1].to(torch.bfloat16), r[2], r[3].to(torch.bfloat16), r[4])
            for r in runs]
    with torch.no_grad():
        eager = [dit(*r) for r in runs]
        dit.compile_blocks(True, backend="aot_eager")
        traced = [dit(*r) for r in runs]
    out["compiled_equal"] = all(torch.equal(a, b) for a, b in zip(eager, traced))
    print(json.dumps(out))
    """
)


def test_the_triton_kernel_equals_the_torch_ops_and_the_dits_agree_with_it() -> None:
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", _CHILD], env=env, cwd=root, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["usable"] is True
    shapes = [[2, 42, 3, 64], [2, 37, 3, 64], [2, 42, 3, 64], [2, 37, 3, 64]]
    for op, shape in zip(res["ops"], shapes, strict=True):
        assert op["shape"] == op["ref_shape"] == shape
        assert op["max_diff"] == 0.0  # the same roundings, bit for bit
        assert op["contiguous"]
    assert res["compiled_equal"] is True
    for name in ("pyramid_flux", "pyramid_mmdit"):
        assert res[name]["used"] is True and res[name]["finite"] is True
        # the eager torch path rotates by a complex multiply; the kernel in real arithmetic (same products)
        assert res[name]["rel"] < 5e-3, res[name]


def test_the_reference_is_the_blocks_own_norm_and_rotation() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 9, 3, 64, dtype=torch.bfloat16)
    norm = torch.nn.RMSNorm(64, eps=1e-6).to(torch.bfloat16)
    with torch.no_grad():
        norm.weight.normal_()
        assert torch.equal(rms_norm_rows(x, norm.weight, 1e-6), norm(x))
    from generation.models.positions import apply_rope

    table = torch.randn(9, 32, 2)
    assert torch.equal(rope_rows(x, table), apply_rope(x, table.unsqueeze(1), real=True))
    joined = norm_rope_reference(x[:, :4], norm.weight, x[:, 4:], norm.weight, table, 0, 1e-6)
    assert torch.equal(joined, rope_rows(norm(x), table))


def test_the_split_output_projection_equals_the_concatenated_one() -> None:
    dit = tiny_dit("pyramid_flux", single_layers=2)
    args = random_dit_inputs([5, 3], 6, [(2, 2, 4), (1, 4, 6)], seed=2)
    blocks = list(dit.single_transformer_blocks)
    with torch.no_grad():
        split = dit(*args)
        for blk in blocks:
            blk.split_out_proj = False
        joined = dit(*args)
    assert (split - joined).abs().max() < 1e-5 * joined.abs().max()
    assert not torch.equal(split, torch.zeros_like(split))


def test_the_gelu_epilogue_call_is_the_projection_and_tanh_gelu(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import torch.nn.functional as F

    import generation.models.linear_gelu as lg

    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 40)
    x = torch.randn(2, 7, 24)
    # the CUDA branch's call, run by torch on the CPU, whose fallback of it takes the erf GELU (cuBLASLt's
    # epilogue takes the tanh form; that difference is what the first-use check on a device is for)
    monkeypatch.setattr(lg, "_epilogue_runs", lambda t: True)
    monkeypatch.setattr(lg, "_AGREES", {})
    with torch.no_grad():
        got = lg._epilogue(x, lin.weight, lin.bias)
        assert torch.allclose(got, F.gelu(lin(x)), rtol=1e-5, atol=1e-6)
        # the first use compares with the tanh form: 2e-4 apart here, so it is taken and recorded
        used = lg.linear_gelu(x, lin)
    assert lg._AGREES == {"cpu": True}
    assert torch.equal(used, got)
    lg._AGREES["cpu"] = False  # a device where they disagreed: the plain form from then on
    with torch.no_grad():
        assert torch.equal(lg.linear_gelu(x, lin), F.gelu(lin(x), approximate="tanh"))


def test_single_blocks_fused_without_their_mlp_give_the_same_velocity() -> None:
    from generation.models.fusion import fuse_projections, unfuse_projections
    from generation.models.linear_gelu import use_gelu_epilogue

    dit = tiny_dit("pyramid_flux", single_layers=2)
    args = random_dit_inputs([5, 3], 6, [(2, 2, 4), (1, 4, 6)], seed=3)
    with torch.no_grad():
        plain = dit(*args)
        assert use_gelu_epilogue(dit) == 2 + 2  # both single blocks, and the double block's two feed-forwards
        fuse_projections(dit, single_mlp=False)
        assert all(len(b.fused_in.splits) == 3 for b in dit.single_transformer_blocks)
        three = dit(*args)
        fuse_projections(dit, single_mlp=True)  # fused the other way: fused again, with the MLP input
        assert all(len(b.fused_in.splits) == 4 for b in dit.single_transformer_blocks)
        four = dit(*args)
        unfuse_projections(dit)
    for out in (three, four):
        assert (out - plain).abs().max() < 1e-5 * plain.abs().max()
