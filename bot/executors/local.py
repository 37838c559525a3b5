"""`LocalExecutor`: jobs run in the embedded worker process (`bot.worker.WorkerSupervisor`) on this host."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bot.executors.base import PoolView
from bot.executors.status import ActorStatus
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

    def start(self) -> None:
        self._started_at = self.clock()
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
        alive = self.supervisor.alive
        gen = self.settings.generation
        actor = ActorStatus(
            name=self.supervisor.child_id or "local", incarnation=self.supervisor.restarts,
            state="dead" if not alive else ("busy" if job_id is not None else "idle"),
            node=f"本机 pid {self.supervisor.pid}" if self.supervisor.pid else "本机",
            gpu=str(getattr(gen, "device", "") or ""), model=self._model(),
            variants=tuple(getattr(gen, "variant", "") and [gen.variant] or ()),
            job_id=job_id, job_started_at=started, jobs_done=done, busy_s=busy, updated_at=self.clock())
        return PoolView(kind="local", cluster=None, actors=[actor], process_alive=alive)

    def notice(self) -> str | None:
        return None
