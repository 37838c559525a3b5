"""The QQ official bot adapter (`bot.channels.qq`) driven against the loopback fake in `tests/fakes/qq_fake.py`."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.channel import Channel, ChannelStartError, DeliveryDeferred, DeliveryError, capabilities_of
from bot.channels.qq import DEFERRED_HINT, SECRET_ENV, QQChannel, QQSettings
from bot.channels.qq.gateway import GatewayState
from bot.messages import ChatKind, Message, OutgoingText, OutgoingVideo
from tests._async_media import eventually, make_mp4, run, sha256
from tests.fakes.qq_fake import ManualClock, QQFake

APP_ID = "102030405"
SECRET = "qq-test-secret-9f8e7d6c5b4a3921"
GROUP = "C9F1A0B2D3E4F5061728394A5B6C7D8E"
MEMBER = "E1D2C3B4A5968778695A4B3C2D1E0F12"
USER = "0F1E2D3C4B5A69788796A5B4C3D2E1F0"
GROUP_CHAT = f"qq:group:{GROUP}"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8








def settings_for(fake: QQFake, **overrides: Any) -> QQSettings:
    values: dict[str, Any] = {
        "enabled": True, "app_id": APP_ID, "api_base": fake.api_base, "token_url": fake.token_url,
        "bot_name": "小爱", "reconnect_initial_s": 0.05, "reconnect_max_s": 0.3, "gateway_timeout_s": 5.0,
        "send_retry_initial_s": 0.01, "request_timeout_s": 5.0, "state_dir": None,
    }  # fmt: skip
    values.update(overrides)
    return QQSettings(**values)


@asynccontextmanager
async def running(
    fake: QQFake, *, clock: Callable[[], float] = time.time, secret: str = SECRET, **overrides: Any
) -> AsyncIterator[tuple[QQChannel, list[Message]]]:
    channel = QQChannel(settings_for(fake, **overrides), environ={SECRET_ENV: secret}, clock=clock)
    inbox: list[Message] = []

    async def on_message(message: Message) -> None:
        inbox.append(message)

    await channel.start(on_message)
    try:
        assert await channel.wait_connected(5), channel.gateway and channel.gateway.last_error
        await fake.wait_connected()
        yield channel, inbox
    finally:
        await channel.stop()


def fake_for(**kwargs: Any) -> QQFake:
    return QQFake(app_id=APP_ID, secret=SECRET, **kwargs)


# ---------------------------------------------------------------------------------------------- gateway
def test_identify_ready_and_heartbeats_carry_the_last_seq() -> None:
    async def scenario() -> None:
        async with fake_for(heartbeat_interval_ms=80) as fake, running(fake) as (channel, inbox):
            assert isinstance(channel, Channel)
            assert channel.connected and channel.state is GatewayState.CONNECTED
            assert channel.bot_id == "qq:" + fake.bot_user["id"]
            [identify] = fake.identifies
            assert identify["token"] == f"QQBot {fake.current_token}"
            assert identify["intents"] & (1 << 25) and identify["shard"] == [0, 1]
            assert fake.x_union_appids == {APP_ID}
            await eventually(lambda: len(fake.heartbeats) >= 2, what="two heartbeats")
            assert set(fake.heartbeats) == {1}  # READY was seq 1
            await fake.push_c2c(USER, "你好")
            await eventually(lambda: len(inbox) == 1)
            count = len(fake.heartbeats)
            await eventually(lambda: len(fake.heartbeats) >= count + 2, what="more heartbeats")
            assert fake.heartbeats[-1] == 2
            caps = capabilities_of(channel)
            assert caps.groups and caps.proactive and caps.reply_window_s == 300.0 and caps.sends_per_inbound == 4
            assert caps.deferred_hint == DEFERRED_HINT and caps.max_inline_video_bytes is None
        assert channel.state is GatewayState.STOPPED and not channel.connected

    run(scenario)


def test_group_at_message_becomes_a_qualified_stripped_group_message_with_image(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            url = fake.add_media(PNG, "image/png")
            attachment = {"content_type": "image/png", "filename": "cat.png", "height": 64, "width": 64,
                          "size": len(PNG), "url": url}  # fmt: skip
            first = await fake.push_group_at(GROUP, MEMBER, " /视频 一只猫在弹钢琴", attachments=[attachment])
            second = await fake.push_group_at(GROUP, MEMBER, "<@!11223344556677889900> @小爱 /额度")
            third = await fake.push_group_at(GROUP, MEMBER, "大家好", event="GROUP_MESSAGE_CREATE")
            await eventually(lambda: len(inbox) == 3)
            msg = inbox[0]
            assert (msg.message_id, msg.chat_id, msg.sender_id) == (f"qq:{first}", GROUP_CHAT, f"qq:{MEMBER}")
            assert msg.kind is ChatKind.GROUP and msg.is_group and msg.mentions_bot
            assert msg.text == "/视频 一只猫在弹钢琴"
            assert msg.timestamp == pytest.approx(time.time(), abs=60)
            assert msg.image is not None and msg.image.size_hint == len(PNG)
            assert await channel.fetch_image(msg, max_bytes=1 << 20) == PNG
            with pytest.raises(ValueError):
                await channel.fetch_image(msg, max_bytes=100)
            assert (inbox[1].message_id, inbox[1].text, inbox[1].mentions_bot) == (f"qq:{second}", "/额度", True)
            assert (inbox[2].message_id, inbox[2].text, inbox[2].mentions_bot) == (f"qq:{third}", "大家好", False)
            assert inbox[1].image is None

    run(scenario)


def test_c2c_message_is_private_with_chat_id_equal_to_sender() -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            msg_id = await fake.push_c2c(USER, "  /视频 海边日落  ")
            await eventually(lambda: len(inbox) == 1)
            msg = inbox[0]
            assert msg.kind is ChatKind.PRIVATE and not msg.is_group
            assert msg.chat_id == msg.sender_id == f"qq:{USER}"
            assert (msg.message_id, msg.text) == (f"qq:{msg_id}", "/视频 海边日落")
            # The reply goes to /v2/users/<openid>/messages as a passive reply.
            await channel.send_text(OutgoingText(msg.chat_id, "收到", reply_to=msg.message_id))
            [sent] = fake.messages
            assert (sent.scope, sent.target, sent.msg_id, sent.msg_seq, sent.content) == ("users", USER, msg_id, 1, "收到")

    run(scenario)


# ---------------------------------------------------------------------------------------------- sends
def test_send_text_passive_replies_count_msg_seq_then_fall_back() -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            first = await fake.push_group_at(GROUP, MEMBER, " /视频 猫")
            await eventually(lambda: len(inbox) == 1)
            for n in range(5):
                await channel.send_text(OutgoingText(GROUP_CHAT, f"第{n}条", (f"qq:{MEMBER}",), f"qq:{first}"))
            sent = fake.messages_to(GROUP)
            assert [(m.msg_id, m.msg_seq) for m in sent] == [(first, 1), (first, 2), (first, 3), (first, 4), (None, None)]
            assert sent[-1].proactive and sent[0].scope == "groups" and sent[0].content == "第0条"
            # A newer message in the chat is used when the answered one is used up.
            second = await fake.push_group_at(GROUP, MEMBER, " 在吗")
            await eventually(lambda: len(inbox) == 2)
            await channel.send_text(OutgoingText(GROUP_CHAT, "在", reply_to=f"qq:{first}"))
            assert (fake.messages[-1].msg_id, fake.messages[-1].msg_seq) == (second, 1)
            assert fake.refusals == []

    run(scenario)


def test_send_video_uploads_mp4_then_posts_msg_type_7_then_caption_once(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "out.mp4")

    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            request = await fake.push_group_at(GROUP, MEMBER, " /视频 一只猫")
            await eventually(lambda: len(inbox) == 1)
            await channel.send_text(OutgoingText(GROUP_CHAT, "收到，排队中", reply_to=f"qq:{request}"))
            out = OutgoingVideo(GROUP_CHAT, str(video), caption="你的视频生成好了 🎬\n提示词：一只猫",
                                mention_ids=(f"qq:{MEMBER}",), meta={"job_id": "17"}, reply_to=f"qq:{request}")  # fmt: skip
            await channel.send_video(out)
            [upload] = fake.uploads
            assert (upload.scope, upload.target, upload.file_type, upload.via) == ("groups", GROUP, 2, "base64")
            assert upload.sha256 == sha256(video) and upload.size == video.stat().st_size
            ack, clip, caption = fake.messages
            assert (clip.msg_type, clip.file_info, clip.media_sha256) == (7, upload.file_info, sha256(video))
            assert (clip.msg_id, clip.msg_seq) == (request, 2)
            assert (caption.msg_type, caption.msg_id, caption.msg_seq) == (0, request, 3)
            assert caption.content == out.caption and ack.msg_seq == 1
            # The same job again (e.g. the core retried after a crash): nothing is sent twice.
            await channel.send_video(out)
            assert len(fake.messages) == 3 and len(fake.uploads) == 1

    run(scenario)


def test_send_video_above_the_threshold_uploads_in_parts(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "big.mp4", seconds=2.0, noise=True)
    assert video.stat().st_size > 3 * 4096

    async def scenario() -> None:
        async with fake_for(part_size=4096) as fake, running(fake, upload_chunked_above_bytes=2048) as (channel, inbox):
            request = await fake.push_c2c(USER, "/视频 雪山")
            await eventually(lambda: len(inbox) == 1)
            await channel.send_video(OutgoingVideo(f"qq:{USER}", str(video), caption="好了", meta={"job_id": "5"},
                                                   reply_to=f"qq:{request}"))  # fmt: skip
            [upload] = fake.uploads
            assert (upload.scope, upload.target, upload.via) == ("users", USER, "parts")
            assert upload.parts == -(-video.stat().st_size // 4096) and upload.parts > 3
            assert upload.sha256 == sha256(video)
            assert fake.cos_puts and all(put["authorization"] is None for put in fake.cos_puts)  # no token to storage
            clip, caption = fake.messages
            assert (clip.msg_type, clip.media_sha256, clip.msg_id, caption.content) == (7, sha256(video), request, "好了")

    run(scenario)


def test_expired_passive_window_sends_proactively() -> None:
    clock = ManualClock()

    async def scenario() -> None:
        async with fake_for(clock=clock) as fake, running(fake, clock=clock) as (channel, inbox):
            request = await fake.push_group_at(GROUP, MEMBER, " /视频 猫")
            await eventually(lambda: len(inbox) == 1)
            clock.advance(296)  # past the window minus the 5 s margin
            await channel.send_text(OutgoingText(GROUP_CHAT, "还在生成", reply_to=f"qq:{request}"))
            [sent] = fake.messages
            assert sent.proactive and sent.msg_seq is None and sent.content == "还在生成"

    run(scenario)


def test_msg_id_refused_by_the_platform_is_retired_and_the_send_goes_proactive() -> None:
    clock = ManualClock()

    async def scenario() -> None:
        # The platform's window (60 s) is shorter than the adapter believes (300 s).
        async with fake_for(clock=clock, passive_window_s=60) as fake, running(fake, clock=clock) as (channel, inbox):
            request = await fake.push_group_at(GROUP, MEMBER, " /视频 猫")
            await eventually(lambda: len(inbox) == 1)
            clock.advance(100)
            await channel.send_text(OutgoingText(GROUP_CHAT, "好了", reply_to=f"qq:{request}"))
            assert [code for _, code, _ in fake.refusals] == [40034005]
            [sent] = fake.messages
            assert sent.proactive
            await channel.send_text(OutgoingText(GROUP_CHAT, "再来", reply_to=f"qq:{request}"))
            assert len(fake.refusals) == 1 and fake.messages[-1].proactive  # not offered again

    run(scenario)


def test_refused_proactive_video_is_deferred_and_sent_once_after_the_next_mention(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "out.mp4")
    clock = ManualClock()

    async def scenario() -> None:
        async with fake_for(clock=clock, proactive_quota=0) as fake, running(fake, clock=clock) as (channel, inbox):
            request = await fake.push_group_at(GROUP, MEMBER, " /视频 猫")
            await eventually(lambda: len(inbox) == 1)
            clock.advance(600)  # generation took ten minutes: the msg_id is stale
            out = OutgoingVideo(GROUP_CHAT, str(video), caption="你的视频", meta={"job_id": "42"},
                                reply_to=f"qq:{request}")  # fmt: skip
            with pytest.raises(DeliveryDeferred):
                await channel.send_video(out)
            assert [code for _, code, _ in fake.refusals] == [40034102]
            assert fake.messages == [] and len(fake.uploads) == 1
            # The user @-mentions the bot again: a fresh msg_id.
            again = await fake.push_group_at(GROUP, MEMBER, " 视频呢")
            await eventually(lambda: len(inbox) == 2)
            await channel.send_video(out)
            clip, caption = fake.messages
            assert (clip.msg_type, clip.msg_id, clip.msg_seq, clip.media_sha256) == (7, again, 1, sha256(video))
            assert (caption.msg_id, caption.msg_seq, caption.content) == (again, 2, "你的视频")
            assert len(fake.uploads) == 1  # the file_info of the first attempt was reused
            await channel.send_video(out)  # a further retry sends nothing
            assert len(fake.messages) == 2
            # A text with no usable context is deferred as well.
            clock.advance(600)
            with pytest.raises(DeliveryDeferred):
                await channel.send_text(OutgoingText(GROUP_CHAT, "提醒"))

    run(scenario)


def test_video_posted_but_caption_interrupted_retry_sends_only_the_caption(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "out.mp4")

    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            request = await fake.push_c2c(USER, "/视频 猫")
            await eventually(lambda: len(inbox) == 1)
            out = OutgoingVideo(f"qq:{USER}", str(video), caption="说明", meta={"job_id": "7"},
                                reply_to=f"qq:{request}")  # fmt: skip
            original = channel._post
            calls = 0

            async def interrupted(*args: Any, **kwargs: Any) -> None:
                nonlocal calls
                calls += 1
                if calls == 2:  # the caption: the process is being shut down
                    raise asyncio.CancelledError
                await original(*args, **kwargs)

            channel._post = interrupted  # type: ignore[method-assign]
            with pytest.raises(asyncio.CancelledError):
                await channel.send_video(out)
            channel._post = original  # type: ignore[method-assign]
            assert [m.msg_type for m in fake.messages] == [7]
            await channel.send_video(out)
            assert [m.msg_type for m in fake.messages] == [7, 0] and fake.messages[1].content == "说明"
            assert len(fake.uploads) == 1

    run(scenario)


def test_transient_errors_are_retried_and_a_lost_answer_is_not_sent_twice() -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            request = await fake.push_group_at(GROUP, MEMBER, " /视频 猫")
            await eventually(lambda: len(inbox) == 1)
            fake.fail_next("/messages", status=502, times=2)
            await channel.send_text(OutgoingText(GROUP_CHAT, "一", reply_to=f"qq:{request}"))
            assert [status for _, path, status, _ in fake.api_calls if path.endswith("/messages")] == [502, 502, 200]
            # Accepted, but the answer is lost: the retry with the same msg_seq is de-duplicated.
            fake.lose_next_response("/messages")
            await channel.send_text(OutgoingText(GROUP_CHAT, "二", reply_to=f"qq:{request}"))
            assert [m.content for m in fake.messages] == ["一", "二"]
            assert [code for _, code, _ in fake.refusals] == [40054005]
            # A final 4xx is a DeliveryError that was certainly not delivered.
            fake.fail_next("/messages", status=400, body={"code": 40034006, "message": "消息内容违规"})
            with pytest.raises(DeliveryError) as info:
                await channel.send_text(OutgoingText(GROUP_CHAT, "三", reply_to=f"qq:{request}"))
            assert not info.value.maybe_delivered and "40034006" in str(info.value)

    run(scenario)


# ---------------------------------------------------------------------------------------------- tokens
def test_token_refreshed_before_expiry_and_once_after_a_401() -> None:
    clock = ManualClock()

    async def scenario() -> None:
        async with fake_for(clock=clock, token_ttl_s=300) as fake, running(fake, clock=clock) as (channel, inbox):
            tokens = channel.tokens
            assert tokens is not None and tokens.fetches == 1
            first_token = fake.current_token
            request = await fake.push_c2c(USER, "/视频 猫")
            await eventually(lambda: len(inbox) == 1)
            clock.advance(250)  # 50 s left, under the 60 s refresh margin
            await channel.send_text(OutgoingText(f"qq:{USER}", "一", reply_to=f"qq:{request}"))
            assert tokens.fetches == 2 and fake.messages[-1].token != first_token
            assert fake.messages[-1].token == fake.current_token
            # The platform drops the token early: one 401, one refresh, success.
            fake.revoke_tokens()
            await channel.send_text(OutgoingText(f"qq:{USER}", "二", reply_to=f"qq:{request}"))
            assert tokens.fetches == 3
            assert [status for _, _, status, _ in fake.api_calls].count(401) == 1
            # Concurrent senders share one refresh.
            fake.revoke_tokens()
            await asyncio.gather(*(channel.send_text(OutgoingText(f"qq:{USER}", f"并发{n}")) for n in range(3)))
            assert tokens.fetches == 4
            assert [m.content for m in fake.messages[:2]] == ["一", "二"]
            assert sorted(m.content or "" for m in fake.messages[2:]) == ["并发0", "并发1", "并发2"]
            assert channel.connected  # the gateway socket lives on

    run(scenario)


def test_bad_or_missing_credentials_fail_start_without_retrying() -> None:
    async def scenario() -> None:
        async with fake_for() as fake:
            channel = QQChannel(settings_for(fake), environ={SECRET_ENV: "wrong-secret-123456"})
            with pytest.raises(ChannelStartError) as info:
                await channel.start(_ignore)
            assert "wrong-secret-123456" not in str(info.value) and "XIAOAI_QQ_SECRET" in str(info.value)
            assert fake.token_requests == [{"app_id": APP_ID, "ok": False}]
            assert not channel.connected and fake.connections == 0

            with pytest.raises(ChannelStartError) as info:
                await QQChannel(settings_for(fake), environ={}).start(_ignore)
            assert SECRET_ENV in str(info.value)
            with pytest.raises(ChannelStartError) as info:
                await QQChannel(settings_for(fake, app_id=""), environ={SECRET_ENV: SECRET}).start(_ignore)
            assert "app_id" in str(info.value)
            assert len(fake.token_requests) == 1

    run(scenario)


async def _ignore(message: Message) -> None:
    return None


# ---------------------------------------------------------------------------------------------- resilience
def test_drop_resumes_without_losing_or_duplicating_dispatches() -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake, reconnect_initial_s=0.3, reconnect_max_s=0.6) as (channel, inbox):
            first = await fake.push_group_at(GROUP, MEMBER, " 一")
            await eventually(lambda: len(inbox) == 1)
            await fake.drop()
            missed = [await fake.push_group_at(GROUP, MEMBER, " 二"), await fake.push_c2c(USER, "三")]
            await eventually(lambda: len(inbox) == 3, what="replayed dispatches")
            await asyncio.sleep(0.2)
            assert [m.message_id for m in inbox] == [f"qq:{first}", f"qq:{missed[0]}", f"qq:{missed[1]}"]
            assert len(fake.identifies) == 1 and len(fake.resumes) == 1
            assert fake.resumes[0]["seq"] == 2 and fake.resumes[0]["session_id"] == fake.sessions[0].id
            assert fake.resumes[0]["token"] == f"QQBot {fake.current_token}"
            assert fake.replayed == [3, 4] and channel.duplicates == 0
            assert channel.connected
            after = await fake.push_c2c(USER, "四")
            await eventually(lambda: len(inbox) == 4)
            assert inbox[-1].message_id == f"qq:{after}"

    run(scenario)


def test_op7_reconnect_resumes_and_op9_invalid_session_identifies_afresh() -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            await fake.push_c2c(USER, "一")
            await eventually(lambda: len(inbox) == 1)
            await fake.request_reconnect()
            await eventually(lambda: len(fake.resumes) == 1 and channel.connected, what="resume after op 7")
            await fake.wait_connected()
            assert fake.resumes[0]["seq"] == 2 and len(fake.identifies) == 1
            await fake.push_c2c(USER, "二")
            await eventually(lambda: len(inbox) == 2)

            await fake.invalidate_session()
            await eventually(lambda: len(fake.identifies) == 2 and channel.connected, what="identify after op 9")
            await fake.wait_connected()
            assert len(fake.sessions) == 2 and len(fake.resumes) == 1
            assert channel.gateway is not None and channel.gateway.session_id == fake.sessions[1].id
            await fake.push_c2c(USER, "三")
            await eventually(lambda: len(inbox) == 3)
            assert [m.text for m in inbox] == ["一", "二", "三"]

    run(scenario)


def test_duplicate_events_are_delivered_once() -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            await fake.push_group_at(GROUP, MEMBER, " /视频 猫", msg_id="M-1", event_id="E-1")
            await fake.push_group_at(GROUP, MEMBER, " /视频 猫", msg_id="M-1", event_id="E-1")  # replayed
            await fake.push_group_at(GROUP, MEMBER, " /视频 猫", msg_id="M-1", event_id="E-2")  # re-sent
            await fake.push_group_at(GROUP, MEMBER, " /视频 狗", msg_id="M-2", event_id="E-3")
            await eventually(lambda: channel.duplicates == 2 and len(inbox) == 2)
            await asyncio.sleep(0.1)
            assert [m.message_id for m in inbox] == ["qq:M-1", "qq:M-2"]

    run(scenario)


def test_gateway_refusal_alerts_the_operator_and_reconnects() -> None:
    async def scenario() -> None:
        async with fake_for() as fake, running(fake) as (channel, inbox):
            alerts: list[str] = []

            async def on_alert(text: str) -> None:
                alerts.append(text)
                raise RuntimeError("alert sink broken")  # must not hurt the channel

            channel.on_alert = on_alert
            await fake.drop(code=4914)
            await eventually(lambda: len(fake.identifies) == 2 and channel.connected, what="fresh identify")
            assert len(alerts) == 1 and "4914" in alerts[0] and "沙箱" in alerts[0]
            await fake.wait_connected()
            await fake.push_c2c(USER, "好了吗")
            await eventually(lambda: len(inbox) == 1)

    run(scenario)


def test_handler_exceptions_do_not_stop_the_receive_loop() -> None:
    async def scenario() -> None:
        async with fake_for() as fake:
            channel = QQChannel(settings_for(fake), environ={SECRET_ENV: SECRET})
            seen: list[str] = []

            async def on_message(message: Message) -> None:
                seen.append(message.text)
                if message.text == "boom":
                    raise RuntimeError("handler bug")

            await channel.start(on_message)
            try:
                assert await channel.wait_connected(5)
                await fake.wait_connected()
                await fake.push_c2c(USER, "boom")
                await fake.push_c2c(USER, "after")
                await eventually(lambda: seen == ["boom", "after"])
            finally:
                await channel.stop()

    run(scenario)


# ---------------------------------------------------------------------------------------------- secrets
def test_secret_and_tokens_never_reach_the_logs(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "out.mp4")
    records: list[logging.LogRecord] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Capture(level=logging.DEBUG)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # the worst case: every library logs at DEBUG, whatever an earlier test's logging setup quietened
    noisy = {name: logging.getLogger(name).level for name in ("httpx", "httpcore", "websockets", "bot")}
    for name in noisy:
        logging.getLogger(name).setLevel(logging.DEBUG)
    fakes: list[QQFake] = []
    reprs: list[str] = []

    async def scenario() -> None:
        async with fake_for(heartbeat_interval_ms=60, part_size=4096) as fake:
            fakes.append(fake)
            async with running(fake, upload_chunked_above_bytes=2048) as (channel, inbox):
                reprs.extend([repr(channel), repr(channel.tokens), repr(channel._settings)])
                request = await fake.push_group_at(GROUP, MEMBER, " /视频 猫", attachments=[
                    {"content_type": "image/png", "url": fake.add_media(PNG), "size": len(PNG)}])  # fmt: skip
                await eventually(lambda: len(inbox) == 1)
                await channel.fetch_image(inbox[0], max_bytes=1 << 20)
                await channel.send_text(OutgoingText(GROUP_CHAT, "收到", reply_to=f"qq:{request}"))
                await channel.send_video(OutgoingVideo(GROUP_CHAT, str(video), caption="好了",
                                                       meta={"job_id": "1"}, reply_to=f"qq:{request}"))  # fmt: skip
                fake.revoke_tokens()
                await channel.send_text(OutgoingText(GROUP_CHAT, "再来"))
                await fake.drop()
                await eventually(lambda: len(fake.resumes) == 1 and channel.connected, what="resume")
                await asyncio.sleep(0.2)  # a few heartbeats on the new socket
                fake.fail_next("/messages", status=400, body={"code": 1, "message": "x"})
                with pytest.raises(DeliveryError):
                    await channel.send_text(OutgoingText(GROUP_CHAT, "失败"))
            bad = QQChannel(settings_for(fake), environ={SECRET_ENV: SECRET + "-wrong"})
            with pytest.raises(ChannelStartError):
                await bad.start(_ignore)

    try:
        run(scenario)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)
    fake = fakes[0]
    assert len(fake.issued_tokens) >= 2 and len(fake.heartbeats) >= 2
    texts = [r.getMessage() + (logging.Formatter().formatException(r.exc_info) if r.exc_info else "")
             for r in records] + reprs  # fmt: skip
    assert any("qq" in t for t in texts) and len(records) > 20
    for secret in [SECRET, SECRET + "-wrong", *fake.issued_tokens]:
        # Whole values and their ends: a truncated dump ("QQBot ibkV9ooeX8D50gO...") is a leak too.
        leaks = [t for t in texts if any(part in t for part in (secret, secret[:12], secret[-12:]))]
        assert not leaks, leaks[:3]


def test_settings_defaults_sandbox_and_no_secret_fields() -> None:
    from pydantic import ValidationError

    settings = QQSettings()
    assert (settings.enabled, settings.app_id, settings.passive_window_s, settings.passive_replies_per_msg) == (
        False, "", 300.0, 4,
    )  # fmt: skip
    assert settings.effective_api_base == "https://api.sgroup.qq.com"
    assert settings.upload_chunked_above_bytes == 10 * 1024 * 1024 and settings.token_refresh_margin_s == 60
    assert QQSettings(sandbox=True).effective_api_base == "https://sandbox.api.sgroup.qq.com"
    assert QQSettings(sandbox=True, api_base="http://127.0.0.1:9/").effective_api_base == "http://127.0.0.1:9"
    for bad in ({"secret": "x"}, {"client_secret": "x"}, {"intents": 1}):
        with pytest.raises(ValidationError):
            QQSettings(**bad)
    channel = QQChannel.from_settings(QQSettings(app_id=APP_ID), environ={SECRET_ENV: SECRET})
    assert SECRET not in repr(channel) and "secret=set" in repr(channel)
    assert channel.bot_id == f"qq:{APP_ID}" and not channel.connected


def test_sent_records_survive_a_restart_and_answer_was_sent(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "out.mp4")
    state = tmp_path / "qq-state"

    async def scenario() -> None:
        async with fake_for() as fake:
            async with running(fake, state_dir=state) as (channel, inbox):
                request = await fake.push_c2c(USER, "/视频 猫")
                await eventually(lambda: len(inbox) == 1)
                done = OutgoingVideo(f"qq:{USER}", str(video), caption="好了", meta={"job_id": "100"},
                                     reply_to=f"qq:{request}")  # fmt: skip
                await channel.send_video(done)
                # Job 101: the bot dies while the video post is in flight.
                original = channel._post

                async def dies(*args: Any, **kwargs: Any) -> None:
                    raise asyncio.CancelledError

                channel._post = dies  # type: ignore[method-assign]
                with pytest.raises(asyncio.CancelledError):
                    await channel.send_video(OutgoingVideo(f"qq:{USER}", str(video), meta={"job_id": "101"}))
                channel._post = original  # type: ignore[method-assign]
            assert (state / f"sent-{APP_ID}.json").is_file()
            async with running(fake, state_dir=state) as (again, _):
                assert await again.was_sent("100") is True
                assert await again.was_sent("101") is None  # started, outcome unknown
                assert await again.was_sent("102") is False
                await again.send_video(done)  # a retry after the restart sends nothing
                assert [m.msg_type for m in fake.messages] == [7, 0]

    run(scenario)
