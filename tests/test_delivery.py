"""DeliveryLoop over a real SQLite file with a recording in-memory channel (the outside world):
restart delivery exactly once, failure/cancel notes, offline pause, no blind retry, backoff + give-up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from _jobs_support import Clock, ledger, make_store, spec

from bot.channel import Channel, DeliveryError, MessageHandler
from bot.delivery import DeliveryLoop
from bot.jobs.models import JobState
from bot.jobs.settings import QueueSettings, WorkerSettings
from bot.messages import Message, OutgoingText, OutgoingVideo
from bot.worker import JobRunner
from generation.synthetic import SYNTHETIC_LABEL, SyntheticGenerator


class RecordingChannel:
    """Records what the bot sends; `failures` are raised (in order) by the next sends."""

    name = "recording"

    def __init__(self) -> None:
        self.online = True
        self.videos: list[OutgoingVideo] = []
        self.texts: list[OutgoingText] = []
        self.failures: list[Exception] = []
        self.calls = 0

    @property
    def bot_id(self) -> str:
        return "bot"

    @property
    def connected(self) -> bool:
        return self.online

    async def start(self, on_message: MessageHandler) -> None:
        self.online = True

    async def stop(self) -> None:
        self.online = False

    def _maybe_fail(self) -> None:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)

    async def send_text(self, out: OutgoingText) -> None:
        self._maybe_fail()
        self.texts.append(out)

    async def send_video(self, out: OutgoingVideo) -> None:
        self._maybe_fail()
        self.videos.append(out)

    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        raise NotImplementedError


def worker(store, tmp_path: Path) -> JobRunner:
    ws = WorkerSettings(generator="synthetic", output_dir=tmp_path / "out", synthetic_steps=2,
                        synthetic_step_delay_s=0, synthetic_fps=2, synthetic_width=32, synthetic_height=32)
    return JobRunner(store.queue, SyntheticGenerator.from_settings(ws), ws, "w")


def run(coro):
    return asyncio.run(coro)


def test_channel_double_satisfies_protocol() -> None:
    assert isinstance(RecordingChannel(), Channel)


def test_restart_delivers_finished_and_queued_jobs_exactly_once(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    before = make_store(path)
    jobs = [before.queue.submit(spec(u, prompt=f"prompt {u}")).job for u in ("a", "b", "c")]
    runner = worker(before, tmp_path)
    runner.run_once()
    runner.run_once()  # two finished, never delivered: the bot "crashes" here
    before.queue.db.conn.close()

    after = make_store(path, Clock(before.clock() + 60))  # bot restarts over the same file
    channel = RecordingChannel()
    loop = DeliveryLoop(after.queue, channel, QueueSettings())
    assert run(loop.deliver_pending()) == 2
    assert run(loop.deliver_pending()) == 0
    worker(after, tmp_path).run_once()  # the queued job runs after the restart
    assert run(loop.deliver_pending()) == 1
    assert run(loop.deliver_pending()) == 0

    sent = sorted(int(v.meta["job_id"]) for v in channel.videos)
    assert sent == sorted(j.id for j in jobs)
    assert all(after.queue.get(j.id).state is JobState.DELIVERED for j in jobs)
    first = next(v for v in channel.videos if v.meta["job_id"] == str(jobs[0].id))
    assert first.chat_id == "g1" and first.mention_ids == ("a",) and Path(first.video_path).exists()
    assert first.cover_path and "prompt a" in first.caption and "种子：7" in first.caption
    assert SYNTHETIC_LABEL in first.caption and "生成用时" in first.caption


def test_failure_and_cancel_notes_in_chinese(tmp_path: Path) -> None:
    store = make_store(tmp_path / "d.db")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    failed = store.queue.submit(spec("a", image_path=str(bad), cost=2)).job
    worker(store, tmp_path).run_once()
    running = store.queue.submit(spec("p", group=None)).job  # private chat
    store.queue.claim("w", 30)
    store.queue.cancel_latest("p", "p")
    store.queue.finish_cancelled(running.id, "w")

    channel = RecordingChannel()
    assert run(DeliveryLoop(store.queue, channel, QueueSettings()).deliver_pending()) == 2
    fail_note, cancel_note = channel.texts
    assert fail_note.chat_id == "g1" and fail_note.mention_ids == ("a",)
    assert "没有生成成功" in fail_note.text and "图片" in fail_note.text and "额度已退还（2 点）" in fail_note.text
    assert cancel_note.chat_id == "p" and cancel_note.mention_ids == () and "已停止" in cancel_note.text
    assert store.queue.undelivered() == []
    assert store.queue.get(failed.id).notified


def test_offline_channel_waits_for_reconnect(tmp_path: Path) -> None:
    store = make_store(tmp_path / "d.db")
    store.queue.submit(spec("a"))
    worker(store, tmp_path).run_once()
    channel = RecordingChannel()
    channel.online = False
    loop = DeliveryLoop(store.queue, channel, QueueSettings())
    assert run(loop.deliver_pending()) == 0 and channel.calls == 0
    channel.online = True
    assert run(loop.deliver_pending()) == 1 and len(channel.videos) == 1


def test_maybe_delivered_is_never_resent(tmp_path: Path) -> None:
    store = make_store(tmp_path / "d.db")
    job = store.queue.submit(spec("a")).job
    worker(store, tmp_path).run_once()
    channel = RecordingChannel()
    channel.failures = [DeliveryError("timeout after upload", maybe_delivered=True)]
    loop = DeliveryLoop(store.queue, channel, QueueSettings())
    run(loop.deliver_pending())
    run(loop.deliver_pending())
    run(loop.deliver_pending())
    # the video is never sent again; the user gets one note saying how to get it if it did not arrive
    assert channel.videos == [] and channel.calls == 2
    assert len(channel.texts) == 1 and f"/发送 #{job.id}" in channel.texts[0].text
    assert store.queue.get(job.id).state is JobState.DELIVERED


def test_a_send_cut_off_by_a_restart_is_not_repeated(tmp_path: Path) -> None:
    """The bot was killed between "sent" and "recorded": the next run does not send the same video again."""
    store = make_store(tmp_path / "d.db")
    job = store.queue.submit(spec("a")).job
    worker(store, tmp_path).run_once()
    store.queue.mark_send_started(job.id)  # the intent of the earlier run; it never recorded the outcome
    store.clock.tick(1)
    channel = RecordingChannel()
    loop = DeliveryLoop(store.queue, channel, QueueSettings(), store.clock)
    run(loop.deliver_pending())
    run(loop.deliver_pending())
    assert channel.videos == [] and len(channel.texts) == 1 and "可能已经发出" in channel.texts[0].text
    assert store.queue.get(job.id).state is JobState.DELIVERED


def test_a_channel_that_keeps_records_is_asked_instead(tmp_path: Path) -> None:
    store = make_store(tmp_path / "d.db")
    job = store.queue.submit(spec("a")).job
    worker(store, tmp_path).run_once()
    store.queue.mark_send_started(job.id)
    store.clock.tick(1)

    class Remembers(RecordingChannel):
        async def was_sent(self, job_id: str) -> bool | None:
            return False  # it never went out: send it now

    channel = Remembers()
    run(DeliveryLoop(store.queue, channel, QueueSettings(), store.clock).deliver_pending())
    assert len(channel.videos) == 1 and channel.texts == []
    assert store.queue.get(job.id).state is JobState.DELIVERED


def test_certain_failure_retries_with_backoff_then_succeeds(tmp_path: Path) -> None:
    store = make_store(tmp_path / "d.db", queue=QueueSettings(delivery_backoff_s=10))
    store.queue.submit(spec("a"))
    worker(store, tmp_path).run_once()
    channel = RecordingChannel()
    channel.failures = [DeliveryError("connection refused")]
    loop = DeliveryLoop(store.queue, channel, QueueSettings(delivery_backoff_s=10), store.clock)
    run(loop.deliver_pending())
    assert run(loop.deliver_pending()) == 0  # backing off
    store.clock.tick(10)
    assert run(loop.deliver_pending()) == 1
    assert channel.calls == 2 and len(channel.videos) == 1


def test_gives_up_after_max_attempts_refunds_and_tells_user(tmp_path: Path) -> None:
    qs = QueueSettings(delivery_backoff_s=0, delivery_max_attempts=3)
    store = make_store(tmp_path / "d.db", queue=qs)
    job = store.queue.submit(spec("a", cost=3)).job
    worker(store, tmp_path).run_once()
    channel = RecordingChannel()
    channel.failures = [DeliveryError("too large")] * 3
    loop = DeliveryLoop(store.queue, channel, qs, store.clock)
    for _ in range(3):
        run(loop.deliver_pending())
    assert store.queue.get(job.id).state is JobState.FAILED
    run(loop.deliver_pending())  # now the failure note goes out
    assert channel.videos == [] and len(channel.texts) == 1
    assert "多次发送失败" in channel.texts[0].text and "额度已退还（3 点）" in channel.texts[0].text
    assert ledger(store, "a")[-1] == ("refund", 3, job.id)
    assert run(loop.deliver_pending()) == 0


def test_running_loop_delivers_when_poked(tmp_path: Path) -> None:
    store = make_store(tmp_path / "d.db")
    store.queue.submit(spec("a"))
    channel = RecordingChannel()

    async def scenario() -> None:
        loop = DeliveryLoop(store.queue, channel, QueueSettings(delivery_poll_s=30))
        await loop.start()
        await asyncio.sleep(0.05)
        await asyncio.to_thread(worker(store, tmp_path).run_once)
        loop.poke()
        for _ in range(100):
            if channel.videos:
                break
            await asyncio.sleep(0.02)
        await loop.stop()

    run(scenario())
    assert len(channel.videos) == 1
