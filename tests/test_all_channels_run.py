"""`xiaoai run` with every official channel side by side: the real `bot.serve.serve` builds ClawBot, the
WeCom AI bot and the QQ bot from settings + environment (secrets only there), against their loopback
fakes, with the real queue and the synthetic worker. In each platform `/视频 …` gets an ack and then a
playable MP4 (the fakes decrypt/decode what arrived and compare it with the file the worker wrote);
image-to-video works from a WeCom mixed message and a QQ image attachment; one channel that cannot start
(a wrong WeCom secret) is reported and does not stop the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import time
from pathlib import Path
from typing import Any

from bot.channels.qq import SECRET_ENV as QQ_SECRET_ENV
from bot.channels.wecom.adapter import SECRET_ENV as WECOM_SECRET_ENV
from bot.jobs.models import JobState
from bot.jobs.queue import JobQueue
from bot.serve import serve
from bot.settings import Settings
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from tests.chat_harness import async_test, make_settings, png_bytes
from tests.fakes.clawbot_fake import ClawbotFake
from tests.fakes.qq_fake import QQFake
from tests.fakes.wecom_fake import WecomFake

WECOM_BOT = "aibot-test-001"
WECOM_SECRET = "wecom-run-secret-0123456789"
QQ_APP = "102030405"
QQ_SECRET = "qq-run-secret-abcdef0123456"
WX_USER = "o9cq-run@im.wechat"


def _settings(tmp_path: Path, claw: ClawbotFake, wecom: WecomFake, qq: QQFake) -> Settings:
    return make_settings(
        tmp_path,
        worker={"synthetic_steps": 3, "synthetic_step_delay_s": 0.01, "poll_s": 0.1, "synthetic_width": 64,
                "synthetic_height": 48},
        queue={"delivery_poll_s": 0.2, "delivery_backoff_s": 0.1},
        channels={
            "clawbot": claw.settings_values(tmp_path / "clawbot"),
            "wecom": {"enabled": True, "bot_id": WECOM_BOT, "ws_url": wecom.ws_url, "heartbeat_s": 0.5,
                      "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, "connect_timeout_s": 2.0},
            "qq": {"enabled": True, "app_id": QQ_APP, "api_base": qq.api_base, "token_url": qq.token_url,
                   "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3, "state_dir": str(tmp_path / "qq")},
        },
    )


async def _until(predicate: Any, timeout: float = 60.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _jobs(settings: Settings) -> list[Any]:
    db = open_db(settings.storage.db_path)
    try:
        queue = JobQueue(db, QuotaBook(db, settings.quota), settings.queue)
        return queue.recent(50)
    finally:
        db.conn.close()


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@async_test
async def test_one_run_serves_clawbot_wecom_and_qq(tmp_path: Path) -> None:
    async with ClawbotFake() as claw, WecomFake(bot_id=WECOM_BOT, secret=WECOM_SECRET) as wecom, \
            QQFake(app_id=QQ_APP, secret=QQ_SECRET) as qq:
        claw.write_credentials(tmp_path / "clawbot")
        settings = _settings(tmp_path, claw, wecom, qq)
        env = {WECOM_SECRET_ENV: WECOM_SECRET, QQ_SECRET_ENV: QQ_SECRET}
        stop = asyncio.Event()
        err = io.StringIO()
        task = asyncio.create_task(serve(settings, env, stop=stop, err=err))
        try:
            await _until(lambda: wecom.online, 20, "WeCom subscribed")
            await qq.wait_connected(20)
            claw.push_text(WX_USER, "/视频 一只柴犬在雪地里奔跑")
            await wecom.push_text("@小爱 /视频 一只猫在草地上奔跑", chatid="wrGroupRun", userid="zhangsan")
            await wecom.push_mixed("@小爱 /视频 the flower opens", png_bytes((96, 64)), chatid="wrGroupRun",
                                   userid="lisi")
            await qq.push_group_at("GROUPRUN", "MEMBER1", "<@!11223344556677889900> /视频 一只猫在草地上奔跑")
            await qq.push_group_at("GROUPRUN", "MEMBER2", " /视频 the waves roll",
                                   attachments=[{"content_type": "image/png", "filename": "a.png",
                                                 "url": qq.add_media(png_bytes((80, 64))), "size": 100}])

            def all_delivered() -> bool:
                jobs = _jobs(settings)
                return len(jobs) == 5 and all(j.state is JobState.DELIVERED for j in jobs)

            await _until(all_delivered, 120, "five jobs delivered")
        finally:
            stop.set()
            code = await asyncio.wait_for(task, 30)
        assert code == 0, err.getvalue()
        jobs = {j.user_id: j for j in _jobs(settings)}
        # ids are namespaced per platform and never collide
        assert set(jobs) == {f"clawbot:{WX_USER}", "wecom:zhangsan", "wecom:lisi", "qq:MEMBER1", "qq:MEMBER2"}
        assert jobs["wecom:zhangsan"].chat_id == "wecom:wrGroupRun" and jobs["wecom:zhangsan"].chat_kind == "group"
        assert jobs["qq:MEMBER1"].chat_id == "qq:group:GROUPRUN"
        assert jobs["wecom:lisi"].image_path and jobs["qq:MEMBER2"].image_path  # image-to-video
        assert jobs["wecom:zhangsan"].prompt == "一只猫在草地上奔跑"  # the @小爱 prefix was stripped

        # ClawBot: ack, then the MP4 decrypted at the fake is the worker's file
        assert any("已排队" in t for t in claw.texts(WX_USER))
        assert [v.sha256 for v in claw.videos(WX_USER)] == [_sha(jobs[f"clawbot:{WX_USER}"].video_path)]
        assert claw.violations == []
        # WeCom: an ack on the callback, then the chunked upload and a `video` message to the group
        videos = wecom.delivered_of("video")
        assert len(videos) == 2 and {v.chatid for v in videos} == {"wrGroupRun"}
        uploaded = wecom.media_by_sha256()
        assert {_sha(jobs[u].video_path) for u in ("wecom:zhangsan", "wecom:lisi")} <= set(uploaded)
        assert any("已排队" in r.content for r in wecom.replies)
        # QQ: a passive ack, the file_type 2 upload of the real MP4 and a msg_type 7 post
        posts = [m for m in qq.messages_to("GROUPRUN") if m.msg_type == 7]
        assert len(posts) == 2
        assert {m.media_sha256 for m in posts} == {_sha(jobs[u].video_path) for u in ("qq:MEMBER1", "qq:MEMBER2")}
        assert any(m.msg_type == 0 and m.content and "已排队" in m.content and m.msg_id
                   for m in qq.messages_to("GROUPRUN"))


@async_test
async def test_a_channel_that_cannot_start_does_not_stop_the_others(tmp_path: Path) -> None:
    async with ClawbotFake() as claw, WecomFake(bot_id=WECOM_BOT, secret=WECOM_SECRET) as wecom, \
            QQFake(app_id=QQ_APP, secret=QQ_SECRET) as qq:
        claw.write_credentials(tmp_path / "clawbot")
        settings = _settings(tmp_path, claw, wecom, qq)
        env = {WECOM_SECRET_ENV: "a-wrong-secret-value", QQ_SECRET_ENV: QQ_SECRET}
        stop = asyncio.Event()
        err = io.StringIO()
        task = asyncio.create_task(serve(settings, env, stop=stop, err=err))
        try:
            await qq.wait_connected(20)
            await qq.push_c2c("USERC2C", "/额度")
            await _until(lambda: any(m.content and "剩余额度" in m.content for m in qq.messages_to("USERC2C")), 20,
                         "the QQ answer")
            claw.push_text(WX_USER, "/额度")
            await _until(lambda: any("剩余额度" in t for t in claw.texts(WX_USER)), 20, "the ClawBot answer")
        finally:
            stop.set()
            code = await asyncio.wait_for(task, 30)
        assert code == 0
        assert "wecom" in err.getvalue() and "Traceback" not in err.getvalue()
        assert "a-wrong-secret-value" not in err.getvalue()
