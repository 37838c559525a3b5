"""A stand-in video generator for tests and model-less demos: moving stripes in a colour derived from
the prompt, written as a real H.264 MP4 + cover. It implements `generation.api.VideoGenerator`, reports
progress per "step", honours cancel between steps, and labels its output so it is never mistaken for
model output."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from generation.api import (
    CancelFn,
    GenerationCancelled,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    Progress,
    ProgressFn,
)
from generation.finisher import VideoFinisher

log = logging.getLogger(__name__)

SYNTHETIC_LABEL = "合成测试视频（非模型输出）"
SUPPORTED = ("384p", "768p")
DURATIONS = (5, 10)


def prompt_colour(prompt: str, seed: int = 0) -> np.ndarray:
    digest = hashlib.sha256(f"{prompt}\x00{seed}".encode()).digest()
    return np.frombuffer(digest[:3], dtype=np.uint8).astype(np.float32)


class SyntheticGenerator:
    name = "synthetic"

    def __init__(
        self,
        *,
        steps: int = 10,
        step_delay_s: float = 0.05,
        fps: int = 8,
        width: int = 320,
        height: int = 192,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.steps = steps
        self.step_delay_s = step_delay_s
        self.fps = fps
        self.width = width - width % 2
        self.height = height - height % 2
        self.sleep = sleep
        self.finisher = VideoFinisher()  # labels + AIGC metadata (+ the content check when the worker sets one)

    @classmethod
    def from_settings(cls, settings: object) -> SyntheticGenerator:
        """From `WorkerSettings` (its `synthetic_*` fields)."""
        return cls(
            steps=settings.synthetic_steps,  # type: ignore[attr-defined]
            step_delay_s=settings.synthetic_step_delay_s,  # type: ignore[attr-defined]
            fps=settings.synthetic_fps,  # type: ignore[attr-defined]
            width=settings.synthetic_width,  # type: ignore[attr-defined]
            height=settings.synthetic_height,  # type: ignore[attr-defined]
        )

    def supports(self, resolution: str) -> bool:
        return resolution in SUPPORTED

    def _base_image(self, image_path: str | None) -> np.ndarray | None:
        if image_path is None:
            return None
        try:
            with Image.open(image_path) as img:
                img.draft("RGB", (self.width * 2, self.height * 2))
                rgb = img.convert("RGB").resize((self.width, self.height))
        except (FileNotFoundError, UnidentifiedImageError, OSError) as exc:
            raise InvalidRequest("图片无法读取或不是有效的图片，请换一张再试") from exc
        return np.asarray(rgb, dtype=np.float32)

    def frames(self, request: GenerationRequest, base: np.ndarray | None = None) -> np.ndarray:
        count = max(1, request.duration_s * self.fps)
        colour = prompt_colour(request.prompt, request.seed)
        ys, xs = np.mgrid[0 : self.height, 0 : self.width]
        diagonal = xs + ys + (request.seed % 32)
        background = np.full((self.height, self.width, 3), 24.0, np.float32) if base is None else base * 0.6
        out = np.empty((count, self.height, self.width, 3), np.uint8)
        for f in range(count):
            stripes = (((diagonal + 4 * f) // 16) % 2).astype(np.float32)[..., None]
            frame = background + stripes * colour * (0.4 if base is not None else 1.0)
            out[f] = np.clip(frame, 0, 255).astype(np.uint8)
        return out

    def generate(
        self,
        request: GenerationRequest,
        out_dir: Path,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> GenerationResult:
        started = time.monotonic()
        if not self.supports(request.resolution):
            raise InvalidRequest(f"不支持的分辨率：{request.resolution}")
        if request.duration_s not in DURATIONS:
            raise InvalidRequest(f"不支持的时长：{request.duration_s} 秒")
        if not request.prompt.strip():
            raise InvalidRequest("提示词为空")
        base = self._base_image(request.image_path)
        for step in range(self.steps):
            if should_cancel is not None and should_cancel():
                raise GenerationCancelled(f"cancelled before step {step + 1}/{self.steps}")
            if self.step_delay_s:
                self.sleep(self.step_delay_s)
            if progress is not None:
                progress(Progress(unit=0, units=1, stage=min(2, step * 3 // self.steps), step=step + 1,
                                  steps=self.steps, fraction=(step + 1) / self.steps,
                                  message=f"合成第 {step + 1}/{self.steps} 步"))
        frames = self.frames(request, base)
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        done = self.finisher.finish(frames, out_dir / "video.mp4", out_dir / "cover.jpg", fps=self.fps,
                                    produce_id=request.produce_id)
        video, cover = done.video_path, done.cover_path
        seconds = time.monotonic() - started
        log.info("synthetic video %s (%d frames) in %.2fs", video, len(frames), seconds)
        return GenerationResult(video_path=video, cover_path=cover, seconds=seconds, frames=len(frames),
                                width=self.width, height=self.height, label=SYNTHETIC_LABEL)
