"""The small interface between the job queue/worker and any video generator.

The worker only knows `VideoGenerator`: request in, MP4 (+ cover) out, a progress callback and a
cancel check. Our Pyramid Flow pipeline and the synthetic test generator both implement it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol


@dataclass(frozen=True, slots=True)
class Progress:
    unit: int  # 0-based autoregressive unit (latent frame)
    units: int
    stage: int  # pyramid stage 0..2
    step: int  # step within the stage, 1-based
    steps: int
    fraction: float  # 0..1 over the whole job
    message: str = ""


ProgressFn = Callable[[Progress], None]
CancelFn = Callable[[], bool]


class GenerationCancelled(Exception):
    """Raised by a generator when the cancel check returned True (checked at every denoising step)."""


class InvalidRequest(ValueError):
    """The request cannot be run (bad resolution, bad image, too long prompt...). Message is user-facing."""


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    prompt: str
    resolution: Literal["384p", "768p"] = "384p"
    duration_s: int = 5  # 5 or 10
    seed: int = 0
    image_path: str | None = None  # image-to-video when set
    negative_prompt: str | None = None
    num_inference_steps: tuple[int, int, int] | None = None
    video_num_inference_steps: tuple[int, int, int] | None = None
    guidance_scale: float | None = None
    video_guidance_scale: float | None = None
    temp: int | None = None  # latent frames; derived from duration_s when None
    produce_id: str | None = None  # the AIGC metadata ProduceID (generation.labels.new_produce_id when None)


@dataclass(frozen=True, slots=True)
class GenerationResult:
    video_path: Path
    cover_path: Path | None
    seconds: float  # wall time the generation took (the clip's length is frames / fps, extra['video_s'])
    frames: int
    width: int
    height: int
    label: str = ""  # e.g. "tiny random weights" so output is never mistaken for a real model
    extra: dict[str, float] = field(default_factory=dict)


class VideoGenerator(Protocol):
    name: str

    def supports(self, resolution: str) -> bool: ...

    def generate(
        self,
        request: GenerationRequest,
        out_dir: Path,
        *,
        progress: ProgressFn | None = None,
        should_cancel: CancelFn | None = None,
    ) -> GenerationResult: ...
