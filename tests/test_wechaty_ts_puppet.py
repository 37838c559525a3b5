"""The adapter against the real TypeScript puppet-service server (wechaty-puppet-service 1.19.9 +
wechaty-puppet-mock 1.19.4 from npm), on 127.0.0.1 with TLS off. Catches protocol drift the fake
server only emulates: UUID file boxes for media over 20 KB and the 4 MiB gRPC message cap."""

from __future__ import annotations

import asyncio
import hashlib
import os
import socket
from pathlib import Path

import pytest

from bot.channel import DeliveryError
from bot.channels.wechaty.adapter import ConnState, WechatyChannel
from bot.messages import ChatKind, Message, OutgoingText, OutgoingVideo
from tests.ts_puppet_server import TsPuppetServer, ensure_ts_puppet
from tests.wechaty_helpers import (
    ALICE,
    BOB,
    BOT,
    ROOM,
    TOKEN,
    clean_env,
    eventually,
    make_channel,
    make_mp4,
    run,
)

pytestmark = pytest.mark.usefixtures("clean_env")
_ = clean_env


@pytest.fixture(scope="module")
def node() -> str:
    return ensure_ts_puppet()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _connect(tmp: Path, server: TsPuppetServer, inbox: list[Message], **overrides: object) -> WechatyChannel:
    channel = make_channel(tmp, server.port, **overrides)

    async def on_message(message: Message) -> None:
        inbox.append(message)

    await channel.start(on_message)
    assert await channel.wait_connected(30), channel.last_error
    return channel


def test_ts_messages_mentions_replies_and_duplicates(tmp_path: Path, node: str) -> None:
    async def scenario() -> None:
        server = await TsPuppetServer(node, _free_port(), TOKEN).start()
        inbox: list[Message] = []
        channel = await _connect(tmp_path, server, inbox)
        assert channel.bot_id == BOT
        await server.say("ts-m1", ALICE, "@小爱\u2005/video a cat", room=ROOM, mentions=(BOT,))
        await server.say("ts-m2", BOB, "/quota")
        await eventually(lambda: len(inbox) == 2, what="two messages")
        room_msg, private_msg = sorted(inbox, key=lambda m: m.message_id)
        assert (room_msg.kind, room_msg.chat_id, room_msg.sender_id, room_msg.sender_name) == (
            ChatKind.GROUP, ROOM, ALICE, "Alice",
        )  # fmt: skip
        assert room_msg.text == "/video a cat" and room_msg.mentions_bot
        assert (private_msg.kind, private_msg.chat_id, private_msg.text) == (ChatKind.PRIVATE, BOB, "/quota")
        await server.repeat("ts-m1")  # duplicate message event
        await asyncio.sleep(0.3)
        assert len(inbox) == 2

        await channel.send_text(OutgoingText(ROOM, "收到，正在生成：a cat", (ALICE,)))
        sent = (await server.wait_event(lambda e: e["event"] == "sent_text"))
        assert sent["conversationId"] == ROOM
        assert sent["text"] == "@Alice\u2005收到，正在生成：a cat" and sent["mentionIdList"] == [ALICE]
        await eventually(lambda: len(inbox) == 2)  # the mock echoes our own message: ignored
        await channel.stop()
        await server.stop()

    run(scenario, timeout=120)


def test_ts_images_small_inline_and_large_uuid(tmp_path: Path, node: str) -> None:
    small, large = os.urandom(10_000), os.urandom(60_000)

    async def scenario() -> None:
        server = await TsPuppetServer(node, _free_port(), TOKEN).start()
        inbox: list[Message] = []
        channel = await _connect(tmp_path, server, inbox)
        await server.image("ts-img-small", ALICE, small, room=ROOM)
        await server.image("ts-img-large", ALICE, large, room=ROOM)
        await eventually(lambda: len(inbox) == 2, what="two images")
        by_id = {m.message_id: m for m in inbox}
        assert all(m.image is not None for m in inbox)
        assert await channel.fetch_image(by_id["ts-img-small"], max_bytes=10**7) == small
        assert await channel.fetch_image(by_id["ts-img-large"], max_bytes=10**7) == large  # UUID + Download
        await channel.stop()
        await server.stop()

    run(scenario, timeout=120)


def test_ts_video_inline_upload_and_the_4mib_cap(tmp_path: Path, node: str) -> None:
    small = make_mp4(tmp_path / "j1" / "small.mp4", seconds=1.0)
    big = make_mp4(tmp_path / "j2" / "big.mp4", seconds=4, size="640x360", bitrate="12M", noise=True, fps=24)
    assert big.stat().st_size > 5.5 * 1024 * 1024

    async def scenario() -> None:
        server = await TsPuppetServer(node, _free_port(), TOKEN).start()
        channel = await _connect(tmp_path, server, [])
        await channel.send_video(OutgoingVideo(ROOM, str(small), caption="完成", mention_ids=(ALICE,)))
        first = await server.wait_event(lambda e: e["event"] == "sent_file")
        assert first["sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
        assert first["name"] == "small.mp4" and first["metadata"]["thumbnail"]["mediaType"] == "image/jpeg"
        assert first["metadata"]["thumbnail"]["base64"]["bytes"] > 1000  # the cover travelled with it
        caption = await server.wait_event(lambda e: e["event"] == "sent_text")
        assert caption["text"] == "@Alice\u2005完成" and caption["mentionIdList"] == [ALICE]

        await channel.send_video(OutgoingVideo(ROOM, str(big)))
        await eventually(lambda: len(server.events_of("sent_file")) == 2, timeout=30)
        files = server.events_of("sent_file")
        assert files[1]["sha256"] == hashlib.sha256(big.read_bytes()).hexdigest()
        assert files[1]["size"] == big.stat().st_size and files[1]["boxType"] == 7  # uploaded: a UUID box
        await channel.stop()

        # The same 6 MiB sent inline is refused by the real server (RESOURCE_EXHAUSTED), a certain failure.
        inline = await _connect(tmp_path / "inline", server, [], upload_threshold_bytes=64 * 1024 * 1024,
                                send_retries=0)  # fmt: skip
        with pytest.raises(DeliveryError) as info:
            await inline.send_video(OutgoingVideo(ROOM, str(big)))
        assert info.value.maybe_delivered is False and "RESOURCE_EXHAUSTED" in str(info.value)
        assert len(server.events_of("sent_file")) == 2
        await inline.stop()
        await server.stop()

    run(scenario, timeout=180)


def test_ts_server_killed_and_restarted(tmp_path: Path, node: str) -> None:
    async def scenario() -> None:
        port = _free_port()
        server = await TsPuppetServer(node, port, TOKEN).start()
        inbox: list[Message] = []
        channel = await _connect(tmp_path, server, inbox)
        await server.kill()  # SIGKILL
        await eventually(lambda: not channel.connected, timeout=15, what="disconnect")
        restarted = await TsPuppetServer(node, port, TOKEN).start()
        assert await channel.wait_connected(30), channel.last_error
        await restarted.say("ts-after", ALICE, "/video again", room=ROOM)
        await eventually(lambda: len(inbox) == 1, timeout=15)
        await channel.send_text(OutgoingText(ROOM, "回来了"))
        assert (await restarted.wait_event(lambda e: e["event"] == "sent_text"))["text"] == "回来了"
        states = [s for _, s, _ in channel.state_log]
        assert states.count(ConnState.CONNECTED) == 2
        await channel.stop()
        await restarted.stop()

    run(scenario, timeout=120)
