"""Frames → MP4 (H.264, yuv420p, faststart) and cover JPEG, plus a small probe for checks.

Uses the ffmpeg binary that ships with imageio-ffmpeg; nothing here touches the network.
"""

from __future__ import annotations

import logging
import re
import struct
import subprocess
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


def _even_crop(frames: np.ndarray) -> np.ndarray:
    """yuv420p needs even width and height: drop the last row/column when odd."""
    h, w = frames.shape[1], frames.shape[2]
    return frames[:, : h - (h % 2), : w - (w % 2)]


def write_mp4(frames: np.ndarray, path: Path, *, fps: int = 24, crf: int = 18,
              metadata: Mapping[str, str] | None = None) -> Path:
    """Encode uint8 frames [F, H, W, 3] as H.264/yuv420p MP4 with the moov atom first. `metadata` items
    (e.g. the `AIGC` label) are written as `mdta` keys in moov/udta/meta (`use_metadata_tags`)."""
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [F,H,W,3], got {frames.dtype} {frames.shape}")
    if frames.shape[0] == 0:
        raise ValueError("no frames to encode")
    frames = _even_crop(frames)
    if frames.shape[1] == 0 or frames.shape[2] == 0:
        raise ValueError("frames too small to encode")
    import imageio_ffmpeg

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = frames.shape[1], frames.shape[2]
    tags = [arg for key, value in (metadata or {}).items() for arg in ("-metadata", f"{key}={value}")]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=None,
        macro_block_size=1,
        output_params=["-crf", str(crf), "-preset", "veryfast", *tags,
                       "-movflags", "+faststart+use_metadata_tags"],
    )
    writer.send(None)
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()
    log.info("wrote mp4 %s (%d frames %dx%d @ %d fps)", path, frames.shape[0], w, h, fps)
    return path


def write_cover(frame: np.ndarray, path: Path) -> Path:
    """Write one uint8 [H, W, 3] frame as a JPEG cover image."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected uint8 frame [H,W,3], got {frame.dtype} {frame.shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frame, mode="RGB").save(path, format="JPEG", quality=90)
    return path


def _top_level_atoms(path: Path) -> list[tuple[str, int]]:
    """(type, offset) of the top-level MP4 boxes, in file order."""
    atoms: list[tuple[str, int]] = []
    size_total = path.stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while offset + 8 <= size_total:
            f.seek(offset)
            header = f.read(8)
            size, kind = struct.unpack(">I4s", header)
            if size == 1:
                size = struct.unpack(">Q", f.read(8))[0]
            elif size == 0:
                size = size_total - offset
            atoms.append((kind.decode("latin-1"), offset))
            if size < 8:
                break
            offset += size
    return atoms


def probe(path: Path) -> dict:
    """Codec, pixel format, size, frame count, fps and whether moov precedes mdat."""
    import imageio_ffmpeg

    path = Path(path)
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    n = 0
    for _ in reader:
        n += 1
    reader.close()
    # imageio-ffmpeg's meta has codec + pix_fmt as printed by ffmpeg; make the codec name plain.
    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)],
        capture_output=True, text=True, check=False,
    )
    codec = str(meta.get("codec", ""))
    pix_fmt = str(meta.get("pix_fmt", ""))
    m = re.search(r"Video: (\w+)[^,]*, (\w+)", proc.stderr)
    if m:
        codec = m.group(1)
        pix_fmt = m.group(2)
    atoms = [a for a, _ in _top_level_atoms(path)]
    faststart = "moov" in atoms and "mdat" in atoms and atoms.index("moov") < atoms.index("mdat")
    width, height = meta["size"]
    return {
        "codec": codec,
        "pix_fmt": pix_fmt,
        "width": int(width),
        "height": int(height),
        "frames": n,
        "fps": float(meta["fps"]),
        "faststart": faststart,
    }
