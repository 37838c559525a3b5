"""Wiring: builds every part from the settings and runs them together.

start():  open the SQLite file → QuotaBook (apply a missed daily reset once) → JobQueue (re-queue or
          fail expired leases) → APScheduler daily reset → executor (local worker process or Ray pool, see
          `generation.executors`) + admin pool alerts →
          DeliveryLoop → plugins + router + dispatcher → channel.start(dispatcher.handle).
stop():   the reverse. Handler exceptions never reach the channel loop (see `bot.dispatcher`).

Everything is passed in or built here; no module keeps a global instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.channel import Channel
from bot.core import build_dispatcher
from bot.delivery import DeliveryLoop
from bot.dispatcher import Dispatcher
from bot.messages import Message, OutgoingText
from bot.plugin import Plugin
from bot.settings import Settings
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from generation.executors import EXECUTOR_EXTRA, Executor, build_executor
from generation.executors.alerts import PoolAlerts
from generation.jobs.queue import JobQueue
from generation.worker import WorkerSupervisor
from plugins import default_plugins

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings) -> Any | None:
    """The prompt pipeline (translation/safety) from `settings.prompts`; None when unavailable."""
    try:
        from bot.prompts import PromptPipeline
    except ImportError:
        log.warning("bot.prompts is not available: prompts are sent to the model as written")
        return None
    return PromptPipeline.from_settings(settings.prompts)


class App:
    def __init__(
        self,
        settings: Settings,
        channel: Channel,
        *,
        clock: Callable[[], float] = time.time,
        pipeline: Any | None = None,
        plugins: Sequence[type[Plugin]] | None = None,
        run_worker: bool = True,
    ) -> None:
        self.settings = settings
        self.channel = channel
        self.clock = clock
        self.pipeline = pipeline
        self.plugin_classes = list(plugins) if plugins is not None else default_plugins()
        self.run_worker = run_worker
        self.db: Any = None
        self.quota: QuotaBook | None = None
        self.queue: JobQueue | None = None
        self.dispatcher: Dispatcher | None = None
        self.supervisor: WorkerSupervisor | None = None
        self.executor: Executor | None = None  # local worker process or Ray pool (settings.executor)
        self.alerts: PoolAlerts | None = None
        self.delivery: DeliveryLoop | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self._started = False

    async def start(self) -> None:
        s = self.settings
        self.db = open_db(s.storage.db_path, busy_timeout_ms=s.storage.busy_timeout_ms)
        self.quota = QuotaBook(self.db, s.quota, self.clock)
        if self.quota.apply_missed_reset():
            log.info("applied the missed daily quota reset at start-up")
        self.queue = JobQueue(self.db, self.quota, s.queue, self.clock)
        recovered = self.queue.recover_expired()
        if recovered:
            log.info("recovered %d jobs with expired leases at start-up", len(recovered))

        self.scheduler = AsyncIOScheduler(timezone=s.quota.timezone)
        self.quota.schedule_daily_reset(self.scheduler)
        self.scheduler.start()

        if self.run_worker:
            self.executor = build_executor(s)
        self.dispatcher = build_dispatcher(
            s,
            channel=self.channel,
            quota=self.quota,
            queue=self.queue,
            clock=self.clock,
            plugins=self.plugin_classes,
            pipeline=self.pipeline,
            extras={EXECUTOR_EXTRA: self.executor} if self.executor is not None else None,
        )

        if self.executor is not None:
            self.executor.start()
            self.supervisor = getattr(self.executor, "supervisor", None)
            self.alerts = PoolAlerts(self.executor, self._tell_admins)
            await self.alerts.start()
        self.delivery = DeliveryLoop(self.queue, self.channel, s, self.clock)
        await self.delivery.start()
        await self.channel.start(self.handle)
        self._started = True
        log.info("app started on channel %s (db=%s)", self.channel.name, s.storage.db_path)

    async def handle(self, message: Message) -> None:
        assert self.dispatcher is not None, "App.start() first"
        await self.dispatcher.handle(message)

    async def _tell_admins(self, text: str) -> None:
        for admin in self.settings.bot.admins:
            try:
                await self.channel.send_text(OutgoingText(chat_id=admin, text=text))
            except Exception:
                log.exception("could not alert admin %s", admin, extra={"user_id": admin})

    async def stop(self) -> None:
        steps: list[tuple[str, Callable[[], Any]]] = [
            # Delivery first, while the channel is still up: an in-flight send then ends (or is
            # cancelled) on a live connection instead of hanging on a torn-down one.
            ("delivery", self.delivery.stop if self.delivery else _noop),
            ("alerts", self.alerts.stop if self.alerts else _noop),
            ("channel", self.channel.stop),
            ("worker", self.executor.stop if self.executor else _noop),
            ("scheduler", (lambda: self.scheduler.shutdown(wait=False)) if self.scheduler else _noop),
        ]
        for name, step in steps:
            began = time.monotonic()
            try:
                result = step()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                log.exception("error while stopping %s", name)
            log.info("stopped %s in %.2f s", name, time.monotonic() - began)
        if self.db is not None:
            self.db.conn.close()
            self.db = None
        self._started = False
        log.info("app stopped")


def _noop() -> None:
    return None
