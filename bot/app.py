"""The app: the one place where the bot is composed from its parts.

start():  open the SQLite file → QuotaBook (apply a missed daily reset once) → JobQueue (re-queue or
          fail expired leases) → APScheduler daily reset → executor (local worker process or Ray pool,
          see `bot.executors`) + admin pool alerts → DeliveryLoop → plugins + router + dispatcher →
          every channel through `ChannelHub.start` (each on its own; one that cannot start is reported
          to the admins on the others).
stop():   the reverse. Handler exceptions never reach a channel loop (see `bot.dispatcher`).

Channel adapters never build the app; `bot.serve` (for `xiaoai run`), the demo and the playground
build an `App` from the channels they made. Everything is passed in; no module keeps a global instance.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from bot.channel import Channel
from bot.channels.hub import ChannelHub, as_hub
from bot.core import build_dispatcher
from bot.delivery import DeliveryLoop
from bot.dispatcher import Dispatcher
from bot.executors import Executor, build_executor
from bot.executors.alerts import PoolAlerts
from bot.jobs.queue import JobQueue
from bot.messages import Message, OutgoingText
from bot.plugin import Plugin
from bot.settings import Settings
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from bot.worker import WorkerSupervisor
from plugins import default_plugins

if TYPE_CHECKING:
    from bot.prompts import PromptPipeline

log = logging.getLogger(__name__)


def build_pipeline(settings: Settings) -> PromptPipeline | None:
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
        channel: Channel | ChannelHub | Iterable[Channel],
        *,
        clock: Callable[[], float] = time.time,
        pipeline: PromptPipeline | None = None,
        plugins: Sequence[type[Plugin]] | None = None,
        run_worker: bool = True,
    ) -> None:
        self.settings = settings
        self.hub = as_hub(channel)  # the dispatcher, plugins and delivery talk to the hub
        # the channel as given when there is one (the demo and tests drive it), else the hub
        self.channel: Channel = self.hub.channels[0] if len(self.hub.channels) == 1 else self.hub
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

        pruned = self.queue.prune_seen(s.queue.seen_retention_s)
        if pruned:
            log.info("forgot %d handled message ids older than the retention window", pruned)

        self.scheduler = AsyncIOScheduler(timezone=s.quota.timezone)
        self.quota.schedule_daily_reset(self.scheduler)
        queue = self.queue
        self.scheduler.add_job(lambda: queue.prune_seen(s.queue.seen_retention_s), "interval", hours=6,
                               id="prune-seen-messages", replace_existing=True)
        self.scheduler.start()

        if self.run_worker:
            self.executor = build_executor(s)
        self.dispatcher = build_dispatcher(
            s,
            channel=self.hub,
            quota=self.quota,
            queue=self.queue,
            clock=self.clock,
            plugins=self.plugin_classes,
            pipeline=self.pipeline,
            executor=self.executor,
        )

        if self.executor is not None:
            self.executor.start()
            self.supervisor = getattr(self.executor, "supervisor", None)
            self.alerts = PoolAlerts(self.executor, self._tell_admins)
            await self.alerts.start()
        self.delivery = DeliveryLoop(self.queue, self.hub, s, self.clock)
        await self.delivery.start()
        self.hub.on_inbound = self._on_inbound
        self.hub.on_alert = self._on_channel_alert
        try:
            await self.hub.start(self.handle)
        except BaseException:
            await self.stop()
            raise
        self._started = True
        names = ", ".join(c.name for c in self.hub.started)
        log.info("app started on channel(s) %s (db=%s)", names, s.storage.db_path)
        for name, why in self.hub.failures.items():
            await self._tell_admins(f"⚠️ 通道 {name} 没有启动：{why}", exclude=name)

    async def handle(self, message: Message) -> None:
        assert self.dispatcher is not None, "App.start() first"
        await self.dispatcher.handle(message)

    async def _on_inbound(self, message: Message) -> None:
        """A user wrote: videos parked for that chat (the channel allowed no send) are due now."""
        if self.queue is None:
            return
        woken = self.queue.wake_deferred(message.chat_id)
        if woken and self.delivery is not None:
            log.info("%d parked deliveries due after a new message chat=%s", woken, message.chat_id,
                     extra={"chat_id": message.chat_id})
            self.delivery.poke()

    async def _on_channel_alert(self, text: str, source: str) -> None:
        await self._tell_admins(f"⚠️ {text}", exclude=source)

    async def _tell_admins(self, text: str, exclude: str | None = None) -> None:
        """Send `text` to every admin reachable on a connected channel (not on `exclude`, the channel the
        alert is about: it may be down)."""
        for admin in self.settings.bot.admins:
            channel = self.hub.channel_for(admin)
            if channel is None or channel.name == exclude or not self.hub.is_connected(admin):
                continue
            try:
                await self.hub.send_text(OutgoingText(chat_id=admin, text=text))
            except Exception:
                log.exception("could not alert admin %s", admin, extra={"user_id": admin})

    async def stop(self) -> None:
        steps: list[tuple[str, Callable[[], Any]]] = [
            # Delivery first, while the channels are still up: an in-flight send then ends (or is
            # cancelled) on a live connection instead of hanging on a torn-down one.
            ("delivery", self.delivery.stop if self.delivery else _noop),
            ("alerts", self.alerts.stop if self.alerts else _noop),
            ("channels", self.hub.stop),
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
        self.delivery = self.alerts = None
        self.executor = None
        self.scheduler = None
        if self.db is not None:
            self.db.conn.close()
            self.db = None
        self._started = False
        log.info("app stopped")


def _noop() -> None:
    return None
