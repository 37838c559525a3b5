"""Where the GPU time of the fast path goes, by kernel kind (GPU only; the figures go to RESULTS.md).

    python benchmarks/gpu_profile.py layouts --model pyramid_flux [--compile] [--labels u2s0 u15s2]
        [--merge 256 0 1024] [--text-bucket 0 32]
    python benchmarks/gpu_profile.py video --model pyramid_flux [--compile] --temp 4

`layouts`: the full-size DiT (random weights, bf16, fused projections) as the generator runs it resident,
one CUDA graph per (unit, stage) layout of a 384p video. For each layout it prints the replay time (CUDA
events over `--replays` replays) for every `--merge` value (frames merged into one masked attention call
while their queries fit), and for every `--text-bucket` value, then one profiled set of replays split by kernel kind: GEMM, attention,
compiled (Triton) kernels, norms, copies/cats, other elementwise, and the GPU idle time between kernels.

`video`: a warm `temp`-unit video (sampling with the streamed decode on its side stream), profiled the same
way, with the VAE's convolutions counted apart.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dit_work import layouts  # noqa: E402

from generation.bench import _random_models, _random_text, _sync  # noqa: E402

KINDS = (  # first match wins: (kind, substrings of the CUDA kernel name, lower case)
    ("compiled", ("triton",)),  # first: Inductor's names carry op names ("convert_element_type", "to_copy")
    ("vae_conv", ("fprop", "conv", "implicit", "winograd", "dgrad", "wgrad")),
    ("attention", ("flash", "fmha", "attention", "efficient_attention", "cutlass_attn")),
    ("gemm", ("gemm", "nvjet", "xmma", "cublas", "matmul", "cutlass", "sm90_")),
    ("norm", ("norm",)),
    ("copy_cat", ("copy", "cat", "memcpy", "memset", "index", "scatter", "gather")),
    ("elementwise", ("elementwise", "vectorized", "reduce", "unrolled", "kernel")),
)


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def breakdown(prof: torch.profiler.profile, calls: int) -> dict:
    """Kernel time per kind (ms per call), busy vs idle GPU time, and the top kernels, from a profile."""
    spans: list[tuple[float, float]] = []
    by_kind: Counter[str] = Counter()
    by_name: Counter[str] = Counter()
    for e in prof.events():
        if e.device_type != torch.autograd.DeviceType.CUDA:
            continue
        t0, t1 = e.time_range.start, e.time_range.end
        if t1 <= t0:
            continue
        spans.append((t0, t1))
        by_kind[kind_of(e.name)] += t1 - t0
        by_name[e.name[:90]] += t1 - t0
    if not spans:
        return {"kernels": 0}
    spans.sort()
    busy, cur0, cur1 = 0.0, *spans[0]
    for a, b in spans[1:]:
        if a > cur1:
            busy += cur1 - cur0
            cur0, cur1 = a, b
        else:
            cur1 = max(cur1, b)
    busy += cur1 - cur0
    wall = spans[-1][1] - spans[0][0]
    total = sum(by_kind.values())
    return {
        "kernels_per_call": round(len(spans) / calls, 1),
        "ms_per_call": {k: round(v / 1000 / calls, 3) for k, v in by_kind.most_common()},
        "share": {k: round(v / total, 3) for k, v in by_kind.most_common()},
        "gpu_busy_ms_per_call": round(busy / 1000 / calls, 3),
        "gpu_span_ms_per_call": round(wall / 1000 / calls, 3),
        "idle_share": round(1 - busy / wall, 3) if wall else 0.0,
        "top": {k: round(v / 1000 / calls, 3) for k, v in by_name.most_common(12)},
    }


def _setup(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from generation.models.fusion import fuse_projections
    from generation.models.linear_gelu import use_gelu_epilogue

    device = torch.device("cuda")
    dtype = torch.bfloat16
    t = time.perf_counter()
    dit, vae = _random_models(args.model, device, dtype)
    use_gelu_epilogue(dit)  # the generator's resident path: GELU epilogues, q/k/v fused apart from the MLP
    fuse_projections(dit, single_mlp=False)
    text = _random_text(args.model, device, dtype)
    if args.compile:
        dit.compile_blocks()
        with torch.no_grad():
            dit(*dit.probe_inputs(12, 20))
        _sync()
    print(
        json.dumps(
            {
                "setup_s": round(time.perf_counter() - t, 1),
                "compiled": dit.compiled,
                "device": torch.cuda.get_device_name(),
                "torch": torch.__version__,
            }
        ),
        flush=True,
    )
    return dit, vae, text, device, dtype


def cmd_layouts(args: argparse.Namespace) -> int:
    from torch.profiler import ProfilerActivity, profile

    from generation.models.graphed import GraphedDiT

    dit, _vae, text, device, dtype = _setup(args)
    g = torch.Generator(device="cpu").manual_seed(0)
    wanted = {label: shapes for label, shapes, _ in layouts(16, 48, 80, 20, 10) if label in args.labels}
    graphed = GraphedDiT(dit)
    t = torch.full((2,), 500.0, device=device, dtype=dtype)
    ev = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    with torch.no_grad():
        for label, shapes in wanted.items():
            clips = [torch.randn(2, *s[1:], generator=g).to(device, dtype) for s in shapes]
            inputs = (clips, text.prompt_embeds, text.attention_mask, text.pooled, t)
            row: dict = {"layout": label, "clips": [list(s[2:]) for s in shapes]}
            for bucket in args.text_bucket:  # 0: per-row text ranges; > 0: pads masked, text attended apart
                dit.text_bucket = bucket
                tag = "" if bucket == 0 else f"_bucket{bucket}"
                for merge in args.merge if len(args.text_bucket) == 1 else args.merge[:1]:
                    dit.merge_tokens = merge
                    graphed(*inputs)  # capture
                    _sync()
                    ev[0].record()
                    for _ in range(args.replays):
                        graphed(*inputs)
                    ev[1].record()
                    _sync()
                    row[f"ms{tag}_merge{merge}"] = round(ev[0].elapsed_time(ev[1]) / args.replays, 3)
                dit.merge_tokens = args.merge[0]
                with profile(activities=[ProfilerActivity.CUDA]) as prof:
                    for _ in range(args.profiled):
                        graphed(*inputs)
                    _sync()
                row[f"graph_replay{tag}"] = breakdown(prof, args.profiled)
                if row[f"graph_replay{tag}"].get("kernels", 1) == 0 or args.eager_too:  # no kernels in graphs
                    with profile(activities=[ProfilerActivity.CUDA]) as prof:
                        for _ in range(args.profiled):
                            dit(*inputs)
                        _sync()
                    row[f"eager{tag}"] = breakdown(prof, args.profiled)
            dit.text_bucket = 0
            print(json.dumps(row), flush=True)
    return 0


def cmd_video(args: argparse.Namespace) -> int:
    from torch.profiler import ProfilerActivity, profile

    from generation.decode import StreamingFrameDecoder
    from generation.latents import latent_norm
    from generation.models.graphed import GraphedDiT
    from generation.sampling.noise import GeneratorNoise
    from generation.sampling.pyramid import SamplerOptions, prepare_initial_noise, sample_t2v

    dit, vae, text, device, dtype = _setup(args)
    model = GraphedDiT(dit)
    opts = SamplerOptions(
        first_frame_steps=(20, 20, 20), video_steps=(10, 10, 10), guidance_scale=7.0, video_guidance_scale=5.0
    )
    norm = latent_norm(args.model)
    calls = 20 * 3 + 10 * 3 * (args.temp - 1)

    def video() -> float:
        t0 = time.perf_counter()
        noise = GeneratorNoise(0)
        init = prepare_initial_noise(
            noise,
            batch=1,
            temp=args.temp,
            latent_height=48,
            latent_width=80,
            num_stages=3,
            device=device,
            dtype=dtype,
        )
        st = StreamingFrameDecoder(vae, norm, tiling=False, dtype=dtype, side_stream=True)
        sample_t2v(model, text, init, options=opts, noise=noise, on_unit=lambda _k, x: st.push(x))
        st.frames()
        _sync()
        return time.perf_counter() - t0

    with torch.no_grad():
        first = video()
        warm = video()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            profiled = video()
    print(
        json.dumps(
            {
                "video": args.model,
                "temp": args.temp,
                "dit_calls": calls,
                "first_s": round(first, 2),
                "warm_s": round(warm, 2),
                "profiled_s": round(profiled, 2),
                "per_dit_call": breakdown(prof, calls),
            }
        ),
        flush=True,
    )
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("layouts", "video"):
        p = sub.add_parser(name)
        p.add_argument("--model", default="pyramid_flux", choices=["pyramid_flux", "pyramid_mmdit"])
        p.add_argument("--compile", action="store_true")
    p = sub.choices["layouts"]
    p.add_argument("--labels", nargs="+", default=["u1s0", "u2s0", "u15s0", "u15s1", "u15s2"])
    p.add_argument("--merge", type=int, nargs="+", default=[256, 0, 1024])
    p.add_argument("--replays", type=int, default=20)
    p.add_argument("--profiled", type=int, default=5)
    p.add_argument("--eager-too", action="store_true", help="also profile eager forwards")
    p.add_argument("--text-bucket", type=int, nargs="+", default=[0],
                   help="text_bucket values to compare (0: per-row text ranges); several: first --merge only")
    sub.choices["video"].add_argument("--temp", type=int, default=4)
    args = ap.parse_args()
    return {"layouts": cmd_layouts, "video": cmd_video}[args.cmd](args)


if __name__ == "__main__":
    raise SystemExit(main())
