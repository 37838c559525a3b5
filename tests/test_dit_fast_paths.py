"""The DiT's exact speed-ups on the CPU: shared text pads dropped, blocks under torch.compile, and the
CUDA-graph wrapper's copy of unchanged inputs skipped. (Their GPU timings are in benchmarks/RESULTS.md.)"""

from __future__ import annotations

import numpy as np
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from generation.models.blocks import BlockRunners
from generation.models.fusion import FusedLinear, fuse_projections, is_fused, unfuse_projections
from generation.models.graphed import _Captured, _copy_if_changed
from tests._dit_support import random_dit_inputs, tiny_dit

LAYOUTS = [  # (t, h, w) of the clips: first frame, unit 1 stage 0, unit 2 stage 2 (the sampler's shapes)
    [(1, 4, 8)],
    [(1, 2, 4), (1, 2, 4)],
    [(1, 2, 4), (1, 4, 8), (1, 8, 16), (1, 8, 16)],
]


def _tiny(name: str) -> torch.nn.Module:
    return tiny_dit(name, single_layers=2)


def _inputs(shapes, valid=(5, 3), text_len=9, seed=1):  # type: ignore[no-untyped-def]
    return random_dit_inputs(valid, text_len, shapes, seed)


def test_shared_text_pads_are_dropped_and_change_nothing() -> None:
    for name in ("pyramid_flux", "pyramid_mmdit"):
        model = _tiny(name)
        clips, text, mask, pooled, t = _inputs(LAYOUTS[2])
        plan = model.forward_plan(clips, mask)
        assert plan.attention.text_len == 5  # 9 tokens, rows with 5 and 3 valid: the 4 shared pads are gone
        assert plan.attention.pad_counts == (0, 2)
        # 20 more pad positions (the T5 length 128 vs a short prompt) give the same velocity
        long_text = torch.cat([text, torch.randn(2, 20, 12)], dim=1)
        long_mask = torch.cat([mask, torch.zeros(2, 20, dtype=mask.dtype)], dim=1)
        with torch.no_grad():
            short = model(clips, text, mask, pooled, t)
            longer = model(clips, long_text, long_mask, pooled, t)
        assert short.abs().max() > 0.1
        torch.testing.assert_close(longer, short, atol=1e-6, rtol=1e-6)


def test_fused_projections_equal_the_separate_ones_and_add_no_memory() -> None:
    expected = {"pyramid_flux": 1 * 2 + 2, "pyramid_mmdit": 2 * 2}  # per double/joint block 2, per single 1
    for name in ("pyramid_flux", "pyramid_mmdit"):
        model = _tiny(name)
        cases = [_inputs(shapes, seed=i) for i, shapes in enumerate(LAYOUTS)]
        keys = {k: v.clone() for k, v in model.state_dict().items()}
        params_before = sum(p.untyped_storage().nbytes() for p in {p.untyped_storage().data_ptr(): p
                                                                      for p in model.parameters()}.values())
        with torch.no_grad():
            plain = [model(*c) for c in cases]
            assert fuse_projections(model) == expected[name] and is_fused(model)
            assert fuse_projections(model) == 0  # idempotent
            used: list[int] = []
            hooks = [m.register_forward_hook(lambda *_a, seen=used: seen.append(1)) for m in model.modules()
                     if isinstance(m, FusedLinear)]
            fused = [model(*c) for c in cases]
            for h in hooks:
                h.remove()
        assert len(used) == expected[name] * len(cases)  # every fused GEMM ran, at every forward
        for out, ref in zip(fused, plain, strict=True):
            torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
        # the originals are views of the fused weight: same storage, same values, checkpoint names kept
        attn = model.transformer_blocks[0].attn
        assert attn.to_k.weight.untyped_storage().data_ptr() == attn.fused_qkv.weight.untyped_storage().data_ptr()
        sd = model.state_dict()
        for k, v in keys.items():
            assert torch.equal(sd[k], v), k
        storages = {p.untyped_storage().data_ptr(): p for p in model.parameters()}
        params_after = sum(p.untyped_storage().nbytes() for p in storages.values())
        assert params_after == params_before  # no second copy of any weight
        unfuse_projections(model)
        assert not is_fused(model)
        with torch.no_grad():
            torch.testing.assert_close(model(*cases[0]), plain[0], atol=0.0, rtol=0.0)


def _compiled_matches_eager(name: str, backend: str, atol: float) -> None:
    model = _tiny(name)
    fuse_projections(model)  # the resident fast path: fused projections, compiled blocks
    cases = [_inputs(shapes, seed=i) for i, shapes in enumerate(LAYOUTS)]
    with torch.no_grad():
        eager = [model(*c) for c in cases]
        model.compile_blocks(backend=backend)
        assert model.compiled
        counters.clear()
        first = model(*cases[0])
        graphs = counters["stats"]["unique_graphs"]
        rest = [model(*c) for c in cases[1:]]
    assert graphs > 0
    # every later layout (other sequence lengths, other attention plans) reuses the compiled graphs
    assert counters["stats"]["unique_graphs"] == graphs, dict(counters["recompiles"])
    for out, ref in zip([first, *rest], eager, strict=True):
        torch.testing.assert_close(out, ref, atol=atol, rtol=1e-5)
    model.compile_blocks(False)
    assert not model.compiled


def test_compiled_flux_blocks_match_eager_inductor() -> None:
    torch._dynamo.reset()
    _compiled_matches_eager("pyramid_flux", "inductor", atol=1e-5)  # fused C++ kernels: rounding only


def test_compiled_mmdit_blocks_match_eager_bitwise_without_codegen() -> None:
    torch._dynamo.reset()
    _compiled_matches_eager("pyramid_mmdit", "aot_eager", atol=0.0)  # same graph pieces, same kernels


def test_graph_inputs_copied_only_when_the_source_changed() -> None:
    static = [torch.zeros(2, 3), torch.zeros(2, 3)]
    cap = _Captured(graph=None, clips=static, text=torch.zeros(1), pooled=torch.zeros(1),  # type: ignore[arg-type]
                    timestep=torch.zeros(1), out=torch.zeros(1), plan=None, last=[None, None])
    history, current = torch.ones(2, 3), torch.full((2, 3), 2.0)
    assert _copy_if_changed(cap, [history, current]) == 2
    assert torch.equal(static[0], history) and torch.equal(static[1], current)
    current2 = torch.full((2, 3), 3.0)  # next step: the same history tensor, a new current latent
    assert _copy_if_changed(cap, [history, current2]) == 1
    assert torch.equal(static[1], current2)
    history.add_(1.0)  # an in-place change is seen through the version counter
    assert _copy_if_changed(cap, [history, current2]) == 1
    assert torch.equal(static[0], history)
    fresh = history.clone()  # another tensor with equal values is still copied (identity, not values)
    assert _copy_if_changed(cap, [fresh, current2]) == 1


def test_graph_cache_holds_every_layout_of_the_longest_videos() -> None:
    # An LRU smaller than a video's (unit, stage) count recaptures every layout on every job: the sampler
    # walks the layouts in order, so each one is evicted before it comes round again.
    from generation.components import VARIANT_MAX_TEMP
    from generation.models.graphed import GraphedDiT
    from generation.pipeline import graph_capacity

    g = GraphedDiT(tiny_dit("pyramid_flux"))
    assert g.max_graphs >= 3 * sum(VARIANT_MAX_TEMP.values())
    # the generator's cache: every layout of both resolutions, for each of the four 32-token text buckets
    assert graph_capacity(["384p", "768p"], 0) == 3 * (16 + 31) == 141
    assert graph_capacity(["384p", "768p"], 32) == 4 * 141 and graph_capacity(["384p"], 32) == 4 * 48
    g._pool = object()  # as after a capture
    g.clear()  # what model offload does before the DiT leaves the GPU
    assert not g._graphs and g._pool is None


def test_generator_warm_up_and_its_fallback_to_eager_when_compiling_fails() -> None:
    from generation.pipeline import build_generator
    from generation.settings import GenerationSettings

    plain = build_generator(GenerationSettings())
    assert plain.warm_up() == 0.0 and not plain.c.dit.compiled  # nothing to compile: no forward at all

    gen = build_generator(GenerationSettings(compile_dit=True))
    assert gen.c.dit.compiled
    calls = []

    def broken(*_a, **_k):  # what a machine without Triton / a C compiler raises on the first forward
        calls.append(1)
        raise RuntimeError("backend compiler failed")

    gen.c.dit.runners = BlockRunners(joint=broken, single=broken, compiled=True)
    assert gen.warm_up() >= 0.0
    assert calls and not gen.c.dit.compiled  # logged, and the blocks run eagerly from now on


def test_graphs_share_one_static_buffer_per_text_shape() -> None:
    # 564 graphs with text_bucket: a static T5 copy each (2 MB for miniflux) would add up to over 1 GB
    from generation.models.graphed import GraphedDiT

    g = GraphedDiT(tiny_dit("pyramid_flux"))
    a, b, c = torch.randn(2, 9, 4), torch.randn(2, 9, 4), torch.randn(2, 12, 4)
    first = g._static("text", a)
    assert first is not a and torch.equal(first, a)
    again = g._static("text", b)
    assert again is first and torch.equal(first, b)  # the same buffer, now holding the new values
    assert g._static("text", c) is not first and g._static("pooled", b) is not first
    g.clear()
    assert g._static("text", a) is not first


def test_a_compile_failure_during_a_job_reruns_it_eagerly() -> None:
    """`compile_dit` compiles at start-up; a layout that fails to compile later (a Triton / compiler error in
    a job) turns compiling off and the job runs again eagerly, with the same noise: same video, no failure."""
    from torch._dynamo.exc import TorchDynamoException

    from generation.api import GenerationRequest
    from generation.pipeline import build_generator
    from generation.sampling.noise import GeneratorNoise
    from generation.settings import GenerationSettings

    req = GenerationRequest(prompt="a cat", temp=2, num_inference_steps=(1, 1, 1), video_num_inference_steps=(1, 1, 1))
    plain = build_generator(GenerationSettings())
    expected, _ = plain.render(plain.validate(req), noise=GeneratorNoise(3))
    gen = build_generator(GenerationSettings(compile_dit=True))
    calls = []

    def broken(*_a, **_k):  # what Inductor raises when a new layout fails to compile
        calls.append(1)
        raise TorchDynamoException("backend compiler failed")

    gen.c.dit.runners = BlockRunners(joint=broken, single=broken, compiled=True)
    frames, _ = gen.render(gen.validate(req), noise=GeneratorNoise(3))
    assert calls and not gen.c.dit.compiled
    assert np.array_equal(frames, expected)


def test_text_bucket_masks_the_pads_and_gives_the_same_velocity() -> None:
    """`text_bucket`: pads masked by key instead of cut out of each row's ranges. Same velocity for every
    layout (merged runs of small frames included), both backends, rows of different text lengths; one
    plan serves every mask of a bucket, so CUDA graphs no longer depend on the prompt's length."""
    for name in ("pyramid_flux", "pyramid_mmdit"):
        model = _tiny(name)
        model.merge_tokens = 40  # small frames of the tiny layouts are merged into masked calls
        for backend in ("prefix", "dense"):
            model.set_attention_backend(backend)
            for i, shapes in enumerate(LAYOUTS):
                for valid in ((5, 3), (2, 7), (9, 9)):
                    inputs = _inputs(shapes, valid=valid, seed=i)
                    with torch.no_grad():
                        model.text_bucket = 0
                        expected = model(*inputs)
                        model.text_bucket = 4
                        masked = model(*inputs)
                    assert torch.isfinite(masked).all()
                    torch.testing.assert_close(masked, expected, atol=2e-5, rtol=2e-5)
        model.set_attention_backend("prefix")
        model.text_bucket = 4
        model.plan_cache.clear()
        builds = model.plan_cache.builds
        shapes = LAYOUTS[2]
        with torch.no_grad():
            for valid in ((5, 3), (6, 1), (8, 5)):  # all within the 8-token bucket
                model(*_inputs(shapes, valid=valid))
        assert model.plan_cache.builds == builds + 1
        plan = model.forward_plan(_inputs(shapes, valid=(5, 3))[0], _inputs(shapes, valid=(5, 3))[2])
        assert plan.text_order is None and plan.attention.text_len == 8 and plan.attention.pad_counts == (0, 0)
        assert model.text_key(_inputs(shapes, valid=(2, 1))[2])[1] == ("text_bucket", 4)


def test_graph_key_follows_the_text_bucket_not_the_prompt_length() -> None:
    from generation.models.graphed import GraphedDiT

    g = GraphedDiT(_tiny("pyramid_flux"))
    a, b = _inputs(LAYOUTS[1], valid=(5, 3)), _inputs(LAYOUTS[1], valid=(5, 2))
    assert g.key(*a) != g.key(*b)  # per-row ranges: one graph per text mask
    g.dit.text_bucket = 8
    assert g.key(*a) == g.key(*b)  # masked pads: one graph per bucket
    assert g.key(*a) != g.key(*_inputs(LAYOUTS[1], valid=(9, 2)))  # 9 tokens: the next bucket


def test_prewarm_visits_every_layout_of_the_default_video_once_and_never_fails_the_worker() -> None:
    from generation.models.graphed import GraphedDiT
    from generation.pipeline import build_generator
    from generation.settings import GenerationSettings

    gen = build_generator(GenerationSettings())
    assert gen.prewarm() == 0.0  # on the CPU no graphs are kept: nothing to capture, no forward
    seen: list[tuple] = []
    inner = gen.c.dit
    real_forward = inner.forward

    def spy(clips, *rest):  # type: ignore[no-untyped-def]
        seen.append(tuple(tuple(c.shape) for c in clips))
        return real_forward(clips, *rest)

    inner.forward = spy  # type: ignore[method-assign]
    gen.dit = GraphedDiT(inner)  # as on a GPU with the DiT resident (on the CPU it runs eagerly)
    assert gen.prewarm() > 0.0
    # one DiT call per (unit, stage) of a 5 s video: 16 units × 3 stages, every layout exactly once
    assert len(seen) == 16 * 3 and len(set(seen)) == len(seen)

    def broken(*_a, **_k):  # type: ignore[no-untyped-def]
        raise RuntimeError("a driver error while capturing")

    inner.forward = broken  # type: ignore[method-assign]
    assert gen.prewarm() >= 0.0  # logged; the first job will capture instead


def test_attention_modules_stay_out_of_the_traced_graphs_and_come_back_on_undo() -> None:
    import torch._dynamo

    from generation.models.blocks import keep_attention_eager
    from tests._dit_support import random_dit_inputs, tiny_dit

    dit = tiny_dit("pyramid_flux", single_layers=2)
    attn = [b.attn for b in [*dit.transformer_blocks, *dit.single_transformer_blocks]]
    args = random_dit_inputs([5, 3], 6, [(2, 2, 4), (1, 4, 6)], seed=4)
    with torch.no_grad():
        eager = dit(*args)
        torch._dynamo.reset()
        dit.compile_blocks(True, backend="aot_eager")
        assert all("forward" in vars(a) for a in attn)  # each wrapped once, eager
        dit.compile_blocks(True, backend="aot_eager")  # twice: still one wrapper
        assert all(vars(a)["_traced_forward_replaced"][0] is False for a in attn)
        compiled = dit(*args)
        dit.compile_blocks(False)
        assert not any("forward" in vars(a) for a in attn)  # the class's forward again
        again = dit(*args)
    assert torch.equal(compiled, eager) and torch.equal(again, eager)
    keep_attention_eager(attn, False)  # undoing what is not done changes nothing
