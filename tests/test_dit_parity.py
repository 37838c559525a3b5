"""DiT forward parity with the reference fixtures, and exactness of the prefix attention backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generation.models import attention, model_name_from_config
from generation.models.attention import attend, build_attention_plan, text_order
from generation.models.positions import flux_image_positions, rope_table, sd3_sincos_table, token_layout
from generation.parity import dit as dit_parity
from tests._dit_support import random_dit_inputs, tiny_dit

FIXTURES = Path(__file__).parent / "fixtures" / "pyramid_flow"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _dit_sidecars() -> list[str]:
    names = []
    for path in sorted(FIXTURES.glob("*.json")):
        if path.name == "weights.json":
            continue
        if dit_parity.detect(json.loads(path.read_text())):
            names.append(path.name)
    return names


SIDECARS = _dit_sidecars()


def test_detect_finds_both_variants_and_nothing_else() -> None:
    variants = {model_name_from_config(json.loads((FIXTURES / n).read_text())["config"]) for n in SIDECARS}
    assert variants == {"pyramid_flux", "pyramid_mmdit"}
    for other in ("vae_forward.json", "scheduler_384p.json", "e2e_pyramid_flux_t2v.json"):
        assert not dit_parity.detect(json.loads((FIXTURES / other).read_text()))


@pytest.mark.parametrize("sidecar", SIDECARS)
@pytest.mark.parametrize("merge_tokens", [None, 0], ids=["merged-groups", "one-call-per-group"])
def test_fixture_cases_within_tolerance_both_backends(sidecar: str, merge_tokens: int | None) -> None:
    backends = ("prefix", "dense") if merge_tokens is None else ("prefix",)
    results = dit_parity.run(FIXTURES, sidecar, backends=backends, merge_tokens=merge_tokens)
    cases = dit_parity.discover_cases(list(load_file(str(FIXTURES / sidecar.replace(".json", ".safetensors")))))
    assert len(cases) >= 1
    assert len(results) == len(cases) * len(backends) * 2  # separate and fused input projections
    assert sum(",fused]" in r.fixture for r in results) == len(cases) * len(backends)
    failures = [r.line() for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    for r in results:  # errors far below the tolerance: rounding only
        assert r.max_abs < 1e-5, r.line()


def _tiny(name: str, seed: int) -> torch.nn.Module:
    return tiny_dit(name, seed)


_random_inputs = random_dit_inputs


HISTORY = [(2, 2, 4), (1, 4, 8), (1, 8, 16), (1, 8, 16)]  # stage-0 pair, stage 1, stage 2, current


@pytest.mark.parametrize("name", ["pyramid_flux", "pyramid_mmdit"])
@pytest.mark.parametrize(
    "valid,clip_shapes",
    [
        ([3, 7], HISTORY),  # rows of different text length -> per-row calls
        ([5, 5, 5], HISTORY[1:]),  # same length -> batched calls
        ([0, 7], [(3, 2, 4), (1, 4, 8)]),  # a row with no valid text at all
        ([7, 2], [(1, 4, 8)]),  # single clip, first frame
    ],
)
def test_prefix_backend_equals_dense_backend(name: str, valid: list[int], clip_shapes) -> None:
    model = _tiny(name, seed=1)
    inputs = _random_inputs(valid, 7, clip_shapes, seed=2)
    with torch.no_grad():
        model.set_attention_backend("dense")
        dense = model(*inputs)
        outs = {}
        model.set_attention_backend("prefix")
        for merge in (0, 40, 10_000):
            model.merge_tokens = merge
            outs[merge] = model(*inputs)
    t, h, w = clip_shapes[-1]
    assert dense.shape == (len(valid), 16, t, h, w)
    assert dense.abs().max() > 0.1  # a real signal, not all zeros
    for merge, out in outs.items():
        torch.testing.assert_close(out, dense, atol=2e-5, rtol=1e-5, msg=f"merge_tokens={merge}")


def test_scattered_text_mask_is_handled_exactly() -> None:
    model = _tiny("pyramid_flux", seed=3)
    clips, text, mask, pooled, timestep = _random_inputs([4, 6], 7, HISTORY[2:], seed=4)
    mask = torch.tensor([[0, 1, 1, 0, 1, 0, 1], [1, 0, 1, 1, 1, 1, 0]])
    with torch.no_grad():
        model.set_attention_backend("dense")
        dense = model(clips, text, mask, pooled, timestep)
        model.set_attention_backend("prefix")
        model.merge_tokens = 0
        prefix = model(clips, text, mask, pooled, timestep)
        # padded text tokens must not influence anything: change them, output stays identical
        text2 = text.clone()
        text2[mask == 0] = 100.0
        prefix2 = model(clips, text2, mask, pooled, timestep)
    torch.testing.assert_close(prefix, dense, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(prefix2, prefix, atol=0, rtol=0)


def test_attention_backends_agree_on_every_query_including_pads() -> None:
    g = torch.Generator().manual_seed(5)
    frames = (8, 8, 8, 32, 32)
    pads = (4, 1)
    plan = build_attention_plan(pads, 6, frames, "cpu", merge_tokens=20)
    assert any(c.mask is not None for c in plan.calls_all) and any(c.mask is None for c in plan.calls_all)
    q, k, v = (torch.randn(2, 3, plan.seq_len, 8, generator=g) for _ in range(3))
    dense = attend(q, k, v, plan, "dense")
    torch.testing.assert_close(attend(q, k, v, plan, "prefix"), dense, atol=1e-6, rtol=1e-5)
    qi = q[:, :, 6:]
    torch.testing.assert_close(attend(qi, k, v, plan, "prefix", image_only=True), dense[:, :, 6:], atol=1e-6, rtol=1e-5)
    # the rule itself: a history frame never sees later frames, valid tokens never see pads
    mask = plan.dense_mask()
    assert not mask[0, 0, 6 + 8, 6 + 16]  # frame 1 query, frame 2 key
    assert mask[0, 0, 6 + 16, 6 + 8]
    assert not mask[0, 0, 5, 0] and mask[0, 0, 0, 3] and not mask[0, 0, 0, 4]


@pytest.mark.parametrize("merge_tokens", [0, 20])
def test_key_masked_text_is_attended_apart_and_merged_exactly(merge_tokens: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """`text_bucket` mode: the text keys are attended once, the image keys per group with the log-sum-exp,
    and the two merged. Every valid query gets what the dense rule gives, with and without merged (masked)
    runs, for all queries and image queries only, a row with half its text masked and a row with none."""
    g = torch.Generator().manual_seed(11)
    frames, lt = (8, 8, 8, 32, 32), 6
    plan = build_attention_plan((0, 0, 0), lt, frames, "cpu", merge_tokens=merge_tokens)
    assert any(c.mask is None for c in plan.calls_all)
    assert merge_tokens == 0 or any(c.mask is not None for c in plan.calls_all)
    key_valid = torch.ones(3, plan.seq_len, dtype=torch.bool)
    key_valid[0, :3] = False  # three masked pads
    key_valid[2, :lt] = False  # no valid text at all: image keys only
    q, k, v = (torch.randn(3, 2, plan.seq_len, 8, generator=g) for _ in range(3))
    dense = attend(q, k, v, plan, "dense", key_valid=key_valid)
    split = attend(q, k, v, plan, "prefix", key_valid=key_valid)
    torch.testing.assert_close(split, dense, atol=2e-6, rtol=1e-5)  # pad queries too: they see the valid keys
    image = attend(q[:, :, lt:], k, v, plan, "prefix", image_only=True, key_valid=key_valid)
    torch.testing.assert_close(image, dense[:, :, lt:], atol=2e-6, rtol=1e-5)
    assert torch.isfinite(split).all()
    assert attention._SPLIT["cpu"]  # checked against the masked calls on first use, and agreed
    assert attention._FUSED_TEXT["cpu"]  # the fused text kernel against float32 matmuls, likewise
    # the fallbacks (where a kernel refuses or disagrees) give the same: float32 matmuls for the text part,
    # and the masked calls instead of the split
    monkeypatch.setitem(attention._FUSED_TEXT, "cpu", False)
    torch.testing.assert_close(attend(q, k, v, plan, "prefix", key_valid=key_valid), dense, atol=2e-6, rtol=1e-5)
    monkeypatch.setitem(attention._SPLIT, "cpu", False)
    torch.testing.assert_close(attend(q, k, v, plan, "prefix", key_valid=key_valid), dense, atol=2e-6, rtol=1e-5)


def test_a_split_that_disagrees_on_first_use_is_replaced_by_the_masked_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    # what a kernel returning a wrong log-sum-exp on some GPU would do: the first use finds out
    g = torch.Generator().manual_seed(12)
    plan = build_attention_plan((0, 0), 6, (8, 8, 32), "cpu", merge_tokens=0)
    key_valid = torch.ones(2, plan.seq_len, dtype=torch.bool)
    key_valid[1, :2] = False
    q, k, v = (torch.randn(2, 2, plan.seq_len, 8, generator=g) for _ in range(3))
    dense = attend(q, k, v, plan, "dense", key_valid=key_valid)
    monkeypatch.setattr(attention, "_SPLIT", {})
    monkeypatch.setattr(attention, "_attend_text_split", lambda q, *_a: torch.zeros_like(q))
    torch.testing.assert_close(attend(q, k, v, plan, "prefix", key_valid=key_valid), dense, atol=2e-6, rtol=1e-5)
    assert attention._SPLIT == {"cpu": False}
    torch.testing.assert_close(attend(q, k, v, plan, "prefix", key_valid=key_valid), dense, atol=2e-6, rtol=1e-5)


def test_plan_is_built_once_per_layout() -> None:
    model = _tiny("pyramid_mmdit", seed=6)
    clips, text, mask, pooled, timestep = _random_inputs([3, 7], 7, HISTORY[1:], seed=7)
    with torch.no_grad():
        for step in range(3):
            model(clips, text, mask, pooled, timestep * (step + 1) / 3)
        assert model.plan_cache.builds == 1
        model(clips, text, mask.clone(), pooled, timestep)  # same content, new tensor
        assert model.plan_cache.builds == 1
        model(clips[1:], text, mask, pooled, timestep)  # new unit/stage layout
        assert model.plan_cache.builds == 2


def test_flux_rotary_table_and_mask_equal_reference_debug_tensors() -> None:
    sidecar = json.loads((FIXTURES / "dit_pyramid_flux_forward.json").read_text())
    tensors = load_file(str(FIXTURES / "dit_pyramid_flux_forward.safetensors"))
    axes = sidecar["config"]["axes_dims_rope"]
    text_valid = tensors["encoder_attention_mask"] != 0
    order, pads = text_order(text_valid)
    for case, samples in dit_parity.discover_cases(list(tensors)).items():
        if f"{case}.debug.rope" not in tensors:
            continue
        layout = token_layout([tuple(tensors[s].shape[2:]) for s in samples])
        ours = rope_table(flux_image_positions(layout), axes, 10000.0, text_valid.shape[1])
        ref = tensors[f"{case}.debug.rope"][0, :, 0]  # [S, D/2, 2, 2] = [[cos, -sin], [sin, cos]]
        torch.testing.assert_close(ours.real, ref[..., 0, 0], atol=1e-6, rtol=0)
        torch.testing.assert_close(ours.imag, ref[..., 1, 0], atol=1e-6, rtol=0)
        # the reference's mask over [text; image], with text in our pads-first order per row
        plan = build_attention_plan(pads, text_valid.shape[1], layout.frame_tokens, "cpu")
        ref_mask = tensors[f"{case}.debug.attention_mask"]
        lt = text_valid.shape[1]
        for b in range(ref_mask.shape[0]):
            perm = torch.cat([order[b], torch.arange(lt, plan.seq_len)])
            assert torch.equal(ref_mask[b, 0][perm][:, perm], plan.dense_mask()[b, 0])


def test_mmdit_sincos_table_equals_stored_buffer() -> None:
    sidecar = json.loads((FIXTURES / "dit_pyramid_mmdit_forward.json").read_text())
    cfg = sidecar["config"]
    stored = load_file(str(FIXTURES / sidecar["weights_file"]))["pos_embed.pos_embed"]
    dim = cfg["attention_head_dim"] * cfg["num_attention_heads"]
    ours = sd3_sincos_table(cfg["pos_embed_max_size"], dim, cfg["sample_size"] // cfg["patch_size"])
    torch.testing.assert_close(ours, stored, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["pyramid_flux", "pyramid_mmdit"])
def test_bfloat16_forward_runs_and_tracks_float32(name: str) -> None:
    model = _tiny(name, seed=8)
    inputs = _random_inputs([3, 7], 7, HISTORY[1:], seed=9)
    with torch.no_grad():
        ref = model(*inputs)
        model.to(torch.bfloat16)
        out = model(*inputs)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    rel = (out.float() - ref).norm() / ref.norm()
    assert rel < 0.05, float(rel)


def test_graphed_wrapper_keeps_the_contract_and_runs_eagerly_off_gpu() -> None:
    from generation.models.graphed import GraphedDiT

    model = _tiny("pyramid_flux", seed=10)
    wrapped = GraphedDiT(model)
    assert wrapped.model_name == "pyramid_flux" and wrapped.config is model.config
    assert wrapped.dtype == torch.float32 and isinstance(wrapped, torch.nn.Module)
    inputs = _random_inputs([3, 7], 7, HISTORY[2:], seed=11)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(*inputs), model(*inputs), atol=0, rtol=0)
    assert wrapped.captures == 0  # CPU tensors: no graph
