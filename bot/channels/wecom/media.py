"""Fit an MP4 into WeCom's inline-video limit (10 MB) by re-encoding, with the bundled ffmpeg.

A fixed ladder, tried in order, first fit wins: CRF `crf_min`, the midpoint, `crf_max` at the source
height, then `crf_max` at 3/4, 1/2 and 3/8 of the height (never below `min_height`). H.264 yuv420p
with `+faststart`, audio (if any) as 64 kb/s AAC. Deterministic: same input, same settings, same
output (x264 is repeatable unless told `--non-deterministic`). Runs ffmpeg synchronously; call it
from a worker thread.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

log = logging.getLogger(__name__)

_SCALES = (0.75, 0.5, 0.375)


class ReencodeError(Exception):
    """ffmpeg could not read or write the video."""


@dataclass(frozen=True, slots=True)
class Reencoded:
    path: Path | None  # the fitting output, None when no step fitted
    size: int  # its size (or the smallest attempt's when nothing fitted)
    crf: int | None
    scale: float
    attempts: int


def ladder(crf_min: int, crf_max: int) -> list[tuple[int, float]]:
    """(crf, height factor) steps, best quality first."""
    steps = [(crf_min, 1.0), ((crf_min + crf_max) // 2, 1.0), (crf_max, 1.0)]
    steps += [(crf_max, factor) for factor in _SCALES]
    unique: list[tuple[int, float]] = []
    for step in steps:
        if step not in unique:
            unique.append(step)
    return unique


def _encode(src: Path, dst: Path, *, crf: int, scale: float, min_height: int, preset: str) -> int:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-i", str(src),
           "-map", "0:v:0", "-map", "0:a:0?", "-c:a", "aac", "-b:a", "64k"]  # fmt: skip
    if scale < 1.0:
        cmd += ["-vf", f"scale=-2:'max({min_height},trunc(ih*{scale}/2)*2)'"]
    # keep the metadata, the AIGC label (GB 45438) included: ffmpeg drops `mdta` keys without use_metadata_tags
    cmd += ["-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
            "-map_metadata", "0", "-movflags", "+faststart+use_metadata_tags", str(dst)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        raise ReencodeError(f"ffmpeg failed ({result.returncode}): {result.stderr[-300:]}")
    return dst.stat().st_size


def fit_video(
    src: Path, out_dir: Path, *, budget_bytes: int, crf_min: int = 23, crf_max: int = 38,
    min_height: int = 144, preset: str = "veryfast",
) -> Reencoded:  # fmt: skip
    """Re-encode `src` into `out_dir` within `budget_bytes` (see the module docstring)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    smallest = -1
    for attempt, (crf, scale) in enumerate(ladder(crf_min, crf_max), start=1):
        dst = out_dir / f"{src.stem}.wecom{attempt}.mp4"
        size = _encode(src, dst, crf=crf, scale=scale, min_height=min_height, preset=preset)
        if size <= budget_bytes:
            return Reencoded(dst, size, crf, scale, attempt)
        smallest = size if smallest < 0 else min(smallest, size)
        dst.unlink(missing_ok=True)
    return Reencoded(None, smallest, None, 0.0, attempt)
