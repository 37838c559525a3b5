"""The WeCom AI bot adapter (`bot.channels.wecom`) driven against the loopback fake in `tests/fakes/wecom_fake.py`."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from bot.channel import Channel, ChannelStartError, DeliveryError, ImageFetchError
from bot.channels.wecom import crypto, media
from bot.channels.wecom.adapter import WecomChannel, strip_bot_mention
from bot.channels.wecom.protocol import AckError, WecomConnection, open_socket
from bot.channels.wecom.settings import SECRET_ENV, WecomSettings
from bot.channels.wecom.upload import chunk_size_for, concurrency_for
from bot.messages import ChatKind, Message, OutgoingText, OutgoingVideo
from tests._async_media import eventually, make_mp4, run, sha256
from tests.fakes.wecom_fake import ERR_AUTH, ERR_REQ_ID, WecomFake

BOT = "aib-test-bot"
SECRET = "wecom-secret-DO-NOT-LOG-7f3a9c"
ENV = {SECRET_ENV: SECRET}
GROUP = "wrGroupA1"
ALICE = "zhangsan"
BOB = "lisi"
IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 9  # not a multiple of 32: padding matters


# ---------------------------------------------------------------------------------------------- helpers






def settings(fake: WecomFake | None, **overrides: Any) -> WecomSettings:
    values: dict[str, Any] = {
        "enabled": True, "bot_id": BOT, "ws_url": fake.ws_url if fake else "ws://127.0.0.1:9",
        "bot_name": "小爱", "heartbeat_s": 0.2, "reconnect_initial_s": 0.05, "reconnect_max_s": 0.2,
        "ack_timeout_s": 2.0, "send_wait_s": 3.0, "send_retry_initial_s": 0.01, "upload_retry_initial_s": 0.01,
        "connect_timeout_s": 2.0,
    }  # fmt: skip
    values.update(overrides)
    return WecomSettings(**values)


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    async def wait(self, count: int) -> Message:
        await eventually(lambda: len(self.messages) >= count, what=f"{count} inbound messages")
        return self.messages[count - 1]


async def started(fake: WecomFake, inbox: Inbox | None = None, *, environ: dict[str, str] | None = None,
                  **overrides: Any) -> WecomChannel:  # fmt: skip
    channel = WecomChannel(settings(fake, **overrides), environ=ENV if environ is None else environ)
    await channel.start(inbox or Inbox())
    assert await channel.wait_connected(5), channel.last_error
    return channel


# ---------------------------------------------------------------------------------------------- units
def test_crypto_roundtrip_with_unpadded_key_and_32_byte_blocks() -> None:
    key = "A" * 43  # 32 bytes base64 without its "="
    assert len(crypto.decode_aeskey(key)) == 32
    for size in (0, 1, 31, 32, 33, 1000):
        plain = bytes(range(256))[: size % 256] * (size // 256 + 1)
        plain = plain[:size]
        blob = crypto.encrypt(plain, key)
        assert len(blob) % 32 == 0 and len(blob) > len(plain)
        assert crypto.decrypt(blob, key) == plain
    with pytest.raises(crypto.MediaDecryptError):
        crypto.decrypt(crypto.encrypt(b"hello", key), "B" * 43)
    with pytest.raises(crypto.MediaDecryptError):
        crypto.decode_aeskey("c2hvcnQ")  # 5 bytes


def test_strip_mention_and_upload_sizing() -> None:
    assert strip_bot_mention("@小爱 /视频 一只猫", "小爱") == "/视频 一只猫"
    assert strip_bot_mention("@小爱\u2005/视频 猫", "小爱") == "/视频 猫"
    assert strip_bot_mention("@张三 看 @小爱 /额度", "小爱") == "@张三 看 /额度"
    assert strip_bot_mention("@小爱视频 /视频 狗", "小爱") == "/视频 狗"  # display name differs: leading @token
    assert strip_bot_mention("/帮助", "小爱") == "/帮助"
    assert [concurrency_for(n) for n in (1, 4, 5, 10, 11, 100)] == [1, 4, 3, 3, 2, 2]
    assert chunk_size_for(1000, 100) == 100
    assert chunk_size_for(100 * 1000, 100) == 1000  # raised so that ≤ 100 chunks
    assert chunk_size_for(10, 10**9) == 512 * 1024


def test_start_refuses_without_secret_or_bot_id() -> None:
    async def scenario() -> None:
        with pytest.raises(ChannelStartError, match=SECRET_ENV):
            await WecomChannel(settings(None), environ={}).start(Inbox())
        with pytest.raises(ChannelStartError, match="bot_id"):
            await WecomChannel(settings(None, bot_id=""), environ=ENV).start(Inbox())

    run(scenario)


# ---------------------------------------------------------------------------------------------- connection
def test_bad_secret_is_a_start_error_and_not_retried() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            channel = WecomChannel(settings(fake), environ={SECRET_ENV: "wrong-secret"})
            with pytest.raises(ChannelStartError) as info:
                await channel.start(Inbox())
            assert str(ERR_AUTH) in str(info.value) and "wrong-secret" not in str(info.value)
            await asyncio.sleep(0.5)  # several backoff periods: nothing may retry
            assert fake.subscribes == [(BOT, False)]
            assert not channel.connected

    run(scenario)


def test_subscribe_and_heartbeats() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            channel = await started(fake, heartbeat_s=0.05)
            assert isinstance(channel, Channel)
            assert channel.bot_id == f"wecom:{BOT}" and channel.connected
            caps = channel.capabilities
            assert (caps.groups, caps.mentions, caps.proactive, caps.quotes) == (True, True, True, True)
            assert caps.max_inline_video_bytes == 10 * 1024 * 1024
            first = json.loads(fake.raw_frames[0])
            assert first["cmd"] == "aibot_subscribe" and first["body"] == {"bot_id": BOT, "secret": SECRET}
            assert first["headers"]["req_id"].startswith("aibot_subscribe_")
            await eventually(lambda: fake.pings >= 4 and channel.heartbeats_acked >= 3, what="heartbeats")
            assert fake.subscribes == [(BOT, True)]
            await channel.stop()
            assert not channel.connected

    run(scenario)


def test_missed_heartbeats_rebuild_the_connection() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            fake.ack_pings = False
            channel = await started(fake, heartbeat_s=0.05, ack_timeout_s=0.1, heartbeat_misses=2)
            await eventually(lambda: len(fake.subscribes) >= 2, what="a reconnect after missed heartbeats")
            fake.ack_pings = True
            await eventually(lambda: channel.heartbeats_acked >= 2 and channel.connected, what="healthy again")
            assert all(ok for _, ok in fake.subscribes)
            await channel.stop()

    run(scenario)


def test_unreachable_at_start_then_connects(tmp_path: Path) -> None:
    async def scenario() -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        channel = WecomChannel(settings(None, ws_url=f"ws://127.0.0.1:{port}"), environ=ENV)
        await channel.start(Inbox())  # not fatal: retried in the background
        assert not channel.connected and channel.last_error
        async with WecomFake(bot_id=BOT, secret=SECRET, port=port) as fake:
            assert await channel.wait_connected(5)
            assert fake.subscribes == [(BOT, True)]
            await channel.stop()

    run(scenario)


def test_second_connection_takes_over_and_first_stops(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.channels.wecom")

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            alerts: list[str] = []

            async def on_alert(text: str) -> None:
                alerts.append(text)

            first = await started(fake)
            first.on_alert = on_alert
            second = await started(fake)
            await eventually(lambda: first.halted == "kicked", what="the first channel to notice the takeover")
            await eventually(lambda: len(alerts) == 1, what="the alert")
            assert not first.connected and second.connected
            assert "接管" in alerts[0]
            await asyncio.sleep(0.6)  # several backoff periods: no reconnect fight
            assert fake.subscribes == [(BOT, True), (BOT, True)] and len(alerts) == 1
            assert second.connected
            with pytest.raises(DeliveryError) as info:
                await first.send_text(OutgoingText(f"wecom:{ALICE}", "hi"))
            assert info.value.maybe_delivered is False
            await first.stop()
            await second.stop()

    run(scenario)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith("bot.channels.wecom")]
    assert len(errors) == 1 and "kicked" in errors[0].getMessage()


def test_refused_subscribe_on_reconnect_stops_with_an_alert() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            alerts: list[str] = []

            async def on_alert(text: str) -> None:
                alerts.append(text)

            channel = await started(fake, auth_retries=1)
            channel.on_alert = on_alert
            fake.secret = "rotated-by-admin"
            await fake.drop()
            await eventually(lambda: channel.halted == "refused", what="the channel to give up")
            await eventually(lambda: len(alerts) == 1, what="the alert")
            assert SECRET_ENV in alerts[0] and "拒绝" in alerts[0]
            await asyncio.sleep(0.5)
            assert fake.subscribes == [(BOT, True), (BOT, False), (BOT, False)]  # 1 + auth_retries, then stop
            assert not channel.connected
            await channel.stop()

    run(scenario)


# ---------------------------------------------------------------------------------------------- inbound
def test_group_mention_becomes_a_message_and_reply_is_a_finished_stream() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            inbox = Inbox()
            channel = await started(fake, inbox)
            pushed = await fake.push_text("@小爱 /视频 一只猫在弹钢琴", userid=ALICE, chatid=GROUP)
            msg = await inbox.wait(1)
            assert msg.message_id == f"wecom:{pushed.msgid}"
            assert (msg.chat_id, msg.kind, msg.sender_id) == (f"wecom:{GROUP}", ChatKind.GROUP, f"wecom:{ALICE}")
            assert msg.text == "/视频 一只猫在弹钢琴" and msg.mentions_bot and msg.image is None
            assert msg.timestamp > 1_600_000_000

            await channel.send_text(OutgoingText(msg.chat_id, "收到，正在生成", (msg.sender_id,), reply_to=msg.message_id))
            [reply] = fake.replies
            assert reply.req_id == pushed.req_id and reply.msgtype == "stream" and reply.chatid == GROUP
            assert reply.body["stream"]["finish"] is True and reply.body["stream"]["id"]
            assert reply.content == f"@{ALICE} 收到，正在生成"
            # a second reply to the same request: another stream, serialised on the same req_id
            await asyncio.gather(
                channel.send_text(OutgoingText(msg.chat_id, "第二条", reply_to=msg.message_id)),
                channel.send_text(OutgoingText(msg.chat_id, "第三条", reply_to=msg.message_id)),
            )
            assert len(fake.replies) == 3 and {r.req_id for r in fake.replies} == {pushed.req_id}
            assert len({r.body["stream"]["id"] for r in fake.replies}) == 3
            assert fake.errors == [] and fake.sent == []
            await channel.stop()

    run(scenario)


def test_private_message_and_proactive_send_when_req_id_is_stale() -> None:
    now = [1_800_000_000.0]

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            inbox = Inbox()
            channel = WecomChannel(settings(fake), environ=ENV, clock=lambda: now[0])
            await channel.start(inbox)
            await fake.push_text("/帮助", userid=BOB)
            msg = await inbox.wait(1)
            assert msg.kind is ChatKind.PRIVATE and msg.chat_id == msg.sender_id == f"wecom:{BOB}"
            assert msg.text == "/帮助" and not msg.mentions_bot

            now[0] += 301  # the req_id is older than reply_window_s: proactive markdown
            await channel.send_text(OutgoingText(msg.chat_id, "**用法**", reply_to=msg.message_id))
            await channel.send_text(OutgoingText(f"wecom:{GROUP}", "群里主动发"))  # never seen: no chat_type
            assert fake.replies == []
            first, second = fake.sent
            assert first.body == {"chatid": BOB, "chat_type": 1, "msgtype": "markdown", "markdown": {"content": "**用法**"}}
            assert second.body == {"chatid": GROUP, "msgtype": "markdown", "markdown": {"content": "群里主动发"}}
            await channel.stop()

    run(scenario)


def test_busy_is_retried_and_a_refused_passive_reply_goes_out_proactively() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            inbox = Inbox()
            channel = await started(fake, inbox)
            pushed = await fake.push_text("@小爱 /额度", userid=ALICE, chatid=GROUP)
            msg = await inbox.wait(1)
            fake.refuse_msgtype, fake.refuse_errcode = "stream", 6000  # "命令冲突": retried on the same req_id
            await channel.send_text(OutgoingText(msg.chat_id, "一", reply_to=msg.message_id))
            assert [(r.req_id, r.content) for r in fake.replies] == [(pushed.req_id, "一")]
            fake.refuse_msgtype, fake.refuse_errcode = "stream", 40009  # refused: fall back to aibot_send_msg
            await channel.send_text(OutgoingText(msg.chat_id, "二", reply_to=msg.message_id))
            assert len(fake.replies) == 1
            assert [(d.chatid, d.msgtype, d.content) for d in fake.sent] == [(GROUP, "markdown", "二")]
            assert [e[1] for e in fake.errors] == [6000, 40009]
            await channel.stop()

    run(scenario)


def test_fake_refuses_replies_on_req_ids_it_did_not_issue() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            conn = WecomConnection(await open_socket(fake.ws_url, open_timeout=2), ack_timeout_s=2)
            reader = asyncio.create_task(conn.run(lambda frame: asyncio.sleep(0)))
            await conn.request("aibot_subscribe", {"bot_id": BOT, "secret": SECRET})
            with pytest.raises(AckError) as info:
                await conn.request("aibot_respond_msg", {"msgtype": "stream", "stream": {"id": "s", "finish": True,
                                   "content": "x"}}, req_id="made-up")  # fmt: skip
            assert info.value.errcode == ERR_REQ_ID
            await conn.close()
            await reader

    run(scenario)


def test_duplicate_msgid_is_delivered_once() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            inbox = Inbox()
            channel = await started(fake, inbox)
            body = fake.callback_body("text", {"content": "/额度"}, userid=BOB, msgid="dup-1")
            await fake.push(body)
            await fake.push(body)  # protocol-level replay, new req_id
            await fake.push_text("/帮助", userid=BOB)
            await inbox.wait(2)
            await asyncio.sleep(0.1)
            assert [m.text for m in inbox.messages] == ["/额度", "/帮助"]
            await channel.stop()

    run(scenario)


def test_image_mixed_quote_and_voice() -> None:
    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            inbox = Inbox()
            channel = await started(fake, inbox)
            await fake.push_image(IMAGE, userid=BOB)
            image_msg = await inbox.wait(1)
            assert image_msg.image is not None and image_msg.text == ""
            assert await channel.fetch_image(image_msg, max_bytes=1 << 20) == IMAGE
            with pytest.raises(ValueError):
                await channel.fetch_image(image_msg, max_bytes=100)

            other = b"\xff\xd8\xff" + b"mixed-image" * 50
            await fake.push_mixed("@小爱 /视频 让它动起来", other, userid=ALICE, chatid=GROUP)
            mixed = await inbox.wait(2)
            assert mixed.text == "/视频 让它动起来" and mixed.kind is ChatKind.GROUP and mixed.image is not None
            assert await channel.fetch_image(mixed, max_bytes=1 << 20) == other

            quoted = b"\xff\xd8\xff" + b"quoted" * 77
            await fake.push_quote("@小爱 /视频 海浪", quoted, userid=ALICE, chatid=GROUP)
            quote_msg = await inbox.wait(3)
            assert quote_msg.text == "/视频 海浪" and quote_msg.image is not None
            assert await channel.fetch_image(quote_msg, max_bytes=1 << 20) == quoted

            await fake.push_voice("/视频 小狗追球", userid=BOB)
            voice = await inbox.wait(4)
            assert voice.text == "/视频 小狗追球" and voice.image is None
            with pytest.raises(ImageFetchError):
                await channel.fetch_image(voice, max_bytes=1 << 20)
            assert fake.image_downloads == 4
            await channel.stop()

    run(scenario)


# ---------------------------------------------------------------------------------------------- video
def test_send_video_chunked_upload_then_video_and_caption(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "cat.mp4", seconds=2.0)
    size = video.stat().st_size

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            inbox = Inbox()
            chunk = max(1024, size // 4 + 1)  # ≥ 3 chunks
            channel = await started(fake, inbox, chunk_bytes=chunk)
            await fake.push_text("@小爱 /视频 猫", userid=ALICE, chatid=GROUP)
            msg = await inbox.wait(1)

            # proactive (no reply_to): video then caption to the group
            out = OutgoingVideo(msg.chat_id, str(video), caption="视频好了：猫", mention_ids=(msg.sender_id,),
                                meta={"job_id": "job-1"})  # fmt: skip
            await channel.send_video(out)
            chunks = -(-size // chunk)
            assert chunks >= 3 and sorted(fake.chunk_indexes) == list(range(chunks))
            [media] = fake.media.values()
            assert media.type == "video" and media.sha256 == sha256(video) and media.size == size
            video_msg, caption = fake.sent
            assert video_msg.body == {"chatid": GROUP, "chat_type": 2, "msgtype": "video",
                                      "video": {"media_id": media.media_id}}  # fmt: skip
            assert caption.msgtype == "markdown" and caption.content == f"@{ALICE} 视频好了：猫"
            await channel.send_video(out)  # a retry of a delivered job sends nothing
            assert len(fake.sent) == 2 and len(fake.media) == 1

            # passive (fresh req_id): the video answers the request itself
            await channel.send_video(OutgoingVideo(msg.chat_id, str(video), meta={"job_id": "job-2"},
                                                   reply_to=msg.message_id))  # fmt: skip
            [reply] = fake.replies
            assert reply.msgtype == "video" and reply.chatid == GROUP and reply.body["video"]["media_id"] in fake.media
            assert fake.errors == []
            await channel.stop()

    run(scenario)


def test_large_video_is_reencoded_or_sent_as_file(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "noise.mp4", seconds=1.0, noise=True, crf=10)
    size = video.stat().st_size
    assert size > 100_000

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            limit = size // 2
            channel = await started(fake, max_inline_video_bytes=limit, video_budget_bytes=limit, chunk_bytes=64 * 1024)
            await channel.send_video(OutgoingVideo(f"wecom:{BOB}", str(video), meta={"job_id": "big"}))
            [media] = fake.media.values()
            assert media.type == "video" and media.size <= limit and media.sha256 != sha256(video)
            assert fake.sent[-1].msgtype == "video"
            await channel.stop()

            tiny = await started(fake, max_inline_video_bytes=2000, video_budget_bytes=2000, chunk_bytes=64 * 1024)
            await tiny.send_video(OutgoingVideo(f"wecom:{BOB}", str(video), meta={"job_id": "huge"}))
            as_file = fake.media_by_sha256()[sha256(video)]
            assert as_file.type == "file" and as_file.filename == "noise.mp4"
            assert fake.sent[-1].body == {"chatid": BOB, "msgtype": "file", "file": {"media_id": as_file.media_id}}
            await tiny.stop()

    run(scenario, timeout=120)


def test_reencode_ladder_is_deterministic(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "src.mp4", seconds=1.0, noise=True, crf=10)
    budget = video.stat().st_size // 3
    first = media.fit_video(video, tmp_path / "a", budget_bytes=budget)
    second = media.fit_video(video, tmp_path / "b", budget_bytes=budget)
    assert first.path is not None and second.path is not None and first.size <= budget
    assert sha256(first.path) == sha256(second.path) and (first.crf, first.scale) == (second.crf, second.scale)
    nothing = media.fit_video(video, tmp_path / "c", budget_bytes=500)
    assert nothing.path is None and nothing.size > 500 and not list((tmp_path / "c").glob("*.mp4"))


def test_drop_mid_upload_then_retry_sends_exactly_one_video(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "dog.mp4", seconds=2.0)

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            chunk = max(1024, video.stat().st_size // 5 + 1)
            channel = await started(fake, chunk_bytes=chunk)
            fake.drop_after_chunks = 2
            out = OutgoingVideo(f"wecom:{BOB}", str(video), caption="好了", meta={"job_id": "job-drop"})
            with pytest.raises(DeliveryError) as info:
                await channel.send_video(out)
            assert info.value.maybe_delivered is False
            assert fake.media == {} and fake.sent == []
            await eventually(lambda: len(fake.subscribes) == 2 and channel.connected, what="the reconnect")
            await channel.send_video(out)
            assert len(fake.delivered_of("video")) == 1 and len(fake.delivered_of("markdown")) == 1
            assert list(fake.media_by_sha256()) == [sha256(video)]
            await channel.stop()

    run(scenario)


def test_lost_ack_after_video_frame_is_maybe_delivered_and_never_resent(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "bird.mp4")

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            channel = await started(fake)
            fake.drop_on_msgtype = "video"
            out = OutgoingVideo(f"wecom:{BOB}", str(video), caption="好了", meta={"job_id": "job-ack"})
            with pytest.raises(DeliveryError) as info:
                await channel.send_video(out)
            assert info.value.maybe_delivered is True
            await eventually(lambda: channel.connected, what="the reconnect")
            with pytest.raises(DeliveryError) as again:
                await channel.send_video(out)
            assert again.value.maybe_delivered is True
            assert len(fake.delivered_of("video")) == 1
            await channel.stop()

    run(scenario)


def test_failed_caption_is_retried_alone(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "fish.mp4")

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            channel = await started(fake)
            fake.refuse_msgtype = "markdown"
            out = OutgoingVideo(f"wecom:{GROUP}", str(video), caption="好了", mention_ids=(f"wecom:{ALICE}",),
                                meta={"job_id": "job-cap"})  # fmt: skip
            with pytest.raises(DeliveryError) as info:
                await channel.send_video(out)
            assert info.value.maybe_delivered is False
            assert len(fake.delivered_of("video")) == 1 and fake.delivered_of("markdown") == []
            await channel.send_video(out)
            assert len(fake.delivered_of("video")) == 1 and len(fake.media) == 1
            [caption] = fake.delivered_of("markdown")
            assert caption.content == f"@{ALICE} 好了"
            await channel.stop()

    run(scenario)


# ---------------------------------------------------------------------------------------------- secrets
def test_secret_and_keys_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    video = make_mp4(tmp_path / "log.mp4")
    keys: list[str] = []

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            with pytest.raises(ChannelStartError):
                await WecomChannel(settings(fake), environ={SECRET_ENV: SECRET + "x"}).start(Inbox())
            inbox = Inbox()
            channel = await started(fake, inbox, heartbeat_s=0.05, chunk_bytes=4096)
            assert SECRET not in repr(channel)
            pushed = await fake.push_image(IMAGE, userid=BOB)
            keys.append(pushed.body["image"]["aeskey"])
            msg = await inbox.wait(1)
            assert await channel.fetch_image(msg, max_bytes=1 << 20) == IMAGE
            await channel.send_text(OutgoingText(msg.chat_id, "收到", reply_to=msg.message_id))
            await channel.send_video(OutgoingVideo(msg.chat_id, str(video), caption="好了", meta={"job_id": "j"}))
            await fake.drop()
            await eventually(lambda: len(fake.subscribes) == 3 and channel.connected, what="reconnect")
            await asyncio.sleep(0.2)
            await channel.stop()

    run(scenario)
    assert caplog.records, "nothing was logged"
    text = "\n".join(_record_text(r) for r in caplog.records)
    for secret in [SECRET, *keys]:
        # websockets would log frames cut in the middle: no 12-character piece may appear either
        pieces = {secret[i : i + 12] for i in range(len(secret) - 11)}
        leaked = [p for p in pieces if p in text]
        assert not leaked, f"secret material in the logs: {leaked[:3]}"


def _record_text(record: logging.LogRecord) -> str:
    parts = [record.name, record.getMessage(), record.exc_text or ""]
    if record.exc_info:
        parts.append(logging.Formatter().formatException(record.exc_info))
    for key, value in record.__dict__.items():
        try:
            parts.append(f"{key}={value!r}")
        except Exception:  # dead weak references in some records
            continue
    return " ".join(parts)
