"""`WecomChannel`: the `bot.channel.Channel` adapter for the WeCom AI bot (企业微信智能机器人) over its
WebSocket long connection (`/work/shared/research/channels-2026.md` §2).

* Connection. One socket per bot: connect, `aibot_subscribe {bot_id, secret}`, heartbeat `ping` every
  `heartbeat_s` (dead after `heartbeat_misses` unanswered), reconnect with capped exponential backoff
  plus jitter. A subscribe refused on the first connection makes `start()` raise `ChannelStartError`
  (bad Bot ID / Secret: never retried in a loop). When the server tells us another connection took
  over (`disconnected_event`) the channel stops for good and alerts the operator: two instances that
  kept reconnecting would kick each other forever.
* Messages in. `aibot_msg_callback` → `Message` with `wecom:`-qualified ids: text (group texts lose the
  leading `@bot` and are always `mentions_bot`, since WeCom only forwards @-messages), voice (the
  server's transcript), image / mixed / a quoted image (→ `message.image`, fetched and AES-256-CBC
  decrypted by `fetch_image`). Each callback's req_id is remembered (bounded, timestamped) so replies
  can be passive; msgids are de-duplicated.
* Messages out. Texts answer through `aibot_respond_msg` (a one-frame stream with `finish: true`) while
  the request's req_id is fresh, else proactively with `aibot_send_msg` (markdown). Videos are made to
  fit (re-encoded above `max_inline_video_bytes`, sent as a file when nothing fits), uploaded in chunks
  over the socket, sent as `msgtype: video`, then the caption follows as text. Each job's progress
  (uploaded / video sent / caption sent) is kept per `meta["job_id"]`, so a retry never sends the same
  video twice. A failure after the video frame was written but before its ack is reported as
  `DeliveryError(maybe_delivered=True)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bot.channel import (
    ChannelCapabilities,
    ChannelStartError,
    DeliveryError,
    ImageFetchError,
    MessageHandler,
)
from bot.channels.ids import local_part, qualify
from bot.channels.wecom import crypto, media
from bot.channels.wecom.protocol import (
    CMD_EVENT_CALLBACK,
    CMD_MSG_CALLBACK,
    CMD_PING,
    CMD_RESPOND,
    CMD_SEND,
    CMD_SUBSCRIBE,
    ERR_BUSY,
    AckError,
    AckTimeout,
    ConnectionLost,
    ProtocolError,
    WecomConnection,
    frame_req_id,
    open_socket,
)
from bot.channels.wecom.settings import SECRET_ENV, WecomSettings, read_secret
from bot.channels.wecom.upload import UploadError, upload_media
from bot.messages import ChatKind, ImageRef, Message, OutgoingText, OutgoingVideo

log = logging.getLogger(__name__)

CHANNEL = "wecom"
STREAM_MAX_BYTES = 20480  # stream / markdown content cap (UTF-8 bytes)
CHAT_TYPE_SINGLE, CHAT_TYPE_GROUP = 1, 2
_MAX_JOBS = 2000
_MAX_CHATS = 20000

ALERT_KICKED = (
    "企业微信机器人连接被另一个进程接管（同一个 Bot ID 只能保持一个长连接），小爱已停止企业微信通道。"
    "请关闭另一个实例后重启小爱。/ WeCom bot: another process took over the long connection; "
    "the wecom channel has stopped."
)
ALERT_REFUSED = (
    "企业微信拒绝了机器人订阅（Bot ID 或 Secret 可能已被重置），小爱已停止企业微信通道。"
    f"请检查 channels.wecom.bot_id 和环境变量 {SECRET_ENV} 后重启。/ WeCom refused the bot's subscription; "
    "the wecom channel has stopped."
)


class _AuthRefused(Exception):
    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"subscribe refused: errcode={errcode} errmsg={errmsg}")
        self.errcode, self.errmsg = errcode, errmsg


@dataclass(slots=True)
class _Session:
    conn: WecomConnection
    reader: asyncio.Task[None]


@dataclass(slots=True)
class _JobState:
    """Progress of one video job inside this process (idempotency on `meta["job_id"]`)."""

    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    media: tuple[str, str] | None = None  # (msgtype, media_id) once uploaded
    video_sent: bool = False
    video_maybe: bool = False  # the frame went out, the ack never came
    caption_sent: bool = False


@dataclass(frozen=True, slots=True)
class _ImageSource:
    url: str
    aeskey: str


def strip_bot_mention(text: str, bot_name: str) -> str:
    """Drop the `@bot` of a group text: `@<bot_name>` followed by whitespace (first occurrence), or,
    when the name is not found (the bot's WeCom display name differs), a leading `@token`."""
    text = text.strip()
    if bot_name:
        pattern = re.compile(r"(^|\s)@" + re.escape(bot_name) + r"(?:\s+|$)")
        new, count = pattern.subn(lambda m: m.group(1), text, count=1)
        if count:
            return new.strip()
    match = re.match(r"@\S+(?:\s+|$)", text)
    return text[match.end() :].strip() if match else text


def clip_utf8(text: str, limit: int = STREAM_MAX_BYTES) -> str:
    """`text` cut to at most `limit` UTF-8 bytes without splitting a character."""
    data = text.encode("utf-8")
    return text if len(data) <= limit else data[:limit].decode("utf-8", errors="ignore")


def _host(url: str) -> str:
    """Only the host of a media URL goes to the logs (the query may carry signatures)."""
    return urlsplit(url).netloc or "?"


def _image_of(part: Any) -> _ImageSource | None:
    """The first image of a message part: `{msgtype: image, image: {url, aeskey}}` or a mixed list."""
    if not isinstance(part, dict):
        return None
    image = part.get("image")
    if isinstance(image, dict) and image.get("url") and image.get("aeskey"):
        return _ImageSource(str(image["url"]), str(image["aeskey"]))
    mixed = part.get("mixed")
    items = mixed.get("msg_item") if isinstance(mixed, dict) else None
    for item in items if isinstance(items, list) else ():
        found = _image_of(item)
        if found is not None:
            return found
    return None


def _texts_of(body: dict[str, Any]) -> str:
    msgtype = body.get("msgtype")
    if msgtype in ("text", "voice"):
        part = body.get(msgtype)
        return str(part.get("content") or "") if isinstance(part, dict) else ""
    if msgtype == "mixed":
        mixed = body.get("mixed")
        items = mixed.get("msg_item") if isinstance(mixed, dict) else None
        texts = [
            str((item.get("text") or {}).get("content") or "")
            for item in (items if isinstance(items, list) else ())
            if isinstance(item, dict) and item.get("msgtype") == "text" and isinstance(item.get("text"), dict)
        ]
        return "\n".join(t for t in texts if t)
    return ""


class WecomChannel:
    """`bot.channel.Channel` for the WeCom AI bot long connection; see the module docstring."""

    name = CHANNEL

    def __init__(
        self,
        settings: WecomSettings,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        bot_name: str | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        http_factory: Callable[[], httpx.AsyncClient] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._settings = settings
        self._secret = read_secret(environ)
        self._clock = clock
        self._sleep = sleep
        self._bot_name = (settings.bot_name or bot_name or "").strip()
        self._http_factory = http_factory or self._default_http
        self._rng = rng or random.Random()
        self.capabilities = ChannelCapabilities(
            groups=True, mentions=True, proactive=True, quotes=True,
            max_inline_video_bytes=settings.max_inline_video_bytes,
        )  # fmt: skip
        self.on_alert: Callable[[str], Awaitable[None]] | None = None

        self._on_message: MessageHandler | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._ready = asyncio.Event()
        self._halted: str | None = None  # why the channel stopped for good ("kicked", "refused", "stopped")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._sessions = 0

        self._seen: OrderedDict[str, float] = OrderedDict()  # platform msgid → first seen (clock)
        self._replies: OrderedDict[str, tuple[str, float]] = OrderedDict()  # qualified msg id → (req_id, t)
        self._images: OrderedDict[str, _ImageSource] = OrderedDict()  # image_id → where to fetch it
        self._chat_types: OrderedDict[str, int] = OrderedDict()  # platform chat id → 1 single / 2 group
        self._jobs: OrderedDict[str, _JobState] = OrderedDict()

        # Observability (health checks and tests).
        self.last_error: str | None = None
        self.heartbeats_acked = 0
        self.subscribes = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str] | None = None, **kwargs: Any) -> WecomChannel:
        """Build from the root `Settings` (`channels.wecom`, `bot.name`) or from a `WecomSettings`."""
        if isinstance(settings, WecomSettings):
            return cls(settings, environ=environ, **kwargs)
        section = settings.channels.wecom
        name = getattr(getattr(settings, "bot", None), "name", None)
        kwargs.setdefault("bot_name", name)
        return cls(section, environ=environ, **kwargs)

    def _default_http(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(timeout=self._settings.image_timeout_s, follow_redirects=True)

    def __repr__(self) -> str:  # never show the secret
        return f"WecomChannel(bot_id={self._settings.bot_id!r}, connected={self.connected})"

    # ------------------------------------------------------------------ Channel protocol
    @property
    def bot_id(self) -> str:
        return qualify(CHANNEL, self._settings.bot_id)

    @property
    def connected(self) -> bool:
        session = self._session
        return self._halted is None and session is not None and not session.conn.closed and self._ready.is_set()

    @property
    def halted(self) -> str | None:
        """Why the channel stopped for good (`kicked`, `refused`, `stopped`), None while it runs."""
        return self._halted

    async def start(self, on_message: MessageHandler) -> None:
        """Subscribe once (refusal → ChannelStartError) and keep the connection up in the background.
        An unreachable server at start is not fatal: the supervisor keeps retrying."""
        if self._supervisor is not None and not self._supervisor.done():
            return
        if not self._settings.bot_id.strip():
            raise ChannelStartError(
                "企业微信机器人未配置 Bot ID：请设置 channels.wecom.bot_id（或 XIAOAI__CHANNELS__WECOM__BOT_ID）。"
                " / WeCom bot: channels.wecom.bot_id is empty."
            )
        if not self._secret:
            raise ChannelStartError(
                f"企业微信机器人缺少 Secret：请设置环境变量 {SECRET_ENV}。"
                f" / WeCom bot: set the long-connection Secret in the environment variable {SECRET_ENV}."
            )
        self._on_message = on_message
        self._halted = None
        session: _Session | None = None
        try:
            session = await self._open_session()
        except _AuthRefused as exc:
            self.last_error = str(exc)
            log.error("wecom: subscription refused at start (errcode=%s); not retrying", exc.errcode)
            raise ChannelStartError(
                f"企业微信拒绝了机器人订阅（Bot ID 或 {SECRET_ENV} 错误，errcode={exc.errcode}）。"
                f" / WeCom refused the subscription (wrong Bot ID or Secret, errcode={exc.errcode}: {exc.errmsg})."
            ) from None
        except (OSError, TimeoutError, ProtocolError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("wecom: cannot connect to %s at start (%s); retrying in the background",
                        _host(self._settings.ws_url), self.last_error)  # fmt: skip
        self._supervisor = asyncio.create_task(self._supervise(session), name="wecom-supervisor")

    async def stop(self) -> None:
        if self._halted is None:
            self._halted = "stopped"
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._close_session()
        for pending in list(self._tasks):
            pending.cancel()
        for pending in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pending
        self._ready.clear()

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            return False
        return self.connected

    # ------------------------------------------------------------------ connection
    async def _open_session(self) -> _Session:
        """Connect and subscribe. Raises _AuthRefused, OSError/TimeoutError or ProtocolError."""
        ws = await open_socket(self._settings.ws_url, open_timeout=self._settings.connect_timeout_s)
        self._sessions += 1
        conn = WecomConnection(ws, ack_timeout_s=self._settings.ack_timeout_s, number=self._sessions)

        async def on_command(frame: dict[str, Any]) -> None:
            await self._on_command(conn, frame)

        reader = asyncio.create_task(conn.run(on_command), name=f"wecom-reader-{conn.number}")
        try:
            await conn.request(CMD_SUBSCRIBE, {"bot_id": self._settings.bot_id, "secret": self._secret})
        except AckError as exc:
            await conn.close("subscribe refused")
            await reader
            raise _AuthRefused(exc.errcode, exc.errmsg) from None
        except BaseException:
            await conn.close("subscribe failed")
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader
            raise
        self.subscribes += 1
        log.info("wecom: connection %d subscribed as bot %s", conn.number, self._settings.bot_id)
        return _Session(conn, reader)

    def _backoff(self, delay: float) -> float:
        """`delay` with ±20 % jitter, never above `reconnect_max_s`."""
        return min(self._settings.reconnect_max_s, delay * self._rng.uniform(0.8, 1.2))

    async def _supervise(self, session: _Session | None) -> None:
        settings = self._settings
        delay = settings.reconnect_initial_s
        refusals = 0
        try:
            while self._halted is None:
                if session is None:
                    try:
                        session = await self._open_session()
                        refusals = 0
                    except _AuthRefused as exc:
                        refusals += 1
                        self.last_error = str(exc)
                        log.warning("wecom: subscription refused on reconnect (errcode=%s, %d/%d)",
                                    exc.errcode, refusals, settings.auth_retries + 1)  # fmt: skip
                        if refusals > settings.auth_retries:
                            self._halt("refused", ALERT_REFUSED)
                            return
                    except (OSError, TimeoutError, ProtocolError) as exc:
                        self.last_error = f"{type(exc).__name__}: {exc}"
                        log.warning("wecom: connect failed (%s)", self.last_error)
                    if session is None:
                        wait = self._backoff(delay)
                        log.info("wecom: reconnecting in %.2fs", wait)
                        await self._sleep(wait)
                        delay = min(delay * 2, settings.reconnect_max_s)
                        continue
                delay = settings.reconnect_initial_s
                await self._run_session(session)
                session = None
                if self._halted is not None:
                    return
                wait = self._backoff(delay)
                log.warning("wecom: connection lost (%s); reconnecting in %.2fs", self.last_error or "-", wait)
                await self._sleep(wait)
                delay = min(delay * 2, settings.reconnect_max_s)
        finally:
            if session is not None and self._session is not session:
                await session.conn.close("supervisor ended")

    async def _run_session(self, session: _Session) -> None:
        """Serve one subscribed connection until it closes."""
        self._session = session
        self._ready.set()
        heartbeat = asyncio.create_task(self._heartbeat(session.conn), name=f"wecom-heartbeat-{session.conn.number}")
        try:
            await asyncio.shield(session.reader)
        finally:
            self._ready.clear()
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._close_session()
        self.last_error = f"connection {session.conn.number} {session.conn.close_reason}"

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        self._ready.clear()
        if session is None:
            return
        await session.conn.close("closed by us")
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(session.reader, 5.0)

    async def _heartbeat(self, conn: WecomConnection) -> None:
        misses = 0
        while not conn.closed:
            await self._sleep(self._settings.heartbeat_s)
            try:
                await conn.request(CMD_PING)
            except ConnectionLost:
                return
            except (AckTimeout, AckError) as exc:
                misses += 1
                log.warning("wecom: heartbeat %d/%d missed (%s)", misses, self._settings.heartbeat_misses, exc)
                if misses >= self._settings.heartbeat_misses:
                    log.warning("wecom: connection %d declared dead after missed heartbeats", conn.number)
                    await conn.close("heartbeat lost")
                    return
                continue
            misses = 0
            self.heartbeats_acked += 1

    def _halt(self, reason: str, alert: str) -> None:
        """Stop for good (no reconnects) and tell the operator once."""
        if self._halted is not None:
            return
        self._halted = reason
        self._ready.clear()
        log.error("wecom: channel stopped (%s): %s", reason, alert)
        self._spawn(self._alert(alert), "wecom-alert")

    async def _alert(self, text: str) -> None:
        callback = self.on_alert
        if callback is None:
            return
        try:
            await callback(text)
        except Exception:
            log.exception("wecom: on_alert failed")

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ------------------------------------------------------------------ inbound
    async def _on_command(self, conn: WecomConnection, frame: dict[str, Any]) -> None:
        cmd = frame.get("cmd")
        body = frame.get("body") if isinstance(frame.get("body"), dict) else {}
        if cmd == CMD_MSG_CALLBACK:
            self._on_msg_callback(frame_req_id(frame), body)
        elif cmd == CMD_EVENT_CALLBACK:
            event = body.get("event") if isinstance(body.get("event"), dict) else {}
            eventtype = event.get("eventtype")
            if eventtype == "disconnected_event":
                self._halt("kicked", ALERT_KICKED)
                await conn.close("taken over by another connection")
            else:
                log.debug("wecom: event %s ignored", eventtype)
        else:
            log.debug("wecom: command %s ignored", cmd)

    def _on_msg_callback(self, req_id: str, body: dict[str, Any]) -> None:
        msgid = str(body.get("msgid") or "")
        if not msgid:
            log.warning("wecom: callback without msgid ignored (req_id=%s)", req_id)
            return
        now = self._clock()
        if self._is_duplicate(msgid, now):
            log.info("wecom: duplicate msgid ignored", extra={"message_id": qualify(CHANNEL, msgid)})
            return
        message = self._to_message(body, now)
        if message is None:
            return
        if req_id:
            self._remember(self._replies, message.message_id, (req_id, now), self._settings.dedup_size)
        extra = {"chat_id": message.chat_id, "user_id": message.sender_id, "message_id": message.message_id}
        log.info("wecom: message in (%s, %s, %d chars, image=%s)", message.kind.value, body.get("msgtype"),
                 len(message.text), message.image is not None, extra=extra)  # fmt: skip
        handler = self._on_message
        if handler is not None:
            self._spawn(self._deliver_inbound(handler, message, extra), f"wecom-in-{msgid}")

    async def _deliver_inbound(self, handler: MessageHandler, message: Message, extra: dict[str, str]) -> None:
        try:
            await handler(message)
        except Exception:
            log.exception("wecom: message handler failed", extra=extra)

    def _is_duplicate(self, msgid: str, now: float) -> bool:
        ttl = self._settings.dedup_ttl_s
        while self._seen:
            oldest, seen_at = next(iter(self._seen.items()))
            if now - seen_at <= ttl and len(self._seen) < self._settings.dedup_size:
                break
            self._seen.pop(oldest)
        if msgid in self._seen:
            return True
        self._seen[msgid] = now
        return False

    @staticmethod
    def _remember(store: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
        store[key] = value
        store.move_to_end(key)
        while len(store) > limit:
            store.popitem(last=False)

    def _to_message(self, body: dict[str, Any], now: float) -> Message | None:
        msgid = str(body["msgid"])
        sender = body.get("from") if isinstance(body.get("from"), dict) else {}
        userid = str(sender.get("userid") or "")
        if not userid:
            log.warning("wecom: callback without from.userid ignored", extra={"message_id": qualify(CHANNEL, msgid)})
            return None
        group = body.get("chattype") == "group"
        sender_id = qualify(CHANNEL, userid)
        if group:
            chatid = str(body.get("chatid") or "")
            if not chatid:
                log.warning("wecom: group callback without chatid ignored", extra={"message_id": qualify(CHANNEL, msgid)})
                return None
            chat_id, kind = qualify(CHANNEL, chatid), ChatKind.GROUP
            self._remember(self._chat_types, chatid, CHAT_TYPE_GROUP, _MAX_CHATS)
        else:
            chat_id, kind = sender_id, ChatKind.PRIVATE
            self._remember(self._chat_types, userid, CHAT_TYPE_SINGLE, _MAX_CHATS)

        text = _texts_of(body)
        if group:
            text = strip_bot_mention(text, self._bot_name)
        source = _image_of(body) if body.get("msgtype") in ("image", "mixed") else None
        if source is None:
            source = _image_of(body.get("quote"))  # a quoted image makes `/视频` image-to-video
        image = None
        if source is not None:
            image_id = f"img-{msgid}"
            self._remember(self._images, image_id, source, self._settings.dedup_size)
            image = ImageRef(image_id)
        created = body.get("create_time")
        timestamp = float(created) if isinstance(created, int | float) and created > 0 else now
        if timestamp > 1e12:  # milliseconds
            timestamp /= 1000.0
        return Message(
            message_id=qualify(CHANNEL, msgid), chat_id=chat_id, kind=kind, sender_id=sender_id,
            sender_name=userid, text=text, mentions_bot=group, image=image, timestamp=timestamp,
        )  # fmt: skip

    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        """Download the message's (or quoted) image and decrypt it (AES-256-CBC with its aeskey)."""
        ref = message.image
        if ref is None:
            raise ImageFetchError("message has no image")
        source = self._images.get(ref.image_id)
        if source is None:
            raise ImageFetchError("图片已过期或未知（重启后需要重新发送） / image reference unknown or expired")
        blob = await self._download(source.url, limit=max_bytes + crypto.PAD_BLOCK, extra={"message_id": message.message_id})
        try:
            plain = crypto.decrypt(blob, source.aeskey)
        except crypto.MediaDecryptError as exc:
            raise ImageFetchError(f"image could not be decrypted: {exc}") from None
        if len(plain) > max_bytes:
            raise ValueError(f"image is {len(plain)} bytes, limit {max_bytes}")
        return plain

    async def _download(self, url: str, *, limit: int, extra: dict[str, str]) -> bytes:
        delay = 0.3
        attempts = self._settings.image_retries + 1
        last = ""
        async with self._http_factory() as client:
            for attempt in range(attempts):
                try:
                    async with client.stream("GET", url) as resp:
                        if resp.status_code >= 500:
                            last = f"HTTP {resp.status_code}"
                        elif resp.status_code != 200:
                            raise ImageFetchError(f"image download from {_host(url)} failed: HTTP {resp.status_code}")
                        else:
                            declared = resp.headers.get("content-length")
                            if declared and declared.isdigit() and int(declared) > limit:
                                raise ValueError(f"image is {declared} bytes, limit {limit}")
                            data = bytearray()
                            async for piece in resp.aiter_bytes():
                                data += piece
                                if len(data) > limit:
                                    raise ValueError(f"image exceeds {limit} bytes")
                            return bytes(data)
                except httpx.HTTPError as exc:
                    last = f"{type(exc).__name__}"
                if attempt + 1 < attempts:
                    log.warning("wecom: image download from %s failed (%s), retrying", _host(url), last, extra=extra)
                    await self._sleep(delay)
                    delay *= 2
        raise ImageFetchError(f"image download from {_host(url)} failed: {last}")

    # ------------------------------------------------------------------ outbound helpers
    async def _connection(self) -> WecomConnection:
        """The live connection, waiting up to `send_wait_s` for a reconnect; DeliveryError otherwise."""
        if self._halted is not None:
            raise DeliveryError(f"企业微信通道已停止（{self._halted}） / wecom channel stopped ({self._halted})")
        if not self.connected:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._ready.wait(), self._settings.send_wait_s)
        session = self._session
        if self._halted is not None or session is None or session.conn.closed or not self._ready.is_set():
            raise DeliveryError("企业微信未连接 / wecom not connected", maybe_delivered=False)
        return session.conn

    async def _command(self, cmd: str, body: dict[str, Any], *, req_id: str | None = None) -> dict[str, Any]:
        """One command with in-adapter retries for what certainly did not arrive (busy errcode 6000,
        socket gone before the frame was written). Other ProtocolErrors propagate."""
        delay = self._settings.send_retry_initial_s
        for attempt in range(self._settings.send_retries + 1):
            conn = await self._connection()
            try:
                return await conn.request(cmd, body, req_id=req_id)
            except AckError as exc:
                if exc.errcode != ERR_BUSY or attempt >= self._settings.send_retries:
                    raise
            except ConnectionLost as exc:
                if exc.written or attempt >= self._settings.send_retries:
                    raise
            log.info("wecom: %s not accepted yet, retrying in %.2fs", cmd, delay)
            await self._sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _fresh_req_id(self, reply_to: str | None) -> str | None:
        if not reply_to:
            return None
        entry = self._replies.get(reply_to)
        if entry is None:
            return None
        req_id, at = entry
        return req_id if self._clock() - at < self._settings.reply_window_s else None

    def _send_body(self, chatid: str, payload: dict[str, Any]) -> dict[str, Any]:
        body: dict[str, Any] = {"chatid": chatid}
        chat_type = self._chat_types.get(chatid)
        if chat_type is not None:  # learned from traffic; the official SDK sends none, so unknown is fine
            body["chat_type"] = chat_type
        body.update(payload)
        return body

    async def _reply_or_send(
        self, chatid: str, reply_to: str | None, respond: dict[str, Any], proactive: dict[str, Any],
        extra: dict[str, str],
    ) -> None:  # fmt: skip
        """Passive reply on the request's req_id while fresh; proactive send otherwise, or when the
        server refuses the passive reply (a refusal means nothing was delivered)."""
        req_id = self._fresh_req_id(reply_to)
        if req_id is not None:
            try:
                await self._command(CMD_RESPOND, respond, req_id=req_id)
                return
            except AckError as exc:
                log.warning("wecom: passive reply refused (%s); sending proactively", exc, extra=extra)
                if reply_to:
                    self._replies.pop(reply_to, None)
        await self._command(CMD_SEND, self._send_body(chatid, proactive))

    def _with_mentions(self, chatid: str, text: str, mention_ids: tuple[str, ...]) -> str:
        """`@userid` text mentions in front (WeCom's markdown `<@userid>` is not in our notes, so plain
        text; callbacks carry no display names)."""
        if not mention_ids or self._chat_types.get(chatid) == CHAT_TYPE_SINGLE:
            return text
        names = [local_part(CHANNEL, m) for m in mention_ids]
        return " ".join(f"@{n}" for n in names) + (" " + text if text else "")

    @staticmethod
    def _failure(what: str, exc: Exception) -> DeliveryError:
        if isinstance(exc, AckError):
            return DeliveryError(f"wecom {what} refused: {exc}", maybe_delivered=False)
        if isinstance(exc, ConnectionLost) and not exc.written:
            return DeliveryError(f"wecom {what} not sent: {exc}", maybe_delivered=False)
        return DeliveryError(f"wecom {what} may have been delivered: {exc}", maybe_delivered=True)

    async def _send_markdown(self, chatid: str, text: str, reply_to: str | None, extra: dict[str, str]) -> None:
        content = clip_utf8(text)
        respond = {"msgtype": "stream", "stream": {"id": f"stream_{uuid.uuid4().hex}", "finish": True, "content": content}}
        proactive = {"msgtype": "markdown", "markdown": {"content": content}}
        await self._reply_or_send(chatid, reply_to, respond, proactive, extra)

    # ------------------------------------------------------------------ outbound
    async def send_text(self, out: OutgoingText) -> None:
        chatid = local_part(CHANNEL, out.chat_id)
        extra = {"chat_id": out.chat_id, "message_id": out.reply_to or ""}
        text = self._with_mentions(chatid, out.text, out.mention_ids)
        try:
            await self._send_markdown(chatid, text, out.reply_to, extra)
        except ProtocolError as exc:
            raise self._failure("text", exc) from None

    async def send_video(self, out: OutgoingVideo) -> None:
        chatid = local_part(CHANNEL, out.chat_id)
        job_id = out.meta.get("job_id", "")
        extra = {"chat_id": out.chat_id, "job_id": job_id, "message_id": out.reply_to or ""}
        state = self._jobs.get(job_id) if job_id else None
        if state is None:
            state = _JobState()
            if job_id:
                self._remember(self._jobs, job_id, state, _MAX_JOBS)
        async with state.lock:
            if state.video_maybe and not state.video_sent:
                raise DeliveryError("wecom video may already have been delivered; not sending it again",
                                    maybe_delivered=True)  # fmt: skip
            if not state.video_sent:
                await self._send_video_once(chatid, out, state, extra)
            caption = self._with_mentions(chatid, out.caption, out.mention_ids).strip()
            if caption and not state.caption_sent:
                try:
                    await self._send_markdown(chatid, caption, out.reply_to, extra)
                except ProtocolError as exc:
                    raise self._failure("caption (the video was delivered)", exc) from None
                state.caption_sent = True
        log.info("wecom: video job delivered", extra=extra)

    async def _send_video_once(self, chatid: str, out: OutgoingVideo, state: _JobState, extra: dict[str, str]) -> None:
        if state.media is None:
            msgtype, data, filename = await asyncio.to_thread(self._prepare_video, Path(out.video_path))
            conn = await self._connection()
            try:
                result = await upload_media(
                    conn, data, media_type=msgtype, filename=filename, chunk_bytes=self._settings.chunk_bytes,
                    retries=self._settings.upload_retries, retry_initial_s=self._settings.upload_retry_initial_s,
                    sleep=self._sleep,
                )  # fmt: skip
            except ConnectionLost as exc:
                log.warning("wecom: connection lost during the upload (%s)", exc, extra=extra)
                raise DeliveryError(f"wecom upload interrupted: {exc}", maybe_delivered=False) from None
            except UploadError as exc:
                log.warning("wecom: upload failed (%s)", exc, extra=extra)
                raise DeliveryError(f"wecom upload failed: {exc}", maybe_delivered=False) from None
            state.media = (msgtype, result.media_id)
        msgtype, media_id = state.media
        payload = {"msgtype": msgtype, msgtype: {"media_id": media_id}}
        try:
            await self._reply_or_send(chatid, out.reply_to, payload, payload, extra)
        except ProtocolError as exc:
            failure = self._failure(msgtype, exc)
            state.video_maybe = failure.maybe_delivered
            log.warning("wecom: %s send failed (%s, maybe_delivered=%s)", msgtype, exc, failure.maybe_delivered,
                        extra=extra)  # fmt: skip
            raise failure from None
        state.video_sent = True

    def _prepare_video(self, src: Path) -> tuple[str, bytes, str]:
        """(msgtype, bytes, filename) to upload: the file itself when it plays inline, else a re-encode
        within the budget, else a file (WeCom plays videos ≤ 10 MB inline; files may be ≤ 20 MB)."""
        settings = self._settings
        try:
            size = src.stat().st_size
        except OSError as exc:
            raise DeliveryError(f"video file unreadable: {exc}") from None
        if size <= settings.max_inline_video_bytes:
            return "video", src.read_bytes(), src.name
        budget = min(settings.video_budget_bytes, settings.max_inline_video_bytes)
        with tempfile.TemporaryDirectory(prefix="xiaoai-wecom-") as tmp:
            try:
                fitted = media.fit_video(
                    src, Path(tmp), budget_bytes=budget, crf_min=settings.reencode_crf_min,
                    crf_max=settings.reencode_crf_max, min_height=settings.reencode_min_height,
                    preset=settings.reencode_preset,
                )  # fmt: skip
            except media.ReencodeError as exc:
                log.warning("wecom: re-encode failed (%s)", exc)
                fitted = None
            if fitted is not None and fitted.path is not None:
                log.info("wecom: video re-encoded %d -> %d bytes (crf %s, scale %.3g)", size, fitted.size,
                         fitted.crf, fitted.scale)  # fmt: skip
                return "video", fitted.path.read_bytes(), src.name
        if size <= settings.max_file_bytes:
            log.info("wecom: video of %d bytes does not fit %d even re-encoded; sending it as a file", size, budget)
            return "file", src.read_bytes(), src.name
        raise DeliveryError(f"video too large for WeCom ({size} bytes; files <= {settings.max_file_bytes})")
