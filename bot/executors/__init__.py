"""Executors: where generation jobs run (the embedded local worker, or actors on a Ray cluster)."""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.executors.base import Executor, PoolView, pool_notice, user_notice
from bot.executors.local import LocalExecutor
from bot.executors.settings import ActorSpec, ExecutorSettings
from bot.worker import WorkerConfig


def build_executor(settings: WorkerConfig, *, clock: Callable[[], float] = time.time) -> Executor:
    """The executor named by `settings.executor.kind` (local when the section is absent)."""
    ex = getattr(settings, "executor", None)
    if ex is not None and ex.kind == "ray":
        from bot.executors.ray_executor import (
            RayExecutor,  # imports ray only in the dispatcher process
        )

        return RayExecutor(settings, clock=clock)
    return LocalExecutor(settings, clock=clock)


__all__ = ["ActorSpec", "Executor", "ExecutorSettings", "LocalExecutor", "PoolView",
           "build_executor", "pool_notice", "user_notice"]
