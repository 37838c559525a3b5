"""Several channels in one app, end to end: the real App (router, plugins, SQLite quota + queue, the
worker process with the synthetic generator, the delivery loop) serving the local channel and the real
ClawBot adapter against the loopback iLink fake at the same time.

What must hold: ids of the two platforms never collide (quotas, jobs); a finished job goes back through
the channel it came from, as a real MP4 the fake decrypts; image-to-video works from a WeChat photo and
from a quoted photo; a video the platform refuses (`ret=-2`) is kept, not refunded, and delivered exactly
once after the user's next message; an expired ClawBot session alerts the admins on the other channel;
re-delivered messages are not answered twice; `xiaoai run` with ClawBot alone and no login exits non-zero
saying how to log in.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from pathlib import Path

from bot.app import App
from bot.channels.clawbot.adapter import ClawbotChannel
from bot.channels.clawbot.settings import ClawbotSettings
from bot.channels.local import LocalChannel
from bot.jobs.models import JobState
from bot.serve import serve
from bot.settings import Settings
from tests.chat_harness import ADMIN, ROOM, async_test, make_settings, png_bytes
from tests.fakes.clawbot_fake import ClawbotFake

WX_USER = "o9cq-xiaoming@im.wechat"
LOCAL_USER = {"sender_id": "wxid_alice", "sender_name": "Alice", "chat_id": ROOM}


def _settings(tmp_path: Path, fake: ClawbotFake) -> Settings:
    return make_settings(
        tmp_path,
        worker={"synthetic_steps": 3, "synthetic_step_delay_s": 0.01, "poll_s": 0.1, "synthetic_width": 64,
                "synthetic_height": 48},
        queue={"delivery_poll_s": 0.2, "delivery_backoff_s": 0.1},
        channels={"clawbot": fake.settings_values(tmp_path / "clawbot")},
    )


def _clawbot(settings: Settings) -> ClawbotChannel:
    return ClawbotChannel(ClawbotSettings.model_validate(settings.channels.clawbot.model_dump()))


async def _until(predicate, timeout: float = 60.0, what: str = "") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@async_test
async def test_clawbot_and_local_side_by_side_text_and_image_to_video(tmp_path: Path) -> None:
    async with ClawbotFake() as fake:
        fake.write_credentials(tmp_path / "clawbot")
        settings = _settings(tmp_path, fake)
        local = LocalChannel()
        app = App(settings, [local, _clawbot(settings)], pipeline=None)
        await app.start()
        try:
            assert [c.name for c in app.hub.started] == ["local", "clawbot"]
            fake.push_text(WX_USER, "/视频 一只柴犬在雪地里奔跑")
            await local.say("/视频 a cat on the grass", **LOCAL_USER)
            await _until(lambda: any("已排队" in t for t in fake.texts(WX_USER)), what="ClawBot ack")
            ack = next(t for t in fake.texts(WX_USER) if "已排队" in t)
            assert "回复任意消息即可领取" in ack  # the channel's reply rules are told up front
            assert len(ack.splitlines()) <= 4
            # image-to-video: a photo, then the command; and a command quoting a photo
            fake.push_image(WX_USER, png_bytes((96, 64)))
            fake.push_text(WX_USER, "/视频 the sea moves")
            fake.push_quote(WX_USER, "/视频 the leaves sway", image=png_bytes((80, 64), (20, 160, 60)))
            queue = app.queue
            assert queue is not None
            await _until(lambda: [j.state for j in queue.recent(10)] == [JobState.DELIVERED] * 4, timeout=120,
                         what="all four jobs delivered")
        finally:
            await app.stop()
        assert fake.violations == []
        reopened = App(settings, LocalChannel(), run_worker=False)
        await reopened.start()
        try:
            assert reopened.queue is not None and reopened.quota is not None
            wx_jobs = reopened.queue.jobs_of(f"clawbot:{WX_USER}")
            local_jobs = reopened.queue.jobs_of("wxid_alice")
            assert len(wx_jobs) == 3 and len(local_jobs) == 1
            assert all(j.chat_id == f"clawbot:{WX_USER}" and j.chat_kind == "private" for j in wx_jobs)
            assert [j.image_path is not None for j in wx_jobs] == [False, True, True]
            assert all(j.state is JobState.DELIVERED for j in wx_jobs + local_jobs)
            # every decrypted MP4 at the fake is byte-for-byte the file the worker wrote
            sent = {v.sha256 for v in fake.videos(WX_USER)}
            assert sent == {_sha(j.video_path) for j in wx_jobs if j.video_path}
            # one quota ledger per platform id, never mixed
            assert [r.kind for r in reversed(reopened.quota.history(f"clawbot:{WX_USER}"))] == [
                "grant", "spend", "spend", "spend"]
            assert [r.kind for r in reversed(reopened.quota.history("wxid_alice"))] == ["grant", "spend"]
        finally:
            await reopened.stop()
        # the local user's video went to the local channel only
        assert len(local.videos(ROOM)) == 1


@async_test
async def test_refused_video_is_kept_and_delivered_once_after_the_next_message(tmp_path: Path) -> None:
    async with ClawbotFake() as fake:
        fake.write_credentials(tmp_path / "clawbot")
        settings = _settings(tmp_path, fake)
        app = App(settings, [LocalChannel(), _clawbot(settings)], pipeline=None)
        await app.start()
        try:
            fake.fail_next_send(-2, kind="video", times=5)  # the context token went stale
            fake.push_text(WX_USER, "/视频 a red kite in the wind")
            assert app.queue is not None
            queue = app.queue
            await _until(lambda: any(j.deferred_at for j in queue.jobs_of(f"clawbot:{WX_USER}")), timeout=90,
                         what="the job to be parked")
            job = queue.jobs_of(f"clawbot:{WX_USER}")[0]
            assert job.state is JobState.SUCCEEDED and fake.videos(WX_USER) == []
            fake.send_failures.clear()
            fake.push_text(WX_USER, "在吗")  # any message brings a fresh context token
            await _until(lambda: len(fake.videos(WX_USER)) == 1, timeout=30, what="the held video")
            await asyncio.sleep(1.0)  # nothing else may follow
            assert len(fake.videos(WX_USER)) == 1
            assert queue.get(job.id).state is JobState.DELIVERED  # type: ignore[union-attr]
            assert app.quota is not None
            assert "refund" not in [r.kind for r in app.quota.history(f"clawbot:{WX_USER}")]
        finally:
            await app.stop()


@async_test
async def test_expired_session_alerts_admins_on_the_other_channel(tmp_path: Path) -> None:
    async with ClawbotFake() as fake:
        fake.write_credentials(tmp_path / "clawbot")
        settings = _settings(tmp_path, fake)
        local = LocalChannel()
        app = App(settings, [local, _clawbot(settings)], pipeline=None, run_worker=False)
        await app.start()
        try:
            fake.expire_session()
            assert await local.wait_for(
                lambda sent: any(s.text and s.chat_id == ADMIN and "xiaoai login clawbot" in s.text.text
                                 for s in sent), timeout=20)
            fake.write_credentials(tmp_path / "clawbot")  # the operator logs in again
            fake.push_text(WX_USER, "/额度")
            await _until(lambda: any("剩余额度" in t for t in fake.texts(WX_USER)), timeout=20,
                         what="the channel to resume")
        finally:
            await app.stop()


@async_test
async def test_replayed_messages_after_a_restart_are_not_answered_again(tmp_path: Path) -> None:
    async with ClawbotFake() as fake:
        fake.write_credentials(tmp_path / "clawbot")
        settings = _settings(tmp_path, fake)
        app = App(settings, [LocalChannel(), _clawbot(settings)], pipeline=None, run_worker=False)
        await app.start()
        try:
            first = fake.push_text(WX_USER, "/额度")
            await _until(lambda: len(fake.texts(WX_USER)) == 1, what="the first answer")
        finally:
            await app.stop()
        # a fresh adapter state (as if the cursor had not been committed) and a replay of the same id
        (tmp_path / "clawbot" / "sync.json").unlink(missing_ok=True)
        fake.replay(first)
        app = App(settings, [LocalChannel(), _clawbot(settings)], pipeline=None, run_worker=False)
        await app.start()
        try:
            fake.push_text(WX_USER, "/帮助")
            await _until(lambda: len(fake.texts(WX_USER)) >= 2, what="the second answer")
            help_text = fake.texts(WX_USER)[-1]  # /帮助 says what this platform allows
            assert "只能私聊" in help_text and "回复任意消息即可领取" in help_text
            await asyncio.sleep(0.5)
            texts = fake.texts(WX_USER)
            assert len(texts) == 2 and texts[0].startswith("剩余额度") and "/视频" in texts[1]
        finally:
            await app.stop()


@async_test
async def test_run_with_only_clawbot_and_no_login_says_how_to_log_in(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, channels={"clawbot": {"enabled": True, "state_dir": str(tmp_path / "cb"),
                                                             "base_url": "http://127.0.0.1:9"}})
    err = io.StringIO()
    code = await serve(settings, environ={}, err=err)
    assert code == 2
    assert "xiaoai login clawbot" in err.getvalue()
    assert "Traceback" not in err.getvalue()
