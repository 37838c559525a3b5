"""The generation actor: one per GPU, lives as long as the dispatcher, keeps its model warm.

A plain class; the dispatcher wraps it with `ray.remote(...)` and the resources of its `ActorSpec`.
It runs threaded (`max_concurrency` > 1) so `status()` and `cancel()` are answered while `run()`
works. Everything crosses the wire as plain dicts and bytes: the input image goes in as bytes, the
MP4 and the cover come back as bytes (the bot host writes them and does the WeChat delivery), so the
actor needs no access to the bot's disk or database.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bot.executors.settings import ALL_VARIANTS, ActorSpec
from bot.jobs.settings import WorkerSettings
from generation.api import GenerationCancelled, GenerationRequest, InvalidRequest, Progress, VideoGenerator
from generation.logs import setup_child_logging
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)


def build_actor_generator(spec: ActorSpec, worker: WorkerSettings,
                          generation: GenerationSettings | None) -> VideoGenerator:
    """The generator this actor serves, from the shared sections plus the spec's overrides."""
    kind = spec.generator or worker.generator
    if kind == "synthetic":
        from generation.synthetic import SyntheticGenerator

        return SyntheticGenerator.from_settings(worker)
    from generation.pipeline import build_generator

    updates: dict[str, Any] = {}
    if spec.checkpoint is not None:
        updates["checkpoint"] = spec.checkpoint
    if spec.model_name is not None:
        updates["model_name"] = spec.model_name
        updates["tiny_model_name"] = spec.model_name
    if spec.variants is not None and len(spec.variants) == 1:
        updates["variant"] = spec.variants[0]
    return build_generator((generation or GenerationSettings()).model_copy(update=updates))


def model_label(spec: ActorSpec, generator: VideoGenerator, generation: GenerationSettings | None) -> str:
    """Short model name for /pool and for routing: pyramid_flux / pyramid_mmdit / synthetic."""
    if generator.name == "synthetic":
        return "synthetic"
    components = getattr(generator, "c", None)
    name = getattr(components, "model_name", None) or spec.model_name
    if name is None and generation is not None:
        name = generation.model_name or (generation.tiny_model_name if generation.checkpoint is None else None)
    return str(name or generator.name)


class GenerationActor:
    def __init__(self, name: str, spec: ActorSpec | dict[str, Any], worker: WorkerSettings | dict[str, Any],
                 generation: GenerationSettings | dict[str, Any] | None, labels: dict[str, Any] | None = None,
                 content_check: dict[str, Any] | None = None) -> None:
        setup_child_logging(f"actor {name} {os.getpid()}")
        started = time.monotonic()
        # The settings arrive as plain dicts and are validated here, against this host's code: a field added
        # on one side gets its default instead of breaking the unpickled object.
        spec = ActorSpec.model_validate(spec)
        worker = WorkerSettings.model_validate(worker)
        generation = None if generation is None else GenerationSettings.model_validate(generation)
        self.name = name
        self.generator = build_actor_generator(spec, worker, generation)
        # every video: the operator's content check, the AI label in the picture and the AIGC metadata
        from generation.content_check import ContentCheckSettings
        from generation.finisher import VideoFinisher
        from generation.labels import LabelSettings

        finisher = VideoFinisher.from_settings(
            None if labels is None else LabelSettings.model_validate(labels),
            None if content_check is None else ContentCheckSettings.model_validate(content_check))
        finisher.check_ready()  # no CJK font: fail at start, never draw boxes
        finisher.warm()  # the NSFW model now, not in the first user's video
        self.generator.finisher = finisher  # type: ignore[attr-defined]
        warm_up = getattr(self.generator, "warm_up", None)
        if callable(warm_up):
            warm_up()  # torch.compile before the dispatcher sees the actor as ready
        prewarm = getattr(self.generator, "prewarm", None)
        if callable(prewarm):
            prewarm()  # the default video's CUDA graphs, so the actor's first job replays them
        self.model = model_label(spec, self.generator, generation)
        wanted = spec.variants or list(ALL_VARIANTS)
        self.variants = [v for v in wanted if self.generator.supports(v)]
        self._lock = threading.Lock()
        self._job_id: int | None = None
        self._fraction = 0.0
        self._text = ""
        self._cancel: set[int] = set()
        self.load_s = time.monotonic() - started
        log.info("actor %s ready: model %s variants %s (loaded in %.1fs)", name, self.model, self.variants,
                 self.load_s)

    def describe(self) -> dict[str, Any]:
        """Who am I: answered once the model is loaded (the dispatcher waits for it)."""
        try:
            import ray

            gpu = ",".join(str(g) for g in ray.get_gpu_ids())
            node = ray.util.get_node_ip_address()
        except Exception:  # outside Ray (unit use)
            gpu, node = "", socket.gethostname()
        return {"name": self.name, "pid": os.getpid(), "node": node, "gpu": gpu, "model": self.model,
                "generator": self.generator.name, "variants": list(self.variants), "load_s": self.load_s}

    def ping(self) -> int:
        return os.getpid()

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"job_id": self._job_id, "fraction": self._fraction, "text": self._text}

    def cancel(self, job_id: int) -> bool:
        """Ask the running job to stop at its next step. True when it is the job being run."""
        with self._lock:
            self._cancel.add(job_id)
            return self._job_id == job_id

    def run(self, task: dict[str, Any]) -> dict[str, Any]:
        """Run one job. Returns {"status": "ok"|"cancelled"|"invalid"|"error", ...}; a crash of the
        process itself is seen by the dispatcher as an actor error."""
        job_id = int(task["job_id"])
        with self._lock:
            self._job_id, self._fraction, self._text = job_id, 0.0, ""
        work = Path(tempfile.mkdtemp(prefix=f"xiaoai-job{job_id}-"))
        try:
            image_path = None
            if task.get("image") is not None:
                image_path = work / f"input{task.get('image_suffix') or '.png'}"
                image_path.write_bytes(task["image"])
            request = GenerationRequest(prompt=task["prompt"], resolution=task["resolution"],
                                        duration_s=int(task["duration_s"]), seed=int(task["seed"]),
                                        image_path=None if image_path is None else str(image_path),
                                        negative_prompt=task.get("negative_prompt") or None)

            def progress(p: Progress) -> None:
                with self._lock:
                    self._fraction, self._text = p.fraction, p.message

            def should_cancel() -> bool:
                with self._lock:
                    return job_id in self._cancel

            began = time.monotonic()
            try:
                result = self.generator.generate(request, work / "out", progress=progress,
                                                 should_cancel=should_cancel)
            except GenerationCancelled:
                return {"status": "cancelled"}
            except InvalidRequest as exc:
                return {"status": "invalid", "error": str(exc)}
            except Exception as exc:
                log.exception("job %s failed in actor %s", job_id, self.name)
                oom = isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
                if oom:
                    _free_accelerator_memory()
                return {"status": "error", "oom": oom, "error": f"{type(exc).__name__}: {exc}"[:500]}
            cover = result.cover_path.read_bytes() if result.cover_path is not None else None
            return {"status": "ok", "video": result.video_path.read_bytes(), "cover": cover,
                    "seconds": float(result.seconds), "label": result.label, "frames": result.frames,
                    "width": result.width, "height": result.height, "actor": self.name,
                    "run_s": time.monotonic() - began}
        finally:
            with self._lock:
                self._job_id = None
                self._cancel.discard(job_id)
            shutil.rmtree(work, ignore_errors=True)


def _free_accelerator_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception as exc:  # best effort after an OOM; the job is reported failed either way
        log.debug("empty_cache after OOM failed: %s", exc)
