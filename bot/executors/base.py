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

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from bot.executors.status import ActorStatus, ClusterStatus, GeneratorHealth

MSG_PROCESS_DOWN = "生成调度进程正在重启，任务会在队列中等待，恢复后自动开始"
MSG_GENERATOR_DOWN = "视频生成暂时不可用（生成模型没能启动），管理员已收到提醒"


@dataclass(frozen=True)
class PoolView:
    """What `/pool` shows and what decides the notice to users."""

    kind: str  # "local" | "ray"
    cluster: ClusterStatus | None
    actors: list[ActorStatus] = field(default_factory=list)
    process_alive: bool = True
    stale: bool = False
    # Non-empty when the generator cannot run at all (the worker keeps failing to load its model or keeps
    # dying): why, for admins. New /视频 are then refused (uncharged) instead of queued.
    down: str = ""

    @property
    def available(self) -> bool:
        if self.down:
            return False
        if not self.process_alive and self.kind == "ray" and (self.cluster is None or self.cluster.state == "ready"):
            return False
        return self.cluster is None or self.cluster.state in ("ready", "connecting")


def pool_notice(view: PoolView) -> str | None:
    """A Chinese line for users and admins when jobs cannot run now; None when all is well."""
    if view.down:
        return f"⚠️ {MSG_GENERATOR_DOWN}"
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


def generator_down(executor: Executor | None) -> str:
    """Why the executor's generator cannot run (for admins), '' when it can or when there is no executor.
    The video plugin refuses new requests while this is non-empty."""
    if executor is None:
        return ""
    try:
        return executor.view().down
    except Exception:  # a status read must never break a reply
        return ""


class GeneratorWatch:
    """Decides whether the local worker's generator is down, from what the worker records when it builds its
    generator (`PoolStore.generator_failed` / `generator_ready`) and from how often its process died:

    * `failures` consecutive failed builds (a broken or missing checkpoint, a model that does not fit), or
    * `deaths` worker restarts within `window_s` since the last good build, while the current worker process
      has not built its generator (also covers a worker that dies before it can record anything).

    It is up again as soon as the current worker's build succeeds. Rows older than the watch (an earlier run
    of the bot) are ignored. Times are wall-clock (`time.time`), the clock the worker writes its rows with."""

    def __init__(self, *, failures: int = 2, deaths: int = 3, window_s: float = 600.0,
                 now: Callable[[], float] = time.time) -> None:
        self.failures, self.deaths, self.window_s, self._now = failures, deaths, window_s, now
        self.since = now()
        self._restarts = 0
        self._died: list[float] = []
        self._lock = threading.Lock()  # read from the event loop and from the alerts' thread

    def down_reason(self, health: GeneratorHealth | None, restarts: int, current: str = "") -> str:
        """Why the generator is down ('' when it is not). `restarts`: the supervisor's restart count;
        `current`: the id of the worker process running now ('' when unknown)."""
        with self._lock:
            return self._down_reason(health, restarts, current)

    def _down_reason(self, health: GeneratorHealth | None, restarts: int, current: str) -> str:
        now = self._now()
        if restarts > self._restarts:  # sampled: the executor's view is read every few seconds
            self._died += [now] * (restarts - self._restarts)
        self._restarts = restarts
        if health is not None and health.updated_at < self.since:
            health = None
        if health is not None and health.state == "ready":
            # a worker that built its generator and was then killed (an operator, OOM-killer, a crashed bot)
            # is no sign of a broken model: only deaths after the last good build count
            self._died = [t for t in self._died if t > health.updated_at]
            if not current or health.worker_id == current:
                self._died.clear()
                return ""
        self._died = [t for t in self._died if t > now - self.window_s]
        if health is not None and health.state == "failed" and health.failures >= self.failures:
            return f"生成模型连续 {health.failures} 次加载失败：{health.error}"
        if len(self._died) >= self.deaths:
            return f"生成进程 {round(self.window_s / 60)} 分钟内退出了 {len(self._died)} 次，一直没能加载好模型"
        return ""
