"""AI-generated content labels (《人工智能生成合成内容标识办法》, in force 2025-09-01, and GB 45438-2025).

Two labels go on every video we write:

* the explicit label: the text `AI生成` burnt into every frame (bottom-right by default, white on a
  semi-transparent dark box, ink height ≥ 5 % of the shorter side). `LabelOverlay` renders it once per frame
  size with Pillow and a CJK font, then alpha-composites that RGBA patch onto uint8 frames with numpy;
* the implicit label: one MP4 metadata item `AIGC` (moov/udta/meta, `mdta` keys + `ilst`) whose value is the
  GB 45438 Annex E JSON object, built by `aigc_value`. `read_mp4_metadata` / `read_aigc` read it back from a
  file or from bytes by walking the MP4 boxes in pure Python (no ffprobe), so a test can check exactly what a
  channel is about to send.

The typed `labels:` settings section (`LabelSettings`) lives here; `bot.settings.Settings` composes it.
See /work/shared/research/aigc-labels.md for the sources.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

log = logging.getLogger(__name__)

AIGC_KEY = "AIGC"
# Annex E j): values use GB 18030 code points 0x21, 0x23-0x5B, 0x5D-0x7E only (printable ASCII without
# space, '"' and '\'), so the JSON needs no escapes.
_VALUE_RE = re.compile(r"^[\x21\x23-\x5B\x5D-\x7E]*$")
# What ContentProducer says when `labels.producer_code` is not set: the product's ASCII name (Art. 5 allows
# "名称或者编码"). Operators with a TC260 service-provider code must set it; the start-up log warns until then.
FALLBACK_PRODUCER = "xiaoai-video"
INSTALL_HINT = "apt-get install fonts-noto-cjk（或在 config.yaml 设置 labels.font_path / or set labels.font_path）"

Position = Literal["bottom-right", "bottom-left", "top-right", "top-left"]

# A subset of Noto Sans CJK SC (SIL OFL 1.1, see assets/OFL.txt) with the glyphs of the usual label texts
# and ASCII: the default label draws on a machine without any CJK font. A system font is preferred.
BUNDLED_FONT = Path(__file__).resolve().parent / "assets" / "label-font-sc.otf"
# Where CJK fonts usually are (Debian/Ubuntu fonts-noto-cjk first; then Fedora/Arch, WenQuanYi, macOS, Windows).
FONT_CANDIDATES: tuple[str, ...] = (
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Bold.ttc",
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",
    "/usr/share/fonts/opentype/noto/NotoSerifCJK-Regular.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc",
    "/usr/share/fonts/wenquanyi/wqy-microhei/wqy-microhei.ttc",
    "/System/Library/Fonts/PingFang.ttc",
    "/System/Library/Fonts/STHeiti Medium.ttc",
    "C:/Windows/Fonts/msyh.ttc",
    "C:/Windows/Fonts/simhei.ttf",
)


class LabelFontError(RuntimeError):
    """No font that can draw the label text: one line naming what to install or set."""


class LabelSettings(BaseModel):
    """The `labels:` section: the explicit (in the picture) and implicit (file metadata) AI labels."""

    model_config = ConfigDict(extra="forbid")

    # Burn the text into every frame. Turning it off is an explicit operator decision (logged at WARNING at
    # start-up): the rules require a visible label on generated video.
    visible: bool = True
    text: str = "AI生成"
    position: Position = "bottom-right"
    text_height: float = Field(default=0.075, ge=0.05, le=0.25)  # ink height / shorter side of the frame
    margin: float = Field(default=0.03, ge=0.0, le=0.2)  # gap to the frame edges / shorter side
    box_opacity: float = Field(default=0.55, ge=0.3, le=1.0)  # the dark box behind the text
    font_path: Path | None = None  # a CJK font file (.ttc/.otf/.ttf); None: found on this machine
    # ContentProducer of the AIGC metadata: the TC260 service-provider code from the operator's filing (27
    # digits/capitals), or an ASCII name without spaces. None: FALLBACK_PRODUCER ("xiaoai-video").
    producer_code: str | None = None

    @field_validator("text")
    @classmethod
    def _text_says_ai_generated(cls, v: str) -> str:
        v = v.strip()
        if not (("AI" in v.upper() or "人工智能" in v) and ("生成" in v or "合成" in v)):
            raise ValueError("must contain 'AI' or '人工智能' and '生成' or '合成' (GB 45438 5.1), e.g. AI生成")
        return v

    @field_validator("producer_code")
    @classmethod
    def _producer_is_ascii(cls, v: str | None) -> str | None:
        if v is None:
            return None
        v = v.strip()
        if not v or not _VALUE_RE.match(v):
            raise ValueError("must be printable ASCII without spaces, quotes or backslashes (GB 45438 Annex E)")
        return v

    def producer(self) -> str:
        return self.producer_code or FALLBACK_PRODUCER


# ------------------------------------------------------------------------------------------------ metadata
def new_produce_id(job: str | int | None = None) -> str:
    """A unique ProduceID: `xv-<job>-<8 hex>` (or `xv-<16 hex>` outside a job)."""
    rand = secrets.token_hex(4)
    return f"xv-{job}-{rand}" if job is not None else f"xv-{secrets.token_hex(4)}{rand}"


def aigc_value(producer: str, produce_id: str, *, reserved1: str = "", reserved2: str = "") -> str:
    """The GB 45438 Annex E JSON (keys in the standard's order, compact, every value a string); at first write
    the propagator fields equal the producer fields. Raises ValueError for a value outside the allowed set."""
    fields = {"Label": "1", "ContentProducer": producer, "ProduceID": produce_id, "ReservedCode1": reserved1,
              "ContentPropagator": producer, "PropagateID": produce_id, "ReservedCode2": reserved2}
    for key, value in fields.items():
        if not isinstance(value, str) or not _VALUE_RE.match(value):
            raise ValueError(f"AIGC {key} {value!r}: printable ASCII without space, quote or backslash only")
    if not producer or not produce_id:
        raise ValueError("AIGC ContentProducer and ProduceID must not be empty")
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True)


def _boxes(buf: bytes | memoryview, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the boxes in buf[start:end]."""
    off = start
    while off + 8 <= end:
        size, kind = struct.unpack_from(">I4s", buf, off)
        header = 8
        if size == 1:
            if off + 16 > end:
                return
            size = struct.unpack_from(">Q", buf, off + 8)[0]
            header = 16
        elif size == 0:
            size = end - off
        if size < header or off + size > end:
            return
        yield bytes(kind), off + header, off + size
        off += size


def _moov(source: Path | bytes | bytearray | memoryview) -> bytes | memoryview | None:
    """The `moov` box's payload, read without loading `mdat` when `source` is a file."""
    if not isinstance(source, (str, Path)):
        buf = memoryview(bytes(source)) if not isinstance(source, memoryview) else source
        for kind, start, end in _boxes(buf, 0, len(buf)):
            if kind == b"moov":
                return buf[start:end]
        return None
    path = Path(source)
    total = path.stat().st_size
    with open(path, "rb") as fh:
        off = 0
        while off + 8 <= total:
            fh.seek(off)
            head = fh.read(16)
            size, kind = struct.unpack_from(">I4s", head, 0)
            header = 8
            if size == 1:
                size, header = struct.unpack_from(">Q", head, 8)[0], 16
            elif size == 0:
                size = total - off
            if size < header:
                return None
            if kind == b"moov":
                fh.seek(off + header)
                return fh.read(size - header)
            off += size
    return None


def _meta_items(buf: bytes | memoryview, start: int, end: int) -> list[tuple[str, str]]:
    """(key, value) of a `meta` box with an `mdta` handler (`keys` + `ilst`); UTF-8 values only."""
    # QuickTime writes `meta` without the ISO full-box version/flags; ffmpeg and ISO writers with them
    if bytes(buf[start + 4:start + 8]) != b"hdlr":
        start += 4
    keys: list[str] = []
    items: list[tuple[int, bytes]] = []
    for kind, s, e in _boxes(buf, start, end):
        if kind == b"keys":
            count = struct.unpack_from(">I", buf, s + 4)[0]
            off = s + 8
            for _ in range(count):
                if off + 8 > e:
                    break
                ksize = struct.unpack_from(">I", buf, off)[0]
                if ksize < 8 or off + ksize > e:
                    break
                keys.append(bytes(buf[off + 8:off + ksize]).decode("utf-8", "replace"))
                off += ksize
        elif kind == b"ilst":
            for item, is_, ie in _boxes(buf, s, e):
                index = struct.unpack(">I", item)[0]
                for dkind, ds, de in _boxes(buf, is_, ie):
                    if dkind == b"data" and de - ds >= 8 and struct.unpack_from(">I", buf, ds)[0] == 1:
                        items.append((index, bytes(buf[ds + 8:de])))
    out: list[tuple[str, str]] = []
    for index, raw in items:
        if 1 <= index <= len(keys):
            out.append((keys[index - 1], raw.decode("utf-8", "replace")))
    return out


def mp4_metadata_items(source: Path | bytes | bytearray | memoryview) -> list[tuple[str, str]]:
    """Every `mdta` (key, UTF-8 value) of the MP4, from moov/udta/meta and moov/meta, in file order."""
    moov = _moov(source)
    if moov is None:
        return []
    found: list[tuple[str, str]] = []
    for kind, s, e in _boxes(moov, 0, len(moov)):
        if kind == b"udta":
            for sub, ss, se in _boxes(moov, s, e):
                if sub == b"meta":
                    found += _meta_items(moov, ss, se)
        elif kind == b"meta":
            found += _meta_items(moov, s, e)
    return found


def read_mp4_metadata(source: Path | bytes | bytearray | memoryview) -> dict[str, str]:
    """`mdta` metadata as a dict (the last value of a repeated key wins; see `mp4_metadata_items`)."""
    return dict(mp4_metadata_items(source))


def read_aigc(source: Path | bytes | bytearray | memoryview) -> dict[str, str] | None:
    """The parsed `AIGC` label of an MP4 (file path or bytes), None when it has none."""
    raw = read_mp4_metadata(source).get(AIGC_KEY)
    if raw is None:
        return None
    value = json.loads(raw)
    return value if isinstance(value, dict) else None


# ------------------------------------------------------------------------------------------------ font
def _fc_match() -> str | None:
    exe = shutil.which("fc-match")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-f", "%{file}", ":lang=zh-cn"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    path = out.stdout.strip()
    return path or None


def _missing_glyphs(font: object, text: str) -> list[str]:
    """Characters of `text` the font would draw as its 'no glyph' box."""
    from PIL import Image, ImageDraw

    def pixels(ch: str) -> bytes:
        im = Image.new("L", (64, 64))
        ImageDraw.Draw(im).text((8, 8), ch, font=font, fill=255)  # type: ignore[arg-type]
        return im.tobytes()

    notdef = pixels("\U0010fffd")
    return [ch for ch in text if not ch.isspace() and pixels(ch) == notdef]


def _best_face(path: str, text: str) -> tuple[str, int] | None:
    """(path, face index) of a face in the file that draws `text`; Simplified Chinese faces preferred."""
    from PIL import ImageFont

    faces: list[tuple[int, str]] = []
    for index in range(16):
        try:
            font = ImageFont.truetype(path, 20, index=index)
        except OSError:
            break
        if _missing_glyphs(font, text):
            continue
        family = " ".join(font.getname() or ())
        faces.append((index, family))
    if not faces:
        return None
    for index, family in faces:
        if " SC" in family or "Simplified" in family:
            return path, index
    return path, faces[0][0]


@lru_cache(maxsize=8)
def find_font(font_path: str | None, text: str) -> tuple[str, int]:
    """(file, face index) of a font that draws `text`: `font_path` when given, else a known CJK font file,
    else what `fc-match :lang=zh-cn` names. Raises `LabelFontError` (one line) when there is none."""
    if font_path is not None:
        if not os.path.isfile(font_path):
            raise LabelFontError(f"labels.font_path {font_path} 不存在 / does not exist — {INSTALL_HINT}")
        face = _best_face(font_path, text)
        if face is None:
            raise LabelFontError(f"labels.font_path {font_path} 不能显示「{text}」/ cannot draw {text!r} — "
                                 f"{INSTALL_HINT}")
        return face
    candidates = [p for p in FONT_CANDIDATES if os.path.isfile(p)]
    if (matched := _fc_match()) is not None and matched not in candidates:
        candidates.append(matched)
    candidates.append(str(BUNDLED_FONT))  # last: a subset that draws the default label wherever we run
    for path in candidates:
        if (face := _best_face(path, text)) is not None:
            return face
    raise LabelFontError(f"找不到能显示「{text}」的中文字体，无法给视频加 AI 标识 / no CJK font for the AI label: "
                         f"{INSTALL_HINT}")


# ------------------------------------------------------------------------------------------------ overlay
@dataclass(frozen=True)
class RenderedLabel:
    """The label for one frame size: an RGBA patch and where its top-left corner goes."""

    x: int
    y: int
    rgba: np.ndarray  # [h, w, 4] uint8
    ink_height: int  # pixel height of the text's ink (what the 5 % rule is about)
    font_size: int
    # precomputed for compositing: colour × alpha and 255 - alpha, uint16
    _premul: np.ndarray
    _inv: np.ndarray


MIN_INK_PX = 10  # below this the label would not be legible at all (tiny demo frames)


class LabelOverlay:
    """Renders the explicit label once per frame size and burns it into frames."""

    def __init__(self, settings: LabelSettings | None = None) -> None:
        self.settings = settings or LabelSettings()
        self._cache: dict[tuple[int, int], RenderedLabel] = {}
        self._lock = threading.Lock()

    def font(self) -> tuple[str, int]:
        """Locate the font now (raises `LabelFontError`); call at start-up to fail loudly."""
        s = self.settings
        return find_font(None if s.font_path is None else str(s.font_path), s.text)

    def render(self, width: int, height: int) -> RenderedLabel:
        with self._lock:
            label = self._cache.get((width, height))
            if label is None:
                label = self._cache[(width, height)] = self._render(width, height)
            return label

    def _render(self, width: int, height: int) -> RenderedLabel:
        from PIL import Image, ImageDraw, ImageFont

        s = self.settings
        path, index = self.font()
        short = min(width, height)
        target = max(MIN_INK_PX, round(s.text_height * short))
        size = target
        for _ in range(4):  # font size whose ink height reaches the target
            font = ImageFont.truetype(path, size, index=index)
            left, top, right, bottom = font.getbbox(s.text)
            ink = bottom - top
            if ink >= target:
                break
            size = max(size + 1, round(size * target / max(ink, 1)))
        pad_x, pad_y = max(2, round(0.4 * ink)), max(2, round(0.25 * ink))
        w, h = (right - left) + 2 * pad_x, ink + 2 * pad_y
        box = Image.new("RGBA", (w, h), (0, 0, 0, 0))
        ImageDraw.Draw(box).rounded_rectangle((0, 0, w - 1, h - 1), radius=max(1, pad_y),
                                              fill=(0, 0, 0, round(255 * s.box_opacity)))
        text = Image.new("RGBA", (w, h), (255, 255, 255, 0))
        ImageDraw.Draw(text).text((pad_x - left, pad_y - top), s.text, font=font, fill=(255, 255, 255, 255))
        rgba = np.asarray(Image.alpha_composite(box, text), dtype=np.uint8)
        margin = round(s.margin * short)
        x = width - w - margin if s.position.endswith("right") else margin
        y = height - h - margin if s.position.startswith("bottom") else margin
        # a frame too small for the label (tiny demo model): keep it inside, cropped if need be
        x, y = max(0, x), max(0, y)
        rgba = np.ascontiguousarray(rgba[: max(0, height - y), : max(0, width - x)])
        alpha = rgba[..., 3:4].astype(np.uint16)
        premul = rgba[..., :3].astype(np.uint16) * alpha + 127
        return RenderedLabel(x=x, y=y, rgba=rgba, ink_height=ink, font_size=size, _premul=premul, _inv=255 - alpha)

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """Burn the label into uint8 frames [F, H, W, 3] (or one frame [H, W, 3]) in place; returns them."""
        if frames.dtype != np.uint8 or frames.shape[-1] != 3 or frames.ndim not in (3, 4):
            raise ValueError(f"expected uint8 frames [F,H,W,3], got {frames.dtype} {frames.shape}")
        if not frames.flags.writeable:
            frames = frames.copy()
        height, width = frames.shape[-3], frames.shape[-2]
        label = self.render(width, height)
        h, w = label.rgba.shape[:2]
        if h == 0 or w == 0:
            return frames
        region = frames[..., label.y:label.y + h, label.x:label.x + w, :]
        region[...] = ((label._premul + region.astype(np.uint16) * label._inv) // 255).astype(np.uint8)
        return frames


def report_label_settings(settings: LabelSettings, logger: logging.Logger | None = None) -> None:
    """Start-up checks: the font is found (else `LabelFontError`), and WARNINGs for what the operator must
    know: `labels.visible: false`, `labels.producer_code` not set."""
    logger = logger or log
    if settings.visible:
        path, index = LabelOverlay(settings).font()
        logger.info("AI label: %r %s, font %s#%d", settings.text, settings.position, path, index)
    else:
        logger.warning("labels.visible: false — videos are written WITHOUT the visible 「%s」 label in the picture "
                       "(operator setting; the AIGC metadata and the 【AI生成】 caption stay)", settings.text)
    if settings.producer_code is None:
        logger.warning("labels.producer_code is not set: the AIGC metadata names the producer %r; set your "
                       "service-provider code (TC260 编码) or ASCII name", FALLBACK_PRODUCER)
