"""GPU checks and timings of the generator: `python -m generation.bench {tiny,parity,full} [...]`.

tiny:   the tiny pipeline on the accelerator in bf16 with every placement (outputs must be equal).
parity: the e2e parity fixtures run on the accelerator (fp32) and the deviations printed.
full:   full-size random-weight DiT + VAE (text encoders replaced by random embeddings of the right
        shapes, as in SPEC §11.1) for one 384p/768p video; prints sampling/decode time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def cmd_tiny(args: argparse.Namespace) -> int:
    from generation.api import GenerationRequest
    from generation.pipeline import PyramidFlowGenerator, build_components
    from generation.sampling.noise import GeneratorNoise
    from generation.settings import GenerationSettings

    frames = {}
    for placement in ("gpu", "model_offload", "sequential_offload"):
        s = GenerationSettings(device=args.device, dtype="bf16", placement=placement)
        g = PyramidFlowGenerator(build_components(s), s)
        job = g.validate(GenerationRequest(prompt="a red panda", temp=4, num_inference_steps=(3, 3, 3),
                                           video_num_inference_steps=(2, 2, 2)))
        t = time.perf_counter()
        f, timings = g.render(job, noise=GeneratorNoise(1))
        _sync()
        frames[placement] = f
        print(f"tiny {placement}: {f.shape} {time.perf_counter() - t:.2f}s {timings}")
    ok = all(np.array_equal(frames["gpu"], v) for v in frames.values())
    print("placements equal:", ok)
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


def _random_text(model_name: str, device: torch.device, dtype: torch.dtype):
    from generation.sampling.pyramid import TextConditioning

    g = torch.Generator(device="cpu").manual_seed(0)
    pooled = 768 if model_name == "pyramid_flux" else 2048
    emb = torch.randn(2, 128, 4096, generator=g) * 0.1
    mask = torch.zeros(2, 128, dtype=torch.long)
    mask[0, :40] = 1
    mask[1, :25] = 1
    pool = torch.randn(2, pooled, generator=g)
    return TextConditioning(emb.to(device, dtype), mask.to(device), pool.to(device, dtype), cfg=True)


def cmd_full(args: argparse.Namespace) -> int:
    from generation.decode import StreamingFrameDecoder, decode_to_frames
    from generation.latents import latent_norm
    from generation.models import build_dit
    from generation.models.vae import CausalVideoVAE, VAEConfig
    from generation.sampling.noise import GeneratorNoise
    from generation.sampling.pyramid import SamplerOptions, prepare_initial_noise, sample_t2v

    device = torch.device(args.device)
    dtype = torch.bfloat16
    manifests = ROOT / "tests" / "fixtures" / "manifests"
    short = {"pyramid_flux": "dit_pyramid_flux", "pyramid_mmdit": "dit_pyramid_mmdit"}[args.model]
    dit_cfg = json.loads((manifests / f"{short}.json").read_text())["config_json"]
    vae_cfg = json.loads((manifests / "causal_vae.json").read_text())["config_json"]
    torch.manual_seed(0)
    t = time.perf_counter()
    with torch.device(device):
        dit = build_dit(args.model, dit_cfg, attention_backend=args.attention).to(dtype).eval().requires_grad_(False)
        vae = CausalVideoVAE(VAEConfig.from_dict(vae_cfg)).to(dtype).eval().requires_grad_(False)
    _sync()
    print(f"built random {args.model} + VAE on {device} in {time.perf_counter() - t:.1f}s")
    w, h = (640, 384) if args.variant == "384p" else (1280, 768)
    text = _random_text(args.model, device, dtype)
    opts = SamplerOptions(first_frame_steps=(20, 20, 20), video_steps=(10, 10, 10), guidance_scale=7.0,
                          video_guidance_scale=5.0)
    norm = latent_norm(args.model)
    for rep in range(args.repeat):
        torch.cuda.reset_peak_memory_stats()
        noise = GeneratorNoise(rep)
        t0 = time.perf_counter()
        with torch.no_grad():
            init = prepare_initial_noise(noise, batch=1, temp=args.temp, latent_height=h // 8, latent_width=w // 8,
                                         num_stages=3, device=device, dtype=dtype)
            stream = StreamingFrameDecoder(vae, norm, tiling=True, dtype=dtype) if args.stream else None
            on_unit = (lambda _k, x, s=stream: s.push(x)) if stream is not None else None
            lat = sample_t2v(dit, text, init, options=opts, noise=noise, on_unit=on_unit)
            _sync()
            t1 = time.perf_counter()
            frames = stream.frames() if stream is not None else decode_to_frames(vae, lat, norm, tiling=True,
                                                                                 dtype=dtype)
            _sync()
            t2 = time.perf_counter()
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"run {rep}: {args.model} {args.variant} temp={args.temp} total {t2 - t0:.1f}s "
              f"(sampling{'+stream decode' if stream else ''} {t1 - t0:.1f}s, final decode {t2 - t1:.1f}s) "
              f"frames {frames.shape} peak {peak:.1f} GiB finite={bool(torch.isfinite(lat).all())}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generation.bench")
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name, fn in (("tiny", cmd_tiny), ("parity", cmd_parity), ("full", cmd_full)):
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
    args = ap.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
