"""Input image preparation for image-to-video: decode, EXIF orientation, RGB, downscale, resize + centre crop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from generation.api import InvalidRequest


def load_image_for_video(
    path: str | Path, width: int, height: int, *, max_bytes: int, max_pixels: int
) -> np.ndarray:
    """Return uint8 [height, width, 3] or raise InvalidRequest with a Chinese message."""
    p = Path(path)
    if not p.is_file():
        raise InvalidRequest("图片文件不存在或已过期，请重新发送图片。")
    if p.stat().st_size > max_bytes:
        raise InvalidRequest(f"图片太大（超过 {max_bytes // (1024 * 1024)} MB），请压缩后再试。")
    try:
        with Image.open(p) as img:
            w0, h0 = img.size
            if w0 * h0 > max_pixels:
                raise InvalidRequest("图片分辨率过高，请缩小后再试。")
            if w0 < 16 or h0 < 16:
                raise InvalidRequest("图片太小，无法生成视频。")
            # JPEG: let the decoder downscale by a power of two while reading huge images
            img.draft("RGB", (max(width, 1) * 2, max(height, 1) * 2))
            img.load()
            img = ImageOps.exif_transpose(img)
            img = _to_rgb(img)
    except InvalidRequest:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise InvalidRequest("无法识别这张图片，请发送 JPG 或 PNG 格式的图片。") from exc
    return resize_center_crop(img, width, height)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return img.convert("RGB")


def resize_center_crop(img: Image.Image, width: int, height: int) -> np.ndarray:
    w, h = img.size
    scale = max(width / w, height / h)
    new_w, new_h = max(width, round(w * scale)), max(height, round(h * scale))
    if max(w / new_w, h / new_h) > 4:  # very large: cheap reduce first, then a good resample
        img = img.reduce(int(max(w / new_w, h / new_h) // 2))
    img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    left = (new_w - width) // 2
    top = (new_h - height) // 2
    img = img.crop((left, top, left + width, top + height))
    return np.asarray(img, dtype=np.uint8).copy()
