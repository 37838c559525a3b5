"""MP4 writing: H.264 / yuv420p / 24 fps / faststart, decoded back; cover JPEG."""

from __future__ import annotations

from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest
from PIL import Image

from generation.video_io import probe, write_cover, write_mp4


def _frames(n: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 // max(w - 1, 1), yy * 255 // max(h - 1, 1), (xx + yy) * 127 // max(h + w, 1)], -1)
    return np.stack([np.roll(base, i * 2, axis=1) for i in range(n)]).astype(np.uint8)


def test_write_mp4_properties(tmp_path: Path) -> None:
    path = write_mp4(_frames(17, 64, 128), tmp_path / "sub" / "v.mp4")
    info = probe(path)
    assert info["codec"] == "h264"
    assert info["pix_fmt"].startswith("yuv420p")
    assert (info["width"], info["height"]) == (128, 64)
    assert info["frames"] == 17
    assert info["fps"] == pytest.approx(24.0)
    assert info["faststart"] is True
    # decode independently and check content roughly survives the lossy encode
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    first = np.frombuffer(next(reader), dtype=np.uint8).reshape(meta["size"][1], meta["size"][0], 3)
    reader.close()
    assert np.abs(first.astype(int) - _frames(1, 64, 128)[0].astype(int)).mean() < 6


def test_odd_size_is_cropped_to_even(tmp_path: Path) -> None:
    info = probe(write_mp4(_frames(3, 65, 97), tmp_path / "odd.mp4", fps=12))
    assert (info["width"], info["height"]) == (96, 64)
    assert info["frames"] == 3 and info["fps"] == pytest.approx(12.0)


def test_bad_input_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_mp4(np.zeros((2, 8, 8, 3), dtype=np.float32), tmp_path / "x.mp4")
    with pytest.raises(ValueError):
        write_mp4(np.zeros((0, 8, 8, 3), dtype=np.uint8), tmp_path / "x.mp4")


def test_cover_jpeg(tmp_path: Path) -> None:
    frame = _frames(1, 48, 80)[0]
    path = write_cover(frame, tmp_path / "c.jpg")
    with Image.open(path) as img:
        assert img.format == "JPEG" and img.size == (80, 48)
