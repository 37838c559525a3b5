"""`LocalExecutor`: jobs run in the embedded worker process (`bot.worker.WorkerSupervisor`) on this host."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bot.executors.base import GeneratorWatch, PoolView, pool_notice
from bot.executors.status import ActorStatus, PoolStore
from bot.worker import WorkerConfig, WorkerSupervisor


class LocalExecutor:
    """The embedded worker process, as before: `WorkerSupervisor` + `run_worker`."""

    kind = "local"

    def __init__(self, settings: WorkerConfig, *, clock: Callable[[], float] = time.time,
                 target: Callable[[Any, str, Any], None] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        kwargs: dict[str, Any] = {} if target is None else {"target": target}
        self.supervisor = WorkerSupervisor(settings, clock=clock, **kwargs)
        self._started_at = clock()
        self._watch = GeneratorWatch()  # is the generator down (its builds fail, the process keeps dying)?

    def start(self) -> None:
        self._started_at = self.clock()
        self._watch = GeneratorWatch()
        self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()

    def _model(self) -> str:
        if self.settings.worker.generator == "synthetic":
            return "synthetic"
        gen = self.settings.generation
        if gen is None:
            return "pyramid_flow"
        if gen.checkpoint is None:
            return f"{gen.tiny_model_name}(tiny)"
        return gen.model_name or "pyramid_flow"

    def view(self) -> PoolView:
        queue = self.supervisor.queue
        job_id = started = None
        done, busy = 0, 0.0
        if queue is not None:
            running = queue.running()
            if running:
                job_id, started = running[0].id, running[0].started_at
            done, busy = queue.finished_since(self._started_at)
        health = PoolStore(queue.db, self.clock).generator_health() if queue is not None else None
        down = self._watch.down_reason(health, self.supervisor.restarts, self.supervisor.child_id)
        alive = self.supervisor.alive
        gen = self.settings.generation
        device = health.device if health is not None and health.device else self._device()
        actor = ActorStatus(
            name=self.supervisor.child_id or "local", incarnation=self.supervisor.restarts,
            state="dead" if not alive or down else ("busy" if job_id is not None else "idle"),
            node=f"本机 pid {self.supervisor.pid}" if self.supervisor.pid else "本机",
            gpu=device, model=self._model(),
            variants=tuple(getattr(gen, "variant", "") and [gen.variant] or ()),
            job_id=job_id, job_started_at=started, jobs_done=done, busy_s=busy, error=down, updated_at=self.clock())
        return PoolView(kind="local", cluster=None, actors=[actor], process_alive=alive, down=down)

    def _device(self) -> str:
        """Where the worker generates before it reports it: the synthetic generator on the CPU."""
        if self.settings.worker.generator == "synthetic":
            return "cpu"
        return str(getattr(self.settings.generation, "device", "") or "auto")

    def notice(self) -> str | None:
        return pool_notice(self.view())
