"""Where generation jobs run: the `Executor` interface, the pool view, and the local executor.

The SQLite job table on the bot's host stays the single source of truth for jobs and quotas. An
executor only decides *where* claimed jobs run:

* `LocalExecutor` (default): the embedded worker process (`generation.worker.WorkerSupervisor`), one
  generator, no extra services.
* `RayExecutor` (`generation.executors.ray_executor`): one long-lived actor per GPU on a Ray cluster.

Both claim in the queue's fair order and record results with the same `JobQueue` calls, so the delivery
loop, `/queue`, `/cancel` and quotas do not know which one runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from generation.executors.status import ActorStatus, ClusterStatus
from generation.worker import WorkerConfig, WorkerSupervisor

EXECUTOR_EXTRA = "executor"  # key of the executor in PluginContext.extras
MSG_PROCESS_DOWN = "生成调度进程正在重启，任务会在队列中等待，恢复后自动开始"


@dataclass(frozen=True)
class PoolView:
    """What `/pool` shows and what decides the notice to users."""

    kind: str  # "local" | "ray"
    cluster: ClusterStatus | None
    actors: list[ActorStatus] = field(default_factory=list)
    process_alive: bool = True
    stale: bool = False

    @property
    def available(self) -> bool:
        if not self.process_alive and self.kind == "ray" and (self.cluster is None or self.cluster.state == "ready"):
            return False
        return self.cluster is None or self.cluster.state in ("ready", "connecting")


def pool_notice(view: PoolView) -> str | None:
    """A Chinese line for users and admins when jobs cannot run now; None when all is well."""
    if view.cluster is not None and view.cluster.state in ("unreachable", "lost"):
        return f"⚠️ {view.cluster.message}"
    if view.kind == "ray" and (not view.process_alive or view.stale):
        return f"⚠️ {MSG_PROCESS_DOWN}"
    return None


class Executor(Protocol):
    kind: str

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def view(self) -> PoolView: ...

    def notice(self) -> str | None: ...


def user_notice(extras: Mapping[str, Any]) -> str | None:
    """The executor's notice for a reply (plugins call this with `ctx.extras`); None without an executor."""
    executor = extras.get(EXECUTOR_EXTRA)
    if executor is None:
        return None
    try:
        return executor.notice()
    except Exception:  # a status read must never break a reply
        return None


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
        from bot.store.db import db_lock

        queue = self.supervisor._queue
        job_id = started = None
        done, busy = 0, 0.0
        if queue is not None:
            with db_lock(queue.db):
                running = queue.db.execute(
                    "SELECT id, started_at FROM jobs WHERE state = 'running' ORDER BY started_at LIMIT 1").fetchone()
                row = queue.db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(seconds), 0) FROM jobs WHERE state IN ('succeeded', 'delivered') "
                    "AND seconds IS NOT NULL AND finished_at >= ?", [self._started_at]).fetchone()
            if running is not None:
                job_id, started = int(running[0]), running[1]
            done, busy = int(row[0]), float(row[1])
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
