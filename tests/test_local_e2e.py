"""End to end on the local channel: the real App (router, plugins, SQLite quota + queue, worker
process, delivery loop) with the synthetic generator for speed. A /video request comes back as an MP4
with an @-mention caption; a restart delivers queued and finished-but-undelivered jobs exactly once;
`xiaoai demo` exits 0 by itself."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bot.app import App
from bot.channels.local import LocalChannel
from bot.cli import main
from bot.jobs.models import JobState
from bot.settings import Settings
from generation.video_io import probe
from tests.chat_harness import ROOM, Clock, async_test, make_settings, png_bytes

USER = {"sender_id": "wxid_alice", "sender_name": "Alice", "chat_id": ROOM}


def e2e_settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        worker={"synthetic_steps": 4, "synthetic_step_delay_s": 0.02, "poll_s": 0.1, "synthetic_width": 64,
                "synthetic_height": 48},
        queue={"delivery_poll_s": 0.2},
    )


async def wait_state(app: App, job_id: int, state: JobState, timeout: float) -> None:
    assert app.queue is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = app.queue.get(job_id)
        if job is not None and job.state is state:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {state} (now {app.queue.get(job_id)})")


@async_test
async def test_text_and_image_requests_come_back_as_mp4s(tmp_path: Path) -> None:
    channel = LocalChannel()
    app = App(e2e_settings(tmp_path), channel, pipeline=None)
    await app.start()
    try:
        await channel.say("/视频 a shiba inu running in the snow", **USER)
        assert "第 1 位" in channel.texts()[-1]
        await channel.say(image=png_bytes((96, 64)), **USER)
        await channel.say("/video seed=5 the sea moves", **USER)
        assert "图生视频" in channel.texts()[-1]
        assert await channel.wait_for(lambda sent: sum(1 for s in sent if s.video) >= 2, timeout=120)
    finally:
        await app.stop()
    videos = channel.videos(ROOM)
    assert len(videos) == 2
    for video in videos:
        info = probe(Path(video.video_path))
        assert info["frames"] > 0
        assert video.mention_ids == ("wxid_alice",)
        assert "种子" in video.caption and "合成测试视频" in video.caption
    assert "a shiba inu running in the snow" in videos[0].caption
    assert "种子：5" in videos[1].caption
    # the ledger explains the balance: grant, two spends, no refund
    reopened = App(e2e_settings(tmp_path), LocalChannel(), run_worker=False)
    await reopened.start()
    try:
        assert reopened.quota is not None and reopened.queue is not None
        rows = list(reversed(reopened.quota.history("wxid_alice")))
        assert [r.kind for r in rows] == ["grant", "spend", "spend"]
        assert [j.state for j in reopened.queue.jobs_of("wxid_alice")] == [JobState.DELIVERED] * 2
    finally:
        await reopened.stop()


@async_test
async def test_restart_delivers_queued_and_finished_undelivered_jobs_once(tmp_path: Path) -> None:
    settings = e2e_settings(tmp_path)
    first = LocalChannel()
    app = App(settings, first, pipeline=None)
    await app.start()
    await first.say("/视频 first job", **USER)
    await first.say("/视频 second job", **USER)
    first.set_connected(False)  # the chat goes away: videos are made but cannot be sent
    await wait_state(app, 1, JobState.SUCCEEDED, timeout=120)
    await app.stop()  # job 2 is queued, running (handed back on stop) or succeeded: all undelivered
    assert app.queue is not None
    assert first.videos() == []

    second = LocalChannel()
    restarted = App(settings, second, pipeline=None)
    await restarted.start()
    try:
        assert await second.wait_for(lambda sent: sum(1 for s in sent if s.video) >= 2, timeout=120)
        await asyncio.sleep(0.6)  # a few more delivery rounds: nothing is sent twice
        assert restarted.quota is not None
        kinds = [r.kind for r in reversed(restarted.quota.history("wxid_alice"))]
    finally:
        await restarted.stop()
    captions = [v.caption for v in second.videos()]
    assert len(captions) == 2
    assert any("first job" in c for c in captions) and any("second job" in c for c in captions)
    assert kinds == ["grant", "spend", "spend"]  # never refunded, never charged twice


def test_xiaoai_demo_exits_zero_and_prints_the_mp4s(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)  # no config.yaml here: all defaults
    code = main(["demo", "--synthetic", "--dir", str(tmp_path / "run"), "--timeout", "120"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "demo OK" in out and "/视频 a shiba inu running in the snow" in out
    paths = [line.strip() for line in out.splitlines() if line.strip().endswith(".mp4") and "[视频]" not in line]
    assert len(paths) == 2 and all(Path(p).is_file() and Path(p).stat().st_size > 0 for p in paths)


@async_test
async def test_missed_daily_reset_is_applied_once_at_start_up(tmp_path: Path) -> None:
    settings = e2e_settings(tmp_path)
    clock = Clock()  # 2026-01-01 08:00 Asia/Shanghai
    app = App(settings, LocalChannel(clock=clock), clock=clock, run_worker=False)
    await app.start()
    assert app.scheduler is not None and app.scheduler.get_job("quota-daily-reset") is not None
    await app.channel.say("/视频 384p 10秒 a cat", **USER)  # type: ignore[attr-defined]
    assert app.quota is not None and app.quota.balance("wxid_alice") == 1
    await app.stop()

    clock.advance(2 * 86400 + 3600)  # down for two days
    for _ in range(2):  # two restarts on the same day: one reset, not two
        again = App(settings, LocalChannel(clock=clock), clock=clock, run_worker=False)
        await again.start()
        assert again.quota is not None
        balance = again.quota.balance("wxid_alice")
        kinds = [r.kind for r in reversed(again.quota.history("wxid_alice"))]
        await again.stop()
        assert balance == 3
        assert kinds == ["grant", "spend", "reset"]


@async_test
async def test_cancel_running_job_stops_it_and_refunds(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path,
        worker={"synthetic_steps": 200, "synthetic_step_delay_s": 0.05, "poll_s": 0.1, "progress_every_s": 0.1},
        queue={"delivery_poll_s": 0.2},
    )
    channel = LocalChannel()
    app = App(settings, channel, pipeline=None)
    await app.start()
    try:
        await channel.say("/视频 a very long video", **USER)
        await wait_state(app, 1, JobState.RUNNING, timeout=60)
        await channel.say("/取消", **USER)
        assert "下一步停止" in channel.texts()[-1]
        await wait_state(app, 1, JobState.CANCELLED, timeout=30)
        assert await channel.wait_for(lambda sent: "已停止" in (sent[-1].text.text if sent[-1].text else ""), 30)
        assert app.quota is not None
        kinds = [r.kind for r in reversed(app.quota.history("wxid_alice"))]
        assert kinds == ["grant", "spend", "refund"] and app.quota.balance("wxid_alice") == 3
    finally:
        await app.stop()
    assert channel.videos() == []


@async_test
async def test_a_queued_job_wakes_the_worker_and_its_end_wakes_delivery(tmp_path: Path) -> None:
    # polls far longer than the test: only the bot ↔ worker events can bring the video back in time
    settings = make_settings(
        tmp_path,
        worker={"synthetic_steps": 2, "synthetic_step_delay_s": 0.01, "poll_s": 60, "synthetic_width": 64,
                "synthetic_height": 48},
        queue={"delivery_poll_s": 60},
    )
    channel = LocalChannel()
    app = App(settings, channel, pipeline=None)
    await app.start()
    try:
        await asyncio.sleep(3)  # the worker is idle in its (60 s) wait when the request comes
        t0 = time.monotonic()
        await channel.say("/视频 a lighthouse at night", **USER)
        assert await channel.wait_for(lambda sent: any(s.video for s in sent), timeout=40)
        took = time.monotonic() - t0
    finally:
        await app.stop()
    assert took < 40 and len(channel.videos(ROOM)) == 1
