"""A loopback fake of the WeCom AI bot long-connection service (`channels-2026.md` §2.7).

One WebSocket endpoint (`/`) plus an HTTP route serving AES-256-CBC encrypted images, run with uvicorn
on 127.0.0.1 and a free port inside the test's event loop:

    async with WecomFake(bot_id="bot-1", secret="s3cret") as fake:
        channel = WecomChannel(WecomSettings(bot_id="bot-1", ws_url=fake.ws_url, ...), environ=...)
        await fake.push_text("@小爱 /视频 一只猫", chatid="wr-group-1")

What it checks, like the real service: the first frame is `aibot_subscribe` with the configured bot_id
and secret (else errcode 40001 and close); one connection per bot (a second subscribe sends the old
socket `disconnected_event` and closes it); `aibot_respond_msg` only for req_ids it pushed; stream
rules (finish once, 20 480-byte content cap, 6-minute window from the stream's first frame); uploads
(0-based chunk indexes, ≤ 512 KiB decoded per chunk, ≤ 100 chunks, per-type size limits, total_size
and MD5 of the assembled file); media ids in video/file messages must exist. Everything accepted is
recorded (`replies`, `sent`, `messages`, `media` by sha256). Error codes 400xx are invented: the real
ones are unknown. Switches: `ack_pings`, `drop_after_chunks`, `drop_on_msgtype`, `refuse_msgtype`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

MAX_CHUNK = 512 * 1024
MAX_CHUNKS = 100
STREAM_CAP = 20480
STREAM_WINDOW_S = 6 * 60
TYPE_LIMITS = {"video": 10 * 1024 * 1024, "image": 10 * 1024 * 1024, "voice": 2 * 1024 * 1024,
               "file": 20 * 1024 * 1024}  # fmt: skip
SEND_TYPES = {"markdown", "template_card", "image", "file", "voice", "video"}
RESPOND_TYPES = SEND_TYPES | {"stream", "text", "stream_with_template_card"}

ERR_AUTH = 40001
ERR_FRAME = 40002
ERR_REQ_ID = 40003
ERR_STREAM = 40004
ERR_TOO_BIG = 40005
ERR_MEDIA = 40006
ERR_UPLOAD = 40007
ERR_MD5 = 40008
ERR_REFUSED = 40009


class _Refused(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.errcode, self.errmsg = errcode, errmsg


def encrypt_media(plain: bytes, key: bytes) -> bytes:
    """AES-256-CBC, IV = key[:16], PKCS#7 to 32-byte blocks (what WeCom serves behind image.url)."""
    n = 32 - len(plain) % 32
    padded = plain + bytes([n]) * n
    encryptor = Cipher(algorithms.AES(key), modes.CBC(key[:16])).encryptor()
    return encryptor.update(padded) + encryptor.finalize()


@dataclass
class Media:
    media_id: str
    type: str
    filename: str
    size: int
    sha256: str
    data: bytes = field(repr=False)


@dataclass
class Delivered:
    """A message the bot got through: `via` is `respond` (passive, on a req_id) or `send` (proactive)."""

    via: str
    chatid: str
    msgtype: str
    body: dict[str, Any]
    req_id: str = ""
    seq: int = 0

    @property
    def content(self) -> str:
        part = self.body.get(self.msgtype)
        return str(part.get("content", "")) if isinstance(part, dict) else ""


@dataclass
class _Upload:
    type: str
    filename: str
    total_size: int
    total_chunks: int
    md5: str
    chunks: dict[int, bytes] = field(default_factory=dict)


@dataclass
class _Stream:
    req_id: str
    first_at: float
    finished: bool = False


@dataclass
class Pushed:
    req_id: str
    msgid: str
    body: dict[str, Any]

    @property
    def chatid(self) -> str:
        return str(self.body.get("chatid") or self.body["from"]["userid"])


class _Peer:
    """One accepted socket; sends are serialised."""

    def __init__(self, ws: WebSocket, number: int) -> None:
        self.ws, self.number = ws, number
        self.lock = asyncio.Lock()
        self.closed = False

    async def send(self, frame: dict[str, Any]) -> None:
        async with self.lock:
            if not self.closed:
                await self.ws.send_text(json.dumps(frame, ensure_ascii=False))

    async def close(self, code: int = 1000) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code=code)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # tests run it in their own loop: leave signals alone
        yield


class WecomFake:
    def __init__(self, *, bot_id: str, secret: str, clock: Callable[[], float] = time.time, port: int = 0) -> None:
        self.bot_id, self.secret, self.clock = bot_id, secret, clock
        # switches
        self.ack_pings = True
        self.drop_after_chunks: int | None = None  # close the socket (no ack) after the N-th chunk, once
        self.drop_on_msgtype: str | None = None  # close (no ack) when a message of this type arrives, once
        self.refuse_msgtype: str | None = None  # refuse the next message of this type, once ...
        self.refuse_errcode = ERR_REFUSED  # ... with this errcode (6000 = "命令冲突", retry later)
        # records
        self.subscribes: list[tuple[str, bool]] = []  # (bot_id, accepted)
        self.pings = 0
        self.commands: list[str] = []
        self.errors: list[tuple[str, int, str]] = []
        self.replies: list[Delivered] = []
        self.sent: list[Delivered] = []
        self.media: dict[str, Media] = {}
        self.chunk_indexes: list[int] = []
        self.image_downloads = 0
        self.raw_frames: list[str] = []  # every text frame received (for leak checks)
        # state
        self._peer: _Peer | None = None
        self._peers = 0
        self._pushed: dict[str, Pushed] = {}
        self._streams: dict[str, _Stream] = {}
        self._uploads: dict[str, _Upload] = {}
        self._images: dict[str, bytes] = {}
        self._counter = 0
        self._chunks_seen = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self.port = port
        self.app = Starlette(routes=[WebSocketRoute("/", self._socket), Route("/media/{key}", self._serve_media)])

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> WecomFake:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off",
                                ws="websockets-sansio", timeout_graceful_shutdown=1)  # fmt: skip
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="wecom-fake")
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._peer is not None:
            await self._peer.close(1001)
        if self._server is not None:
            self._server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def http_base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def online(self) -> bool:
        return self._peer is not None and not self._peer.closed

    async def drop(self) -> None:
        """Close the current connection from the server side (network hiccup)."""
        if self._peer is not None:
            await self._peer.close(1011)

    # ------------------------------------------------------------------ records
    @property
    def messages(self) -> list[Delivered]:
        """Everything delivered to users (passive replies and proactive sends), in arrival order."""
        return sorted(self.replies + self.sent, key=lambda d: d.seq)

    def media_by_sha256(self) -> dict[str, Media]:
        return {m.sha256: m for m in self.media.values()}

    def delivered_of(self, msgtype: str) -> list[Delivered]:
        return [d for d in self.messages if d.msgtype == msgtype]

    # ------------------------------------------------------------------ pushing callbacks
    def _next(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter}"

    def add_image(self, plain: bytes) -> dict[str, str]:
        """Host an encrypted image; returns `{url, aeskey}` with the key in unpadded base64, as WeCom sends it."""
        key = os.urandom(32)
        name = self._next("img")
        self._images[name] = encrypt_media(plain, key)
        return {"url": f"{self.http_base}/media/{name}?sign=abc", "aeskey": base64.b64encode(key).decode().rstrip("=")}

    def callback_body(self, msgtype: str, payload: dict[str, Any], *, userid: str = "zhangsan",
                      chatid: str | None = None, msgid: str | None = None,
                      quote: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
        body: dict[str, Any] = {
            "msgid": msgid or self._next("msg"), "aibotid": self.bot_id, "chattype": "group" if chatid else "single",
            "from": {"userid": userid}, "create_time": int(self.clock()), "msgtype": msgtype, msgtype: payload,
        }  # fmt: skip
        if chatid:
            body["chatid"] = chatid
        if quote is not None:
            body["quote"] = quote
        return body

    async def push(self, body: dict[str, Any], *, req_id: str | None = None, timeout: float = 5.0) -> Pushed:
        """Send an `aibot_msg_callback` to the connected bot (waits for one to be connected)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.online:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("no bot connected to the fake")
            await asyncio.sleep(0.01)
        assert self._peer is not None
        pushed = Pushed(req_id or f"cb_{self._next('')}_{os.urandom(3).hex()}", str(body["msgid"]), body)
        self._pushed[pushed.req_id] = pushed
        await self._peer.send({"cmd": "aibot_msg_callback", "headers": {"req_id": pushed.req_id}, "body": body})
        return pushed

    async def push_text(self, text: str, **kwargs: Any) -> Pushed:
        return await self.push(self.callback_body("text", {"content": text}, **kwargs))

    async def push_voice(self, transcript: str, **kwargs: Any) -> Pushed:
        return await self.push(self.callback_body("voice", {"content": transcript}, **kwargs))

    async def push_image(self, plain: bytes, **kwargs: Any) -> Pushed:
        return await self.push(self.callback_body("image", self.add_image(plain), **kwargs))

    async def push_mixed(self, text: str, plain: bytes, **kwargs: Any) -> Pushed:
        items = [{"msgtype": "text", "text": {"content": text}}, {"msgtype": "image", "image": self.add_image(plain)}]
        return await self.push(self.callback_body("mixed", {"msg_item": items}, **kwargs))

    async def push_quote(self, text: str, quoted_image: bytes, **kwargs: Any) -> Pushed:
        quote = {"msgtype": "image", "image": self.add_image(quoted_image)}
        return await self.push(self.callback_body("text", {"content": text}, quote=quote, **kwargs))

    # ------------------------------------------------------------------ HTTP
    async def _serve_media(self, request: Request) -> Response:
        blob = self._images.get(request.path_params["key"])
        if blob is None or request.query_params.get("sign") != "abc":
            return Response(status_code=404)
        self.image_downloads += 1
        return Response(blob, media_type="application/octet-stream",
                        headers={"Content-Disposition": 'attachment; filename="image.jpg"'})  # fmt: skip

    # ------------------------------------------------------------------ WebSocket
    async def _socket(self, ws: WebSocket) -> None:
        await ws.accept()
        self._peers += 1
        peer = _Peer(ws, self._peers)
        try:
            raw = await ws.receive_text()
        except (WebSocketDisconnect, RuntimeError):
            return
        self.raw_frames.append(raw)
        frame = self._parse(raw)
        body = frame.get("body") if isinstance(frame.get("body"), dict) else {}
        req_id = self._req_id(frame)
        ok = (frame.get("cmd") == "aibot_subscribe" and body.get("bot_id") == self.bot_id
              and body.get("secret") == self.secret and bool(req_id))  # fmt: skip
        self.subscribes.append((str(body.get("bot_id", "")), ok))
        if not ok:
            await peer.send({"headers": {"req_id": req_id}, "errcode": ERR_AUTH, "errmsg": "invalid bot_id or secret"})
            await peer.close(1008)
            return
        old, self._peer = self._peer, peer
        if old is not None and not old.closed:
            await old.send({"cmd": "aibot_event_callback", "headers": {"req_id": self._next("evt_")},
                            "body": {"msgid": self._next("evtmsg"), "aibotid": self.bot_id,
                                     "create_time": int(self.clock()), "msgtype": "event",
                                     "event": {"eventtype": "disconnected_event"}}})  # fmt: skip
            await old.close(1000)
        await peer.send({"headers": {"req_id": req_id}, "errcode": 0, "errmsg": "ok"})
        try:
            while not peer.closed:
                raw = await ws.receive_text()
                self.raw_frames.append(raw)
                if not await self._handle(peer, raw):
                    await peer.close(1011)
                    break
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            peer.closed = True
            if self._peer is peer:
                self._peer = None

    @staticmethod
    def _parse(raw: str) -> dict[str, Any]:
        try:
            frame = json.loads(raw)
        except ValueError:
            return {}
        return frame if isinstance(frame, dict) else {}

    @staticmethod
    def _req_id(frame: dict[str, Any]) -> str:
        headers = frame.get("headers")
        return str(headers.get("req_id", "")) if isinstance(headers, dict) else ""

    async def _handle(self, peer: _Peer, raw: str) -> bool:
        """Process one frame; False means: drop the connection now without an ack."""
        frame = self._parse(raw)
        cmd = str(frame.get("cmd", ""))
        req_id = self._req_id(frame)
        body = frame.get("body") if isinstance(frame.get("body"), dict) else {}
        self.commands.append(cmd)
        if cmd == "ping":
            self.pings += 1
            if self.ack_pings:
                await peer.send({"headers": {"req_id": req_id}, "errcode": 0, "errmsg": "ok"})
            return True
        if self.drop_on_msgtype and cmd in ("aibot_respond_msg", "aibot_send_msg") \
                and body.get("msgtype") == self.drop_on_msgtype:  # fmt: skip
            self.drop_on_msgtype = None
            self._deliver(cmd, req_id, body)  # it reached the server; only the ack is lost
            return False
        if self.refuse_msgtype and cmd in ("aibot_respond_msg", "aibot_send_msg") \
                and body.get("msgtype") == self.refuse_msgtype:  # fmt: skip
            self.refuse_msgtype = None
            self.errors.append((cmd, self.refuse_errcode, "refused by test switch"))
            await peer.send({"headers": {"req_id": req_id}, "errcode": self.refuse_errcode,
                             "errmsg": "refused by test switch"})  # fmt: skip
            return True
        handlers = {
            "aibot_respond_msg": self._respond, "aibot_send_msg": self._send,
            "aibot_upload_media_init": self._upload_init, "aibot_upload_media_chunk": self._upload_chunk,
            "aibot_upload_media_finish": self._upload_finish,
        }  # fmt: skip
        try:
            if not req_id:
                raise _Refused(ERR_FRAME, "missing headers.req_id")
            handler = handlers.get(cmd)
            if handler is None:
                raise _Refused(ERR_FRAME, f"unknown cmd {cmd!r}")
            result = handler(req_id, body)
        except _Refused as exc:
            self.errors.append((cmd, exc.errcode, exc.errmsg))
            await peer.send({"headers": {"req_id": req_id}, "errcode": exc.errcode, "errmsg": exc.errmsg})
            return True
        if result is False:
            return False
        ack: dict[str, Any] = {"headers": {"req_id": req_id}, "errcode": 0, "errmsg": "ok"}
        if isinstance(result, dict):
            ack["body"] = result
        await peer.send(ack)
        return True

    # ------------------------------------------------------------------ messages
    def _check_message(self, body: dict[str, Any], allowed: set[str]) -> str:
        msgtype = str(body.get("msgtype", ""))
        if msgtype not in allowed:
            raise _Refused(ERR_FRAME, f"msgtype {msgtype!r} not allowed")
        part = body.get(msgtype)
        if not isinstance(part, dict):
            raise _Refused(ERR_FRAME, f"missing body.{msgtype}")
        if msgtype in ("markdown", "stream", "text"):
            content = part.get("content")
            if not isinstance(content, str):
                raise _Refused(ERR_FRAME, "content must be a string")
            if len(content.encode("utf-8")) > STREAM_CAP:
                raise _Refused(ERR_TOO_BIG, "content exceeds 20480 bytes")
        if msgtype in ("video", "file", "image", "voice"):
            media = self.media.get(str(part.get("media_id", "")))
            if media is None:
                raise _Refused(ERR_MEDIA, "unknown media_id")
            if media.type != msgtype:
                raise _Refused(ERR_MEDIA, f"media is a {media.type}, not a {msgtype}")
        return msgtype

    def _deliver(self, cmd: str, req_id: str, body: dict[str, Any]) -> None:
        seq = len(self.replies) + len(self.sent) + 1
        msgtype = str(body.get("msgtype", ""))
        if cmd == "aibot_respond_msg":
            pushed = self._pushed.get(req_id)
            self.replies.append(Delivered("respond", pushed.chatid if pushed else "", msgtype, body, req_id, seq))
        else:
            self.sent.append(Delivered("send", str(body.get("chatid", "")), msgtype, body, req_id, seq))

    def _respond(self, req_id: str, body: dict[str, Any]) -> None:
        if req_id not in self._pushed:
            raise _Refused(ERR_REQ_ID, "req_id was not issued by a callback")
        msgtype = self._check_message(body, RESPOND_TYPES)
        if msgtype == "stream":
            stream = body["stream"]
            stream_id = str(stream.get("id") or "")
            if not stream_id:
                raise _Refused(ERR_STREAM, "stream.id missing")
            now = self.clock()
            state = self._streams.get(stream_id)
            if state is None:
                state = self._streams[stream_id] = _Stream(req_id, now)
            elif state.req_id != req_id:
                raise _Refused(ERR_STREAM, "stream belongs to another req_id")
            if state.finished:
                raise _Refused(ERR_STREAM, "stream already finished")
            if now - state.first_at > STREAM_WINDOW_S:
                raise _Refused(ERR_STREAM, "stream window (6 min) passed")
            state.finished = bool(stream.get("finish"))
        self._deliver("aibot_respond_msg", req_id, body)

    def _send(self, req_id: str, body: dict[str, Any]) -> None:
        chatid = body.get("chatid")
        if not isinstance(chatid, str) or not chatid:
            raise _Refused(ERR_FRAME, "chatid missing")
        if "chat_type" in body and body["chat_type"] not in (1, 2):
            raise _Refused(ERR_FRAME, "chat_type must be 1 or 2")
        self._check_message(body, SEND_TYPES)
        self._deliver("aibot_send_msg", req_id, body)

    # ------------------------------------------------------------------ uploads
    def _upload_init(self, req_id: str, body: dict[str, Any]) -> dict[str, Any]:
        kind, filename = body.get("type"), body.get("filename")
        total_size, total_chunks, md5 = body.get("total_size"), body.get("total_chunks"), body.get("md5")
        if kind not in TYPE_LIMITS:
            raise _Refused(ERR_UPLOAD, "type must be video/image/file/voice")
        if not isinstance(filename, str) or not filename:
            raise _Refused(ERR_UPLOAD, "filename missing")
        if not isinstance(total_size, int) or total_size <= 0:
            raise _Refused(ERR_UPLOAD, "total_size must be a positive integer")
        if total_size > TYPE_LIMITS[kind]:
            raise _Refused(ERR_TOO_BIG, f"{kind} larger than {TYPE_LIMITS[kind]} bytes")
        if not isinstance(total_chunks, int) or not 1 <= total_chunks <= MAX_CHUNKS:
            raise _Refused(ERR_UPLOAD, "total_chunks must be 1..100")
        if total_chunks * MAX_CHUNK < total_size or total_chunks > total_size:
            raise _Refused(ERR_UPLOAD, "total_chunks does not match total_size")
        if not isinstance(md5, str) or not re.fullmatch(r"[0-9a-f]{32}", md5):
            raise _Refused(ERR_UPLOAD, "md5 must be 32 lowercase hex digits")
        upload_id = self._next("upload_")
        self._uploads[upload_id] = _Upload(kind, filename, total_size, total_chunks, md5)
        return {"upload_id": upload_id}

    def _upload_chunk(self, req_id: str, body: dict[str, Any]) -> bool | None:
        upload = self._uploads.get(str(body.get("upload_id", "")))
        if upload is None:
            raise _Refused(ERR_UPLOAD, "unknown upload_id")
        index = body.get("chunk_index")
        if not isinstance(index, int) or not 0 <= index < upload.total_chunks:
            raise _Refused(ERR_UPLOAD, "chunk_index out of range (0-based)")
        try:
            data = base64.b64decode(str(body.get("base64_data", "")), validate=True)
        except (binascii.Error, ValueError):
            raise _Refused(ERR_UPLOAD, "base64_data is not base64") from None
        if not data or len(data) > MAX_CHUNK:
            raise _Refused(ERR_TOO_BIG, "chunk must be 1..524288 bytes")
        upload.chunks[index] = data
        self.chunk_indexes.append(index)
        self._chunks_seen += 1
        if self.drop_after_chunks is not None and self._chunks_seen >= self.drop_after_chunks:
            self.drop_after_chunks = None
            return False
        return None

    def _upload_finish(self, req_id: str, body: dict[str, Any]) -> dict[str, Any]:
        upload_id = str(body.get("upload_id", ""))
        upload = self._uploads.get(upload_id)
        if upload is None:
            raise _Refused(ERR_UPLOAD, "unknown upload_id")
        missing = [i for i in range(upload.total_chunks) if i not in upload.chunks]
        if missing:
            raise _Refused(ERR_UPLOAD, f"missing chunks {missing[:5]}")
        data = b"".join(upload.chunks[i] for i in range(upload.total_chunks))
        if len(data) != upload.total_size:
            raise _Refused(ERR_UPLOAD, "assembled size differs from total_size")
        if hashlib.md5(data).hexdigest() != upload.md5:
            raise _Refused(ERR_MD5, "md5 mismatch")
        del self._uploads[upload_id]
        media_id = f"media_{hashlib.sha256(data).hexdigest()[:16]}_{self._next('')}"
        self.media[media_id] = Media(media_id, upload.type, upload.filename, len(data),
                                     hashlib.sha256(data).hexdigest(), data)  # fmt: skip
        return {"type": upload.type, "media_id": media_id, "created_at": int(self.clock())}
