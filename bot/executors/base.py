"""Where generation jobs run: the `Executor` interface, the pool view, and the local executor.

The SQLite job table on the bot's host stays the single source of truth for jobs and quotas. An
executor only decides *where* claimed jobs run:

* `LocalExecutor` (`bot.executors.local`, default): the embedded worker process (`bot.worker.WorkerSupervisor`), one
  generator, no extra services.
* `RayExecutor` (`bot.executors.ray_executor`): one long-lived actor per GPU on a Ray cluster.

Both claim in the queue's fair order and record results with the same `JobQueue` calls, so the delivery
loop, `/queue`, `/cancel` and quotas do not know which one runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from bot.executors.status import ActorStatus, ClusterStatus

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


def user_notice(executor: Executor | None) -> str | None:
    """The executor's notice for a reply (plugins call this with `ctx.executor`); None without one."""
    if executor is None:
        return None
    try:
        return executor.notice()
    except Exception:  # a status read must never break a reply
        return None
