"""Work of the DiT for one whole video, counted on the meta device (no GPU, no weights, no arithmetic).

For every (unit, stage) layout the sampler uses, one DiT forward of the full-size model runs on meta tensors
under torch's FLOP counter and an op counter; each is multiplied by that layout's step count. Prints the
total TFLOP (matrix multiplies vs attention), the ops that launch a kernel (views excluded), and the time
the FLOPs alone would take at a given throughput. Device-independent: the GPU timings are elsewhere.

    python benchmarks/dit_work.py --model pyramid_flux --temp 16 [--no-fuse] [--text-valid 40 25]

Runs against whatever `generation` package is importable, so an older checkout can be counted the same way
(PYTHONPATH=/path/to/old/checkout python benchmarks/dit_work.py ...).
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from generation.bench import _manifest_config
from generation.models import build_dit
from generation.sampling.pyramid import HistoryPyramid

ATTENTION_OPS = ("scaled_dot_product", "bmm", "baddbmm")  # FLOP-counter keys of attention (math path on meta)


NO_KERNEL = ("detach.default", "alias.default", "_unsafe_view.default", "empty.memory_format")


FUSED_ON_GPU = ("scaled_dot_product_attention", "rms_norm")  # one CUDA kernel each; decomposed on meta


class _OpCounter(TorchDispatchMode):
    """Counts dispatched ATen ops that launch a kernel (views and aliases do not). An SDPA or RMSNorm call
    counts as one op, as on a GPU: on the meta device they decompose, and their pieces are not counted."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: Counter[str] = Counter()
        self.depth = 0
        self._saved: dict[str, object] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if not self.depth and not func.is_view and func.__name__ not in NO_KERNEL:
            self.ops[func.__name__] += 1
        return func(*args, **(kwargs or {}))

    def _wrap(self, name: str):  # type: ignore[no-untyped-def]
        inner = self._saved[name]

        def call(*a, **k):  # type: ignore[no-untyped-def]
            if not self.depth:
                self.ops[name] += 1
            self.depth += 1
            try:
                return inner(*a, **k)  # type: ignore[operator]
            finally:
                self.depth -= 1

        return call

    def __enter__(self):  # type: ignore[no-untyped-def]
        for name in FUSED_ON_GPU:
            self._saved[name] = getattr(F, name)
            setattr(F, name, self._wrap(name))
        return super().__enter__()

    def __exit__(self, *exc):  # type: ignore[no-untyped-def]
        for name, fn in self._saved.items():
            setattr(F, name, fn)
        return super().__exit__(*exc)


def layouts(temp: int, h: int, w: int, first_steps: int, video_steps: int) -> list[tuple[str, list[tuple], int]]:
    """(label, clip shapes, steps) of every (unit, stage) of a t2v video of `temp` latent frames."""
    out = []
    pyramid = HistoryPyramid(3)
    for k in range(temp):
        for s in range(3):
            hs, ws = h >> (2 - s), w >> (2 - s)
            clips = [tuple(c.shape) for c in pyramid.clips_for_stage(s)] + [(1, 16, 1, hs, ws)]
            out.append((f"u{k}s{s}", clips, first_steps if k == 0 else video_steps))
        pyramid.append(torch.zeros(1, 16, 1, h, w, device="meta"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="pyramid_flux", choices=["pyramid_flux", "pyramid_mmdit"])
    ap.add_argument("--variant", default="384p", choices=["384p", "768p"])
    ap.add_argument("--temp", type=int, default=16)
    ap.add_argument("--text-len", type=int, default=128)
    ap.add_argument("--text-valid", type=int, nargs=2, default=[40, 25], help="valid tokens of the CFG rows")
    ap.add_argument("--no-fuse", action="store_true")
    ap.add_argument("--tflops", type=float, default=788.0, help="throughput for the FLOP floor (H100 measured)")
    args = ap.parse_args()

    h, w = (48, 80) if args.variant == "384p" else (96, 160)
    dt = torch.bfloat16
    with torch.device("meta"):
        dit = build_dit(args.model, _manifest_config(args.model)).to(dt).eval()
    fused = False
    if not args.no_fuse:
        try:
            from generation.models.fusion import fuse_projections
        except ImportError:  # an older checkout without fused projections
            pass
        else:
            fuse_projections(dit)
            fused = True
    cfg = dit.config
    enc = torch.zeros(2, args.text_len, cfg.joint_attention_dim, device="meta", dtype=dt)
    mask = torch.zeros(2, args.text_len, dtype=torch.long)  # read on the host by the DiT, so a CPU tensor
    for row, n in enumerate(args.text_valid):
        mask[row, :n] = 1
    pooled = torch.zeros(2, cfg.pooled_projection_dim, device="meta", dtype=dt)
    t = torch.zeros(2, device="meta", dtype=dt)
    totals: Counter[str] = Counter()
    mm = attn = 0.0
    calls = 0
    t0 = time.perf_counter()
    with torch.no_grad():
        for _label, shapes, steps in layouts(args.temp, h, w, 20, 10):
            clips = [torch.zeros(2, *s[1:], device="meta", dtype=dt) for s in shapes]
            ops = _OpCounter()
            flops = FlopCounterMode(display=False)
            with ops, flops:
                dit(clips, enc, mask, pooled, t)
            by_op = flops.get_flop_counts().get("Global", {})
            a = sum(v for k, v in by_op.items() if any(x in str(k) for x in ATTENTION_OPS))
            attn += steps * a
            mm += steps * (flops.get_total_flops() - a)
            for k, v in ops.ops.items():
                totals[k] += steps * v
            calls += steps
    total = mm + attn
    print(json.dumps({
        "bench": "dit_work", "model": args.model, "variant": args.variant, "temp": args.temp, "fused": fused,
        "text_len": args.text_len, "text_valid": args.text_valid, "dit_calls": calls,
        "tflop": round(total / 1e12, 1), "tflop_matmul": round(mm / 1e12, 1), "tflop_attention": round(attn / 1e12, 1),
        "kernel_ops": sum(totals.values()), "kernel_ops_per_call": round(sum(totals.values()) / calls),
        "top_ops": dict(totals.most_common(8)), f"floor_s_at_{args.tflops:g}_tflops": round(total / 1e12 / args.tflops, 2),
        "count_s": round(time.perf_counter() - t0, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
