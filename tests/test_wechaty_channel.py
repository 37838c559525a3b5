"""The WeChat adapter driving the real `wechaty.Wechaty` client against the in-process puppet server."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path

import grpclib.const
import pytest
from grpclib.exceptions import GRPCError

from bot.channel import Channel, DeliveryError, ImageFetchError
from bot.channels.wechaty.adapter import ConnState, strip_mention
from bot.messages import ChatKind, Message, OutgoingText, OutgoingVideo
from tests.puppet_server import FakePuppetServer
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
_ = clean_env  # fixture import


async def _server(**kwargs: object) -> FakePuppetServer:
    server = await FakePuppetServer(**kwargs).start()  # type: ignore[arg-type]
    server.add_contact(ALICE, "Alice")
    server.add_contact(BOB, "Bob")
    server.add_room(ROOM, "视频测试群", [BOT, ALICE, BOB])
    server.login()
    return server


async def _connected(tmp: Path, server: FakePuppetServer, inbox: list[Message], **overrides: object):
    channel = make_channel(tmp, server.port, **overrides)

    async def on_message(message: Message) -> None:
        inbox.append(message)

    await channel.start(on_message)
    assert await channel.wait_connected(10), channel.last_error
    return channel


def test_login_room_mention_and_reply_with_mention(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import requests

    def no_network(url: str, *args: object, **kwargs: object) -> None:
        raise AssertionError(f"network call to {url}")

    monkeypatch.setattr(requests, "get", no_network)  # the public discovery service is never asked (#17)
    monkeypatch.setenv("TOKEN", "stray-generic-token")  # must be ignored
    monkeypatch.setenv("ENDPOINT", "10.255.255.1:1")  # must be ignored

    async def scenario() -> None:
        server = await _server()
        inbox: list[Message] = []
        channel = await _connected(tmp_path, server, inbox)
        assert isinstance(channel, Channel)
        assert channel.bot_id == BOT and channel.connected
        server.say("m-room-1", ALICE, "@小爱\u2005/video a cat", room_id=ROOM, mention_ids=(BOT,))
        await eventually(lambda: len(inbox) == 1)
        msg = inbox[0]
        assert (msg.message_id, msg.chat_id, msg.kind) == ("m-room-1", ROOM, ChatKind.GROUP)
        assert (msg.sender_id, msg.sender_name) == (ALICE, "Alice")
        assert msg.text == "/video a cat" and msg.mentions_bot and msg.mentions == ()
        assert msg.timestamp > 1_600_000_000

        await channel.send_text(OutgoingText(ROOM, "收到，正在生成：a cat", (ALICE,)))
        assert [(t.conversation_id, t.text, t.mention_ids) for t in server.sent_texts] == [
            (ROOM, "@Alice\u2005收到，正在生成：a cat", (ALICE,))
        ]
        assert server.authorities() == {TOKEN}  # the token travels as :authority
        assert server.unimplemented == []
        assert server.route_names()[:3] == ["Stop", "Start", "Event"]
        await channel.stop()
        assert channel.state is ConnState.STOPPED
        await server.stop()

    run(scenario)


def test_private_messages_text_mentions_and_own_messages(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await _server()
        inbox: list[Message] = []
        channel = await _connected(tmp_path, server, inbox)
        server.say("m-priv-1", ALICE, "/quota")  # private chat
        # A puppet that gives no mention ids: "@小爱" in the text still counts, and is stripped.
        server.say("m-room-2", BOB, "@小爱 /video 768p a dog", room_id=ROOM)
        server.say("m-room-3", BOB, "hello everyone", room_id=ROOM)
        server.say("m-room-4", ALICE, "@小爱\u2005/quota add @Bob 3", room_id=ROOM, mention_ids=(BOT, BOB))
        server.say("m-self-1", BOT, "my own echo", room_id=ROOM)  # ignored
        await eventually(lambda: len(inbox) == 4)
        by_id = {m.message_id: m for m in inbox}
        private = by_id["m-priv-1"]
        assert (private.kind, private.chat_id, private.text, private.mentions_bot) == (
            ChatKind.PRIVATE, ALICE, "/quota", False,
        )  # fmt: skip
        assert by_id["m-room-2"].text == "/video 768p a dog" and by_id["m-room-2"].mentions_bot
        assert by_id["m-room-3"].text == "hello everyone" and not by_id["m-room-3"].mentions_bot
        admin = by_id["m-room-4"]
        assert admin.mentions == (BOB,) and admin.mentions_bot and admin.text == "/quota add @Bob 3"
        # A private reply carries no @-prefix.
        await channel.send_text(OutgoingText(ALICE, "你的额度：3", (ALICE,)))
        assert server.sent_texts[-1].text == "你的额度：3"
        await channel.stop()
        await server.stop()

    run(scenario)


def test_duplicate_message_event_is_delivered_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await _server()
        inbox: list[Message] = []
        channel = await _connected(tmp_path, server, inbox)
        server.say("m-dup-1", ALICE, "/video twice", room_id=ROOM)
        server.message_event("m-dup-1")
        server.message_event("m-dup-1")
        server.say("m-dup-2", ALICE, "after", room_id=ROOM)
        await eventually(lambda: any(m.message_id == "m-dup-2" for m in inbox))
        await asyncio.sleep(0.1)
        assert [m.message_id for m in inbox] == ["m-dup-1", "m-dup-2"]
        await channel.stop()
        await server.stop()

    run(scenario)


def test_images_inline_base64_and_uuid_download(tmp_path: Path) -> None:
    small = os.urandom(10_000)
    large = os.urandom(900_000)

    async def scenario() -> None:
        server = await _server(uuid_threshold=20 * 1024)  # behaves like a 1.x server
        inbox: list[Message] = []
        channel = await _connected(tmp_path, server, inbox)
        server.send_image("m-img-small", ALICE, small, room_id=ROOM)
        server.send_image("m-img-large", ALICE, large, name="big.jpg", room_id=ROOM)
        await eventually(lambda: len(inbox) == 2)
        by_id = {m.message_id: m for m in inbox}
        assert by_id["m-img-small"].image is not None and by_id["m-img-small"].text == ""
        assert await channel.fetch_image(by_id["m-img-small"], max_bytes=10**7) == small
        assert "Download" not in server.route_names()
        assert await channel.fetch_image(by_id["m-img-large"], max_bytes=10**7) == large
        assert "Download" in server.route_names()
        with pytest.raises(ValueError):
            await channel.fetch_image(by_id["m-img-large"], max_bytes=100_000)
        no_image = Message("m-x", ROOM, ChatKind.GROUP, ALICE, "Alice", text="hi")
        with pytest.raises(ImageFetchError):
            await channel.fetch_image(no_image, max_bytes=10**7)
        await channel.stop()
        await server.stop()

    run(scenario)


def test_stock_client_cannot_read_uuid_boxes(tmp_path: Path) -> None:
    """Why the Download path exists: the stock `Image.hd()` fails on a UUID box (#14)."""

    async def scenario() -> None:
        server = await _server(uuid_threshold=20 * 1024)
        inbox: list[Message] = []
        channel = await _connected(tmp_path, server, inbox)
        server.send_image("m-img-stock", ALICE, os.urandom(60_000), room_id=ROOM)
        await eventually(lambda: len(inbox) == 1)
        puppet = channel._session.bot.puppet  # type: ignore[union-attr]
        with pytest.raises(ValueError, match="unknown file_box"):
            await puppet.message_image("m-img-stock", 2)
        await channel.stop()
        await server.stop()

    run(scenario)


def test_video_small_inline_with_caption_and_cover(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "job1" / "out.mp4", seconds=1.0)
    digest = hashlib.sha256(video.read_bytes()).hexdigest()

    async def scenario() -> None:
        server = await _server()
        channel = await _connected(tmp_path, server, [])
        await channel.send_video(OutgoingVideo(ROOM, str(video), caption="完成：a cat", mention_ids=(ALICE,)))
        assert len(server.sent_files) == 1
        sent = server.sent_files[0]
        assert sent.sha256 == digest and not sent.via_uuid  # already WeChat-ready: sent unchanged
        assert sent.name == "out.mp4" and sent.media_type == "video/mp4"
        thumb = sent.metadata["thumbnail"]
        assert thumb["mediaType"] == "image/jpeg" and len(thumb["base64"]) > 100
        assert sent.metadata["width"] == 160 and sent.metadata["height"] == 96
        assert [(t.text, t.mention_ids) for t in server.sent_texts] == [("@Alice\u2005完成：a cat", (ALICE,))]
        await channel.stop()
        await server.stop()

    run(scenario)


def test_six_mib_video_goes_through_upload_stream(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "job2" / "big.mp4", seconds=4, size="640x360", bitrate="12M", noise=True, fps=24)
    data = video.read_bytes()
    assert len(data) > 6 * 1024 * 1024 * 0.9

    async def scenario() -> None:
        # 4 MiB per gRPC message, like the TypeScript server: an inline send would be refused.
        server = await _server(max_message_bytes=4 * 1024 * 1024)
        channel = await _connected(tmp_path, server, [])
        await channel.send_video(OutgoingVideo(ROOM, str(video)))
        assert len(server.sent_files) == 1
        sent = server.sent_files[0]
        assert sent.via_uuid and sent.sha256 == hashlib.sha256(data).hexdigest()
        assert "Upload" in server.route_names()
        await channel.stop()
        await server.stop()

    run(scenario)


def test_send_retry_rules(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await _server()
        channel = await _connected(tmp_path, server, [])
        # A certain failure (the puppet refused before doing anything) is retried.
        server.fail_next["MessageSendText"] = GRPCError(grpclib.const.Status.UNAVAILABLE, "busy")
        await channel.send_text(OutgoingText(ROOM, "retry me"))
        assert [t.text for t in server.sent_texts] == ["retry me"]
        assert server.route_names().count("MessageSendText") == 2
        # An unknown error after the request reached the puppet: maybe delivered, never retried.
        server.fail_next["MessageSendFile"] = GRPCError(grpclib.const.Status.UNKNOWN, "Error: no id")
        video = make_mp4(tmp_path / "job3" / "v.mp4", seconds=0.5)
        with pytest.raises(DeliveryError) as info:
            await channel.send_video(OutgoingVideo(ROOM, str(video)))
        assert info.value.maybe_delivered is True
        assert server.route_names().count("MessageSendFile") == 1
        # Failing for good: retried `send_retries` (3) times, then a certain DeliveryError.
        def always_down(request: object) -> None:
            raise GRPCError(grpclib.const.Status.UNAVAILABLE, "down")

        server.hooks["MessageSendText"] = always_down
        before = server.route_names().count("MessageSendText")
        with pytest.raises(DeliveryError) as info:
            await channel.send_text(OutgoingText(ROOM, "x"))
        assert info.value.maybe_delivered is False
        assert server.route_names().count("MessageSendText") - before == 4
        await channel.stop()
        await server.stop()

    run(scenario)


def test_video_refused_as_video_falls_back_to_file(tmp_path: Path) -> None:
    video = make_mp4(tmp_path / "job4" / "v.mp4", seconds=0.5)

    async def scenario() -> None:
        server = await _server()
        channel = await _connected(tmp_path, server, [])
        server.fail_next["MessageSendFile"] = GRPCError(grpclib.const.Status.INVALID_ARGUMENT, "no video here")
        await channel.send_video(OutgoingVideo(ROOM, str(video)))
        assert len(server.sent_files) == 1
        sent = server.sent_files[0]
        assert sent.media_type == "application/octet-stream" and sent.metadata == {"sendAs": "file"}
        assert sent.data == video.read_bytes()
        await channel.stop()
        await server.stop()

    run(scenario)


def test_not_connected_send_is_a_certain_failure(tmp_path: Path) -> None:
    async def scenario() -> None:
        channel = make_channel(tmp_path, 9)  # never started
        with pytest.raises(DeliveryError) as info:
            await channel.send_text(OutgoingText(ROOM, "x"))
        assert info.value.maybe_delivered is False

    run(scenario)


def test_puppet_restart_reconnects_and_messages_flow_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await _server()
        inbox: list[Message] = []
        channel = await _connected(tmp_path, server, inbox)
        server.heartbeat()
        await eventually(lambda: channel.last_heartbeat is not None, what="heartbeat (#8)")
        await server.restart(down_s=0.3)  # SIGKILL-like: the event stream breaks
        await eventually(lambda: not channel.connected, what="disconnect noticed")
        assert await channel.wait_connected(10), channel.last_error
        server.say("m-after-restart", ALICE, "/video again", room_id=ROOM)
        await eventually(lambda: len(inbox) == 1)
        await channel.send_text(OutgoingText(ROOM, "back"))
        assert server.sent_texts[-1].text == "back"
        states = [s for _, s, _ in channel.state_log]
        assert states.count(ConnState.CONNECTED) == 2 and ConnState.BACKOFF in states
        # A clean end of the event stream (python-wechaty would just return) also reconnects (#4).
        server.end_event_streams()
        await eventually(lambda: [s for _, s, _ in channel.state_log].count(ConnState.CONNECTED) == 3,
                         what="reconnect after clean stream end")  # fmt: skip
        await channel.stop()
        await server.stop()

    run(scenario)


def test_unreachable_endpoint_is_reported_and_loop_keeps_running(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="bot.channels.wechaty.adapter")

    async def scenario() -> None:
        probe = await FakePuppetServer().start()
        port = probe.port
        await probe.stop()  # nothing listens on `port` now
        channel = make_channel(tmp_path, port)
        ticks = 0

        async def other_work() -> None:  # stands in for the job queue
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        worker = asyncio.create_task(other_work())
        await channel.start(lambda m: asyncio.sleep(0))
        await asyncio.sleep(0.6)
        assert not channel.connected
        assert channel.last_error and "无法连接" in channel.last_error
        assert ticks > 20 and not worker.done()
        # The gateway comes up later on that port: the channel connects by itself.
        server = await FakePuppetServer(port=port).start()
        server.login()
        assert await channel.wait_connected(10)
        await channel.stop()
        worker.cancel()
        await server.stop()

    run(scenario)
    assert any("puppet service unreachable" in r.getMessage() for r in caplog.records)


def test_token_is_not_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def scenario() -> None:
        server = await _server()
        channel = await _connected(tmp_path, server, [])
        await channel.stop()
        await server.stop()

    run(scenario)
    assert not any(TOKEN in r.getMessage() for r in caplog.records)


def test_strip_mention() -> None:
    assert strip_mention("@小爱\u2005/video a", ["小爱"]) == ("/video a", True)
    assert strip_mention("@小爱 /video a", ["小爱"]) == ("/video a", True)
    assert strip_mention("/video @小爱x", ["小爱"]) == ("/video @小爱x", False)
    assert strip_mention("@小爱", ["小爱"]) == ("", True)


def test_fake_server_records_file_box_json(tmp_path: Path) -> None:
    """The recorded JSON is what a TS server would parse: `type` and `boxType` both set."""
    from bot.channels.wechaty import grpc_media

    box = json.loads(grpc_media.base64_file_box(b"abc", "a.mp4", metadata={"k": 1}))
    assert box["type"] == box["boxType"] == 1 and box["mediaType"] == "video/mp4" and box["metadata"] == {"k": 1}
    parsed = grpc_media.parse_file_box(json.dumps(box))
    assert parsed.data == b"abc" and parsed.name == "a.mp4"
    with pytest.raises(grpc_media.MediaError):
        grpc_media.parse_file_box(json.dumps({"type": 2, "url": "http://x"}))


def test_silent_stream_is_detected_by_ding_and_rebuilt(tmp_path: Path) -> None:
    """A half-open connection (no events, no error) is caught by the Ding/dong liveness check."""

    async def scenario() -> None:
        server = await _server()
        inbox: list[Message] = []
        channel = await _connected(tmp_path, server, inbox, liveness_interval_s=0.3, liveness_timeout_s=0.3)
        await asyncio.sleep(1.2)  # a live gateway answers every Ding: no reconnect
        assert [s for _, s, _ in channel.state_log].count(ConnState.CONNECTED) == 1
        assert "Ding" in server.route_names()
        server.answer_ding = False
        await eventually(lambda: [s for _, s, _ in channel.state_log].count(ConnState.CONNECTED) == 2,
                         timeout=10, what="reconnect after a silent stream")  # fmt: skip
        assert any("liveness" in reason for _, _, reason in channel.state_log)
        server.answer_ding = True
        server.say("m-after-silence", ALICE, "/video", room_id=ROOM)
        await eventually(lambda: len(inbox) == 1)
        await channel.stop()
        await server.stop()

    run(scenario)


def test_session_isolation_scheduler_plugin_host_and_caches(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = await _server()
        channel = await _connected(tmp_path, server, [])
        session = channel._session
        assert session is not None
        manager = session.bot._plugin_manager
        assert manager.endpoint[0] == "127.0.0.1" and manager.endpoint[1] != 5000  # (#11)
        assert manager.scheduler is session.scheduler and session.scheduler.running  # our own (#10)
        await channel.stop()
        assert not session.scheduler.running  # shut down with the session
        await server.stop()

    run(scenario)


def test_import_shim_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """Stock `import wechaty` fails on 3.11+; the shim fixes it, keeps ./.wechaty away and ignores
    the generic TOKEN/ENDPOINT variables (#1, #10, #17)."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "TOKEN": "generic", "ENDPOINT": "10.0.0.1:1"}
    env.pop("CACHE_DIR", None)
    stock_dir = tmp_path / "stock"
    stock_dir.mkdir()
    stock = subprocess.run([sys.executable, "-c", "import wechaty"], cwd=stock_dir, env=env,
                           capture_output=True, text=True)  # fmt: skip
    # Python >= 3.11: the mutable dataclass default; pyee >= 12 / urllib3 2 fail even earlier, by name.
    known = ("mutable default", "cannot import name 'AsyncIOEventEmitter'", "cannot import name 'get_host'")
    assert stock.returncode != 0 and any(k in stock.stderr for k in known), stock.stderr[-500:]
    code = (
        "from bot.channels.wechaty.compat import load_wechaty\n"
        "m = load_wechaty('own-cache')\n"
        "import wechaty_puppet_service.puppet as p\n"
        "print(m.Wechaty.__name__, p.get_token(), p.get_endpoint())\n"
    )
    shimmed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert shimmed.returncode == 0, shimmed.stderr
    assert shimmed.stdout.split() == ["Wechaty", "None", "None"]
    assert (tmp_path / "own-cache").is_dir() and not (tmp_path / ".wechaty").exists()


def test_import_shims_for_urllib3_2_and_pyee_13() -> None:
    """python-wechaty 0.10.7 imports `urllib3.get_host` (gone in urllib3 2) and `pyee.AsyncIOEventEmitter`
    (pyee.asyncio since pyee 12): the shim puts both back with the old behaviour."""
    import pyee
    import pyee.asyncio
    import urllib3

    from bot.channels.wechaty.compat import _urllib3_get_host, load_wechaty

    load_wechaty()
    assert urllib3.get_host("https://mp.weixin.qq.com/s/abc?x=1") == ("https", "mp.weixin.qq.com", None)
    assert urllib3.get_host("example.com:8080/path") == ("http", "example.com", 8080)
    assert _urllib3_get_host("http://[::1]:80/") == ("http", "[::1]", 80)
    assert pyee.AsyncIOEventEmitter is pyee.asyncio.AsyncIOEventEmitter
    import wechaty.user.url_link as url_link

    assert url_link.get_host("https://a.b/c")[1] == "a.b"
