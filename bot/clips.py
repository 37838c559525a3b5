"""Clip tools for `/续写`: the last frame of a finished video (the image a continuation starts from) and
joining a parent clip and its continuation into one MP4 (`/续写 #N 合并`).

Both use the ffmpeg binary that ships with imageio-ffmpeg (no network). Joining re-encodes (H.264, yuv420p,
`+faststart`); the visible "AI生成" label is burnt into both clips' pixels, so it stays, and the implicit label
(the `AIGC` metadata item, GB 45438 Annex E) of the continuation is written into the joined file.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

FFMPEG_TIMEOUT_S = 300


class ClipError(RuntimeError):
    """ffmpeg could not read or write a clip."""


def _ffmpeg() -> str:
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _run(args: list[str], what: str) -> None:
    try:
        proc = subprocess.run([_ffmpeg(), "-hide_banner", "-v", "error", "-y", *args], capture_output=True,
                              text=True, timeout=FFMPEG_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ClipError(f"{what}: {type(exc).__name__}: {exc}") from None
    if proc.returncode != 0:
        raise ClipError(f"{what}: ffmpeg exit {proc.returncode}: {proc.stderr.strip()[-400:]}")


def last_frame(video: Path, out_png: Path) -> Path:
    """Write the last frame of `video` as a PNG (seeks near the end, then keeps overwriting the one image)."""
    video, out_png = Path(video), Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.with_name(out_png.name + ".tmp.png")
    _run(["-sseof", "-2", "-i", str(video), "-an", "-update", "1", "-f", "image2", str(tmp)],
         f"last frame of {video.name}")
    if not tmp.is_file() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        raise ClipError(f"last frame of {video.name}: nothing decoded")
    tmp.replace(out_png)
    return out_png


def join_clips(first: Path, second: Path, out: Path, *, fps: int | None = None) -> Path:
    """`first` then `second` as one MP4. The continuation's first frame is the parent's last frame, so it is
    dropped (no frozen frame at the seam). The result carries `second`'s metadata items (its `AIGC` label)."""
    from generation.labels import read_mp4_metadata

    first, second, out = Path(first), Path(second), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tags: list[str] = []
    try:
        for key, value in read_mp4_metadata(second).items():
            tags += ["-metadata", f"{key}={value}"]
    except Exception:  # noqa: BLE001 - unreadable metadata: still join, the caller logs what came out
        log.warning("could not read the metadata of %s", second, exc_info=True)
    rate = [] if fps is None else ["-r", str(fps)]
    graph = "[1:v]trim=start_frame=1,setpts=PTS-STARTPTS[b];[0:v][b]concat=n=2:v=1:a=0[v]"
    tmp = out.with_name(out.stem + ".tmp.mp4")
    _run(["-i", str(first), "-i", str(second), "-filter_complex", graph, "-map", "[v]", "-map_metadata", "-1",
          "-c:v", "libx264", "-crf", "18", "-preset", "veryfast", "-pix_fmt", "yuv420p", *rate, *tags,
          "-movflags", "+faststart+use_metadata_tags", str(tmp)], f"joining {first.name} and {second.name}")
    tmp.replace(out)
    return out


def merge_with_parent(queue: Any, job: Any, clip: Path, label: str) -> tuple[Path, str]:
    """For a `/续写 … 合并` job: (the joined MP4, the label with a note) when the parent's video is still there,
    else (the new clip alone, the label saying why). Never raises: a failed join still delivers the new clip."""
    note = ""
    path = Path(clip)
    parent = queue.get(int(job.parent_id)) if job.parent_id else None
    ids = {"job_id": job.id, "user_id": job.user_id}
    if parent is None or not parent.video_path or not Path(parent.video_path).is_file():
        log.warning("job %s: the video of parent job %s is gone; not joined", job.id, job.parent_id, extra=ids)
        note = f"#{job.parent_id} 的视频已不在，没有合并"
    else:
        try:
            path = join_clips(Path(parent.video_path), path, path.with_name("merged.mp4"))
            note = f"已接在 #{parent.id} 后面合并成一段"
            log.info("job %s joined after job %s: %s", job.id, parent.id, path, extra=ids)
        except ClipError:
            log.exception("job %s: joining with job %s failed; sending the new clip alone", job.id, parent.id,
                          extra=ids)
            note = "合并失败，只发新的一段"
    return path, f"{label}；{note}" if label else note
