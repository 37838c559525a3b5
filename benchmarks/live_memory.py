"""Peak live tensor bytes of the streamed VAE decode, counted on the meta device (no GPU, no arithmetic).

Every tensor an op creates is counted by its storage while any tensor viewing that storage is alive, so
the peak is the working set the decode needs beyond its weights, before the CUDA allocator's rounding and
caching (which the planner's margin covers). It answers what a GPU run can only answer by running out of
memory: how much smaller the decode gets with smaller tiles.

    python benchmarks/live_memory.py --variant 384p --tiles none 256 128 --frames 3
    python benchmarks/live_memory.py --variant 384p --tiles 256 128 --tile-major 16

`--tile-major T` measures the decode after sampling instead (`vae.decode(z, chunk_window=1, tile_size=...)`
on a T-frame latent: tile by tile, one tile's caches alive at a time; the peak includes the decoded video).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import weakref
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from generation.bench import _manifest_config  # noqa: E402


class LiveBytes(TorchDispatchMode):
    """Live bytes of the storages that ops inside the mode created, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._refs: dict[int, int] = {}  # storage key -> live tensors on it
        self._size: dict[int, int] = {}

    def _drop(self, key: int) -> None:
        self._refs[key] -= 1
        if not self._refs[key]:
            del self._refs[key]
            self.live -= self._size.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        seen = {id(t) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or id(t) in seen:  # in-place ops return their input
                continue
            key = t.untyped_storage()._cdata
            if key not in self._refs:
                self._refs[key] = 0
                self._size[key] = t.untyped_storage().nbytes()
                self.live += self._size[key]
                self.peak = max(self.peak, self.live)
            self._refs[key] += 1
            weakref.finalize(t, self._drop, key)
        return out


def main() -> int:
    from generation.models.vae import CausalVideoVAE, VAEConfig

    ap = argparse.ArgumentParser()
    ap.add_argument("--variant", default="384p", choices=["384p", "768p"])
    ap.add_argument("--tiles", nargs="+", default=["none", "256", "128"])
    ap.add_argument("--frames", type=int, default=3, help="latent frames pushed one at a time (first + later)")
    ap.add_argument("--tile-major", type=int, default=0, metavar="T", help="decode a T-frame latent tile by tile")
    args = ap.parse_args()
    h, w = (48, 80) if args.variant == "384p" else (96, 160)
    with torch.device("meta"):
        vae = CausalVideoVAE(VAEConfig.from_dict(_manifest_config("vae"))).to(torch.bfloat16).eval()
    weights = sum(p.numel() * p.element_size() for p in vae.parameters())
    for tile in args.tiles:
        size = None if tile == "none" else int(tile)
        t0 = time.perf_counter()
        mode = LiveBytes()
        with torch.no_grad(), mode:
            if args.tile_major:
                z = torch.zeros(1, 16, args.tile_major, h, w, device="meta", dtype=torch.bfloat16)
                video = vae.decode(z, chunk_window=1, tile_size=size)
                del z, video
            else:
                stream = vae.stream_decoder(tile_size=size)
                for _ in range(args.frames):  # the causal caches reach their steady size after the first frames
                    frames = stream.push(torch.zeros(1, 16, 1, h, w, device="meta", dtype=torch.bfloat16))
                    del frames
        print(json.dumps({"bench": "decode_live_memory", "variant": args.variant, "tile": size,
                          "order": "tile_major" if args.tile_major else "streamed",
                          "latent_frames": args.tile_major or args.frames, "peak_gib": round(mode.peak / 2**30, 3),
                          "vae_weights_gib": round(weights / 2**30, 3), "count_s": round(time.perf_counter() - t0, 1)}),
              flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
