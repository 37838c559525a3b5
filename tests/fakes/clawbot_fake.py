"""A loopback fake of the WeChat ClawBot iLink bot API and its CDN, for the clawbot channel tests.

Written from `/work/shared/research/channels-2026.md` §1 (see §1.11 for what it must check). One
Starlette app on 127.0.0.1 serves `/ilink/bot/*` and the CDN under `/c2c/*`; it listens on two ports so
a QR `scaned_but_redirect` can really move the client to another host.

    async with ClawbotFake() as fake:
        settings = ClawbotSettings(base_url=fake.base_url, cdn_base_url=fake.cdn_base_url, ...)
        fake.write_credentials(state_dir)       # or run the real QR login against it
        fake.push_text("alice@im.wechat", "/视频 一只猫")
        ...
        assert fake.videos()[0].sha256 == hashlib.sha256(mp4).hexdigest()

What it checks, like the real service is documented to: the iLink headers (`AuthorizationType`,
`Authorization: Bearer <issued token>`, base64-of-digits `X-WECHAT-UIN`, `iLink-App-Id`,
`iLink-App-ClientVersion`) and `base_info` on every bot POST; `message_type=2`/`message_state=2`; that
the `context_token` is the latest one issued for that user, younger than `context_ttl_s`, and has been
used for fewer than `quota` sends (else `ret=-2`); upload sizes, MD5 and the AES key (it decrypts what it
receives and records the plaintext's sha256); the video item's key, `encrypt_type` and `video_size`.
Protocol mistakes land in `violations` (tests assert it stays empty); refusals in `refused`.
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
import secrets
import socket
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import uvicorn
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

BOT_ID = "f00dfeedc0ffee01@im.bot"
SCANNER_ID = "o9cq-admin@im.wechat"
_HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")


# ---------------------------------------------------------------------- crypto (independent of the adapter)
def aes_encrypt(plain: bytes, key: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    data = padder.update(plain) + padder.finalize()
    enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
    return enc.update(data) + enc.finalize()


def aes_decrypt(cipher: bytes, key: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
    data = dec.update(cipher) + dec.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(data) + unpadder.finalize()


def padded(size: int) -> int:
    return (size // 16 + 1) * 16


# ---------------------------------------------------------------------- records
@dataclass
class SentItem:
    """One item the bot sent (sendmessage accepted it)."""

    user: str
    kind: str  # "text" | "video" | "image" | "file"
    text: str = ""
    sha256: str = ""  # of the decrypted media
    size: int = 0  # plaintext size of media
    context_token: str = ""
    client_id: str = ""
    item: dict[str, Any] = field(default_factory=dict)


@dataclass
class _User:
    token: str
    issued_at: float
    sends: int = 0


@dataclass
class _Qr:
    qrcode: str
    script: list[str]
    pos: int = 0
    redirect_required: bool = False
    wrong_codes: int = 0
    polls: list[tuple[int, str]] = field(default_factory=list)  # (port, status returned)


@dataclass
class _PendingUpload:
    filekey: str
    media_type: int
    to_user_id: str
    rawsize: int
    rawfilemd5: str
    filesize: int
    key: bytes


@dataclass
class Upload:
    """A CDN upload that decrypted and matched its declared size and MD5."""

    param: str  # the x-encrypted-param handed back
    media_type: int
    plaintext: bytes
    sha256: str
    cipher_size: int
    key: bytes


class _QuietServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[override]  # tests own the signals
        yield


class ClawbotFake:
    """See the module docstring. All knobs are plain attributes a test may change at any time."""

    def __init__(self, *, hold_s: float = 0.5, quota: int = 10, context_ttl_s: float = 24 * 3600.0,
                 upload_mode: str = "full_url", bot_id: str = BOT_ID,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self.hold_s = hold_s
        self.quota = quota
        self.context_ttl_s = context_ttl_s
        self.upload_mode = upload_mode  # "full_url" | "upload_param"
        self.bot_id = bot_id
        self.clock = clock
        self.verify_code = "2846"
        self.scanner_id = SCANNER_ID
        self.session_expired = False  # every bot call answers ret/errcode −14
        self.hide_encrypted_param = False  # CDN upload answers 200 without x-encrypted-param
        self.cdn_failures: list[int] = []  # statuses the next CDN uploads answer with (popped)
        self.send_failures: list[tuple[int, str | None]] = []  # (ret, item kind or None=any) for next sends
        self.send_delay_s = 0.0  # sendmessage answers this late (after delivering): client read timeouts
        self.violations: list[str] = []
        self.refused: list[tuple[str, str, str]] = []  # (user, kind, reason) of sends answered ret −2
        self.sent: list[SentItem] = []
        self.uploads: dict[str, Upload] = {}
        self.calls: Counter[str] = Counter()
        self.cursors: list[str] = []  # get_updates_buf of every getupdates call, in order
        self.tokens: set[str] = set()  # valid bot tokens
        self.issued_tokens: list[str] = []  # every bot token ever issued (for "never logged" checks)
        self.issued_contexts: list[str] = []  # every context token ever issued
        self.getupdates_failures = 0  # the next N getupdates answer HTTP 502
        self.qr_requests: list[dict[str, Any]] = []
        self.qrs: dict[str, _Qr] = {}
        self._qr_scripts: list[list[str]] = []
        self._users: dict[str, _User] = {}
        self._inbound: list[dict[str, Any]] = []
        self._pending: dict[str, _PendingUpload] = {}
        self._downloads: dict[str, bytes] = {}
        self._client_ids: set[str] = set()
        self._arrived: asyncio.Event | None = None
        self._next_id = 7_205_759_403_792_793_600  # > 2**62: every id is beyond float precision
        self._server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._sockets: list[socket.socket] = []
        self.port = 0
        self.redirect_port = 0

    # ------------------------------------------------------------------ lifecycle
    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn_base_url(self) -> str:
        return f"{self.base_url}/c2c"

    @property
    def redirect_host(self) -> str:
        return f"127.0.0.1:{self.redirect_port}"

    async def start(self) -> ClawbotFake:
        self._arrived = asyncio.Event()
        for _ in range(2):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", 0))
            sock.setblocking(False)
            self._sockets.append(sock)
        self.port = self._sockets[0].getsockname()[1]
        self.redirect_port = self._sockets[1].getsockname()[1]
        config = uvicorn.Config(self._app(), log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=1, timeout_keep_alive=5)  # fmt: skip
        self._server = _QuietServer(config)
        self._task = asyncio.create_task(self._server.serve(sockets=self._sockets), name="clawbot-fake")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not self._server.started:
            if self._task.done():
                self._task.result()
            if loop.time() > deadline:
                raise RuntimeError("clawbot fake did not start")
            await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._arrived is not None:
            self._arrived.set()  # release held long polls
        if self._task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._task, 5)
        for sock in self._sockets:
            sock.close()
        self._sockets.clear()

    async def __aenter__(self) -> ClawbotFake:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def settings_values(self, state_dir: Path, **overrides: Any) -> dict[str, Any]:
        """`channels.clawbot` values pointing at this fake, with durations shrunk for tests."""
        values: dict[str, Any] = {
            "enabled": True, "base_url": self.base_url, "cdn_base_url": self.cdn_base_url,
            "state_dir": state_dir, "redirect_scheme": "http", "poll_timeout_s": 5.0, "poll_retry_s": 0.02,
            "poll_backoff_s": 0.1, "credentials_watch_s": 0.05, "send_interval_s": 0.0,
            "send_retry_initial_s": 0.01, "upload_retry_initial_s": 0.01, "http_timeout_s": 5.0,
            "login_poll_interval_s": 0.01, "login_poll_timeout_s": 5.0, "login_timeout_s": 20.0,
        }  # fmt: skip
        values.update(overrides)
        return values

    # ------------------------------------------------------------------ tokens and credentials
    def issue_token(self) -> str:
        token = f"{secrets.token_hex(8)}@im.bot:{secrets.token_urlsafe(24)}"
        self.tokens.add(token)
        self.issued_tokens.append(token)
        return token

    def credentials(self, user_id: str = SCANNER_ID) -> dict[str, str]:
        """A fresh login's credentials, as `xiaoai login clawbot` would save them."""
        return {"bot_token": self.issue_token(), "baseurl": self.base_url, "ilink_bot_id": self.bot_id,
                "ilink_user_id": user_id}  # fmt: skip

    def write_credentials(self, state_dir: Path, user_id: str = SCANNER_ID) -> dict[str, str]:
        """Write a fresh login into `state_dir/credentials.json` (mode 600, atomic) and return it."""
        creds = self.credentials(user_id)
        state_dir.mkdir(parents=True, exist_ok=True)
        path = state_dir / "credentials.json"
        tmp = state_dir / f".credentials.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump({**creds, "saved_at": time.time()}, handle)
        tmp.replace(path)
        return creds

    def expire_session(self) -> None:
        """Every token issued so far is now expired (−14); new logins get fresh valid tokens."""
        self.tokens.clear()

    # ------------------------------------------------------------------ QR scripting
    def script_qr(self, *statuses: str) -> None:
        """Script the next QR code's statuses (the last one repeats), e.g.
        ("wait", "scaned", "need_verifycode", "confirmed"), ("expired",), ("scaned_but_redirect", "confirmed")."""
        self._qr_scripts.append(list(statuses))

    # ------------------------------------------------------------------ inbound messages (test side)
    def new_message_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def _issue_context(self, user: str) -> str:
        token = f"ctx-{secrets.token_urlsafe(18)}"
        self.issued_contexts.append(token)
        self._users[user] = _User(token=token, issued_at=self.clock())
        return token

    def context_token(self, user: str) -> str | None:
        entry = self._users.get(user)
        return entry.token if entry else None

    def push_raw(self, msg: dict[str, Any]) -> int:
        """Queue a WeixinMessage; fills in ids, times and a fresh context token when absent."""
        msg = dict(msg)
        msg.setdefault("message_id", self.new_message_id())
        msg.setdefault("seq", len(self._inbound) + 1)
        msg.setdefault("to_user_id", self.bot_id)
        msg.setdefault("message_type", 1)
        msg.setdefault("message_state", 2)
        msg.setdefault("create_time_ms", int(self.clock() * 1000))
        if msg.get("message_type") == 1 and "context_token" not in msg:
            msg["context_token"] = self._issue_context(str(msg["from_user_id"]))
        self._inbound.append(msg)
        if self._arrived is not None:
            self._arrived.set()
            self._arrived = asyncio.Event()
        return int(msg["message_id"])

    def push_text(self, user: str, text: str, *, message_id: int | None = None) -> int:
        msg: dict[str, Any] = {"from_user_id": user, "item_list": [{"type": 1, "text_item": {"text": text}}]}
        if message_id is not None:
            msg["message_id"] = message_id
        return self.push_raw(msg)

    def replay(self, message_id: int) -> None:
        """Deliver an already queued message again under the same id (a protocol-level replay)."""
        original = next(m for m in self._inbound if m["message_id"] == message_id)
        self.push_raw({**original, "seq": len(self._inbound) + 1})

    def _image_item(self, data: bytes, key_form: str) -> dict[str, Any]:
        key = secrets.token_bytes(16)
        param = f"img-{secrets.token_urlsafe(12)}"
        self._downloads[param] = aes_encrypt(data, key)
        media: dict[str, Any] = {"encrypt_query_param": param, "encrypt_type": 1}
        item: dict[str, Any] = {"media": media, "mid_size": len(self._downloads[param])}
        if key_form == "hex":  # image_item.aeskey, the preferred form for images
            item["aeskey"] = key.hex()
        elif key_form == "raw_b64":  # media.aes_key = base64(16 raw bytes)
            media["aes_key"] = base64.b64encode(key).decode()
        elif key_form == "hex_b64":  # media.aes_key = base64(32 hex characters)
            media["aes_key"] = base64.b64encode(key.hex().encode()).decode()
        else:
            raise ValueError(key_form)
        return {"type": 2, "image_item": item}

    def push_image(self, user: str, data: bytes, *, text: str = "", key_form: str = "raw_b64") -> int:
        items = [self._image_item(data, key_form)]
        if text:
            items.insert(0, {"type": 1, "text_item": {"text": text}})
        return self.push_raw({"from_user_id": user, "item_list": items})

    def push_quote(self, user: str, text: str, *, image: bytes | None = None, quoted_text: str = "",
                   key_form: str = "hex") -> int:  # fmt: skip
        """A text message quoting an earlier message (an image when `image` is given, else a text)."""
        quoted = (self._image_item(image, key_form) if image is not None
                  else {"type": 1, "text_item": {"text": quoted_text}})  # fmt: skip
        ref = {"title": quoted_text, "message_item": quoted}
        return self.push_raw({"from_user_id": user,
                              "item_list": [{"type": 1, "text_item": {"text": text}, "ref_msg": ref}]})

    # ------------------------------------------------------------------ outbound (test side)
    def fail_next_send(self, ret: int = -2, *, kind: str | None = None, times: int = 1) -> None:
        """The next `times` sendmessage calls (of item `kind` when given) answer `ret` and deliver nothing."""
        self.send_failures.extend([(ret, kind)] * times)

    def texts(self, user: str | None = None) -> list[str]:
        return [s.text for s in self.sent if s.kind == "text" and (user is None or s.user == user)]

    def videos(self, user: str | None = None) -> list[SentItem]:
        return [s for s in self.sent if s.kind == "video" and (user is None or s.user == user)]

    def sends_for(self, user: str) -> int:
        entry = self._users.get(user)
        return entry.sends if entry else 0

    # ------------------------------------------------------------------ checks
    def _violation(self, text: str) -> JSONResponse:
        self.violations.append(text)
        return JSONResponse({"ret": -1, "errmsg": text}, status_code=400)

    def _check_common(self, request: Request, body: Any, *, auth: bool = True) -> JSONResponse | None:
        """Header + base_info checks; an error response (400 or ret −14) or None."""
        path = request.url.path
        headers = request.headers
        if not headers.get("content-type", "").startswith("application/json"):
            return self._violation(f"{path}: Content-Type must be application/json")
        uin = headers.get("x-wechat-uin", "")
        try:
            decoded = base64.b64decode(uin, validate=True).decode("ascii")
        except (binascii.Error, ValueError):
            decoded = ""
        if not decoded.isdigit() or int(decoded) >= 2**32:
            return self._violation(f"{path}: X-WECHAT-UIN must be base64 of a uint32 in decimal")
        if headers.get("ilink-app-id") != "bot":
            return self._violation(f"{path}: iLink-App-Id must be 'bot'")
        if not headers.get("ilink-app-clientversion", "").isdigit():
            return self._violation(f"{path}: iLink-App-ClientVersion must be a decimal uint32")
        if not isinstance(body, dict):
            return self._violation(f"{path}: body must be a JSON object")
        info = body.get("base_info")
        if not isinstance(info, dict) or not info.get("channel_version") or not info.get("bot_agent"):
            return self._violation(f"{path}: base_info with channel_version and bot_agent is required")
        if len(str(info.get("bot_agent")).encode()) > 256:
            return self._violation(f"{path}: bot_agent longer than 256 bytes")
        if not auth:
            return None
        if headers.get("authorizationtype") != "ilink_bot_token":
            return self._violation(f"{path}: AuthorizationType must be ilink_bot_token")
        bearer = headers.get("authorization", "")
        if not bearer.startswith("Bearer "):
            return self._violation(f"{path}: Authorization must be 'Bearer <bot_token>'")
        if self.session_expired or bearer[len("Bearer "):] not in self.tokens:
            return JSONResponse({"ret": -14, "errcode": -14, "errmsg": "session timeout"})
        return None

    async def _json(self, request: Request) -> Any:
        raw = await request.body()
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    # ------------------------------------------------------------------ routes: login
    async def _get_bot_qrcode(self, request: Request) -> Response:
        self.calls["get_bot_qrcode"] += 1
        if request.query_params.get("bot_type") != "3":
            return self._violation("get_bot_qrcode: bot_type=3 is required")
        body = await self._json(request) if request.method == "POST" else None
        if request.method == "POST":
            error = self._check_common(request, body, auth=False)
            if error:
                return error
        local = (body or {}).get("local_token_list", []) if isinstance(body, dict) else []
        if not isinstance(local, list) or len(local) > 10:
            return self._violation("get_bot_qrcode: local_token_list must be a list of at most 10 tokens")
        self.qr_requests.append({"method": request.method, "local_tokens": len(local)})
        qrcode = secrets.token_hex(16)
        script = self._qr_scripts.pop(0) if self._qr_scripts else ["wait", "scaned", "confirmed"]
        self.qrs[qrcode] = _Qr(qrcode=qrcode, script=script)
        url = f"https://liteapp.weixin.qq.com/q/7GiQu1?qrcode={qrcode}&bot_type=3"
        return JSONResponse({"ret": 0, "qrcode": qrcode, "qrcode_img_content": url})

    def _qr_step(self, qr: _Qr, port: int, verify_code: str | None) -> dict[str, Any]:
        if qr.redirect_required and port != self.redirect_port:
            return {"status": "scaned_but_redirect", "redirect_host": self.redirect_host}
        step = qr.script[min(qr.pos, len(qr.script) - 1)]
        advance = qr.pos < len(qr.script) - 1
        if step == "need_verifycode":
            if verify_code is None:
                return {"status": "need_verifycode"}
            if verify_code != self.verify_code:
                qr.wrong_codes += 1
                return {"status": "verify_code_blocked" if qr.wrong_codes >= 3 else "need_verifycode"}
            qr.pos += 1
            return self._qr_step(qr, port, None)
        if verify_code is not None:
            self.violations.append("get_qrcode_status: verify_code sent when none was asked for")
        if advance:
            qr.pos += 1
        if step == "scaned_but_redirect":
            qr.redirect_required = True
            return {"status": step, "redirect_host": self.redirect_host}
        if step == "confirmed":
            return {"status": "confirmed", "bot_token": self.issue_token(), "ilink_bot_id": self.bot_id,
                    "baseurl": self.base_url, "ilink_user_id": self.scanner_id}  # fmt: skip
        return {"status": step}

    async def _get_qrcode_status(self, request: Request) -> Response:
        self.calls["get_qrcode_status"] += 1
        qr = self.qrs.get(request.query_params.get("qrcode", ""))
        if qr is None:
            return self._violation("get_qrcode_status: unknown qrcode")
        port = request.scope["server"][1]
        result = self._qr_step(qr, port, request.query_params.get("verify_code"))
        qr.polls.append((port, result["status"]))
        return JSONResponse({"ret": 0, **result})

    # ------------------------------------------------------------------ routes: bot
    async def _bot_call(self, request: Request, name: str) -> tuple[Any, JSONResponse | None]:
        self.calls[name] += 1
        body = await self._json(request)
        return body, self._check_common(request, body)

    async def _notify(self, request: Request) -> Response:
        name = request.url.path.rsplit("/", 1)[-1]
        _, error = await self._bot_call(request, name)
        return error or JSONResponse({"ret": 0})

    @staticmethod
    def _cursor(index: int) -> str:
        return base64.b64encode(f"fake-sync:{index}".encode()).decode()

    def _index(self, cursor: str) -> int:
        if not cursor:
            return 0
        try:
            text = base64.b64decode(cursor, validate=True).decode()
            return int(text.split(":", 1)[1]) if text.startswith("fake-sync:") else -1
        except (binascii.Error, ValueError, IndexError):
            return -1

    async def _getupdates(self, request: Request) -> Response:
        body, error = await self._bot_call(request, "getupdates")
        if error:
            return error
        if self.getupdates_failures > 0:
            self.getupdates_failures -= 1
            return Response(b"bad gateway", status_code=502)
        cursor = body.get("get_updates_buf")
        if not isinstance(cursor, str):
            return self._violation("getupdates: get_updates_buf (string) is required")
        self.cursors.append(cursor)
        index = self._index(cursor)
        if index < 0 or index > len(self._inbound):
            self.violations.append("getupdates: cursor was not issued by the server")
            index = 0
        if index == len(self._inbound) and self._arrived is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), self.hold_s)
        if self.session_expired:
            return JSONResponse({"ret": -14, "errcode": -14, "errmsg": "session timeout"})
        msgs = self._inbound[index:]
        return JSONResponse({"ret": 0, "msgs": msgs, "get_updates_buf": self._cursor(index + len(msgs)),
                             "longpolling_timeout_ms": int(self.hold_s * 1000)})  # fmt: skip

    def _check_media(self, media: Any, where: str) -> Upload | str:
        if not isinstance(media, dict):
            return f"{where}: media object missing"
        upload = self.uploads.get(str(media.get("encrypt_query_param") or ""))
        if upload is None:
            return f"{where}: encrypt_query_param is not an x-encrypted-param the CDN issued"
        if media.get("encrypt_type") != 1:
            return f"{where}: encrypt_type must be 1"
        try:
            key_text = base64.b64decode(str(media.get("aes_key") or ""), validate=True).decode("ascii")
        except (binascii.Error, ValueError):
            key_text = ""
        if not _HEX32.match(key_text) or bytes.fromhex(key_text) != upload.key:
            return f"{where}: aes_key must be base64 of the 32-hex-character key used for the upload"
        return upload

    def _check_item(self, item: Any) -> tuple[str, str, Upload | None] | str:
        if not isinstance(item, dict):
            return "item must be an object"
        kind = item.get("type")
        if kind == 1:
            text = (item.get("text_item") or {}).get("text")
            if not isinstance(text, str) or not text:
                return "text item without text"
            return "text", text, None
        if kind == 5:
            video = item.get("video_item") or {}
            upload = self._check_media(video.get("media"), "video_item")
            if isinstance(upload, str):
                return upload
            if upload.media_type != 2:
                return "video_item: the upload was not made with media_type 2"
            if video.get("video_size") != upload.cipher_size:
                return "video_item: video_size must be the ciphertext size"
            return "video", "", upload
        if kind == 2:
            image = item.get("image_item") or {}
            upload = self._check_media(image.get("media"), "image_item")
            if isinstance(upload, str):
                return upload
            return "image", "", upload
        return f"item type {kind!r} is not supported by this fake"

    async def _sendmessage(self, request: Request) -> Response:
        body, error = await self._bot_call(request, "sendmessage")
        if error:
            return error
        msg = body.get("msg")
        if not isinstance(msg, dict):
            return self._violation("sendmessage: msg object required")
        if msg.get("message_type") != 2 or msg.get("message_state") != 2:
            return self._violation("sendmessage: message_type and message_state must both be 2")
        user = str(msg.get("to_user_id") or "")
        client_id = str(msg.get("client_id") or "")
        if not user.endswith("@im.wechat") or not client_id:
            return self._violation("sendmessage: to_user_id (…@im.wechat) and client_id are required")
        if client_id in self._client_ids:
            return self._violation("sendmessage: client_id reused")
        items = msg.get("item_list")
        if not isinstance(items, list) or not items:
            return self._violation("sendmessage: item_list must be a non-empty list")
        checked = [self._check_item(item) for item in items]
        bad = [c for c in checked if isinstance(c, str)]
        if bad:
            return self._violation(f"sendmessage: {bad[0]}")
        kinds = [c[0] for c in checked if not isinstance(c, str)]
        self._client_ids.add(client_id)
        for index, (ret, kind) in enumerate(self.send_failures):
            if kind is None or kind in kinds:
                del self.send_failures[index]
                self.refused.append((user, kinds[0], f"forced ret {ret}"))
                return JSONResponse({"ret": ret, "errcode": ret if ret == -14 else None, "errmsg": ""})
        entry = self._users.get(user)
        token = msg.get("context_token")
        reason = None
        if entry is None or token != entry.token:
            reason = "context_token is not the latest one issued for this user"
        elif self.clock() - entry.issued_at > self.context_ttl_s:
            reason = "context_token older than the reply window"
        elif entry.sends >= self.quota:
            reason = f"more than {self.quota} sends for one inbound message"
        if reason:
            self.refused.append((user, kinds[0], reason))
            return JSONResponse({"ret": -2, "errmsg": ""})
        assert entry is not None
        entry.sends += 1
        for item, check in zip(items, checked, strict=True):
            assert not isinstance(check, str)
            kind, text, upload = check
            self.sent.append(SentItem(user=user, kind=kind, text=text, sha256=upload.sha256 if upload else "",
                                      size=len(upload.plaintext) if upload else 0, context_token=str(token),
                                      client_id=client_id, item=item))  # fmt: skip
        if self.send_delay_s:
            await asyncio.sleep(self.send_delay_s)
        return JSONResponse({"ret": 0, "errmsg": "", "message_id": self.new_message_id()})

    async def _getuploadurl(self, request: Request) -> Response:
        body, error = await self._bot_call(request, "getuploadurl")
        if error:
            return error
        try:
            filekey = str(body["filekey"])
            media_type = int(body["media_type"])
            to_user = str(body["to_user_id"])
            rawsize = body["rawsize"]
            md5 = str(body["rawfilemd5"])
            filesize = body["filesize"]
            aeskey = str(body["aeskey"])
        except (KeyError, TypeError, ValueError):
            return self._violation("getuploadurl: filekey, media_type, to_user_id, rawsize, rawfilemd5, "
                                   "filesize, aeskey are required")
        if media_type not in (1, 2, 3, 4) or not filekey or not to_user:
            return self._violation("getuploadurl: bad media_type, filekey or to_user_id")
        if not isinstance(rawsize, int) or not isinstance(filesize, int) or filesize != padded(rawsize):
            return self._violation("getuploadurl: filesize must be the PKCS#7-padded rawsize")
        if not _HEX32.match(md5) or not _HEX32.match(aeskey):
            return self._violation("getuploadurl: rawfilemd5 and aeskey must be 32 hex characters")
        if body.get("no_need_thumb") is not True:
            return self._violation("getuploadurl: no_need_thumb must be true (no thumbnail is uploaded)")
        param = f"up-{secrets.token_urlsafe(16)}"
        self._pending[param] = _PendingUpload(filekey, media_type, to_user, rawsize, md5.lower(), filesize,
                                              bytes.fromhex(aeskey))  # fmt: skip
        query = f"encrypted_query_param={quote(param, safe='')}&filekey={quote(filekey, safe='')}"
        if self.upload_mode == "upload_param":
            return JSONResponse({"ret": 0, "upload_param": param})
        return JSONResponse({"ret": 0, "upload_full_url": f"{self.cdn_base_url}/upload?{query}"})

    async def _getconfig(self, request: Request) -> Response:
        body, error = await self._bot_call(request, "getconfig")
        if error:
            return error
        if not body.get("ilink_user_id"):
            return self._violation("getconfig: ilink_user_id required")
        return JSONResponse({"ret": 0, "typing_ticket": base64.b64encode(secrets.token_bytes(12)).decode()})

    async def _sendtyping(self, request: Request) -> Response:
        body, error = await self._bot_call(request, "sendtyping")
        if error:
            return error
        if body.get("status") not in (1, 2) or not body.get("typing_ticket"):
            return self._violation("sendtyping: status 1|2 and typing_ticket required")
        return JSONResponse({"ret": 0})

    # ------------------------------------------------------------------ routes: CDN
    async def _cdn_upload(self, request: Request) -> Response:
        self.calls["cdn_upload"] += 1
        data = await request.body()
        if self.cdn_failures:
            status = self.cdn_failures.pop(0)
            return Response(b"", status_code=status, headers={"x-error-message": f"fake failure {status}"})
        param = request.query_params.get("encrypted_query_param", "")
        pending = self._pending.get(param)
        if pending is None:
            return Response(b"", status_code=400, headers={"x-error-message": "unknown encrypted_query_param"})
        if request.query_params.get("filekey") != pending.filekey:
            return Response(b"", status_code=400, headers={"x-error-message": "filekey mismatch"})
        if len(data) != pending.filesize:
            self.violations.append("cdn upload: body length differs from filesize")
            return Response(b"", status_code=400, headers={"x-error-message": "size mismatch"})
        try:
            plain = aes_decrypt(data, pending.key)
        except ValueError:
            self.violations.append("cdn upload: does not decrypt with the declared aeskey")
            return Response(b"", status_code=400, headers={"x-error-message": "decrypt failed"})
        if len(plain) != pending.rawsize or hashlib.md5(plain).hexdigest() != pending.rawfilemd5:
            self.violations.append("cdn upload: plaintext size or MD5 differs from getuploadurl")
            return Response(b"", status_code=400, headers={"x-error-message": "md5 mismatch"})
        del self._pending[param]
        download = f"dl-{secrets.token_urlsafe(24)}"
        self.uploads[download] = Upload(param=download, media_type=pending.media_type, plaintext=plain,
                                        sha256=hashlib.sha256(plain).hexdigest(), cipher_size=len(data),
                                        key=pending.key)  # fmt: skip
        headers = {} if self.hide_encrypted_param else {"x-encrypted-param": download}
        return Response(b"", status_code=200, headers=headers)

    async def _cdn_download(self, request: Request) -> Response:
        self.calls["cdn_download"] += 1
        data = self._downloads.get(request.query_params.get("encrypted_query_param", ""))
        if data is None:
            return Response(b"", status_code=404)
        return Response(data, media_type="application/octet-stream")

    def _app(self) -> Starlette:
        routes = [
            Route("/ilink/bot/get_bot_qrcode", self._get_bot_qrcode, methods=["GET", "POST"]),
            Route("/ilink/bot/get_qrcode_status", self._get_qrcode_status, methods=["GET"]),
            Route("/ilink/bot/getupdates", self._getupdates, methods=["POST"]),
            Route("/ilink/bot/sendmessage", self._sendmessage, methods=["POST"]),
            Route("/ilink/bot/getuploadurl", self._getuploadurl, methods=["POST"]),
            Route("/ilink/bot/getconfig", self._getconfig, methods=["POST"]),
            Route("/ilink/bot/sendtyping", self._sendtyping, methods=["POST"]),
            Route("/ilink/bot/msg/notifystart", self._notify, methods=["POST"]),
            Route("/ilink/bot/msg/notifystop", self._notify, methods=["POST"]),
            Route("/c2c/upload", self._cdn_upload, methods=["POST"]),
            Route("/c2c/download", self._cdn_download, methods=["GET"]),
        ]
        return Starlette(routes=routes)
