"""The last step of every generator: decoded frames → checked, labelled MP4 + cover.

`VideoFinisher.finish` runs, in this order:

1. the output content check (when a `ContentChecker` is set) on the raw frames: a blocked video raises
   `ContentBlocked` and nothing is written;
2. the explicit label burnt into every frame (`labels.visible`), so the cover made from frame 0 has it too;
3. the H.264 encode with the implicit label: one `AIGC` metadata item (GB 45438 Annex E JSON);
4. the cover JPEG.

Generators take a finisher (`PyramidFlowGenerator.finisher`, `SyntheticGenerator.finisher`); without one they
use `VideoFinisher()` (labels with default settings, no content check).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from generation.content_check import (
    ContentBlocked,
    ContentChecker,
    ContentCheckSettings,
    FrameVerdict,
    build_checker,
)
from generation.labels import AIGC_KEY, LabelOverlay, LabelSettings, aigc_value, new_produce_id
from generation.video_io import write_cover, write_mp4

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinishedVideo:
    video_path: Path
    cover_path: Path
    produce_id: str
    timings: dict[str, float] = field(default_factory=dict)  # check_s, label_s, encode_s
    verdict: FrameVerdict | None = None


class VideoFinisher:
    def __init__(self, labels: LabelSettings | None = None, checker: ContentChecker | None = None) -> None:
        self.labels = labels or LabelSettings()
        self.overlay = LabelOverlay(self.labels)
        self.checker = checker

    @classmethod
    def from_settings(cls, labels: LabelSettings | None, content_check: ContentCheckSettings | None = None,
                      *, classifier: Any = None, check: bool = True) -> VideoFinisher:
        """From the `labels:` and `content_check:` sections; `check=False` leaves the content check out."""
        checker = build_checker(content_check, classifier) if check else None
        return cls(labels, checker)

    def check_ready(self) -> None:
        """Fail now rather than at the first video: the label font must be there (`LabelFontError`)."""
        if self.labels.visible:
            self.overlay.font()

    def warm(self) -> None:
        """Load what the first video would otherwise wait for: the content check's model (onnxruntime and the
        classifier, about 0.3 s on a small CPU). A failure here is left to that video, which reports it."""
        load = getattr(getattr(self.checker, "classifier", None), "load", None)
        if callable(load):
            try:
                load()
            except Exception as exc:  # noqa: BLE001 — reported where it matters, on the first check
                log.warning("content check model not loaded ahead (%s); the first video loads it", exc)

    def finish(self, frames: np.ndarray, video_path: Path, cover_path: Path, *, fps: int,
               produce_id: str | None = None, log_extra: dict[str, Any] | None = None) -> FinishedVideo:
        produce_id = produce_id or new_produce_id()
        extra = {**(log_extra or {}), "produce_id": produce_id}
        timings: dict[str, float] = {}
        verdict = None
        if self.checker is not None:
            verdict = self.checker.check_frames(frames)
            timings["check_s"] = verdict.seconds
            if verdict.blocked:
                log.error("output blocked by the content check (%s): %s; produce_id=%s, nothing written",
                          verdict.reason, verdict.describe(), produce_id, extra=extra)
                raise ContentBlocked(verdict)
            log.info("output content check passed: %s", verdict.describe(), extra=extra)
        t0 = time.perf_counter()
        if self.labels.visible:
            frames = self.overlay.apply(frames)
        t1 = time.perf_counter()
        value = aigc_value(self.labels.producer(), produce_id)
        video = write_mp4(frames, video_path, fps=fps, metadata={AIGC_KEY: value})
        cover = write_cover(frames[0], cover_path)
        t2 = time.perf_counter()
        timings.update(label_s=t1 - t0, encode_s=t2 - t1)
        log.info("labelled video %s AIGC ProduceID=%s (label %.3f s)", video, produce_id, t1 - t0, extra=extra)
        return FinishedVideo(video, cover, produce_id, timings, verdict)
