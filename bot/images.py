"""Validation and storage of images users send for image-to-video.

The bytes come from the channel already size-capped (`max_bytes`); here Pillow checks that they
are a real image of an accepted format, that the pixel count is bounded BEFORE decoding
(decompression-bomb safe: `Image.open` reads only the header), and re-encodes the first frame as
an RGB PNG so the generator gets one simple, well-formed file.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import warnings
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from generation.content_check import INPUT_REFUSED_TEXT, ContentChecker

log = logging.getLogger(__name__)

ACCEPTED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "MPO"})


class ImageRejected(ValueError):
    """The image cannot be used; the message is shown to the user (Chinese)."""


def validate_image(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageRejected("图片是空的，请重新发送。")
    if len(data) > max_bytes:
        raise ImageRejected(f"图片太大了（{len(data) / 1048576:.1f} MB），请发送 {max_bytes // 1048576} MB 以内的图片。")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            if img.format not in ACCEPTED_FORMATS:
                raise ImageRejected("不支持这种图片格式，请发送 JPG 或 PNG 图片。")
            width, height = img.size
            if width < 16 or height < 16:
                raise ImageRejected("图片太小了，请发送更清晰的图片。")
            if width * height > max_pixels:
                raise ImageRejected(f"图片分辨率太高（{width}×{height}），请缩小后再发送。")
            img.seek(0)
            img.load()
            return img.convert("RGB")
    except ImageRejected:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRejected("图片分辨率太高，请缩小后再发送。") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise ImageRejected("这不是一张能打开的图片，请重新发送。") from None


IMAGE_CHECK_DOWN_TEXT = "图片安全检查暂时不可用，请稍后再试。本次不扣额度。"


async def check_image_content(checker: ContentChecker, img: Image.Image, *, ids: dict[str, Any]) -> None:
    """The NSFW check of an input image, before anything is queued or charged: `ImageRejected` with a neutral
    message when it scores ≥ `content_check.input_threshold` (or, failing closed, when the check cannot run)."""
    try:
        verdict = await asyncio.to_thread(checker.check_image, img)
    except Exception:
        log.exception("input image check failed; refusing the image", extra=ids)
        raise ImageRejected(IMAGE_CHECK_DOWN_TEXT) from None
    if not verdict.allowed:
        log.warning("input image refused by the content check: score %.3f", verdict.score,
                    extra={**ids, "nsfw_score": verdict.score})
        raise ImageRejected(INPUT_REFUSED_TEXT)
    log.info("input image content check passed: score %.4f", verdict.score, extra={**ids, "nsfw_score": verdict.score})


def store_image(img: Image.Image, dest_dir: Path, key: str) -> Path:
    """Save as PNG under `dest_dir`; the file name is derived from `key` (e.g. the message id)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(key.encode("utf-8")).hexdigest()[:24] + ".png"
    path = dest_dir / name
    tmp = path.with_suffix(".tmp")
    img.save(tmp, format="PNG")
    tmp.replace(path)
    return path.resolve()
