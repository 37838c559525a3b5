"""An in-process wechaty puppet gRPC server for tests (grpclib + the wechaty_grpc message classes).

The real `wechaty.Wechaty` client connects to it on 127.0.0.1 exactly as it would to a
`wechaty gateway`. The server holds contacts, rooms and messages as plain state, pushes events
(login, message, heartbeat) into every open `Event` stream, and records every call with its decoded
request and the HTTP/2 `:authority` (where python-wechaty puts the token). What the bot sends is
decoded into `sent_texts` / `sent_files` (files with their bytes, inline base64 or uploaded through
the `Upload` stream). Media can be served like a 0.x server (inline base64 boxes) or like a 1.x
server (UUID boxes + `Download` stream, for anything over `uuid_threshold` bytes).

wechaty-grpc 0.20.19 ships only a client stub, so the route table (name, cardinality, message
classes) is read from `PuppetStub`'s source; routes without a handler here answer UNIMPLEMENTED and
are recorded in `unimplemented`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import inspect
import itertools
import json
import re
import time
import uuid as uuid_mod
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpclib.const
import grpclib.server
from grpclib.exceptions import GRPCError
from grpclib.protocol import H2Protocol

from bot.channels.wechaty import grpc_media

# wechaty_grpc modules do not import wechaty itself (no shim needed here).
import wechaty_grpc.wechaty as grpc_root  # isort: skip
from wechaty_grpc.wechaty import puppet as pb  # isort: skip

# TypeScript puppet MessageType numbers (what a real server sends; python-wechaty remaps them).
TS_TEXT = 7
TS_IMAGE = 6
TS_VIDEO = 15
TS_ATTACHMENT = 1

# EventType numbers of the puppet proto.
EVENT_HEARTBEAT = int(pb.EventType.EVENT_TYPE_HEARTBEAT)
EVENT_MESSAGE = int(pb.EventType.EVENT_TYPE_MESSAGE)
EVENT_LOGIN = int(pb.EventType.EVENT_TYPE_LOGIN)
EVENT_LOGOUT = int(pb.EventType.EVENT_TYPE_LOGOUT)
EVENT_DONG = int(pb.EventType.EVENT_TYPE_DONG)

_END = object()


@dataclass(frozen=True)
class Call:
    route: str
    request: Any
    authority: str | None
    at: float


@dataclass(frozen=True)
class SentText:
    conversation_id: str
    text: str
    mention_ids: tuple[str, ...]


@dataclass(frozen=True)
class SentFile:
    conversation_id: str
    name: str
    data: bytes
    via_uuid: bool
    metadata: dict[str, Any]
    media_type: str | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


@dataclass
class Contact:
    id: str
    name: str
    contact_type: int = 1  # individual


@dataclass
class Room:
    id: str
    topic: str
    member_ids: list[str] = field(default_factory=list)


def _route_table() -> dict[str, tuple[grpclib.const.Cardinality, type, type]]:
    """`/wechaty.Puppet/<Name>` → (cardinality, request class, reply class), from the stub's source."""
    source = inspect.getsource(grpc_root.PuppetStub)
    kinds = {
        "unary_unary": grpclib.const.Cardinality.UNARY_UNARY,
        "unary_stream": grpclib.const.Cardinality.UNARY_STREAM,
        "stream_unary": grpclib.const.Cardinality.STREAM_UNARY,
        "stream_stream": grpclib.const.Cardinality.STREAM_STREAM,
    }
    by_lower = {name.lower(): obj for name, obj in vars(pb).items() if isinstance(obj, type)}
    table: dict[str, tuple[grpclib.const.Cardinality, type, type]] = {}
    pattern = re.compile(r"self\._(\w+?)\(\s*\"(/wechaty\.Puppet/(\w+))\"", re.S)
    for kind, path, name in pattern.findall(source):
        request = by_lower.get(f"{name.lower()}request")
        reply = by_lower.get(f"{name.lower()}response")
        if request is None or reply is None or kind not in kinds:
            continue
        table[path] = (kinds[kind], request, reply)
    # Newer-protocol routes that 0.20.19 does not know.
    table[grpc_media.DOWNLOAD_ROUTE] = (
        grpclib.const.Cardinality.UNARY_STREAM,
        grpc_media.DownloadRequest,
        grpc_media.DownloadResponse,
    )
    table[grpc_media.UPLOAD_ROUTE] = (
        grpclib.const.Cardinality.STREAM_UNARY,
        grpc_media.UploadRequest,
        grpc_media.UploadResponse,
    )
    return table


class _Server(grpclib.server.Server):
    """grpclib server that remembers each request's `:authority` and its connections."""

    def __init__(self, handlers: list[Any]) -> None:
        super().__init__(handlers)
        self.authority: weakref.WeakKeyDictionary[Any, str | None] = weakref.WeakKeyDictionary()
        self.protocols: list[H2Protocol] = []

    def _protocol_factory(self) -> H2Protocol:
        protocol = super()._protocol_factory()
        handler = protocol.handler
        accept = handler.accept

        def recording_accept(stream: Any, headers: Any, release_stream: Any) -> None:
            self.authority[stream] = dict(headers).get(":authority")
            accept(stream, headers, release_stream)

        handler.accept = recording_accept  # type: ignore[method-assign]
        self.protocols.append(protocol)
        return protocol

    def drop_connections(self) -> None:
        for protocol in self.protocols:
            connection = getattr(protocol, "connection", None)
            transport = getattr(connection, "_transport", None)
            if transport is not None:
                transport.abort()
        self.protocols.clear()


class FakePuppetServer:
    """State + recording; `start()` binds 127.0.0.1 (port 0 = any free port)."""

    def __init__(
        self,
        *,
        bot_id: str = "bot-self",
        bot_name: str = "小爱",
        host: str = "127.0.0.1",
        port: int = 0,
        uuid_threshold: int | None = None,
        max_message_bytes: int | None = None,
        reply_ids: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.bot_id = bot_id
        # None: media always inline base64 (0.x server); N: boxes over N bytes become UUID boxes.
        self.uuid_threshold = uuid_threshold
        # Emulate the TS server's per-message cap (4 MiB) on inbound requests.
        self.max_message_bytes = max_message_bytes
        self.reply_ids = reply_ids
        self.answer_ding = True  # False emulates a half-open connection: the stream stays silent
        self.contacts: dict[str, Contact] = {bot_id: Contact(bot_id, bot_name)}
        self.rooms: dict[str, Room] = {}
        self.messages: dict[str, pb.MessagePayloadResponse] = {}
        self.media: dict[str, tuple[str, bytes]] = {}  # message id → (name, bytes)
        self.blobs: dict[str, bytes] = {}  # uuid → bytes
        self.calls: list[Call] = []
        self.unimplemented: list[str] = []
        self.sent_texts: list[SentText] = []
        self.sent_files: list[SentFile] = []
        self.logged_in = False
        self.fail_next: dict[str, GRPCError] = {}  # route name → error raised once
        self.hooks: dict[str, Callable[[Any], Any]] = {}  # route name → callback(request)
        self._queues: set[asyncio.Queue[Any]] = set()
        self._server: _Server | None = None
        self._ids = itertools.count(1)
        self._changed = asyncio.Event()

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> FakePuppetServer:
        self._server = _Server([self])
        await self._server.start(self.host, self.port)
        sockets = self._server._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]
        return self

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    async def stop(self) -> None:
        """Kill the server abruptly (like SIGKILL of the gateway): open streams break."""
        if self._server is None:
            return
        server, self._server = self._server, None
        server.close()
        server.drop_connections()
        for queue in list(self._queues):
            queue.put_nowait(_END)
        try:
            await asyncio.wait_for(server.wait_closed(), 5)
        except TimeoutError:
            pass

    async def restart(self, *, down_s: float = 0.0) -> None:
        """Stop, stay down `down_s` seconds, then listen again on the same port."""
        await self.stop()
        await asyncio.sleep(down_s)
        await self.start()

    def end_event_streams(self) -> None:
        """End every Event stream cleanly (status OK), as a gateway does on a graceful shutdown."""
        for queue in list(self._queues):
            queue.put_nowait(_END)

    # ---------------------------------------------------------------- scenario helpers
    def add_contact(self, contact_id: str, name: str) -> None:
        self.contacts[contact_id] = Contact(contact_id, name)

    def add_room(self, room_id: str, topic: str, member_ids: list[str]) -> None:
        self.rooms[room_id] = Room(room_id, topic, list(member_ids))

    def _push(self, event_type: int, payload: dict[str, Any]) -> None:
        response = pb.EventResponse(type=event_type, payload=json.dumps(payload))
        for queue in list(self._queues):
            queue.put_nowait(response)

    @property
    def event_streams(self) -> int:
        return len(self._queues)

    def login(self) -> None:
        self.logged_in = True
        self._push(EVENT_LOGIN, {"contactId": self.bot_id})

    def heartbeat(self, data: str = "beat") -> None:
        self._push(EVENT_HEARTBEAT, {"data": data})

    def message_event(self, message_id: str) -> None:
        """(Re-)announce a stored message: sending it twice emulates a duplicate delivery."""
        self._push(EVENT_MESSAGE, {"messageId": message_id})

    def say(
        self,
        message_id: str,
        talker_id: str,
        text: str,
        *,
        room_id: str = "",
        mention_ids: tuple[str, ...] = (),
        announce: bool = True,
    ) -> None:
        self.messages[message_id] = pb.MessagePayloadResponse(
            id=message_id,
            text=text,
            timestamp=int(time.time() * 1000),
            type=TS_TEXT,
            from_id=talker_id,
            room_id=room_id,
            to_id="" if room_id else self.bot_id,
            mention_ids=list(mention_ids),
        )
        if announce:
            self.message_event(message_id)

    def send_image(
        self,
        message_id: str,
        talker_id: str,
        data: bytes,
        *,
        name: str = "photo.jpg",
        room_id: str = "",
        announce: bool = True,
    ) -> None:
        self.messages[message_id] = pb.MessagePayloadResponse(
            id=message_id,
            filename=name,
            timestamp=int(time.time() * 1000),
            type=TS_IMAGE,
            from_id=talker_id,
            room_id=room_id,
            to_id="" if room_id else self.bot_id,
        )
        self.media[message_id] = (name, data)
        if announce:
            self.message_event(message_id)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("condition not reached; calls: " + ", ".join(self.route_names()[-20:]))
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.05))
            except TimeoutError:
                pass

    def route_names(self) -> list[str]:
        return [c.route for c in self.calls]

    def authorities(self) -> set[str | None]:
        return {c.authority for c in self.calls}

    # ---------------------------------------------------------------- grpclib plumbing
    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        mapping: dict[str, grpclib.const.Handler] = {}
        for path, (cardinality, request, reply) in _route_table().items():
            name = path.rsplit("/", 1)[1]
            impl = getattr(self, f"_rpc_{name}", None)
            mapping[path] = grpclib.const.Handler(
                self._wrap(name, impl, cardinality), cardinality, request, reply
            )
        return mapping

    def _wrap(self, name: str, impl: Any, cardinality: grpclib.const.Cardinality) -> Any:
        async def handle(stream: grpclib.server.Stream) -> None:
            authority = self._server.authority.get(stream._stream) if self._server else None  # type: ignore[attr-defined]
            request: Any = None
            if cardinality in (grpclib.const.Cardinality.UNARY_UNARY, grpclib.const.Cardinality.UNARY_STREAM):
                request = await stream.recv_message()
                self._check_size(request)
            self.calls.append(Call(name, request, authority, time.monotonic()))
            self._changed.set()
            if name in self.hooks:
                self.hooks[name](request)
            if name in self.fail_next:
                raise self.fail_next.pop(name)
            if impl is None:
                self.unimplemented.append(name)
                raise GRPCError(grpclib.const.Status.UNIMPLEMENTED, f"{name} not implemented by the fake")
            if cardinality is grpclib.const.Cardinality.UNARY_UNARY:
                await stream.send_message(await impl(request))
            elif cardinality is grpclib.const.Cardinality.UNARY_STREAM:
                await impl(request, stream)
            else:
                await impl(stream)
            self._changed.set()

        return handle

    def _check_size(self, request: Any) -> None:
        if self.max_message_bytes is None or request is None:
            return
        size = len(bytes(request))
        if size > self.max_message_bytes:
            raise GRPCError(
                grpclib.const.Status.RESOURCE_EXHAUSTED,
                f"Received message larger than max ({size} vs {self.max_message_bytes})",
            )

    def _next_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}"

    def _box_json(self, name: str, data: bytes) -> str:
        if self.uuid_threshold is not None and len(data) > self.uuid_threshold:
            blob_id = str(uuid_mod.uuid4())
            self.blobs[blob_id] = data
            return json.dumps({"type": 7, "boxType": 7, "uuid": blob_id, "name": name, "size": len(data), "metadata": {}})
        return json.dumps(
            {
                "type": 1,
                "boxType": 1,
                "name": name,
                "size": len(data),
                "metadata": {},
                "base64": base64.b64encode(data).decode(),
            }
        )

    # ---------------------------------------------------------------- routes
    async def _rpc_Start(self, request: Any) -> Any:
        return pb.StartResponse()

    async def _rpc_Stop(self, request: Any) -> Any:
        return pb.StopResponse()

    async def _rpc_Ding(self, request: Any) -> Any:
        if self.answer_ding:  # a live puppet answers with a `dong` event
            self._push(EVENT_DONG, {"data": request.data})
        return pb.DingResponse()

    async def _rpc_Version(self, request: Any) -> Any:
        return pb.VersionResponse(version="fake-puppet-0")

    async def _rpc_Event(self, request: Any, stream: grpclib.server.Stream) -> None:
        queue: asyncio.Queue[Any] = asyncio.Queue()
        self._queues.add(queue)
        self._changed.set()
        try:
            if self.logged_in:  # a logged-in gateway repeats the login on every new stream
                queue.put_nowait(pb.EventResponse(type=EVENT_LOGIN, payload=json.dumps({"contactId": self.bot_id})))
            while True:
                item = await queue.get()
                if item is _END:
                    return
                await stream.send_message(item)
        finally:
            self._queues.discard(queue)
            self._changed.set()

    async def _rpc_ContactPayload(self, request: Any) -> Any:
        contact = self.contacts.get(request.id)
        if contact is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"no contact {request.id}")
        return pb.ContactPayloadResponse(id=contact.id, name=contact.name, type=contact.contact_type, friend=True)

    async def _rpc_RoomPayload(self, request: Any) -> Any:
        room = self.rooms.get(request.id)
        if room is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"no room {request.id}")
        return pb.RoomPayloadResponse(id=room.id, topic=room.topic, member_ids=list(room.member_ids))

    async def _rpc_RoomMemberList(self, request: Any) -> Any:
        room = self.rooms.get(request.id)
        return pb.RoomMemberListResponse(member_ids=list(room.member_ids) if room else [])

    async def _rpc_RoomMemberPayload(self, request: Any) -> Any:
        contact = self.contacts.get(request.member_id)
        if contact is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, "no member")
        return pb.RoomMemberPayloadResponse(id=contact.id, name=contact.name, room_alias="")

    async def _rpc_MessagePayload(self, request: Any) -> Any:
        payload = self.messages.get(request.id)
        if payload is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, f"no message {request.id}")
        return payload

    async def _rpc_MessageImage(self, request: Any) -> Any:
        name, data = self.media[request.id]
        return pb.MessageImageResponse(filebox=self._box_json(name, data))

    async def _rpc_MessageFile(self, request: Any) -> Any:
        name, data = self.media[request.id]
        return pb.MessageFileResponse(filebox=self._box_json(name, data))

    async def _rpc_Download(self, request: Any, stream: grpclib.server.Stream) -> None:
        data = self.blobs.get(request.id)
        if data is None:
            raise GRPCError(grpclib.const.Status.NOT_FOUND, "unknown uuid")
        for start in range(0, len(data), 64 * 1024):
            await stream.send_message(grpc_media.DownloadResponse(chunk=data[start : start + 64 * 1024]))

    async def _rpc_Upload(self, stream: grpclib.server.Stream) -> None:
        chunks: list[bytes] = []
        async for message in stream:
            self._check_size(message)
            chunks.append(message.chunk)
        blob_id = str(uuid_mod.uuid4())
        self.blobs[blob_id] = b"".join(chunks)
        await stream.send_message(grpc_media.UploadResponse(id=blob_id))

    def _record_sent(self, conversation_id: str, payload: pb.MessagePayloadResponse) -> Any:
        message_id = self._next_id("sent")
        payload.id = message_id
        self.messages[message_id] = payload
        return message_id if self.reply_ids else None

    async def _rpc_MessageSendText(self, request: Any) -> Any:
        mention_ids = tuple(request.mentonal_ids)
        self.sent_texts.append(SentText(request.conversation_id, request.text, mention_ids))
        room = request.conversation_id if request.conversation_id in self.rooms else ""
        message_id = self._record_sent(
            request.conversation_id,
            pb.MessagePayloadResponse(
                text=request.text, type=TS_TEXT, from_id=self.bot_id, room_id=room, mention_ids=list(mention_ids)
            ),
        )
        return pb.MessageSendTextResponse(id=message_id)

    async def _rpc_MessageSendFile(self, request: Any) -> Any:
        box = json.loads(request.filebox)
        box_type = box.get("type", box.get("boxType"))
        if box_type == 7:
            data = self.blobs[box["uuid"]]
        elif box_type == 1:
            data = base64.b64decode(box["base64"])
        else:
            raise GRPCError(grpclib.const.Status.INVALID_ARGUMENT, f"unsupported box type {box_type}")
        self.sent_files.append(
            SentFile(
                request.conversation_id,
                box.get("name", ""),
                data,
                box_type == 7,
                box.get("metadata") or {},
                box.get("mediaType"),
            )
        )
        room = request.conversation_id if request.conversation_id in self.rooms else ""
        message_id = self._record_sent(
            request.conversation_id,
            pb.MessagePayloadResponse(filename=box.get("name", ""), type=TS_VIDEO, from_id=self.bot_id, room_id=room),
        )
        return pb.MessageSendFileResponse(id=message_id)
