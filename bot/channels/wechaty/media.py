"""Make an MP4 fit for WeChat: H.264, yuv420p, `+faststart`, within a byte budget, plus a cover.

`prepare_video()` picks the least lossy way to fit the budget:

1. the file is already H.264/yuv420p and within budget → sent as is (remuxed with `+faststart`
   only when its `moov` atom is at the end; no re-encode, no loss);
   every remux and re-encode keeps the file's metadata, the `AIGC` label included (`KEEP_METADATA`);
2. otherwise it is re-encoded at the *lowest* CRF in `[crf_min, crf_max]` whose output fits
   (CRF search: the best quality is tried first, then a binary search, since the size falls as CRF
   rises);
3. when even `crf_max` does not fit, the height is scaled by 3/4 and step 2 repeats, down to
   `min_height`; if nothing fits the smallest attempt is returned with `fits=False` and the caller
   sends it as a file instead of a video.

Uses the ffmpeg binary bundled with imageio-ffmpeg; everything runs in a worker thread.
"""

from __future__ import annotations

import logging
import re
import shutil
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

import imageio_ffmpeg

log = logging.getLogger(__name__)

_STREAM_RE = re.compile(r"Stream #\d+:\d+.*?: Video: (\w+)[^,]*, (\w+)[^,]*?(?:\([^)]*\))?, (\d+)x(\d+)")
_DURATION_RE = re.compile(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)")
_AUDIO_RE = re.compile(r"Stream #\d+:\d+.*?: Audio: ")
# Every write keeps the source's metadata, the AIGC label (GB 45438) included: without `use_metadata_tags`
# ffmpeg silently drops `mdta` keys such as AIGC.
KEEP_METADATA = ("-map_metadata", "0", "-movflags", "+faststart+use_metadata_tags")


class MediaPrepError(Exception):
    """ffmpeg could not read or write the video."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    codec: str
    pix_fmt: str
    width: int
    height: int
    duration_s: float
    has_audio: bool
    faststart: bool
    size: int

    @property
    def wechat_ready(self) -> bool:
        return self.codec == "h264" and self.pix_fmt == "yuv420p"


@dataclass(frozen=True, slots=True)
class PreparedVideo:
    path: Path
    size: int
    fits: bool
    reencoded: bool
    crf: int | None
    width: int
    height: int
    duration_s: float
    attempts: int  # ffmpeg encodes run


def _ffmpeg() -> str:
    return imageio_ffmpeg.get_ffmpeg_exe()


def moov_before_mdat(path: Path) -> bool:
    """True when the top-level `moov` atom precedes `mdat` (what `+faststart` guarantees)."""
    with open(path, "rb") as fh:
        offset = 0
        while True:
            fh.seek(offset)
            header = fh.read(16)
            if len(header) < 8:
                return False
            size, kind = struct.unpack(">I4s", header[:8])
            if size == 1:
                size = struct.unpack(">Q", header[8:16])[0]
            elif size == 0:
                return False
            if kind == b"moov":
                return True
            if kind == b"mdat":
                return False
            offset += size


def probe(path: Path) -> VideoInfo:
    result = subprocess.run(
        [_ffmpeg(), "-hide_banner", "-i", str(path)], capture_output=True, text=True, errors="replace"
    )
    text = result.stderr
    stream = _STREAM_RE.search(text)
    duration = _DURATION_RE.search(text)
    if stream is None:
        raise MediaPrepError(f"no video stream in {path.name}: {text[-300:]}")
    seconds = 0.0
    if duration:
        hours, minutes, secs = duration.groups()
        seconds = int(hours) * 3600 + int(minutes) * 60 + float(secs)
    return VideoInfo(
        codec=stream.group(1),
        pix_fmt=stream.group(2),
        width=int(stream.group(3)),
        height=int(stream.group(4)),
        duration_s=seconds,
        has_audio=bool(_AUDIO_RE.search(text)),
        faststart=moov_before_mdat(path),
        size=path.stat().st_size,
    )


def _run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, errors="replace")
    if result.returncode != 0:
        raise MediaPrepError(f"ffmpeg failed ({result.returncode}): {result.stderr[-400:]}")


def _encode(src: Path, dst: Path, *, crf: int, height: int | None, has_audio: bool, preset: str) -> int:
    cmd = [_ffmpeg(), "-y", "-hide_banner", "-loglevel", "error", "-i", str(src), "-map", "0:v:0"]
    if has_audio:
        cmd += ["-map", "0:a:0", "-c:a", "aac", "-b:a", "64k"]
    else:
        cmd += ["-an"]
    if height is not None:
        cmd += ["-vf", f"scale=-2:{height}"]
    cmd += [
        "-c:v", "libx264", "-preset", preset, "-crf", str(crf), "-pix_fmt", "yuv420p",
        *KEEP_METADATA, str(dst),
    ]  # fmt: skip
    _run(cmd)
    return dst.stat().st_size


def prepare_video(
    src: Path,
    out_dir: Path,
    *,
    budget_bytes: int,
    crf_min: int = 18,
    crf_max: int = 38,
    min_height: int = 144,
    preset: str = "medium",
) -> PreparedVideo:
    """Return a WeChat-ready copy of `src` (or `src` itself when it already is one)."""
    src = Path(src)
    info = probe(src)
    out_dir.mkdir(parents=True, exist_ok=True)
    if info.wechat_ready and info.size <= budget_bytes:
        if info.faststart:
            return PreparedVideo(src, info.size, True, False, None, info.width, info.height, info.duration_s, 0)
        dst = out_dir / f"{src.stem}.wechat.mp4"
        _run([_ffmpeg(), "-y", "-hide_banner", "-loglevel", "error", "-i", str(src), "-c", "copy",
              *KEEP_METADATA, str(dst)])  # fmt: skip
        return PreparedVideo(
            dst, dst.stat().st_size, True, False, None, info.width, info.height, info.duration_s, 1
        )

    trials = _Trials(src, out_dir, info, preset)
    scale: int | None = None  # None = keep the source height
    while True:
        chosen = trials.search(scale, budget_bytes, crf_min, crf_max)
        if chosen is not None:
            final = out_dir / f"{src.stem}.wechat.mp4"
            shutil.move(str(chosen.path), final)
            trials.cleanup()
            log.info(
                "video re-encoded for wechat: %s crf=%d height=%d %d bytes (budget %d, %d encodes)",
                src.name, chosen.crf, chosen.height, chosen.size, budget_bytes, trials.count,
            )  # fmt: skip
            return PreparedVideo(
                final, chosen.size, True, True, chosen.crf, _scaled_width(info, chosen.height), chosen.height,
                info.duration_s, trials.count,
            )  # fmt: skip
        next_h = (int((scale or info.height) * 0.75) // 2) * 2
        if next_h < min_height:
            break
        scale = next_h

    smallest = trials.smallest
    assert smallest is not None
    final = out_dir / f"{src.stem}.wechat.mp4"
    shutil.move(str(smallest.path), final)
    trials.cleanup()
    log.warning(
        "video %s does not fit the wechat budget even at the lowest quality: %d > %d bytes",
        src.name, smallest.size, budget_bytes,
    )  # fmt: skip
    return PreparedVideo(
        final, smallest.size, False, True, smallest.crf, _scaled_width(info, smallest.height), smallest.height,
        info.duration_s, trials.count,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Encode:
    path: Path
    size: int
    crf: int
    height: int


class _Trials:
    """The encodes of one `prepare_video` call (numbered files in `out_dir`, removed at the end)."""

    def __init__(self, src: Path, out_dir: Path, info: VideoInfo, preset: str) -> None:
        self.src, self.out_dir, self.info, self.preset = src, out_dir, info, preset
        self.count = 0
        self.smallest: _Encode | None = None

    def encode(self, crf: int, scale: int | None) -> _Encode:
        self.count += 1
        dst = self.out_dir / f"{self.src.stem}.try{self.count}.mp4"
        size = _encode(self.src, dst, crf=crf, height=scale, has_audio=self.info.has_audio, preset=self.preset)
        result = _Encode(dst, size, crf, scale or self.info.height)
        if self.smallest is None or size < self.smallest.size:
            self.smallest = result
        return result

    def search(self, scale: int | None, budget: int, crf_min: int, crf_max: int) -> _Encode | None:
        """Lowest CRF whose output fits `budget` at this height, or None when even `crf_max` does not."""
        best = self.encode(crf_min, scale)
        if best.size <= budget:
            return best
        fitting = self.encode(crf_max, scale)
        if fitting.size > budget:
            return None
        lo, hi = crf_min, crf_max  # invariant: lo does not fit, hi fits
        while hi - lo > 1:
            mid = (lo + hi) // 2
            trial = self.encode(mid, scale)
            if trial.size <= budget:
                hi, fitting = mid, trial
            else:
                lo = mid
        return fitting

    def cleanup(self) -> None:
        for path in self.out_dir.glob(f"{self.src.stem}.try*.mp4"):
            path.unlink(missing_ok=True)


def _scaled_width(info: VideoInfo, height: int) -> int:
    if height == info.height:
        return info.width
    return int(round(info.width * height / info.height / 2)) * 2


def make_cover(video: Path, dst: Path, *, max_width: int = 480, max_bytes: int = 64 * 1024) -> Path | None:
    """First frame as a JPEG no wider than `max_width`; None when it cannot be made small enough."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    for quality in (4, 8, 14, 22, 31):
        _run([_ffmpeg(), "-y", "-hide_banner", "-loglevel", "error", "-i", str(video), "-frames:v", "1",
              "-vf", f"scale='min({max_width},iw)':-2", "-q:v", str(quality), str(dst)])  # fmt: skip
        if dst.stat().st_size <= max_bytes:
            return dst
    dst.unlink(missing_ok=True)
    return None
