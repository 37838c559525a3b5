"""The ClawBot (iLink) adapter driven against the loopback fake in `tests/fakes/clawbot_fake.py`.

Real adapter, real HTTP on 127.0.0.1, real files in tmp_path, real MP4s; nothing reaches the network.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import stat
from pathlib import Path
from typing import Any

import pytest

from bot.channel import Channel, ChannelStartError, DeliveryDeferred, DeliveryError, capabilities_of
from bot.channels.clawbot.adapter import NOT_LOGGED_IN, ClawbotChannel, id_text
from bot.channels.clawbot.crypto import decrypt, encrypt, padded_size, parse_aes_key
from bot.channels.clawbot.login import login
from bot.channels.clawbot.settings import ClawbotSettings, client_version_number
from bot.messages import ChatKind, Message, OutgoingText, OutgoingVideo
from tests._async_media import eventually, make_mp4, run
from tests.fakes.clawbot_fake import ClawbotFake

ALICE = "o9cq-alice@im.wechat"
BOB = "o9cq-bob@im.wechat"


# ---------------------------------------------------------------------- helpers




def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)

    def texts(self) -> list[str]:
        return [m.text for m in self.messages]


def settings_for(fake: ClawbotFake, state_dir: Path, **overrides: Any) -> ClawbotSettings:
    return ClawbotSettings(**fake.settings_values(state_dir, **overrides))


async def started(fake: ClawbotFake, state_dir: Path, inbox: Inbox, **kwargs: Any) -> ClawbotChannel:
    overrides = kwargs.pop("settings", {})
    channel = ClawbotChannel(settings_for(fake, state_dir, **overrides), **kwargs)
    await channel.start(inbox)
    assert await channel.wait_connected(5)
    return channel


async def user_writes(fake: ClawbotFake, inbox: Inbox, user: str, text: str) -> Message:
    before = len(inbox.messages)
    fake.push_text(user, text)
    await eventually(lambda: len(inbox.messages) > before, what=f"message {text!r}")
    return inbox.messages[-1]


# ---------------------------------------------------------------------- units
def test_crypto_key_forms_and_helpers() -> None:
    key = bytes(range(16))
    data = b"\x00video\xff" * 100
    cipher = encrypt(data, key)
    assert len(cipher) == padded_size(len(data)) and decrypt(cipher, key) == data
    assert padded_size(0) == 16 and padded_size(16) == 32 and padded_size(15) == 16
    import base64

    assert parse_aes_key(key.hex()) == key
    assert parse_aes_key(base64.b64encode(key).decode()) == key
    assert parse_aes_key(base64.b64encode(key.hex().encode()).decode()) == key
    assert client_version_number("2.4.9") == 132105 and client_version_number("2.0.0") == 131072
    assert id_text(2**64 - 1) == "18446744073709551615" and id_text(True) is None
    with pytest.raises(ValueError):
        ClawbotSettings(token="x")  # type: ignore[call-arg]  # extra=forbid: no secret fields


def test_start_without_credentials_raises(tmp_path: Path) -> None:
    async def scenario() -> None:
        channel = ClawbotChannel(ClawbotSettings(state_dir=tmp_path / "clawbot", base_url="http://127.0.0.1:9"))
        assert isinstance(channel, Channel)
        with pytest.raises(ChannelStartError) as info:
            await channel.start(Inbox())
        assert str(info.value) == NOT_LOGGED_IN
        assert "xiaoai login clawbot" in str(info.value) and "未登录" in str(info.value)
        assert not channel.connected
        caps = capabilities_of(channel)
        assert (caps.groups, caps.mentions, caps.proactive, caps.quotes) == (False, False, False, True)
        assert caps.sends_per_inbound == 10 and caps.reply_window_s == 24 * 3600
        assert caps.deferred_hint == "生成好会发给你；如果没收到，回复任意消息即可领取"

    run(scenario)


# ---------------------------------------------------------------------- receiving
def test_text_roundtrip_and_resume_after_restart(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.3) as fake:
            creds = fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            assert channel.bot_id == f"clawbot:{fake.bot_id}"
            assert fake.calls["notifystart"] == 1
            msg = await user_writes(fake, inbox, ALICE, "  /视频 一只猫  ")
            assert msg.kind is ChatKind.PRIVATE and not msg.is_group
            assert msg.chat_id == msg.sender_id == f"clawbot:{ALICE}"
            assert msg.message_id.startswith("clawbot:") and msg.text == "/视频 一只猫"
            assert msg.image is None and msg.timestamp > 1_600_000_000
            await channel.send_text(OutgoingText(chat_id=msg.chat_id, text="⏳ 已排队", reply_to=msg.message_id))
            assert fake.texts(ALICE) == ["⏳ 已排队"]
            assert fake.sent[0].context_token == fake.context_token(ALICE)
            await channel.stop()
            assert fake.calls["notifystop"] == 1 and not channel.connected
            last_cursor = fake.cursors[-1]
            assert last_cursor  # the first poll sent "", later ones the server's cursor

            fake.push_text(ALICE, "第二条")  # arrives while the bot is down
            inbox2 = Inbox()
            polls = len(fake.cursors)
            channel2 = await started(fake, state, inbox2)
            await eventually(lambda: len(inbox2.messages) == 1, what="second message after restart")
            await asyncio.sleep(0.5)  # a further poll: nothing else comes
            assert inbox2.texts() == ["第二条"], "the old cursor's messages must not be handled again"
            assert fake.cursors[polls] == last_cursor, "the restart resumes from the saved cursor"
            # the restarted adapter can answer with the fresh context token from disk
            await channel2.send_text(OutgoingText(chat_id=f"clawbot:{ALICE}", text="收到"))
            assert fake.texts(ALICE)[-1] == "收到"
            await channel2.stop()
            assert fake.violations == []
            for name in ("credentials.json", "sync.json", "contexts.json"):
                mode = stat.S_IMODE((state / name).stat().st_mode)
                assert mode == 0o600, (name, oct(mode))
            assert json.loads((state / "credentials.json").read_text())["bot_token"] == creds["bot_token"]

    run(scenario)


def test_duplicate_ids_dropped_64bit_ids_exact_and_crash_replay(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"
    big1, big2 = 2**64 - 3, 2**64 - 2  # adjacent ids far beyond float precision

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            fake.push_text(ALICE, "一", message_id=big1)
            fake.push_text(ALICE, "二", message_id=big2)
            await eventually(lambda: len(inbox.messages) == 2)
            assert [m.message_id for m in inbox.messages] == [f"clawbot:{big1}", f"clawbot:{big2}"]
            fake.replay(big1)  # protocol-level replay under the same id
            fake.push_text(BOB, "三")
            await eventually(lambda: len(inbox.messages) == 3)
            await asyncio.sleep(0.3)
            assert inbox.texts() == ["一", "二", "三"]
            await channel.stop()
            seen = [item[0] for item in json.loads((state / "sync.json").read_text())["seen"]]
            assert str(big1) in seen and str(big2) in seen

            # A crash before the cursor was saved: the server re-delivers everything; nothing is handled twice.
            sync = json.loads((state / "sync.json").read_text())
            sync["get_updates_buf"] = ""
            (state / "sync.json").write_text(json.dumps(sync))
            inbox2 = Inbox()
            polls = len(fake.cursors)
            channel2 = await started(fake, state, inbox2)
            fake.push_text(BOB, "四")
            await eventually(lambda: len(inbox2.messages) == 1)
            await asyncio.sleep(0.3)
            assert inbox2.texts() == ["四"]
            assert fake.cursors[polls] == "", "the server re-delivered everything from the start"
            await channel2.stop()
            assert fake.violations == []

    run(scenario)


def test_images_quotes_and_size_limit(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"
    photo = bytes(range(256)) * 40 + b"jpeg-ish tail"

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            for form in ("raw_b64", "hex_b64", "hex"):
                fake.push_image(ALICE, photo + form.encode(), key_form=form)
            fake.push_image(ALICE, photo, text="/视频 让它动起来")
            await eventually(lambda: len(inbox.messages) == 4)
            for form, message in zip(("raw_b64", "hex_b64", "hex"), inbox.messages, strict=False):
                assert message.image is not None and message.text == ""
                assert await channel.fetch_image(message, max_bytes=10**6) == photo + form.encode()
            assert inbox.messages[3].text == "/视频 让它动起来"
            assert await channel.fetch_image(inbox.messages[3], max_bytes=10**6) == photo
            with pytest.raises(ValueError):
                await channel.fetch_image(inbox.messages[3], max_bytes=1000)

            # /视频 quoting a photo: the quoted image becomes message.image (image-to-video)
            fake.push_quote(ALICE, "/视频 海浪", image=photo, quoted_text="[图片]")
            # quoting a text: its text is ignored
            fake.push_quote(ALICE, "/视频 星空", quoted_text="别的文字")
            await eventually(lambda: len(inbox.messages) == 6)
            quoted, text_quote = inbox.messages[4], inbox.messages[5]
            assert quoted.text == "/视频 海浪" and quoted.image is not None
            assert await channel.fetch_image(quoted, max_bytes=10**6) == photo
            assert text_quote.text == "/视频 星空" and text_quote.image is None
            await channel.stop()
            assert fake.violations == []

    run(scenario)


# ---------------------------------------------------------------------- sending
def test_send_video_encrypted_upload_then_caption_and_idempotent(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"
    mp4 = make_mp4(tmp_path / "out.mp4", seconds=0.5, size="96x64", fps=10)
    digest = sha(mp4.read_bytes())

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            msg = await user_writes(fake, inbox, ALICE, "/视频 一只猫")
            await channel.send_text(OutgoingText(chat_id=msg.chat_id, text="⏳ 已排队"))
            fake.cdn_failures = [500, 503]  # two 5xx, then the third attempt succeeds
            video = OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="✅ 好了：一只猫",
                                  meta={"job_id": "job-1"}, reply_to=msg.message_id)  # fmt: skip
            await channel.send_video(video)
            assert [s.kind for s in fake.sent] == ["text", "video", "text"]
            assert fake.videos(ALICE)[0].sha256 == digest and fake.videos()[0].size == mp4.stat().st_size
            assert fake.texts(ALICE) == ["⏳ 已排队", "✅ 好了：一只猫"]
            assert fake.calls["cdn_upload"] == 3
            # the same job again (e.g. the core retried after a crash): nothing is sent twice
            await channel.send_video(video)
            assert len(fake.sent) == 3 and fake.calls["getuploadurl"] == 1
            sent = json.loads((state / "sent.json").read_text())["jobs"]["job-1"]
            assert sent["video"] == "sent" and sent["caption_chunks"] == 1
            assert stat.S_IMODE((state / "sent.json").stat().st_mode) == 0o600

            # CDN 4xx: a DeliveryError with the server's reason, nothing delivered
            fake.cdn_failures = [413]
            with pytest.raises(DeliveryError) as info:
                await channel.send_video(OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), meta={"job_id": "j2"}))
            assert "fake failure 413" in str(info.value) and not info.value.maybe_delivered
            # legacy upload_param mode
            fake.upload_mode = "upload_param"
            await channel.send_video(OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), meta={"job_id": "j3"}))
            assert [v.sha256 for v in fake.videos()] == [digest, digest]
            # an unreadable file is a plain DeliveryError
            with pytest.raises(DeliveryError):
                await channel.send_video(OutgoingVideo(chat_id=msg.chat_id, video_path=str(tmp_path / "none.mp4")))
            await channel.stop()
            assert fake.violations == []

    run(scenario)


def test_ten_sends_per_inbound_window_and_unknown_user(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"
    now = [1_800_000_000.0]

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox, clock=lambda: now[0])
            # nobody wrote yet: no context token, no server call
            with pytest.raises(DeliveryDeferred):
                await channel.send_text(OutgoingText(chat_id=f"clawbot:{BOB}", text="hi"))
            assert fake.calls["sendmessage"] == 0
            msg = await user_writes(fake, inbox, ALICE, "你好")
            for i in range(10):
                await channel.send_text(OutgoingText(chat_id=msg.chat_id, text=f"#{i}"))
            calls = fake.calls["sendmessage"]
            with pytest.raises(DeliveryDeferred):
                await channel.send_text(OutgoingText(chat_id=msg.chat_id, text="#10"))
            assert fake.calls["sendmessage"] == calls == 10, "the 11th send must not reach the server"
            assert fake.sends_for(ALICE) == 10 and fake.refused == []
            # a video needs room for video + caption: deferred up front, nothing uploaded
            mp4 = make_mp4(tmp_path / "v.mp4", seconds=0.5, size="96x64", fps=10)
            with pytest.raises(DeliveryDeferred):
                await channel.send_video(OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="c",
                                                       meta={"job_id": "jq"}))  # fmt: skip
            assert fake.calls["getuploadurl"] == 0
            await user_writes(fake, inbox, ALICE, "再来")
            await channel.send_video(OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="c",
                                                   meta={"job_id": "jq"}))  # fmt: skip
            assert len(fake.videos(ALICE)) == 1 and fake.texts(ALICE)[-1] == "c"
            # the reply window passes
            now[0] += 24 * 3600 + 1
            with pytest.raises(DeliveryDeferred):
                await channel.send_text(OutgoingText(chat_id=msg.chat_id, text="late"))
            assert fake.calls["sendmessage"] == 12
            await channel.stop()
            assert fake.violations == []

    run(scenario)


def test_ret_minus_2_defers_until_the_user_writes_again(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"
    mp4 = make_mp4(tmp_path / "out.mp4", seconds=0.5, size="96x64", fps=10)

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            msg = await user_writes(fake, inbox, ALICE, "/视频 猫")
            video = OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="好了", meta={"job_id": "j-2"})
            fake.fail_next_send(-2, kind="video")
            with pytest.raises(DeliveryDeferred):
                await channel.send_video(video)
            assert fake.videos() == [] and fake.refused[0][1] == "video"
            calls = fake.calls["sendmessage"]
            with pytest.raises(DeliveryDeferred):  # the refused token is not tried again
                await channel.send_video(video)
            assert fake.calls["sendmessage"] == calls
            await user_writes(fake, inbox, ALICE, "在吗")  # brings a fresh context token
            await channel.send_video(video)
            await channel.send_video(video)  # a duplicate wake-up changes nothing
            assert len(fake.videos(ALICE)) == 1 and fake.texts(ALICE) == ["好了"]
            assert fake.sent[-1].context_token == fake.context_token(ALICE)
            await channel.stop()
            assert fake.violations == []

    run(scenario)


def test_caption_failure_retry_sends_only_the_caption(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"
    mp4 = make_mp4(tmp_path / "out.mp4", seconds=0.5, size="96x64", fps=10)

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            msg = await user_writes(fake, inbox, ALICE, "/视频 狗")
            video = OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="✅ 狗", meta={"job_id": "j-c"})
            fake.fail_next_send(-1, kind="text")  # the caption fails for good (not a deferral)
            with pytest.raises(DeliveryError) as info:
                await channel.send_video(video)
            assert not info.value.maybe_delivered
            assert len(fake.videos()) == 1 and fake.texts() == []
            # a fresh adapter (restart between retries) reads the sent record from disk
            await channel.stop()
            channel = await started(fake, state, inbox)
            await channel.send_video(video)
            assert len(fake.videos()) == 1 and fake.texts() == ["✅ 狗"]
            assert fake.calls["getuploadurl"] == 1

            # caption refused with ret −2: deferred; after the user writes only the caption goes
            video2 = OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="✅ 第二个",
                                   meta={"job_id": "j-d"})  # fmt: skip
            fake.fail_next_send(-2, kind="text")
            with pytest.raises(DeliveryDeferred):
                await channel.send_video(video2)
            assert len(fake.videos()) == 2
            await user_writes(fake, inbox, ALICE, "1")
            await channel.send_video(video2)
            assert len(fake.videos()) == 2 and fake.texts() == ["✅ 狗", "✅ 第二个"]
            await channel.stop()
            assert fake.violations == []

    run(scenario)


def test_maybe_delivered_video_is_never_sent_again(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"
    mp4 = make_mp4(tmp_path / "out.mp4", seconds=0.5, size="96x64", fps=10)

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox, settings={"http_timeout_s": 0.5})
            msg = await user_writes(fake, inbox, ALICE, "/视频 鸟")
            video = OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="✅ 鸟", meta={"job_id": "j-m"})
            fake.send_delay_s = 2.0  # the server delivers, then answers too late
            with pytest.raises(DeliveryError) as info:
                await channel.send_video(video)
            assert info.value.maybe_delivered and len(fake.videos()) == 1
            fake.send_delay_s = 0.0
            await channel.send_video(video)
            assert len(fake.videos()) == 1 and fake.texts() == ["✅ 鸟"]
            await channel.stop()
            assert fake.violations == []

    run(scenario)


# ---------------------------------------------------------------------- failures
def test_session_expired_pauses_alerts_and_resumes_after_login(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            alerts: list[str] = []

            async def on_alert(text: str) -> None:
                alerts.append(text)

            channel = ClawbotChannel(settings_for(fake, state))
            channel.on_alert = on_alert
            await channel.start(inbox)
            msg = await user_writes(fake, inbox, ALICE, "hi")
            fake.expire_session()
            await eventually(lambda: channel.paused, what="pause on -14")
            assert not channel.connected and len(alerts) == 1
            assert "xiaoai login clawbot" in alerts[0] and "过期" in alerts[0]
            with pytest.raises(DeliveryDeferred):
                await channel.send_text(OutgoingText(chat_id=msg.chat_id, text="x"))
            polls = fake.calls["getupdates"]
            await asyncio.sleep(0.3)
            assert fake.calls["getupdates"] == polls, "no polling while paused"

            # the operator runs `xiaoai login clawbot` in another terminal
            lines: list[str] = []
            code = await login(settings_for(fake, state), out=lines.append, ask=lambda _: "")
            assert code == 0
            await eventually(lambda: channel.connected, what="resume after login")
            assert len(alerts) == 2 and "恢复" in alerts[1]
            reply = await user_writes(fake, inbox, ALICE, "又来了")
            await channel.send_text(OutgoingText(chat_id=reply.chat_id, text="ok"))
            assert fake.texts(ALICE) == ["ok"]
            await channel.stop()
            assert fake.violations == []

    run(scenario)


def test_session_refused_at_start_and_alert_errors_are_contained(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            fake.expire_session()
            channel = ClawbotChannel(settings_for(fake, state))
            with pytest.raises(ChannelStartError) as info:
                await channel.start(Inbox())
            assert "xiaoai login clawbot" in str(info.value)
            # a failing alert callback does not break the channel
            fake.write_credentials(state)
            channel = ClawbotChannel(settings_for(fake, state))

            async def broken(text: str) -> None:
                raise RuntimeError("alert sink down")

            channel.on_alert = broken
            await channel.start(Inbox())
            fake.expire_session()
            await eventually(lambda: channel.paused)
            fake.write_credentials(state)
            await eventually(lambda: channel.connected)
            await channel.stop()

    run(scenario)


def test_network_errors_back_off_and_recover(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.2) as fake:
            fake.write_credentials(state)
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            fake.getupdates_failures = 4
            await eventually(lambda: not channel.connected, what="disconnected after 3 failures")
            assert channel.last_error and "502" in channel.last_error
            await eventually(lambda: channel.connected, what="recovered")
            await user_writes(fake, inbox, ALICE, "still here")
            await channel.stop()
        # the server vanishes entirely: the loop backs off and never dies
        async with ClawbotFake(hold_s=0.2) as fake2:
            fake2.write_credentials(state)
            channel = await started(fake2, state, Inbox())
        await eventually(lambda: not channel.connected, what="disconnected from a dead server")
        assert channel._poller is not None and not channel._poller.done()
        await channel.stop()

    run(scenario)


def test_secrets_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = tmp_path / "clawbot"
    mp4 = make_mp4(tmp_path / "out.mp4", seconds=0.5, size="96x64", fps=10)
    caplog.set_level(logging.DEBUG)
    errors: list[str] = []

    async def scenario() -> ClawbotFake:
        async with ClawbotFake(hold_s=0.2) as fake:
            lines: list[str] = []
            assert await login(settings_for(fake, state), out=lines.append, ask=lambda _: "") == 0
            inbox = Inbox()
            channel = await started(fake, state, inbox)
            msg = await user_writes(fake, inbox, ALICE, "/视频 秘密")
            fake.push_image(ALICE, b"img" * 100)
            await eventually(lambda: len(inbox.messages) == 2)
            assert await channel.fetch_image(inbox.messages[1], max_bytes=10**6) == b"img" * 100
            await channel.send_video(OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), caption="ok",
                                                   meta={"job_id": "s-1"}))  # fmt: skip
            fake.fail_next_send(-2)
            try:
                await channel.send_text(OutgoingText(chat_id=msg.chat_id, text="x"))
            except DeliveryDeferred as exc:
                errors.append(str(exc))
            fake.cdn_failures = [400]
            await user_writes(fake, inbox, ALICE, "again")
            try:
                await channel.send_video(OutgoingVideo(chat_id=msg.chat_id, video_path=str(mp4), meta={"job_id": "s2"}))
            except DeliveryError as exc:
                errors.append(str(exc))
            fake.expire_session()
            await eventually(lambda: channel.paused)
            errors.extend([repr(channel), repr(channel._api), repr(channel._state), repr(channel._creds),
                           repr(channel._state.context(ALICE))])  # fmt: skip
            errors.extend(lines)
            await channel.stop()
            return fake

    fake = run(scenario)
    text = caplog.text + "\n".join(errors)
    assert len(caplog.records) > 5  # the run did log
    secrets = list(fake.issued_tokens) + list(fake.issued_contexts)
    assert len(secrets) >= 4
    for secret in secrets:
        assert secret not in text
        assert secret.split(":")[-1] not in text  # not even the random part
