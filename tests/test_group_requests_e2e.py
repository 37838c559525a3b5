"""The group-request commands end to end: the real App (router, plugins, SQLite quota + queue, the worker process
with the synthetic generator, the delivery loop) on the local channel, on the ClawBot adapter against its loopback
fake, and quote-to-animate from a WeCom quote and a QQ quote event (`msg_elements`) through `xiaoai run`'s
`serve` against their fakes. Unit-level checks of the same commands: tests/test_group_requests.py."""

from __future__ import annotations

import asyncio
import io
import time
from pathlib import Path
from typing import Any

from bot.app import App
from bot.channels.clawbot.adapter import ClawbotChannel
from bot.channels.clawbot.settings import ClawbotSettings
from bot.channels.local import LocalChannel
from bot.channels.qq import SECRET_ENV as QQ_SECRET_ENV
from bot.channels.wecom.adapter import SECRET_ENV as WECOM_SECRET_ENV
from bot.jobs.models import JobState
from bot.jobs.queue import JobQueue
from bot.serve import serve
from bot.settings import Settings
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from generation.labels import read_aigc
from generation.video_io import probe
from tests.chat_harness import ROOM, async_test, make_settings, png_bytes
from tests.fakes.clawbot_fake import ClawbotFake
from tests.fakes.qq_fake import QQFake
from tests.fakes.wecom_fake import WecomFake

USER = {"sender_id": "wxid_alice", "sender_name": "Alice", "chat_id": ROOM}
WX_USER = "o9cq-again@im.wechat"
WORKER = {"synthetic_steps": 3, "synthetic_step_delay_s": 0.01, "poll_s": 0.1, "synthetic_width": 64,
          "synthetic_height": 48}


def _settings(tmp_path: Path, **sections: Any) -> Settings:
    return make_settings(tmp_path, worker=WORKER, queue={"delivery_poll_s": 0.2, "delivery_backoff_s": 0.1,
                                                         "max_pending_per_user": 10},
                         quota={"daily": 20}, prompts={"negative_prompt": "low quality"}, **sections)


async def _until(predicate: Any, timeout: float = 90.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or predicate}")


def _all_delivered(queue: JobQueue, user: str, count: int) -> bool:
    jobs = queue.jobs_of(user)
    return len(jobs) == count and all(j.state is JobState.DELIVERED for j in jobs)


@async_test
async def test_local_channel_style_negative_again_continue_mine_and_resend(tmp_path: Path) -> None:
    channel = LocalChannel()
    app = App(_settings(tmp_path), channel, pipeline=None)
    await app.start()
    try:
        queue = app.queue
        assert queue is not None
        await channel.say("/风格", **USER)
        assert "可选风格" in channel.texts()[-1]
        # quote to animate on the local channel: the command carries the image
        await channel.say("/视频 风格=水墨 the crane flies 不要=fog, rain", image=png_bytes((96, 64)), **USER)
        assert "图生视频" in channel.texts()[-1] and "风格：水墨" in channel.texts()[-1]
        await _until(lambda: _all_delivered(queue, "wxid_alice", 1), what="the first video")
        [first] = queue.jobs_of("wxid_alice")
        assert first.negative_prompt.startswith("low quality, ") and first.negative_prompt.endswith("fog, rain")
        await channel.say("/重来", **USER)
        assert f"重做 #{first.id}" in channel.texts()[-1]
        await channel.say(f"/续写 #{first.id} 合并 the crane lands", **USER)
        assert "续写任务" in channel.texts()[-1]
        await _until(lambda: _all_delivered(queue, "wxid_alice", 3), what="the repeat and the continuation")
        _, again, merged = queue.jobs_of("wxid_alice")
        assert again.seed != first.seed and again.image_path == first.image_path
        assert merged.parent_id == first.id and Path(merged.video_path or "").name == "merged.mp4"
        frames = probe(Path(first.video_path or ""))["frames"]
        assert probe(Path(merged.video_path or ""))["frames"] == 2 * frames - 1
        assert read_aigc(Path(merged.video_path or "")) is not None
        assert len(channel.videos(ROOM)) == 3 and "已接在" in channel.videos(ROOM)[-1].caption
        await channel.say("/我的视频", **USER)
        listing = channel.texts()[-1]
        assert all(f"#{j.id} 已发送" in listing for j in (first, again, merged))
        Path(first.video_path or "").unlink()  # retention removed it
        await channel.say(f"/发送 #{first.id}", **USER)
        assert "已经不保存" in channel.texts()[-1]
        await channel.say(f"/续写 #{first.id} more", **USER)
        assert "没法续写" in channel.texts()[-1]
        assert app.quota is not None
        kinds = [r.kind for r in reversed(app.quota.history("wxid_alice"))]
        assert kinds == ["grant", "spend", "spend", "spend"]  # three jobs, nothing for the refusals
    finally:
        await app.stop()


@async_test
async def test_clawbot_quote_again_mine_and_continue_through_the_app(tmp_path: Path) -> None:
    async with ClawbotFake() as fake:
        fake.write_credentials(tmp_path / "clawbot")
        settings = _settings(tmp_path, channels={"clawbot": fake.settings_values(tmp_path / "clawbot")})
        clawbot = ClawbotChannel(ClawbotSettings.model_validate(settings.channels.clawbot.model_dump()))
        app = App(settings, [LocalChannel(), clawbot], pipeline=None)
        await app.start()
        user = f"clawbot:{WX_USER}"
        try:
            queue = app.queue
            assert queue is not None
            fake.push_quote(WX_USER, "/视频 风格=anime the leaves sway", image=png_bytes((80, 64), (20, 160, 60)))
            await _until(lambda: _all_delivered(queue, user, 1), what="the quoted photo's video")
            [first] = queue.jobs_of(user)
            assert first.image_path and first.final_prompt.endswith(settings.prompts.styles["动漫"].text)
            fake.push_text(WX_USER, "/重来")
            fake.push_text(WX_USER, f"/续写 #{first.id} the wind stops")
            await _until(lambda: _all_delivered(queue, user, 3), what="the repeat and the continuation")
            fake.push_text(WX_USER, "/我的视频")
            await _until(lambda: any("你最近的 3 个视频" in t for t in fake.texts(WX_USER)), what="/我的视频")
            fake.push_text(WX_USER, "/续写 #999 again")
            await _until(lambda: any("没有找到你的任务 #999" in t for t in fake.texts(WX_USER)), what="refusal")
            _, again, cont = queue.jobs_of(user)
            assert again.image_path == first.image_path and again.seed != first.seed
            assert cont.parent_id == first.id and cont.image_path and cont.image_path != first.image_path
            assert app.quota is not None and len([r for r in app.quota.history(user) if r.kind == "spend"]) == 3
        finally:
            await app.stop()
        assert len(fake.videos(WX_USER)) == 3 and fake.violations == []


def _jobs(settings: Settings) -> list[Any]:
    db = open_db(settings.storage.db_path)
    try:
        return JobQueue(db, QuotaBook(db, settings.quota), settings.queue).recent(50)
    finally:
        db.conn.close()


@async_test
async def test_wecom_and_qq_quotes_make_image_to_video_jobs(tmp_path: Path) -> None:
    async with WecomFake(bot_id="aibot-q", secret="wecom-quote-secret-0123") as wecom, \
            QQFake(app_id="102000777", secret="qq-quote-secret-abcdef01") as qq:
        settings = _settings(tmp_path, channels={
            "wecom": {"enabled": True, "bot_id": "aibot-q", "ws_url": wecom.ws_url, "heartbeat_s": 0.5,
                      "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2, "connect_timeout_s": 2.0},
            "qq": {"enabled": True, "app_id": "102000777", "api_base": qq.api_base, "token_url": qq.token_url,
                   "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3, "state_dir": str(tmp_path / "qq")},
        })
        env = {WECOM_SECRET_ENV: "wecom-quote-secret-0123", QQ_SECRET_ENV: "qq-quote-secret-abcdef01"}
        stop = asyncio.Event()
        err = io.StringIO()
        task = asyncio.create_task(serve(settings, env, stop=stop, err=err))
        try:
            await _until(lambda: wecom.online, 20, "WeCom subscribed")
            await qq.wait_connected(20)
            await wecom.push_quote("@小爱 /视频 风格=油画 the waves roll", png_bytes((96, 64)), chatid="wrQuote",
                                   userid="zhangsan")
            quoted = {"content_type": "image/png", "filename": "q.png", "url": qq.add_media(png_bytes((80, 64))),
                      "size": 100}
            await qq.push_group_at("GROUPQ", "MEMBERQ", "<@!11223344556677889900> /视频 the flower opens",
                                   extra={"message_type": 103, "msg_elements": [
                                       {"msg_idx": "REFIDX_1", "content": "", "attachments": [quoted]}]})

            def delivered() -> bool:
                jobs = _jobs(settings)
                return len(jobs) == 2 and all(j.state is JobState.DELIVERED for j in jobs)

            await _until(delivered, 120, "both quoted-image jobs delivered")
        finally:
            stop.set()
            code = await asyncio.wait_for(task, 30)
        assert code == 0, err.getvalue()
        jobs = {j.user_id: j for j in _jobs(settings)}
        assert set(jobs) == {"wecom:zhangsan", "qq:MEMBERQ"}
        assert all(j.image_path and Path(j.image_path).is_file() for j in jobs.values())  # image-to-video
        final = jobs["wecom:zhangsan"].final_prompt  # `xiaoai run`'s real prompt pipeline: enhanced, but its
        assert settings.prompts.styles["油画"].text in final and "35mm" not in final  # own style left out
        assert any("图生视频" in r.content for r in wecom.replies)
        assert any(m.content and "图生视频" in m.content for m in qq.messages_to("GROUPQ"))
