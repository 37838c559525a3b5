"""GPU checks and timings of the generator: `python -m generation.bench {tiny,parity,full} [...]`.

tiny:   the tiny pipeline on the accelerator in bf16 with every placement (outputs must be equal).
parity: the e2e parity fixtures run on the accelerator (fp32) and the deviations printed.
full:   full-size random-weight DiT + VAE (text encoders replaced by random embeddings of the right
        shapes, as in SPEC §11.1) for one 384p/768p video; prints sampling/decode time and peak memory.
        `--graphs` replays the DiT from CUDA graphs; `--mem-cap-gib` caps the allocator
        (`torch.cuda.set_per_process_memory_fraction`) and lets the memory planner pick the placement.
equal:  the fast path (bf16, prefix attention, CUDA graphs) against the plain path (fp32, dense mask,
        eager) on the same full-size random weights, text and noise: relative L2 of the latents.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


class _Mem:
    """CUDA memory statistics, or zeros on the CPU (the CPU runs are dry runs of the script itself)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device

    def allocated(self) -> float:
        return torch.cuda.memory_allocated(self.device) / 2**30 if self.cuda else 0.0

    def peak(self) -> float:
        return torch.cuda.max_memory_allocated(self.device) / 2**30 if self.cuda else 0.0

    def peak_reserved(self) -> float:
        """What the caching allocator held at most (graph pools and fragmentation included): the figure a
        memory cap is enforced against."""
        return torch.cuda.max_memory_reserved(self.device) / 2**30 if self.cuda else 0.0

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def name(self) -> str:
        return torch.cuda.get_device_name(self.device) if self.cuda else "cpu"


class _Timer:
    """CUDA events on a GPU (no host sync in the loop), wall time on the CPU."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        if cuda:
            self.a, self.b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def start(self) -> None:
        if self.cuda:
            self.a.record()
        else:
            self.t0 = time.perf_counter()

    def stop(self) -> None:
        if self.cuda:
            self.b.record()
        else:
            self.ms = (time.perf_counter() - self.t0) * 1000

    def elapsed_ms(self) -> float:
        return self.a.elapsed_time(self.b) if self.cuda else self.ms


def cmd_tiny(args: argparse.Namespace) -> int:
    """The tiny pipeline on the accelerator in bf16: every placement gives the same frames; the streamed decode
    on a side stream gives the main stream's frames; compiled DiT blocks stay within bf16 rounding."""
    from generation.api import GenerationRequest
    from generation.pipeline import PyramidFlowGenerator, build_components
    from generation.sampling.noise import GeneratorNoise
    from generation.settings import GenerationSettings

    req = GenerationRequest(prompt="a red panda", temp=4, num_inference_steps=(3, 3, 3),
                            video_num_inference_steps=(2, 2, 2))
    variants: dict[str, dict] = {
        "gpu": {"placement": "gpu", "vae_tiling": True},
        "model_offload": {"placement": "model_offload", "vae_tiling": True},
        "sequential_offload": {"placement": "sequential_offload", "vae_tiling": True},
        "gpu_stream_main": {"placement": "gpu", "vae_tiling": True, "stream_decode": True, "decode_side_stream": False},
        "gpu_stream_side": {"placement": "gpu", "vae_tiling": True, "stream_decode": True, "decode_side_stream": True},
        "sequential_offload_graphs": {"placement": "sequential_offload", "vae_tiling": True,
                                      "offload_cuda_graphs": True},
        "gpu_text_bucket": {"placement": "gpu", "vae_tiling": True, "text_bucket": 32},  # masked pads, graphs
    }
    if args.compile:
        variants["gpu_stream_side_compiled"] = {"placement": "gpu", "vae_tiling": True, "stream_decode": True,
                                                "compile_dit": True}  # fmt: skip
    frames = {}
    for name, over in variants.items():
        s = GenerationSettings(device=args.device, dtype="bf16", **over)
        g = PyramidFlowGenerator(build_components(s), s)
        job = g.validate(req)
        for rep in range(2):  # the 2nd run replays the captured graphs
            t = time.perf_counter()
            f, timings = g.render(job, noise=GeneratorNoise(1))
            _sync()
            print(f"tiny {name} run {rep}: {f.shape} {time.perf_counter() - t:.2f}s {timings}", flush=True)
        frames[name] = f
    # Same arithmetic → equal frames. The resident placements fuse the input projections (other GEMM
    # kernels, so bf16 rounding may differ): those are compared with a tolerance and reported.
    exact = [("model_offload", "sequential_offload"), ("sequential_offload", "sequential_offload_graphs"),
             ("gpu_stream_main", "gpu_stream_side")]
    ok = True
    for a, b in exact:
        same = bool(np.array_equal(frames[a], frames[b]))
        ok = ok and same
        print(f"{a} == {b}: {same}")
    d = np.abs(frames["gpu"].astype(np.int16) - frames["model_offload"].astype(np.int16))
    print(json.dumps({"check": "tiny_fused_resident_vs_unfused_offload_frames", "max_abs": int(d.max()),
                      "mean_abs": float(d.mean()), "frac_diff": float((d > 0).mean())}))
    d = np.abs(frames["gpu_text_bucket"].astype(np.int16) - frames["gpu"].astype(np.int16))
    print(json.dumps({"check": "tiny_text_bucket_vs_per_row_frames", "max_abs": int(d.max()),
                      "mean_abs": float(d.mean()), "frac_diff": float((d > 0).mean())}))
    if "gpu_stream_side_compiled" in frames:
        d = np.abs(frames["gpu_stream_side_compiled"].astype(np.int16) - frames["gpu_stream_side"].astype(np.int16))
        print(json.dumps({"check": "tiny_compiled_vs_eager_frames", "max_abs": int(d.max()),
                          "mean_abs": float(d.mean()), "frac_diff": float((d > 0).mean())}))
    return 0 if ok else 1


def cmd_parity(args: argparse.Namespace) -> int:
    from generation.parity import e2e

    folder = ROOT / "tests" / "fixtures" / "pyramid_flow"
    bad = 0
    for p in sorted(folder.glob("e2e_*.json")):
        for r in e2e.run(folder, p.name, device=args.device):
            bad += 0 if r.ok else 1
            if "output" in r.fixture or not r.ok:
                print(r.line())
    print("e2e on", args.device, "failures:", bad)
    return 0


def _random_text(model_name: str, device: torch.device, dtype: torch.dtype, config: object | None = None,
                 valid: tuple[int, int] = (40, 25)):  # fmt: skip
    """Random T5/CLIP embeddings of the released shapes (or of `config`'s, for the tiny models), with
    `valid` real tokens in the two CFG rows."""
    from generation.sampling.pyramid import TextConditioning

    g = torch.Generator(device="cpu").manual_seed(0)
    pooled = getattr(config, "pooled_projection_dim", 768 if model_name == "pyramid_flux" else 2048)
    emb = torch.randn(2, 128, getattr(config, "joint_attention_dim", 4096), generator=g) * 0.1
    mask = torch.zeros(2, 128, dtype=torch.long)
    mask[0, : valid[0]] = 1
    mask[1, : valid[1]] = 1
    pool = torch.randn(2, pooled, generator=g)
    return TextConditioning(emb.to(device, dtype), mask.to(device), pool.to(device, dtype), cfg=True)


def cmd_full(args: argparse.Namespace) -> int:
    from generation.decode import StreamingFrameDecoder, decode_to_frames
    from generation.latents import latent_norm
    from generation.memory import Placement, cap_cuda_memory
    from generation.models.fusion import is_fused
    from generation.models.graphed import GraphedDiT
    from generation.sampling.noise import GeneratorNoise
    from generation.sampling.pyramid import SamplerOptions, prepare_initial_noise, sample_t2v

    device = torch.device(args.device)
    planned_gib = None
    dtype = torch.bfloat16
    mem = _Mem(device)
    if args.mem_cap_gib and device.type == "cuda":  # on the CPU (a dry run) only the planner sees the cap
        cap_cuda_memory(device, args.mem_cap_gib)
    t = time.perf_counter()
    build_on = torch.device("cpu") if args.planner else device  # the placement moves what it keeps
    if args.tiny_models:  # a dry run of this script with the tiny models (CI / no GPU)
        from generation.tiny import build_tiny_pipeline

        c = build_tiny_pipeline(args.model, dtype=dtype, device=build_on, with_text=False)
        dit, vae = c.dit, c.vae
    else:
        dit, vae = _random_models(args.model, build_on, dtype, attention=args.attention)
    pm = None
    tile = 256
    per_job = False
    if args.planner:  # text encoders are replaced by random embeddings here, so they weigh nothing
        from generation.memory import PlacementManager
        from generation.planner import Footprint, gpu_budget, plan_placement, working_set

        plan = plan_placement(Footprint.of(dit, [], vae), working_set(args.model, args.variant, args.temp),
                              gpu_budget(device, args.mem_cap_gib or None))
        print("memory plan:", plan.describe())
        planned_gib = round(plan.need / 2**30, 3)
        pm = PlacementManager(plan.placement, device, resident_blocks=plan.resident_blocks)
        pm.prepare(streamed=[dit], swapped=[vae])
        tile = plan.decode_tile
        resident = plan.placement in (Placement.GPU, Placement.TEXT_OFFLOAD)
        streamed = plan.placement is Placement.SEQUENTIAL_OFFLOAD and args.offload_graphs
        # graphs captured per run and dropped before the decode, as the generator does
        per_job = plan.placement is Placement.MODEL_OFFLOAD or streamed
        args.graphs = args.graphs and (resident or streamed or per_job)
        args.compile = args.compile and (resident or per_job)
        args.stream = args.stream and plan.stream_decode
    resident_dit = pm is None or pm.placement in (Placement.GPU, Placement.TEXT_OFFLOAD)
    _set_kernels(dit, args.off, device, fuse=resident_dit and not args.no_fuse)
    if args.untiled:
        tile = None
    if args.decode_tile:  # try another tile than the plan's (to measure what would fit under a cap)
        tile = args.decode_tile
    dit.text_bucket = args.text_bucket
    use = pm.use if pm is not None else (lambda *_m: contextlib.nullcontext())
    _sync()
    print(f"built random {args.model} + VAE on {device} in {time.perf_counter() - t:.1f}s")
    w, h = (640, 384) if args.variant == "384p" else (1280, 768)
    text = _random_text(args.model, device, dtype, dit.config if args.tiny_models else None)
    compile_s = 0.0
    if args.compile:  # compile now (one first-frame forward), so the timed runs hold no compilation
        t = time.perf_counter()
        dit.compile_blocks()
        try:
            with torch.no_grad(), use(dit):
                dit(*dit.probe_inputs(h // 32, w // 32))
            _sync()
        except Exception as e:  # noqa: BLE001 — report and go on eagerly (no Triton / no C compiler here)
            print(f"compile failed, running eagerly: {type(e).__name__}: {str(e)[:400]}")
            dit.compile_blocks(False)
        compile_s = time.perf_counter() - t
        print(json.dumps({"bench": "compile", "compiled": dit.compiled, "compile_s": round(compile_s, 1),
                          "phases_s": _compile_phases()}), flush=True)  # fmt: skip
    model = GraphedDiT(dit) if args.graphs else dit
    per_call = PerCallTimer(model, full_height=h_latent(args.variant), cuda=device.type == "cuda") if args.per_call else None
    weights = mem.allocated()
    opts = SamplerOptions(first_frame_steps=(20, 20, 20), video_steps=(10, 10, 10), guidance_scale=7.0,
                          video_guidance_scale=5.0)
    norm = latent_norm(args.model)
    if args.prewarm:  # as the worker does after compiling: every layout captured by one 1-step-per-stage video
        t = time.perf_counter()
        one = dataclasses.replace(opts, first_frame_steps=(1, 1, 1), video_steps=(1, 1, 1))
        with torch.no_grad(), use(dit):
            init = prepare_initial_noise(GeneratorNoise(99), batch=1, temp=args.temp, latent_height=h // 8,
                                         latent_width=w // 8, num_stages=3, device=device, dtype=dtype)
            st = (StreamingFrameDecoder(vae, norm, tiling=tile is not None, dtype=dtype, tile_size=tile or 256,
                                        side_stream=args.side_stream) if args.stream else None)  # fmt: skip
            lat = sample_t2v(model, text, init, options=one, noise=GeneratorNoise(99),
                             on_unit=(lambda _k, x, s=st: s.push(x)) if st is not None else None)  # fmt: skip
            if st is not None:
                st.frames()
            else:
                with use(vae):
                    decode_to_frames(vae, lat, norm, tiling=tile is not None, dtype=dtype, tile_size=tile)
        _sync()
        print(json.dumps({"bench": "prewarm", "prewarm_s": round(time.perf_counter() - t, 2),
                          "graphs": getattr(model, "graph_count", 0)}), flush=True)  # fmt: skip
    phases = (["as given"] + (["hand-written kernels off"] if args.ab_off else [])
              + ([f"step cache {args.step_cache}"] if args.step_cache else []))  # fmt: skip
    exact_first: torch.Tensor | None = None  # latents of the first run as given (noise 0), to compare with
    text_first = text
    off_given = list(args.off)
    for phase in phases:
        if phase.startswith("step cache"):  # the same runs with step caching: time and distance from exact
            opts = dataclasses.replace(opts, step_cache=args.step_cache)
            if args.off != off_given:  # after the A/B phase: the kernels as given again
                args.off = off_given
                _set_kernels(dit, args.off, device, fuse=resident_dit and not args.no_fuse)
                if isinstance(model, GraphedDiT):
                    model.clear()
            print(json.dumps({"bench": "step_cache_phase", "threshold": args.step_cache}), flush=True)
        elif phase != "as given":  # the same process, the kernels off: new graphs, recompiled blocks (untimed run)
            args.off = ["norm_rope", "gelu_epilogue", "split_out", "varlen"]
            _set_kernels(dit, args.off, device, fuse=resident_dit and not args.no_fuse)
            if isinstance(model, GraphedDiT):
                model.clear()
            print(json.dumps({"bench": "ab_phase", "kernels_off": args.off}), flush=True)
        totals: list[float] = []
        for rep in range(args.repeat):
            last = rep == args.repeat - 1
            dit_fn = per_call if (per_call is not None and last) else model
            if rep == 0:
                text = text_first
            if args.vary_text and rep:  # a prompt of another length, as in a chat group: new graphs
                text = _random_text(args.model, device, dtype, dit.config if args.tiny_models else None,
                                    valid=(40, 25 + 3 * rep))  # fmt: skip
            mem.reset()
            noise = GeneratorNoise(rep)
            t0 = time.perf_counter()
            with torch.no_grad():
                init = prepare_initial_noise(noise, batch=1, temp=args.temp, latent_height=h // 8, latent_width=w // 8,
                                             num_stages=3, device=device, dtype=dtype)
                stream = (StreamingFrameDecoder(vae, norm, tiling=tile is not None, dtype=dtype, tile_size=tile or 256,
                                                side_stream=args.side_stream) if args.stream else None)
                on_unit = (lambda _k, x, s=stream: s.push(x)) if stream is not None else None
                stats: dict[str, int] = {}
                with use(dit):
                    lat = sample_t2v(dit_fn, text, init, options=opts, noise=noise, on_unit=on_unit, stats=stats)
                    if per_job and isinstance(model, GraphedDiT):
                        model.clear()  # the DiT leaves the GPU: its graphs go with it
                _sync()
                t1 = time.perf_counter()
                peak_sampling = mem.peak()
                mem.reset()
                if stream is not None:
                    frames = stream.frames()
                else:
                    with use(vae):
                        frames = decode_to_frames(vae, lat, norm, tiling=tile is not None, dtype=dtype, tile_size=tile)
                _sync()
                t2 = time.perf_counter()
            peak_decode = mem.peak()
            peak = max(peak_sampling, peak_decode)
            totals.append(t2 - t0)
            dist = None
            if rep == 0 and phase == "as given":
                exact_first = lat.detach().float().cpu()
            elif rep == 0 and exact_first is not None:  # same noise and text as the first exact run
                from generation.models.attention import rel_l2

                dist = round(rel_l2(lat.detach().float().cpu(), exact_first), 5)
            print(f"run {rep}: {args.model} {args.variant} temp={args.temp} total {t2 - t0:.1f}s "
                  f"(sampling{'+stream decode' if stream else ''} {t1 - t0:.1f}s, final decode {t2 - t1:.1f}s) "
                  f"frames {frames.shape} peak {peak:.2f} GiB (sampling {peak_sampling:.2f}, final decode "
                  f"{peak_decode:.2f}, weights {weights:.2f}) finite={bool(torch.isfinite(lat).all())}")
            print(json.dumps({"bench": "full", "model": args.model, "variant": args.variant, "temp": args.temp,
                              "graphs": args.graphs, "compile": dit.compiled, "fused": is_fused(dit), "stream": args.stream,
                              "side_stream": args.side_stream, "decode_tile": tile,
                              "attention": args.attention, "mem_cap_gib": args.mem_cap_gib, "rep": rep,
                              "vary_text": args.vary_text, "text_bucket": args.text_bucket,
                              "placement": pm.placement.value if pm is not None else "gpu",
                              "total_s": round(t2 - t0, 2), "sampling_s": round(t1 - t0, 2),
                              "decode_s": round(t2 - t1, 2), "peak_gib": round(peak, 3),
                              "peak_reserved_gib": round(mem.peak_reserved(), 3),
                              "peak_sampling_gib": round(peak_sampling, 3), "peak_decode_gib": round(peak_decode, 3),
                              "weights_gib": round(weights, 3), "planned_need_gib": planned_gib,
                              "kernels_off": sorted(args.off), "step_cache": opts.step_cache,
                              "dit_calls": stats.get("dit_calls"), "reused_steps": stats.get("reused_steps"),
                              "rel_l2_vs_exact_first": dist, "device": mem.name(),
                              "torch": torch.__version__}))  # fmt: skip
        warm = totals[1:] or totals
        print(json.dumps({"bench": "full_summary", "model": args.model, "variant": args.variant, "temp": args.temp,
                          "runs": len(totals), "first_s": round(totals[0], 2), "warm_median_s": round(statistics.median(warm), 2),
                          "warm_min_s": round(min(warm), 2), "warm_max_s": round(max(warm), 2),
                          "kernels_off": sorted(args.off)}))  # fmt: skip
    if per_call is not None:
        print(json.dumps({"bench": "dit_ms_per_call_by_unit_stage", "model": args.model, "variant": args.variant,
                          **per_call.summary()}))
    return 0


def _set_kernels(dit: torch.nn.Module, off: list[str], device: torch.device, *, fuse: bool) -> None:
    """The hand-written kernels, each on unless named in `off` (to measure what each is worth); the input
    projections fused as the generator fuses a resident DiT (`fuse`)."""
    from generation.models.fusion import fuse_projections
    from generation.models.linear_gelu import use_gelu_epilogue

    dit.norm_rope_kernel = "norm_rope" not in off
    dit.varlen_attention = "varlen" not in off
    epilogue = device.type == "cuda" and "gelu_epilogue" not in off
    use_gelu_epilogue(dit, epilogue)
    for blk in getattr(dit, "single_transformer_blocks", []):
        blk.split_out_proj = "split_out" not in off
    if fuse:
        fuse_projections(dit, single_mlp=not epilogue)


def _compile_phases(top: int = 8) -> dict[str, float]:
    """Where compiling went: torch's own per-phase seconds (Dynamo tracing, AOT, Inductor, cache loads)."""
    try:
        from torch._dynamo.utils import compile_times

        rows = compile_times(repr="csv", aggregate=True)
        names, values = rows[0], rows[1]
        pairs = sorted(((n, float(v)) for n, v in zip(names, values, strict=False)), key=lambda p: -p[1])
        return {n: round(v, 2) for n, v in pairs[:top]}
    except Exception as exc:  # noqa: BLE001 — a diagnostic only; its absence must not fail the bench
        return {"unavailable": 0.0, type(exc).__name__: 0.0}


def h_latent(variant: str) -> int:
    return 48 if variant == "384p" else 96


class PerCallTimer(torch.nn.Module):
    """Wraps the DiT; times every forward (CUDA events: no host sync in the loop) and files it under
    (unit, stage), read from the clip layout: unit = history frames, stage from the current clip's height."""

    def __init__(self, inner: torch.nn.Module, *, full_height: int, cuda: bool = True) -> None:
        super().__init__()
        self.inner = inner
        self.full_height = full_height
        self.cuda = cuda
        self.timers: dict[str, list[_Timer]] = {}

    def forward(self, clips, *rest):  # type: ignore[no-untyped-def]
        unit = sum(int(c.shape[2]) for c in clips[:-1])
        stage = 2 - max(0, (self.full_height // int(clips[-1].shape[3])).bit_length() - 1)
        timer = _Timer(self.cuda)
        timer.start()
        out = self.inner(clips, *rest)
        timer.stop()
        self.timers.setdefault(f"u{unit}s{stage}", []).append(timer)
        return out

    def summary(self) -> dict:
        _sync()
        rows = {k: [len(v), round(sum(t.elapsed_ms() for t in v) / len(v), 2)] for k, v in self.timers.items()}
        by_stage = {f"s{s}": round(sum(n * ms for k, (n, ms) in rows.items() if k.endswith(f"s{s}")) / 1000, 3)
                    for s in range(3)}
        return {"ms_per_call": rows, "dit_s_by_stage": by_stage, "dit_s": round(sum(by_stage.values()), 3)}


def _manifest_config(name: str) -> dict:
    manifests = ROOT / "tests" / "fixtures" / "manifests"
    short = {"pyramid_flux": "dit_pyramid_flux", "pyramid_mmdit": "dit_pyramid_mmdit", "vae": "causal_vae"}[name]
    return json.loads((manifests / f"{short}.json").read_text())["config_json"]


def _random_models(model_name: str, device: torch.device, dtype: torch.dtype, *, attention: str = "prefix"):
    """Full-size DiT + VAE with seeded random weights (work per step does not depend on the values)."""
    from generation.models import build_dit
    from generation.models.vae import CausalVideoVAE, VAEConfig

    torch.manual_seed(0)
    with torch.device(device):
        dit = build_dit(model_name, _manifest_config(model_name), attention_backend=attention)
        vae = CausalVideoVAE(VAEConfig.from_dict(_manifest_config("vae")))
    return (dit.to(dtype).eval().requires_grad_(False), vae.to(dtype).eval().requires_grad_(False))


def cmd_equal(args: argparse.Namespace) -> int:
    """Fast path vs plain fp32 path on the same weights, text and noise (SPEC-sized model, short video)."""
    from generation.models import build_dit
    from generation.models.attention import rel_l2
    from generation.models.fusion import fuse_projections
    from generation.models.graphed import GraphedDiT
    from generation.models.linear_gelu import use_gelu_epilogue
    from generation.sampling.noise import GeneratorNoise
    from generation.sampling.pyramid import SamplerOptions, prepare_initial_noise, sample_t2v

    device = torch.device(args.device)
    w, h = (640, 384) if args.variant == "384p" else (1280, 768)
    opts = SamplerOptions(first_frame_steps=(4, 4, 4), video_steps=(3, 3, 3), guidance_scale=7.0,
                          video_guidance_scale=5.0)
    bad = 0
    for model_name in args.models:
        torch.manual_seed(0)
        with torch.device(device):
            dit = build_dit(model_name, _manifest_config(model_name), attention_backend="dense")
        dit = dit.float().eval().requires_grad_(False)
        text32 = _random_text(model_name, device, torch.float32)

        def run(model, dtype: torch.dtype, latent_dtype: torch.dtype | None, text) -> torch.Tensor:
            noise = GeneratorNoise(7)
            o = dataclasses.replace(opts, latent_dtype=latent_dtype)
            with torch.no_grad():
                init = prepare_initial_noise(noise, batch=1, temp=args.temp, latent_height=h // 8,
                                             latent_width=w // 8, num_stages=3, device=device, dtype=latent_dtype or dtype)
                out = sample_t2v(model, text, init, options=o, noise=noise)
            _sync()
            return out.float()

        t0 = time.perf_counter()
        plain = run(dit, torch.float32, torch.float32, text32)
        t1 = time.perf_counter()
        dit.set_attention_backend("prefix")
        prefix32 = run(dit, torch.float32, torch.float32, text32)
        dit = dit.to(torch.bfloat16)
        text16 = _random_text(model_name, device, torch.bfloat16)
        dit.norm_rope_kernel = dit.varlen_attention = False  # the plain torch ops and per-group attention calls
        eager16 = run(dit, torch.bfloat16, None, text16)
        graphs16 = run(GraphedDiT(dit), torch.bfloat16, None, text16)
        dit.norm_rope_kernel = dit.varlen_attention = True  # the resident fast path: our kernels, fused projections
        epilogue = device.type == "cuda"
        use_gelu_epilogue(dit, epilogue)
        fuse_projections(dit, single_mlp=not epilogue)
        if args.compile:
            dit.compile_blocks()
        fast_model = GraphedDiT(dit)
        # one eager run first: the varlen attention is checked against the per-group calls on an eager call
        # with two frames or more (a graph captured before that keeps the per-group calls)
        fast_eager = run(dit, torch.bfloat16, None, text16)
        t2 = time.perf_counter()
        fast = run(fast_model, torch.bfloat16, None, text16)
        t3 = time.perf_counter()
        fast_lat32 = run(fast_model, torch.bfloat16, torch.float32, text16)  # latents kept in fp32
        dit.text_bucket = 32  # text pads masked by key: text attended apart, merged by log-sum-exp
        fast_bucket = run(GraphedDiT(dit), torch.bfloat16, None, text16)
        dit.text_bucket = 0
        row = {
            "rel_l2_prefix_fp32_vs_dense_fp32": rel_l2(prefix32, plain),
            "rel_l2_eager_bf16_vs_plain_fp32": rel_l2(eager16, plain),
            "rel_l2_fast_bf16_vs_plain_fp32": rel_l2(fast, plain),
            "rel_l2_fast_eager_bf16_vs_plain_fp32": rel_l2(fast_eager, plain),
            "rel_l2_fast_bf16_vs_eager_bf16": rel_l2(fast, eager16),
            "rel_l2_fast_bf16_fp32_latents_vs_plain_fp32": rel_l2(fast_lat32, plain),
            "rel_l2_fast_bucket_bf16_vs_plain_fp32": rel_l2(fast_bucket, plain),
            "rel_l2_fast_bucket_vs_fast_bf16": rel_l2(fast_bucket, fast),
            "graphs_equal_eager_bitwise": bool(torch.equal(graphs16, eager16)),
        }
        finite = all(bool(torch.isfinite(x).all()) for x in (fast, fast_lat32, fast_bucket))
        # bf16 weights/activations: the fast path must stay as close to the plain fp32 result as the eager
        # bf16 path is (same arithmetic up to kernel rounding), and never produce NaN/inf.
        ok = (row["rel_l2_prefix_fp32_vs_dense_fp32"] < 1e-4 and row["graphs_equal_eager_bitwise"] and finite
              and row["rel_l2_fast_bf16_vs_plain_fp32"] < 1.25 * row["rel_l2_eager_bf16_vs_plain_fp32"] + 1e-3
              and row["rel_l2_fast_bucket_bf16_vs_plain_fp32"] < 1.25 * row["rel_l2_eager_bf16_vs_plain_fp32"] + 1e-3)
        bad += 0 if ok else 1
        print(json.dumps({"check": "equal", "model": model_name, "variant": args.variant, "temp": args.temp,
                          "compile": args.compile, **row, "finite": finite, "plain_s": round(t1 - t0, 2),
                          "fast_s_incl_first_compile": round(t3 - t2, 2), "ok": ok}), flush=True)
        del dit
        torch.cuda.empty_cache()
    return 1 if bad else 0


def cmd_profile(args: argparse.Namespace) -> int:
    """Where the time of a short full-size video goes: warm-up, sampling alone, decode alone, sampling with
    streamed decode, per-forward DiT timing by (unit, stage), then a torch.profiler table."""
    from torch.profiler import ProfilerActivity, profile

    from generation.decode import StreamingFrameDecoder, decode_to_frames
    from generation.latents import latent_norm
    from generation.models.fusion import fuse_projections
    from generation.models.graphed import GraphedDiT
    from generation.models.linear_gelu import use_gelu_epilogue
    from generation.sampling.noise import GeneratorNoise
    from generation.sampling.pyramid import SamplerOptions, prepare_initial_noise, sample_t2v

    device = torch.device(args.device)
    dtype = torch.bfloat16
    dit, vae = _random_models(args.model, device, dtype)
    epilogue = device.type == "cuda"
    use_gelu_epilogue(dit, epilogue)
    fuse_projections(dit, single_mlp=not epilogue)  # the resident path, as the generator runs it
    if args.compile:
        dit.compile_blocks()  # compiled during the warm-up run below
    model = GraphedDiT(dit) if args.graphs else dit
    text = _random_text(args.model, device, dtype)
    opts = SamplerOptions()
    norm = latent_norm(args.model)

    def sample(temp: int, stream: bool, dit_fn=model):
        noise = GeneratorNoise(0)
        init = prepare_initial_noise(noise, batch=1, temp=temp, latent_height=48, latent_width=80, num_stages=3,
                                     device=device, dtype=dtype)
        st = StreamingFrameDecoder(vae, norm, tiling=True, dtype=dtype) if stream else None
        lat = sample_t2v(dit_fn, text, init, options=opts, noise=noise,
                         on_unit=(lambda _k, x: st.push(x)) if st is not None else None)
        if st is not None:
            st.frames()
        _sync()
        return lat

    def timed(label: str, fn) -> None:
        _sync()
        t = time.perf_counter()
        with torch.no_grad():
            fn()
        _sync()
        print(json.dumps({"profile": label, "s": round(time.perf_counter() - t, 3)}), flush=True)

    temp = args.temp
    timed(f"warmup_t{temp}_stream", lambda: sample(temp, True))
    timed(f"sampling_t{temp}", lambda: sample(temp, False))
    lat = {}
    with torch.no_grad():
        lat["x"] = sample(temp, False)
    timed(f"decode_tiled_t{temp}", lambda: decode_to_frames(vae, lat["x"], norm, tiling=True, dtype=dtype))
    timed(f"sampling_stream_t{temp}", lambda: sample(temp, True))

    per_call = PerCallTimer(model, full_height=48)
    with torch.no_grad():
        sample(temp, False, per_call)
    print(json.dumps({"profile": "dit_ms_per_call_by_unit_stage", **per_call.summary()}), flush=True)
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        sample(min(temp, 4), True)
    print(prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=25, max_name_column_width=60))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=60))
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generation.bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("tiny", cmd_tiny), ("parity", cmd_parity), ("full", cmd_full), ("equal", cmd_equal),
                     ("profile", cmd_profile)):
        p = sub.add_parser(name)
        p.add_argument("--device", default="cuda")
        p.set_defaults(func=fn)
        if name == "full":
            p.add_argument("--model", default="pyramid_flux", choices=["pyramid_flux", "pyramid_mmdit"])
            p.add_argument("--variant", default="384p", choices=["384p", "768p"])
            p.add_argument("--temp", type=int, default=16)
            p.add_argument("--repeat", type=int, default=2)
            p.add_argument("--attention", default="prefix", choices=["prefix", "dense"])
            p.add_argument("--stream", action="store_true", help="decode each unit as soon as it is generated")
            p.add_argument("--graphs", action="store_true", help="replay DiT forwards from CUDA graphs")
            p.add_argument("--untiled", action="store_true", help="decode without spatial tiles")
            p.add_argument("--decode-tile", type=int, default=0, help="VAE decode tile in px, overriding the plan's")
            p.add_argument("--compile", action="store_true", help="run the DiT blocks under torch.compile")
            p.add_argument("--tiny-models", action="store_true", help="dry run with the tiny models (no GPU needed)")
            p.add_argument("--side-stream", action="store_true", help="streamed decode on its own CUDA stream")
            p.add_argument("--no-fuse", action="store_true", help="keep the q/k/v (and MLP-in) projections separate")
            p.add_argument("--step-cache", type=float, default=0.0,
                           help="then the same runs with step caching at this threshold (time, distance from exact)")
            p.add_argument("--ab-off", action="store_true",
                           help="then, in the same process, the same runs with the hand-written kernels off")
            p.add_argument("--prewarm", action="store_true",
                           help="capture every layout's graph before the timed runs, as the worker does")
            p.add_argument("--off", nargs="*", default=[], choices=["norm_rope", "gelu_epilogue", "split_out", "varlen"],
                           help="turn off hand-written kernels (to measure each)")
            p.add_argument("--offload-graphs", action="store_true",
                           help="with --planner: CUDA graphs also under sequential offload (uploads captured)")
            p.add_argument("--per-call", action="store_true",
                           help="time every DiT forward of the last run (CUDA events), by unit and stage")
            p.add_argument("--planner", action="store_true",
                           help="place the models as the memory planner decides for the free memory / --mem-cap-gib")
            p.add_argument("--mem-cap-gib", type=float, default=0.0, help="cap the CUDA allocator (simulate a small card)")
            p.add_argument("--text-bucket", type=int, default=0,
                           help="mask text pads by key, text kept to multiples of N tokens (graphs per bucket)")
            p.add_argument("--vary-text", action="store_true",
                           help="each run after the first has a prompt of another length (graphs are per text layout)")
        if name == "tiny":
            p.add_argument("--compile", action="store_true", help="also run with compiled DiT blocks")
        if name == "profile":
            p.add_argument("--model", default="pyramid_flux", choices=["pyramid_flux", "pyramid_mmdit"])
            p.add_argument("--temp", type=int, default=6)
            p.add_argument("--graphs", action="store_true")
            p.add_argument("--compile", action="store_true")
        if name == "equal":
            p.add_argument("--models", nargs="+", default=["pyramid_flux", "pyramid_mmdit"])
            p.add_argument("--compile", action="store_true", help="the fast path also compiles the DiT blocks")
            p.add_argument("--variant", default="384p", choices=["384p", "768p"])
            p.add_argument("--temp", type=int, default=3)
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
