"""Sends finished videos (and failure / cancel notes) back into the chat they came from.

The loop polls `JobQueue.undelivered()` every `queue.delivery_poll_s` (and at once when poked). Rules:

* Nothing is sent to a chat whose channel is offline (`ChannelHub.is_connected`); it goes out after
  reconnect, while chats of the other channels are served.
* Success → one `OutgoingVideo` (MP4 + cover, caption with prompt, seed, time taken and the generator
  label, @-mentioning the requester in groups) → `mark_delivered`.
* Failed / cancelled → a short Chinese note ("额度已退还") → `mark_notified`.
* `DeliveryError(maybe_delivered=True)`: the other side may have it; never resent blindly. For a video
  the outcome is settled like a send cut off by a restart (below) once the channel is back.
* `DeliveryDeferred`: the platform takes no send now (ClawBot's reply rules, QQ's passive window): the
  job is parked (`JobQueue.defer_delivery`: not failed, not refunded, no attempt used) and woken when
  the user writes in that chat again (`App._on_inbound` → `JobQueue.wake_deferred`).
* Exactly once across a crash: the intent is recorded before a video send (`mark_send_started`). A job
  whose send began in an earlier run of the bot (killed between "sent" and "recorded") is not sent
  blindly again: the channel is asked (`was_sent`, where it keeps a record); when it cannot tell, the
  user gets one note that the video may have arrived and how to get it (`/发送 #N`).
* A certain failure (DeliveryError without maybe_delivered, or any other error): retry with exponential
  backoff (`queue.delivery_backoff_s`, doubling) up to `queue.delivery_max_attempts`; then a video job is
  failed and refunded (`give_up_delivery`) and the user gets the failure note instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.channel import DeliveryDeferred, DeliveryError
from bot.channels.hub import ChannelHub, as_hub
from bot.jobs.models import Job, JobState
from bot.jobs.queue import JobQueue
from bot.jobs.settings import QueueSettings
from bot.messages import OutgoingText, OutgoingVideo

log = logging.getLogger(__name__)

Clock = Callable[[], float]


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


AI_CAPTION_MARK = "【AI生成】"  # the explicit label in the text sent with every video (Art. 4, GB 45438)


def success_caption(job: Job) -> str:
    """The text sent with a finished video; it starts with `AI_CAPTION_MARK`."""
    seconds = job.seconds
    if seconds is None and job.started_at is not None and job.finished_at is not None:
        seconds = job.finished_at - job.started_at
    lines = [f"{AI_CAPTION_MARK}你的视频生成好了 🎬", f"提示词：{_short(job.prompt, 200)}"]
    if job.final_prompt and job.final_prompt.strip() != job.prompt.strip():
        lines.append(f"模型提示词：{_short(job.final_prompt, 200)}")
    detail = f"种子：{job.seed}｜{job.resolution} {job.duration_s}秒"
    if seconds is not None:
        detail += f"｜生成用时 {seconds:.0f} 秒"
    lines.append(detail)
    if job.label:
        lines.append(f"（{job.label}）")
    return "\n".join(lines)


def _at(job: Job) -> str:
    """`@名字 ` in front of a note to a group, as every chat reply has (`PluginContext.reply`)."""
    return f"@{job.user_name or job.user_id} " if job.chat_kind == "group" else ""


def failure_text(job: Job) -> str:
    reason = (job.error or "生成失败").rstrip("。．.！!；;，, ")  # the reason's own full stop is not doubled
    return (f"{_at(job)}抱歉，你的视频 #{job.id} 没有生成成功：{reason}。\n提示词：{_short(job.prompt)}\n"
            f"额度已退还（{job.cost} 点），可以换个说法或规格再发 /视频 试试。")


def uncertain_text(job: Job) -> str:
    return (f"{_at(job)}你的视频 #{job.id} 可能已经发出（发送时机器人重启了）。如果没有收到，"
            f"发送 /发送 #{job.id} 再发一次。")


def cancelled_text(job: Job) -> str:
    return f"{_at(job)}已停止你的视频任务（{_short(job.prompt, 30)}），额度已退还（{job.cost} 点）。"


class DeliveryLoop:
    def __init__(self, queue: JobQueue, channel: ChannelHub | Any, settings: QueueSettings | Any,
                 clock: Clock = time.time) -> None:
        self.queue = queue
        self.channel: ChannelHub = as_hub(channel)
        # accepts the `queue` section or the root settings object (which has `.queue`)
        self.settings: QueueSettings = settings if isinstance(settings, QueueSettings) else settings.queue
        self.clock = clock
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._born = clock()  # sends recorded before this are from an earlier run of the bot
        # called once the user was told a job failed (the app alerts admins of a blocked video)
        self.on_failed: Callable[[Job], Awaitable[None]] | None = None
        # (channel name, outcome: ok | failed | uncertain | deferred) -> sends this run; read by /metrics
        self.stats: Counter[tuple[str, str]] = Counter()

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        if self._task is None:
            self._loop = asyncio.get_running_loop()
            self._wake = asyncio.Event()
            self._task = asyncio.create_task(self.run(), name="delivery-loop")

    async def stop(self, grace_s: float = 10.0) -> None:
        """Cancel the loop; wait at most `grace_s` for an in-flight send to unwind (a send stuck on a
        dead connection must not hold up shutdown; its job stays undelivered and is retried next start)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=grace_s)
            if not done:
                log.warning("delivery loop did not stop within %.1f s; leaving it", grace_s)
            elif not task.cancelled() and task.exception() is not None:
                log.error("delivery loop ended with an error", exc_info=task.exception())

    def poke(self) -> None:
        """Look for work now (safe from any thread)."""
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)

    async def run(self) -> None:
        assert self._wake is not None
        while True:
            try:
                await self.deliver_pending()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep delivering whatever happens to one round
                log.exception("delivery round failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.delivery_poll_s)
            self._wake.clear()

    # ------------------------------------------------------------ one round
    async def deliver_pending(self) -> int:
        """Handle every due undelivered job once; returns how many sends were attempted."""
        attempted = 0
        offline: set[str] = set()
        for job in self.queue.undelivered():
            if not self.channel.is_connected(job.chat_id):
                target = self.channel.channel_for(job.chat_id)
                name = target.name if target is not None else "?"
                if name not in offline:
                    log.info("channel %s offline; its deliveries wait", name)
                    offline.add(name)
                continue
            if job.next_delivery_at is not None and job.next_delivery_at > self.clock():
                continue
            attempted += 1
            await self._handle(job)
        return attempted

    async def _handle(self, job: Job) -> None:
        ids = {"job_id": job.id, "user_id": job.user_id, "chat_id": job.chat_id}
        mentions = (job.user_id,) if job.chat_kind == "group" else ()
        is_video = job.state is JobState.SUCCEEDED
        if is_video and (not job.video_path or not Path(job.video_path).exists()):
            log.error("job %s: video file %s is missing; refunding", job.id, job.video_path, extra=ids)
            self.queue.give_up_delivery(job.id)
            return
        if is_video and job.send_started_at is not None and job.send_started_at < self._born:
            if await self._settle_unknown_send(job, mentions, ids):
                return
        try:
            if is_video:
                self.queue.mark_send_started(job.id)
                await self.channel.send_video(OutgoingVideo(
                    chat_id=job.chat_id, video_path=str(job.video_path), cover_path=job.cover_path,
                    caption=success_caption(job), mention_ids=mentions,
                    meta={"job_id": str(job.id), "label": job.label}, reply_to=job.message_id))
            else:
                text = cancelled_text(job) if job.state is JobState.CANCELLED else failure_text(job)
                await self.channel.send_text(OutgoingText(chat_id=job.chat_id, text=text, mention_ids=mentions,
                                                          reply_to=job.message_id))
        except DeliveryDeferred as exc:
            self._count(job, "deferred")
            if self.queue.defer_delivery(job.id, f"deferred: {exc}"):
                log.info("job %s: the channel takes no send now (%s); kept until the user writes again",
                         job.id, exc, extra=ids)
            return
        except DeliveryError as exc:
            self._count(job, "uncertain" if exc.maybe_delivered else "failed")
            if exc.maybe_delivered:
                if is_video:  # no blind resend; once the channel is back the user hears how to get it
                    log.warning("job %s: send may have reached the chat (%s); not resending", job.id, exc,
                                extra=ids)
                    self.queue.mark_send_unknown(job.id)
                else:
                    log.warning("job %s: note may have reached the chat (%s); not resending", job.id, exc,
                                extra=ids)
                    self._done(job)
                    await self._failed_hook(job)
                return
            self._retry_or_give_up(job, str(exc), ids)
            return
        except Exception as exc:
            self._count(job, "failed")
            log.exception("job %s: send failed", job.id, extra=ids)
            self._retry_or_give_up(job, f"{type(exc).__name__}: {exc}", ids)
            return
        self._count(job, "ok")
        self._done(job)
        log.info("job %s %s to %s", job.id, "delivered" if is_video else f"{job.state} note sent", job.chat_id,
                 extra=ids)
        if not is_video:
            await self._failed_hook(job)

    def _count(self, job: Job, outcome: str) -> None:
        target = self.channel.channel_for(job.chat_id)
        self.stats[(target.name if target is not None else "?", outcome)] += 1

    async def _failed_hook(self, job: Job) -> None:
        if self.on_failed is None or job.state is not JobState.FAILED:
            return
        try:
            await self.on_failed(job)
        except Exception:  # an alert must never stop deliveries
            log.exception("job %s: failure hook failed", job.id, extra={"job_id": job.id})

    async def _settle_unknown_send(self, job: Job, mentions: tuple[str, ...], ids: dict[str, Any]) -> bool:
        """A send of this video began before a restart. True when settled here (the channel says it was
        sent, or the user was told it may have been); False when the channel says it was not sent."""
        verdict = await self.channel.was_sent(job.chat_id, str(job.id))
        if verdict is False:
            log.info("job %s: the channel says the earlier send did not go out; sending", job.id, extra=ids)
            return False
        if verdict is None:
            try:
                await self.channel.send_text(OutgoingText(chat_id=job.chat_id, text=uncertain_text(job),
                                                          mention_ids=mentions, reply_to=job.message_id))
            except Exception as exc:  # the note is retried like any send
                self._retry_or_give_up(job, f"{type(exc).__name__}: {exc}", ids)
                return True
            log.warning("job %s: a send was cut off by a restart; told the user instead of resending", job.id,
                        extra=ids)
        else:
            log.info("job %s: the channel confirms the earlier send", job.id, extra=ids)
        self._done(job)
        return True

    def _done(self, job: Job) -> None:
        if job.state is JobState.SUCCEEDED:
            self.queue.mark_delivered(job.id)
        else:
            self.queue.mark_notified(job.id)

    def _retry_or_give_up(self, job: Job, error: str, ids: dict[str, Any]) -> None:
        attempts = self.queue.record_delivery_attempt(job.id, error)
        if attempts < self.settings.delivery_max_attempts:
            log.warning("job %s: send failed (%s), attempt %d/%d; will retry", job.id, error, attempts,
                        self.settings.delivery_max_attempts, extra=ids)
            return
        if job.state is JobState.SUCCEEDED:
            log.error("job %s: giving up sending the video after %d attempts; refunding", job.id, attempts,
                      extra=ids)
            self.queue.give_up_delivery(job.id)
        else:
            log.error("job %s: giving up the %s note after %d attempts", job.id, job.state, attempts, extra=ids)
            self.queue.mark_notified(job.id)
