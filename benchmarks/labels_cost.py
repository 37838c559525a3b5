"""Time added per video by the lawful-output steps, on the CPU: the 「AI生成」 label composited into every frame,
the open_nsfw check of the sampled frames (every 6th + the last), and the AIGC metadata in the encode.

Frames are the synthetic generator's (moving stripes) at 640×384 and 1280×768, 5 s at 24 fps (121 frames, what
Pyramid Flow makes for temp=16). Each figure is the median of `--repeat` warm runs.

    .venv/bin/python benchmarks/labels_cost.py [--repeat 5] [--threads 1,2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from generation.api import GenerationRequest  # noqa: E402
from generation.content_check import ContentChecker, ContentCheckSettings, OpenNsfwClassifier, _load  # noqa: E402
from generation.labels import LabelOverlay, aigc_value, read_aigc  # noqa: E402
from generation.synthetic import SyntheticGenerator  # noqa: E402
from generation.video_io import write_mp4  # noqa: E402

SIZES = [(640, 384), (1280, 768)]
FRAMES = 121  # 5 s at 24 fps


def _median(fn: Any, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _frames(width: int, height: int) -> np.ndarray:
    gen = SyntheticGenerator(steps=1, step_delay_s=0, fps=24, width=width, height=height)
    clip = gen.frames(GenerationRequest(prompt="a lighthouse at dusk", duration_s=5))
    return np.concatenate([clip, clip[-1:]])[:FRAMES]  # 121 frames


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import onnxruntime

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--threads", default="1,2", help="onnxruntime thread counts to measure")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    threads = [int(t) for t in args.threads.split(",")]
    out: dict[str, Any] = {"machine": machine(), "frames": FRAMES, "sizes": {}}

    t0 = time.perf_counter()
    OpenNsfwClassifier(threads=threads[0]).load()
    out["nsfw_model_load_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        for width, height in SIZES:
            frames = _frames(width, height)
            row: dict[str, Any] = {}
            overlay = LabelOverlay()
            t0 = time.perf_counter()
            overlay.render(width, height)
            row["label_render_once_ms"] = (time.perf_counter() - t0) * 1000
            clip_s = _median(lambda f=frames, o=overlay: o.apply(f.copy()), args.repeat)
            copy_s = _median(lambda f=frames: f.copy(), args.repeat)
            row["label_per_frame_ms"] = max(0.0, clip_s - copy_s) / FRAMES * 1000
            row["label_per_clip_ms"] = max(0.0, clip_s - copy_s) * 1000
            for n in threads:
                checker = ContentChecker(ContentCheckSettings(threads=n))
                checker.check_frames(frames[:7])  # warm (and load for this thread count)
                per_clip = _median(lambda c=checker, f=frames: c.check_frames(f), args.repeat)
                sampled = len(checker.check_frames(frames).scores)
                row[f"nsfw_{n}t_per_clip_ms"] = per_clip * 1000
                row[f"nsfw_{n}t_per_sampled_frame_ms"] = per_clip / sampled * 1000
                row["nsfw_sampled_frames"] = sampled
            value = aigc_value("001191110000MA0000000X1XV01", "xv-1-0a1b2c3d")
            # the same encode with and without the tag, alternating, so load changes hit both alike
            pairs = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                write_mp4(frames, Path(tmp) / "a.mp4", fps=24)
                t1 = time.perf_counter()
                write_mp4(frames, Path(tmp) / "b.mp4", fps=24, metadata={"AIGC": value})
                pairs.append((t1 - t0, time.perf_counter() - t1))
            row["encode_plain_ms"] = statistics.median(a for a, _ in pairs) * 1000
            row["encode_with_aigc_ms"] = statistics.median(b for _, b in pairs) * 1000
            row["metadata_added_ms"] = statistics.median(b - a for a, b in pairs) * 1000
            row["metadata_added_bytes"] = (Path(tmp) / "b.mp4").stat().st_size - (Path(tmp) / "a.mp4").stat().st_size
            row["read_aigc_ms"] = _median(lambda: read_aigc(Path(tmp) / "b.mp4"), 20) * 1000
            best = min(row[f"nsfw_{n}t_per_clip_ms"] for n in threads)
            row["added_per_video_ms"] = row["label_per_clip_ms"] + best + max(0.0, row["metadata_added_ms"])
            out["sizes"][f"{width}x{height}"] = row
    out["loaded_models"] = _load.cache_info().currsize
    print(json.dumps(out, indent=2, ensure_ascii=False))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
