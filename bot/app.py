"""The app: the one place where the bot is composed from its parts.

start():  take the running lock (`xiaoai restore` refuses meanwhile) → open the SQLite file (migrated to
          the current schema) → QuotaBook (apply a missed daily reset once) → JobQueue (re-queue or fail
          expired leases) → APScheduler daily reset and retention (`bot.jobs.retention`) → executor (local
          worker process or Ray pool, see `bot.executors`) + admin pool alerts → DeliveryLoop → plugins +
          router + dispatcher → every channel through `ChannelHub.start` (each on its own; one that cannot
          start is reported to the admins on the others).
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
from bot.executors.alerts import ALERT_PREFIX, PoolAlerts
from bot.executors.base import MSG_GENERATOR_DOWN, generator_down
from bot.jobs.models import Job, JobState
from bot.jobs.queue import JobQueue
from bot.jobs.retention import Retention
from bot.messages import Message, OutgoingText
from bot.plugin import Plugin
from bot.settings import Settings
from bot.store.backup import DatabaseInUse, RunningLock, hold_running_lock
from bot.store.db import SchemaTooNew, open_db
from bot.store.quota import QuotaBook
from bot.worker import WorkerSupervisor
from generation.content_check import OUTPUT_BLOCKED_TEXT, ContentChecker, build_checker
from plugins import default_plugins

if TYPE_CHECKING:
    from bot.prompts import PromptPipeline

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The bot must not start (it would accept and charge work it cannot do); the message is one
    bilingual line saying what is wrong and what to do."""


def checkpoint_problem(settings: Settings) -> str | None:
    """One line when the configured checkpoint cannot be loaded, found by a cheap check that reads only
    configs and weight-file headers (`generation.loading.validate_checkpoint`, no weights, no GPU); None
    when it looks loadable or no checkpoint is used (synthetic generator, tiny demo model, Ray actors that
    check their own)."""
    gen = settings.generation
    if settings.worker.generator != "pyramid_flow" or gen.checkpoint is None or settings.executor.kind != "local":
        return None
    from generation.loading import CheckpointError, validate_checkpoint

    try:
        validate_checkpoint(gen.checkpoint, gen.variant, gen.model_name)
    except CheckpointError as exc:
        return (f"模型检查点不可用 / checkpoint unusable (generation.checkpoint): {' '.join(str(exc).split())} — "
                f"请修正路径或重新下载模型，或删掉 generation.checkpoint 改用演示模型 / fix the path, download the "
                f"model again, or remove generation.checkpoint to run the demo model")
    return None


def labels_problem(settings: Settings) -> str | None:
    """One line when the AI label cannot be drawn (no CJK font) or the NSFW model file is missing; logs the
    operator's choices at WARNING (`labels.visible: false`, no `labels.producer_code`, check turned off)."""
    from generation.content_check import ModelUnavailable, report_content_check
    from generation.labels import LabelFontError, report_label_settings

    try:
        report_label_settings(settings.labels, log)
        report_content_check(settings.content_check, log)
    except (LabelFontError, ModelUnavailable) as exc:
        return str(exc)
    return None


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
        image_check: ContentChecker | None = None,
    ) -> None:
        self.settings = settings
        # the NSFW check of input images (None: built from `content_check`, a model loaded on first use)
        self.image_check = image_check
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
        self.retention: Retention | None = None  # daily clean-up (`retention:`), on the scheduler
        self._db_lock: RunningLock | None = None  # held while running: `xiaoai restore` refuses meanwhile
        self._started = False
        self._told_down: set[int] = set()  # queued jobs whose users were told that generation is down

    async def start(self) -> None:
        """Raises `StartupError` (before anything is opened) when the configured model cannot be loaded."""
        s = self.settings
        if self.run_worker and (problem := await asyncio.to_thread(checkpoint_problem, s)):
            raise StartupError(problem)
        if problem := await asyncio.to_thread(labels_problem, s):
            raise StartupError(problem)
        try:
            self._db_lock = hold_running_lock(s.storage.db_path)
            self.db = open_db(s.storage.db_path, busy_timeout_ms=s.storage.busy_timeout_ms)
        except (DatabaseInUse, SchemaTooNew) as exc:
            self._release_db_lock()
            raise StartupError(str(exc)) from None
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
        self.retention = Retention(self.queue, s, self.clock)
        self.retention.schedule(self.scheduler)
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
            image_check=self.image_check if self.image_check is not None else build_checker(s.content_check),
        )

        if self.executor is not None:
            self.executor.start()
            self.supervisor = getattr(self.executor, "supervisor", None)
            self.alerts = PoolAlerts(self.executor, self._on_pool_alert)
            await self.alerts.start()
        self.delivery = DeliveryLoop(self.queue, self.hub, s, self.clock)
        self.delivery.on_failed = self._on_job_failed
        await self.delivery.start()
        if self.supervisor is not None:  # a local worker: it is woken per queued job, and wakes delivery per job
            self.queue.on_queued = self.supervisor.notify_work
            self.supervisor.on_job_ended = self.delivery.poke
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

    async def _on_pool_alert(self, text: str) -> None:
        """The pool's state changed: the admins are told; when the generator is down, so are the users whose
        jobs wait in the queue (once per job), with what they can do."""
        await self._tell_admins(text)
        if self.queue is None or not generator_down(self.executor):
            return
        waiting: dict[tuple[str, str], list[Job]] = {}
        for job in self.queue.snapshot():
            if job.state is JobState.QUEUED and job.id not in self._told_down:
                waiting.setdefault((job.chat_id, job.user_id), []).append(job)
        for (chat_id, user_id), jobs in waiting.items():
            self._told_down.update(j.id for j in jobs)
            group = jobs[0].chat_kind == "group"
            numbers = "、".join(f"#{j.id}" for j in jobs)
            text = (f"{'@' + (jobs[0].user_name or user_id) + ' ' if group else ''}⚠️ {MSG_GENERATOR_DOWN}。"
                    f"你排队中的任务 {numbers} 会在恢复后继续生成；不想等可以发送 /取消 退还额度。")
            try:
                await self.hub.send_text(OutgoingText(chat_id=chat_id, text=text,
                                                      mention_ids=(user_id,) if group else ()))
            except Exception:
                log.exception("could not tell user %s that generation is down", user_id, extra={"user_id": user_id})

    async def _on_channel_alert(self, text: str, source: str) -> None:
        await self._tell_admins(f"⚠️ {text}", exclude=source)

    async def _on_job_failed(self, job: Job) -> None:
        """After the user was told a job failed: a video blocked by the output content check is reported to the
        admins (the scores are in the worker's ERROR log line for that job)."""
        if job.error == OUTPUT_BLOCKED_TEXT:
            await self._tell_admins(f"{ALERT_PREFIX}任务 #{job.id} 生成的画面没有通过内容安全检查，视频已拦截、未发送，"
                                    f"额度已退还。用户 {job.user_name or job.user_id}（{job.user_id}），会话 {job.chat_id}。"
                                    f"各帧评分见生成进程日志（job={job.id}）。")

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
        self._release_db_lock()
        self._started = False
        log.info("app stopped")

    def _release_db_lock(self) -> None:
        lock, self._db_lock = self._db_lock, None
        if lock is not None:
            lock.release()


def _noop() -> None:
    return None
