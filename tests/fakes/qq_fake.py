"""Loopback fake of the QQ bot API v2 (token endpoint, REST, WebSocket gateway, presigned part storage).

Written from `/work/shared/research/channels-2026.md` §3.1, botpy and peers' clients. It checks what the
real service is reported to check and records everything it receives:

* `POST /app/getAppAccessToken {appId, clientSecret}` → `{access_token, expires_in: "<string>"}`; the same
  token is returned while more than `reissue_within_s` of it is left (the real service's documented
  behaviour), a new one after that (the old one stays valid until it expires). Wrong credentials →
  HTTP 200 `{"code": 100016, "message": "invalid appid or secret"}` (code unverified).
* REST calls need `Authorization: QQBot <token>` with a valid token: otherwise HTTP 401 with code 11241
  (malformed) or 11244 ("token not exist or expire").
* `GET /gateway` → `{"url": "ws://127.0.0.1:<port>/websocket"}`. The gateway sends Hello with a short
  heartbeat_interval, checks Identify (token, intents ⊇ 1<<25, shard [0, 1]; closes 4004/4014/4010),
  answers READY (session_id, user), acks heartbeats (op 11, recording the seq they carry), replays the
  dispatches after the Resume's seq and then sends RESUMED, answers a Resume of an unknown/invalidated
  session with op 9. On demand: op 7, op 9, drop (close 4009) or any close code.
* `/v2/{groups|users}/{openid}/files`: `file_type` 1..4, `srv_send_msg` false, `file_data` base64 (an MP4
  for type 2: `ftyp` box) or an `upload_id` of a completed part upload; records the sha256 and returns
  `{file_uuid, file_info, ttl}`. `upload_prepare` / presigned `PUT /cos/...` (must carry no Authorization
  header) / `upload_part_finish` (md5 and size per part) / merge (md5, sha1, md5_10m of the whole file).
* `/v2/{groups|users}/{openid}/messages`: msg_type 0 (content) or 7 (a `file_info` issued for this same
  chat and not expired). With `msg_id`: it must be a message this fake pushed into that chat, within
  `passive_window_s`, `msg_seq` unique per msg_id (else 40054005), at most `reply_limit` replies. Without
  msg_id: counted per chat against `proactive_quota`, refused above it with HTTP 400 code 40034102
  ("主动消息失败, 无权限", seen in openclaw-qqbot#52). Codes marked "invented" below are not documented.

Use: `async with QQFake(app_id=..., secret=...) as fake:` then point the adapter at `fake.api_base` and
`fake.token_url`. A `ManualClock` shared by the fake and the adapter makes windows and token expiry
deterministic.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import math
import secrets
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

GROUP_AND_C2C_EVENT = 1 << 25
_BEIJING = timezone(timedelta(hours=8))
MD5_10M_BYTES = 10002432

# Error codes. Documented/observed ones first; the invented ones only need to be distinct.
CODE_BAD_CREDENTIALS = 100016  # token endpoint, unverified
CODE_AUTH_HEADER = 11241
CODE_TOKEN_EXPIRED = 11244
CODE_MSG_ID_INVALID = 40034024  # "请求参数msg_id无效或越权" (AstrBot#6931)
CODE_MSG_ID_EXPIRED = 40034005  # "回复消息msg_id已过期" (a peer's production notes)
CODE_REPLY_LIMIT = 40034025  # invented placement; listed as "anchor dead" in a peer's table
CODE_DUP_SEQ = 40054005  # "消息被去重，请检查请求msgseq"
CODE_PROACTIVE_REFUSED = 40034102  # "主动消息失败, 无权限"
CODE_BAD_REQUEST = 40034001  # invented
CODE_FILE_INFO = 40034210  # invented
CODE_UPLOAD = 40093001  # invented


class ManualClock:
    """A wall clock that only moves when told to (share one between the fake and the adapter)."""

    def __init__(self, start: float = 1_780_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class SentMessage:
    scope: str
    target: str
    msg_type: int
    content: str | None
    msg_id: str | None
    msg_seq: int | None
    file_info: str | None
    media_sha256: str | None
    token: str
    at: float

    @property
    def proactive(self) -> bool:
        return self.msg_id is None


@dataclass
class Upload:
    scope: str
    target: str
    file_type: int
    sha256: str
    size: int
    via: str  # "base64" | "parts"
    file_uuid: str
    file_info: str
    parts: int = 1
    data: bytes = field(default=b"", repr=False)  # what arrived (tests read the MP4's AIGC label from it)


@dataclass
class _Pushed:
    scope: str
    target: str
    at: float
    replies: int = 0
    seqs: set[int] = field(default_factory=set)


@dataclass
class _Session:
    id: str
    seq: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    conn: WebSocket | None = None
    invalid: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class _PartUpload:
    scope: str
    target: str
    file_type: int
    name: str
    size: int
    md5: str
    sha1: str
    md5_10m: str
    lengths: dict[int, int]
    signs: dict[int, str]
    data: dict[int, bytes] = field(default_factory=dict)
    finished: set[int] = field(default_factory=set)


def _err(status: int, code: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message, "code": code, "err_code": code,
                         "trace_id": uuid.uuid4().hex}, status_code=status)  # fmt: skip


def _is_hex(value: Any, length: int) -> bool:
    if not isinstance(value, str) or len(value) != length:
        return False
    try:
        int(value, 16)
    except ValueError:
        return False
    return True


class QQFake:
    def __init__(
        self,
        *,
        app_id: str = "102030405",
        secret: str = "qq-fake-secret-Zm9vYmFyYmF6",
        token_ttl_s: float = 7200.0,
        reissue_within_s: float = 60.0,
        heartbeat_interval_ms: int = 150,
        passive_window_s: float = 300.0,
        reply_limit: int = 5,
        proactive_quota: int = 4,
        file_ttl_s: float = 3600.0,
        part_size: int = 1024 * 1024,
        clock: Callable[[], float] = time.time,
        bot_user: dict[str, Any] | None = None,
    ) -> None:
        self.app_id = app_id
        self.secret = secret
        self.token_ttl_s = token_ttl_s
        self.reissue_within_s = reissue_within_s
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.passive_window_s = passive_window_s
        self.reply_limit = reply_limit
        self.proactive_quota = proactive_quota
        self.file_ttl_s = file_ttl_s
        self.part_size = part_size
        self.clock = clock
        self.bot_user = bot_user or {"id": "11223344556677889900", "username": "小爱视频", "bot": True}
        # ---- records
        self.token_requests: list[dict[str, Any]] = []  # {"app_id", "ok"} (never the secret)
        self.issued_tokens: list[str] = []
        self.api_calls: list[tuple[str, str, int, int | None]] = []  # method, path, status, code
        self.messages: list[SentMessage] = []
        self.refusals: list[tuple[str, int, dict[str, Any]]] = []  # path, code, body sent
        self.uploads: list[Upload] = []
        self.cos_puts: list[dict[str, Any]] = []  # {"upload_id", "index", "size", "authorization"}
        self.identifies: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []
        self.replayed: list[int] = []  # seqs re-sent after a resume
        self.heartbeats: list[Any] = []
        self.sessions: list[_Session] = []
        self.connections = 0
        self.x_union_appids: set[str] = set()
        # ---- state
        self._tokens: dict[str, float] = {}
        self._current: str | None = None
        self._revoked: set[str] = set()
        self._pushed: dict[str, _Pushed] = {}
        self._proactive: dict[tuple[str, str], int] = defaultdict(int)
        self._files: dict[str, tuple[str, str, str, float]] = {}  # file_info -> scope, target, sha256, expires
        self._parts: dict[str, _PartUpload] = {}
        self._media: dict[str, tuple[bytes, str]] = {}
        self._failures: list[list[Any]] = []  # [path fragment, status, remaining, body]
        self._lost: list[list[Any]] = []  # [path fragment, remaining]: processed, then answered 502
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._counter = 0
        self.port = 0
        self.app = Starlette(routes=[
            Route("/app/getAppAccessToken", self._token_endpoint, methods=["POST"]),
            Route("/gateway", self._gateway, methods=["GET"]),
            Route("/gateway/bot", self._gateway, methods=["GET"]),
            Route("/v2/{scope}/{openid}/files", self._files_endpoint, methods=["POST"]),
            Route("/v2/{scope}/{openid}/upload_prepare", self._upload_prepare, methods=["POST"]),
            Route("/v2/{scope}/{openid}/upload_part_finish", self._upload_part_finish, methods=["POST"]),
            Route("/v2/{scope}/{openid}/messages", self._messages, methods=["POST"]),
            Route("/cos/{upload_id}/{index:int}", self._cos_put, methods=["PUT"]),
            Route("/media/{name}", self._media_get, methods=["GET"]),
            WebSocketRoute("/websocket", self._websocket),
        ])  # fmt: skip

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> QQFake:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", log_config=None,
                                ws="websockets-sansio", lifespan="off", timeout_graceful_shutdown=1,
                                ws_ping_interval=None)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._task = asyncio.create_task(self._server.serve(), name="qq-fake")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("qq fake did not start")
            await asyncio.sleep(0.01)
        self.port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in self.sessions:
            if session.conn is not None:
                with contextlib.suppress(Exception):
                    await session.conn.close(code=1001)
                session.conn = None
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base(self) -> str:
        return self.base

    @property
    def token_url(self) -> str:
        return f"{self.base}/app/getAppAccessToken"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/websocket"

    # ------------------------------------------------------------------ test controls
    @property
    def session(self) -> _Session | None:
        return self.sessions[-1] if self.sessions else None

    @property
    def current_token(self) -> str | None:
        return self._current

    def revoke_tokens(self) -> None:
        """Every token issued so far stops working (the next REST call gets 401)."""
        self._revoked.update(self._tokens)
        self._current = None

    def fail_next(self, path_fragment: str, *, status: int = 500, times: int = 1,
                  body: dict[str, Any] | None = None) -> None:  # fmt: skip
        """The next `times` REST calls whose path contains `path_fragment` answer `status` (after auth)."""
        self._failures.append([path_fragment, status, times, body or {"message": "internal error", "code": 500}])

    def lose_next_response(self, path_fragment: str, *, times: int = 1) -> None:
        """The next `times` successful calls whose path contains `path_fragment` are carried out but
        answered 502, as if the answer was lost on the way back."""
        self._lost.append([path_fragment, times])

    def add_media(self, data: bytes, content_type: str = "image/png") -> str:
        """Serve `data` at a URL like the attachment URLs of real events (no auth needed)."""
        name = uuid.uuid4().hex
        self._media[name] = (data, content_type)
        return f"{self.base}/media/{name}?term=2&is_origin=0"

    def _new_id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}{self._counter:04d}.{secrets.token_hex(6)}"

    async def push_group_at(
        self, group_openid: str, member_openid: str, content: str, *, msg_id: str | None = None,
        event_id: str | None = None, attachments: list[dict[str, Any]] | None = None,
        event: str = "GROUP_AT_MESSAGE_CREATE", extra: dict[str, Any] | None = None,
    ) -> str:  # fmt: skip
        """A group member @-mentions the bot; returns the message id. `extra`: more event fields (e.g. a quote's
        `message_type` 103 and `msg_elements`)."""
        msg_id = msg_id or self._new_id("ROBOT1.0_g")
        data: dict[str, Any] = {
            "id": msg_id, "content": content, "timestamp": self._iso(),
            "group_openid": group_openid, "group_id": group_openid,
            "author": {"id": member_openid, "member_openid": member_openid},
        }  # fmt: skip
        if attachments:
            data["attachments"] = attachments
        data.update(extra or {})
        self._pushed.setdefault(msg_id, _Pushed("groups", group_openid, self.clock()))
        await self.push_event(event, data, event_id or f"{event}:{secrets.token_hex(8)}")
        return msg_id

    async def push_c2c(self, user_openid: str, content: str, *, msg_id: str | None = None,
                       event_id: str | None = None, attachments: list[dict[str, Any]] | None = None) -> str:  # fmt: skip
        """A user writes to the bot in a private chat; returns the message id."""
        msg_id = msg_id or self._new_id("ROBOT1.0_c")
        data: dict[str, Any] = {
            "id": msg_id, "content": content, "timestamp": self._iso(),
            "author": {"id": user_openid, "user_openid": user_openid, "union_openid": "u" + user_openid},
        }  # fmt: skip
        if attachments:
            data["attachments"] = attachments
        self._pushed.setdefault(msg_id, _Pushed("users", user_openid, self.clock()))
        await self.push_event("C2C_MESSAGE_CREATE", data, event_id or f"C2C_MESSAGE_CREATE:{secrets.token_hex(8)}")
        return msg_id

    async def push_event(self, kind: str, data: Any, event_id: str | None = None) -> int:
        """Dispatch any event in the current session (logged for replay even while disconnected)."""
        session = self.session
        if session is None:
            raise RuntimeError("no gateway session yet")
        return await self._dispatch(session, kind, data, event_id)

    async def wait_connected(self, timeout: float = 5.0) -> _Session:
        """Wait until the current session has a live socket."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            session = self.session
            if session is not None and session.conn is not None and not session.invalid:
                return session
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError("the adapter did not connect to the fake gateway")
            await asyncio.sleep(0.01)

    async def drop(self, code: int = 4009) -> None:
        """Close the gateway socket (4009: "connection expired, reconnect and resume")."""
        session = self.session
        if session is None or session.conn is None:
            return
        conn, session.conn = session.conn, None
        with contextlib.suppress(Exception):
            await conn.close(code=code)

    async def request_reconnect(self) -> None:
        """Op 7: the client should reconnect and resume."""
        await self._send_op({"op": 7})

    async def invalidate_session(self) -> None:
        """Op 9: the session is gone; the client must identify afresh (a Resume would get op 9 again)."""
        session = self.session
        if session is not None:
            session.invalid = True
        await self._send_op({"op": 9, "d": False})

    async def _send_op(self, frame: dict[str, Any]) -> None:
        session = self.session
        if session is None or session.conn is None:
            raise RuntimeError("no live gateway socket")
        await session.conn.send_json(frame)

    def messages_to(self, target: str) -> list[SentMessage]:
        return [m for m in self.messages if m.target == target]

    # ------------------------------------------------------------------ helpers
    def _iso(self) -> str:
        return datetime.fromtimestamp(self.clock(), tz=_BEIJING).isoformat(timespec="seconds")  # like the real events

    def _token_valid(self, token: str) -> bool:
        expires = self._tokens.get(token)
        return expires is not None and token not in self._revoked and self.clock() < expires

    def _auth(self, request: Request) -> str | JSONResponse:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        appid = request.headers.get("x-union-appid")
        if appid:
            self.x_union_appids.add(appid)
        if scheme != "QQBot" or not token:
            return _err(401, CODE_AUTH_HEADER, "authorization header missing or malformed")
        if not self._token_valid(token):
            return _err(401, CODE_TOKEN_EXPIRED, "token not exist or expire")
        return token

    def _injected(self, path: str) -> JSONResponse | None:
        for failure in self._failures:
            fragment, status, remaining, body = failure
            if remaining > 0 and fragment in path:
                failure[2] -= 1
                return JSONResponse(body, status_code=status)
        return None

    async def _json(self, request: Request) -> dict[str, Any] | None:
        try:
            data = await request.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def _record(self, request: Request, response: Response, code: int | None = None) -> Response:
        if response.status_code == 200:
            for lost in self._lost:
                if lost[1] > 0 and lost[0] in request.url.path:
                    lost[1] -= 1
                    response = JSONResponse({"message": "bad gateway", "code": 502}, status_code=502)
                    break
        self.api_calls.append((request.method, request.url.path, response.status_code, code))
        return response

    async def _guard(self, request: Request) -> tuple[str, str, str, dict[str, Any]] | Response:
        """Auth, scope check, injected failures, JSON body → (token, scope, openid, body)."""
        token = self._auth(request)
        if isinstance(token, JSONResponse):
            return self._record(request, token, CODE_TOKEN_EXPIRED)
        injected = self._injected(request.url.path)
        if injected is not None:
            return self._record(request, injected)
        scope = request.path_params["scope"]
        if scope not in ("groups", "users"):
            return self._record(request, _err(404, CODE_BAD_REQUEST, "unknown scope"))
        body = await self._json(request)
        if body is None:
            return self._record(request, _err(400, CODE_BAD_REQUEST, "body must be a JSON object"))
        return token, scope, request.path_params["openid"], body

    def _refuse(self, request: Request, body: dict[str, Any], status: int, code: int, message: str) -> Response:
        self.refusals.append((request.url.path, code, body))
        return self._record(request, _err(status, code, message), code)

    # ------------------------------------------------------------------ token endpoint
    async def _token_endpoint(self, request: Request) -> Response:
        body = await self._json(request) or {}
        ok = body.get("appId") == self.app_id and body.get("clientSecret") == self.secret
        self.token_requests.append({"app_id": body.get("appId"), "ok": ok})
        if not ok:
            return JSONResponse({"code": CODE_BAD_CREDENTIALS, "message": "invalid appid or secret"})
        now = self.clock()
        current = self._current
        if current is not None and self._token_valid(current) and self._tokens[current] - now > self.reissue_within_s:
            return JSONResponse({"access_token": current, "expires_in": str(int(self._tokens[current] - now))})
        token = secrets.token_urlsafe(24)
        self._tokens[token] = now + self.token_ttl_s
        self._current = token
        self.issued_tokens.append(token)
        return JSONResponse({"access_token": token, "expires_in": str(int(self.token_ttl_s))})

    # ------------------------------------------------------------------ REST
    async def _gateway(self, request: Request) -> Response:
        token = self._auth(request)
        if isinstance(token, JSONResponse):
            return self._record(request, token, CODE_TOKEN_EXPIRED)
        injected = self._injected(request.url.path)
        if injected is not None:
            return self._record(request, injected)
        body: dict[str, Any] = {"url": self.ws_url}
        if request.url.path.endswith("/bot"):
            body |= {"shards": 1, "session_start_limit": {"total": 1000, "remaining": 999,
                                                          "reset_after": 86400000, "max_concurrency": 1}}  # fmt: skip
        return self._record(request, JSONResponse(body))

    async def _files_endpoint(self, request: Request) -> Response:
        guarded = await self._guard(request)
        if isinstance(guarded, Response):
            return guarded
        _, scope, openid, body = guarded
        file_type = body.get("file_type")
        if not isinstance(file_type, int) or file_type not in (1, 2, 3, 4):
            return self._refuse(request, body, 400, CODE_UPLOAD, "file_type invalid")
        if body.get("srv_send_msg") is not False:
            return self._refuse(request, body, 400, CODE_UPLOAD, "fake only supports srv_send_msg=false")
        parts = 1
        if "upload_id" in body:
            pending = self._parts.get(str(body["upload_id"]))
            if pending is None or (pending.scope, pending.target) != (scope, openid):
                return self._refuse(request, body, 400, CODE_UPLOAD, "upload_id unknown")
            if pending.finished != set(pending.lengths) or pending.file_type != file_type:
                return self._refuse(request, body, 400, CODE_UPLOAD, "upload not complete")
            data = b"".join(pending.data[i] for i in sorted(pending.lengths))
            if (len(data) != pending.size or hashlib.md5(data).hexdigest() != pending.md5
                    or hashlib.sha1(data).hexdigest() != pending.sha1
                    or hashlib.md5(data[:MD5_10M_BYTES]).hexdigest() != pending.md5_10m):  # fmt: skip
                return self._refuse(request, body, 400, CODE_UPLOAD, "merged file does not match upload_prepare")
            via, parts = "parts", len(pending.lengths)
            del self._parts[str(body["upload_id"])]
        elif "file_data" in body:
            try:
                data = base64.b64decode(str(body["file_data"]), validate=True)
            except (binascii.Error, ValueError):
                return self._refuse(request, body, 400, CODE_UPLOAD, "file_data is not base64")
            via = "base64"
        else:
            return self._refuse(request, body, 400, CODE_UPLOAD, "fake needs file_data or upload_id")
        if not data:
            return self._refuse(request, body, 400, CODE_UPLOAD, "empty file")
        if file_type == 2 and data[4:8] != b"ftyp":
            return self._refuse(request, body, 400, CODE_UPLOAD, "file_type 2 must be an mp4")
        sha = hashlib.sha256(data).hexdigest()
        file_uuid = uuid.uuid4().hex
        file_info = "FI" + secrets.token_urlsafe(32)
        self._files[file_info] = (scope, openid, sha, self.clock() + self.file_ttl_s)
        self.uploads.append(Upload(scope, openid, file_type, sha, len(data), via, file_uuid, file_info, parts, data))
        return self._record(request, JSONResponse({"file_uuid": file_uuid, "file_info": file_info,
                                                   "ttl": int(self.file_ttl_s)}))  # fmt: skip

    async def _upload_prepare(self, request: Request) -> Response:
        guarded = await self._guard(request)
        if isinstance(guarded, Response):
            return guarded
        _, scope, openid, body = guarded
        try:
            size = int(body.get("file_size"))  # documented as a string
        except (TypeError, ValueError):
            size = 0
        file_type = body.get("file_type")
        if (file_type not in (1, 2, 3, 4) or size <= 0 or not body.get("file_name")
                or not _is_hex(body.get("md5"), 32) or not _is_hex(body.get("sha1"), 40)
                or not _is_hex(body.get("md5_10m"), 32)):  # fmt: skip
            return self._refuse(request, body, 400, CODE_UPLOAD, "upload_prepare fields invalid")
        upload_id = "up_" + uuid.uuid4().hex
        count = math.ceil(size / self.part_size)
        lengths = {i + 1: min(self.part_size, size - i * self.part_size) for i in range(count)}
        signs = {i: secrets.token_hex(8) for i in lengths}
        self._parts[upload_id] = _PartUpload(scope, openid, int(file_type), str(body["file_name"]), size,
                                             body["md5"], body["sha1"], body["md5_10m"], lengths, signs)  # fmt: skip
        parts = [{"index": i, "presigned_url": f"{self.base}/cos/{upload_id}/{i}?sign={signs[i]}",
                  "block_size": str(lengths[i])} for i in sorted(lengths)]  # fmt: skip
        return self._record(request, JSONResponse({
            "upload_id": upload_id, "block_size": str(self.part_size), "parts": parts,
            "upload_config": {"concurrency": 1, "retry_timeout": 30, "retry_delay": 1},
        }))  # fmt: skip

    async def _cos_put(self, request: Request) -> Response:
        upload_id = request.path_params["upload_id"]
        index = request.path_params["index"]
        pending = self._parts.get(upload_id)
        data = await request.body()
        self.cos_puts.append({"upload_id": upload_id, "index": index, "size": len(data),
                              "authorization": request.headers.get("authorization")})  # fmt: skip
        if pending is None or index not in pending.lengths:
            return Response("NoSuchUpload", status_code=404)
        if request.query_params.get("sign") != pending.signs[index]:
            return Response("SignatureDoesNotMatch", status_code=403)
        if len(data) != pending.lengths[index]:
            return Response("BadDigest", status_code=400)
        pending.data[index] = data
        return Response(status_code=200, headers={"ETag": hashlib.md5(data).hexdigest()})

    async def _upload_part_finish(self, request: Request) -> Response:
        guarded = await self._guard(request)
        if isinstance(guarded, Response):
            return guarded
        _, scope, openid, body = guarded
        pending = self._parts.get(str(body.get("upload_id")))
        index = body.get("part_index")
        if pending is None or (pending.scope, pending.target) != (scope, openid) or index not in pending.lengths:
            return self._refuse(request, body, 400, CODE_UPLOAD, "upload_id/part_index unknown")
        data = pending.data.get(index)
        if data is None:
            return self._refuse(request, body, 400, CODE_UPLOAD, "part not uploaded")
        if str(body.get("block_size")) != str(len(data)) or body.get("md5") != hashlib.md5(data).hexdigest():
            return self._refuse(request, body, 400, CODE_UPLOAD, "part block_size/md5 mismatch")
        pending.finished.add(index)
        return self._record(request, JSONResponse({}))

    async def _messages(self, request: Request) -> Response:
        guarded = await self._guard(request)
        if isinstance(guarded, Response):
            return guarded
        token, scope, openid, body = guarded
        msg_type = body.get("msg_type")
        content = body.get("content")
        file_info: str | None = None
        sha: str | None = None
        if msg_type == 0:
            if not isinstance(content, str) or not content.strip():
                return self._refuse(request, body, 400, CODE_BAD_REQUEST, "content empty")
        elif msg_type == 7:
            media = body.get("media")
            file_info = media.get("file_info") if isinstance(media, dict) else None
            known = self._files.get(str(file_info))
            if known is None or known[:2] != (scope, openid) or known[3] <= self.clock():
                return self._refuse(request, body, 400, CODE_FILE_INFO, "file_info invalid or expired")
            sha = known[2]
        else:
            return self._refuse(request, body, 400, CODE_BAD_REQUEST, "msg_type not supported by the fake")
        msg_id = body.get("msg_id")
        seq: int | None = None
        if msg_id:
            pushed = self._pushed.get(str(msg_id))
            if pushed is None or (pushed.scope, pushed.target) != (scope, openid):
                return self._refuse(request, body, 400, CODE_MSG_ID_INVALID, "请求参数msg_id无效或越权")
            if self.clock() - pushed.at > self.passive_window_s:
                return self._refuse(request, body, 400, CODE_MSG_ID_EXPIRED, "回复消息msg_id已过期")
            try:
                seq = int(body.get("msg_seq") or 1)
            except (TypeError, ValueError):
                return self._refuse(request, body, 400, CODE_BAD_REQUEST, "msg_seq invalid")
            if seq in pushed.seqs:
                return self._refuse(request, body, 400, CODE_DUP_SEQ, "消息被去重，请检查请求msgseq")
            if pushed.replies >= self.reply_limit:
                return self._refuse(request, body, 400, CODE_REPLY_LIMIT, "reply msg exceed limit")
            pushed.seqs.add(seq)
            pushed.replies += 1
        else:
            if self._proactive[(scope, openid)] >= self.proactive_quota:
                return self._refuse(request, body, 400, CODE_PROACTIVE_REFUSED, "主动消息失败, 无权限")
            self._proactive[(scope, openid)] += 1
        self.messages.append(SentMessage(scope, openid, int(msg_type), content if isinstance(content, str) else None,
                                         str(msg_id) if msg_id else None, seq, file_info, sha, token,
                                         self.clock()))  # fmt: skip
        return self._record(request, JSONResponse({"id": self._new_id("reply"), "timestamp": self._iso()}))

    async def _media_get(self, request: Request) -> Response:
        item = self._media.get(request.path_params["name"])
        if item is None:
            return Response(status_code=404)
        return Response(item[0], media_type=item[1])

    # ------------------------------------------------------------------ gateway
    async def _dispatch(self, session: _Session, kind: str, data: Any, event_id: str | None = None) -> int:
        async with session.lock:
            session.seq += 1
            frame: dict[str, Any] = {"op": 0, "s": session.seq, "t": kind, "d": data}
            if event_id:
                frame["id"] = event_id
            session.log.append(frame)
            if session.conn is not None:
                with contextlib.suppress(Exception):
                    await session.conn.send_json(frame)
            return session.seq

    def _gateway_token_ok(self, value: Any) -> bool:
        if not isinstance(value, str) or not value.startswith("QQBot "):
            return False
        return self._token_valid(value[len("QQBot "):])

    async def _websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        self.connections += 1
        session: _Session | None = None
        try:
            await websocket.send_json({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
            first = await asyncio.wait_for(websocket.receive_json(), 10)
            op = first.get("op") if isinstance(first, dict) else None
            data = first.get("d") if isinstance(first, dict) and isinstance(first.get("d"), dict) else {}
            if op == 2:
                self.identifies.append(data)
                if not self._gateway_token_ok(data.get("token")):
                    await websocket.close(code=4004)
                    return
                intents = data.get("intents")
                if not isinstance(intents, int) or not intents & GROUP_AND_C2C_EVENT:
                    await websocket.close(code=4014)
                    return
                if data.get("shard") != [0, 1]:
                    await websocket.close(code=4010)
                    return
                session = _Session(uuid.uuid4().hex)
                self.sessions.append(session)
                async with session.lock:
                    session.conn = websocket
                await self._dispatch(session, "READY", {"version": 1, "session_id": session.id,
                                                        "user": self.bot_user, "shard": [0, 1]})  # fmt: skip
            elif op == 6:
                self.resumes.append(data)
                if not self._gateway_token_ok(data.get("token")):
                    await websocket.close(code=4004)
                    return
                found = [s for s in self.sessions if s.id == data.get("session_id") and not s.invalid]
                if not found:
                    await websocket.send_json({"op": 9, "d": False})
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(websocket.receive_text(), 5)  # the client closes
                    return
                session = found[0]
                try:
                    after = int(data.get("seq") or 0)
                except (TypeError, ValueError):
                    after = 0
                async with session.lock:
                    old, session.conn = session.conn, websocket
                    if old is not None and old is not websocket:
                        with contextlib.suppress(Exception):
                            await old.close(code=4009)
                    for frame in session.log:
                        if frame["s"] > after:
                            self.replayed.append(frame["s"])
                            await websocket.send_json(frame)
                    await websocket.send_json({"op": 0, "t": "RESUMED", "d": ""})
            else:
                await websocket.close(code=4002)
                return
            while True:
                frame = await websocket.receive_json()
                if isinstance(frame, dict) and frame.get("op") == 1:
                    self.heartbeats.append(frame.get("d"))
                    await websocket.send_json({"op": 11})
        except (WebSocketDisconnect, TimeoutError, RuntimeError, ValueError, KeyError):
            pass
        finally:
            if session is not None and session.conn is websocket:
                session.conn = None
