"""WeChat through python-wechaty: the `bot.channel.Channel` adapter around `wechaty.Wechaty`.

What it does beyond wrapping the client (numbers refer to the pitfalls in
`/work/shared/research/wechaty.md` §4):

* Supervision. `Wechaty.start()` is never called: it sleeps a hard-coded 60 s on network errors
  (#3), swallows other exceptions (#6) and calls `loop.stop()` on an unreachable endpoint (#5),
  which would kill the job queue running in the same loop. We run the same three steps ourselves
  (`init_puppet`, `init_puppet_event_bridge`, `puppet.start()`) inside a supervisor task that probes
  the endpoint first, treats both a broken and a cleanly ended event stream (#4) as a disconnect,
  rebuilds a fresh bot each time and reconnects with exponential backoff, logging every state
  change. Nothing it does can stop the event loop.
* Isolation. Each connection gets its own `AsyncIOScheduler` (shut down afterwards), the plugin
  manager is bound to 127.0.0.1 on a free port (#10, #11), wechaty's global contact/room caches are
  cleared on every reconnect (#9), the endpoint is always explicit so the public discovery service is
  never called (#17), and generic `TOKEN`/`ENDPOINT` variables are ignored (`compat`).
* Messages in: converted to `bot.messages.Message`; @-the-bot is detected from the protocol's
  mention ids (or an `@<bot name>` in the text) and stripped; exceptions in our handler are caught
  and logged with ids (#7); images are fetched with our own FileBox reader, through the `Download`
  stream for UUID boxes (#14).
* Messages out: texts go straight to `MessageSendText` with the mention ids and an `@name` prefix;
  videos go through `media` (budget, H.264/yuv420p/faststart, cover) and then inline or via
  the `Upload` stream (#15), with a file fallback. We never call `say()`, whose follow-up
  `MessagePayload` raises after delivery (#13); a send that failed after the request may have
  reached the puppet raises `DeliveryError(maybe_delivered=True)` and is never retried blindly.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import re
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpclib.const
from grpclib.exceptions import GRPCError, StreamTerminatedError

from bot.channel import DeliveryError, ImageFetchError, MessageHandler
from bot.channels.wechaty import grpc_media
from bot.channels.wechaty import media as wechat_media
from bot.channels.wechaty.compat import load_wechaty, reset_wechaty_globals
from bot.channels.wechaty.settings import ENDPOINT_ENV, TOKEN_ENV, PuppetConnection, WechatySettings
from bot.messages import ChatKind, ImageRef, Message, OutgoingText, OutgoingVideo
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

MENTION_SEPARATOR = "\u2005"  # what WeChat puts after an @name
IMAGE_TYPE_HD = 2

# gRPC statuses after which the puppet certainly did not deliver (safe to retry or fall back).
_CERTAIN_FAILURES = {
    grpclib.const.Status.UNAVAILABLE,
    grpclib.const.Status.RESOURCE_EXHAUSTED,
    grpclib.const.Status.INVALID_ARGUMENT,
    grpclib.const.Status.UNIMPLEMENTED,
    grpclib.const.Status.UNAUTHENTICATED,
    grpclib.const.Status.PERMISSION_DENIED,
    grpclib.const.Status.NOT_FOUND,
    grpclib.const.Status.FAILED_PRECONDITION,
}
# Statuses where sending as a video will not work but sending the same bytes as a file may.
_VIDEO_REFUSED = {
    grpclib.const.Status.INVALID_ARGUMENT,
    grpclib.const.Status.UNIMPLEMENTED,
    grpclib.const.Status.FAILED_PRECONDITION,
}


class ChannelConfigError(RuntimeError):
    """The channel cannot be configured (no endpoint). The message says how to fix it."""


class ConnState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    WAITING_LOGIN = "waiting_login"  # event stream open, account not logged in yet
    CONNECTED = "connected"  # logged in: messages flow, sends allowed
    BACKOFF = "backoff"
    STOPPED = "stopped"


class _SendFailed(Exception):
    """A send failed; `maybe_delivered` tells whether the puppet may have delivered it anyway."""

    def __init__(self, message: str, *, maybe_delivered: bool, status: grpclib.const.Status | None = None):
        super().__init__(message)
        self.maybe_delivered = maybe_delivered
        self.status = status


@dataclass(frozen=True, slots=True)
class _Session:
    """One live connection: the wechaty bot and the scheduler it owns."""

    bot: Any
    scheduler: Any
    number: int


def no_endpoint_message() -> str:
    return (
        "未配置微信网关地址：请设置环境变量 "
        f"{ENDPOINT_ENV}=host:port（或 config.yaml 中的 wechaty.endpoint），"
        f"令牌放在 {TOKEN_ENV}。\n"
        "No WeChat puppet endpoint configured: set "
        f"{ENDPOINT_ENV}=host:port (or wechaty.endpoint in config.yaml) and the token in {TOKEN_ENV}. "
        "See README, section 接入聊天平台 (wechaty)."
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def probe_endpoint(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port succeeds, else a short reason."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return None


def strip_mention(text: str, names: list[str]) -> tuple[str, bool]:
    """Remove `@name` (followed by U+2005, a space or the end) for each name; report whether any was found."""
    found = False
    for name in sorted({n for n in names if n}, key=len, reverse=True):
        pattern = re.compile(r"@" + re.escape(name) + r"(?:\u2005|\u0020|$)")
        text, count = pattern.subn("", text)
        found = found or count > 0
    return text.strip(), found


class WechatyChannel:
    """`bot.channel.Channel` over python-wechaty; see the module docstring."""

    name = "wechat"

    def __init__(
        self,
        settings: WechatySettings,
        connection: PuppetConnection,
        *,
        bot_names: tuple[str, ...] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._conn = connection
        self._sleep = sleep
        self._extra_bot_names = tuple(n for n in bot_names if n)  # e.g. "小爱" from settings.bot.name
        self._mods = load_wechaty(settings.cache_dir.absolute())
        self._state = ConnState.IDLE
        self._on_message: MessageHandler | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._session: _Session | None = None
        self._sessions = 0
        self._bot_id = ""
        self._bot_names: list[str] = []
        self._names: dict[str, str] = {}  # contact id → display name, learned from traffic
        self._connected = asyncio.Event()
        self.last_error: str | None = None
        self.last_heartbeat: float | None = None
        self._last_event = time.monotonic()  # any event from the gateway (liveness)
        # (monotonic time, state, reason) of recent state changes, for health checks and tests
        self.state_log: deque[tuple[float, ConnState, str]] = deque(maxlen=500)
        self._logins = 0

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str] | None = None) -> WechatyChannel:
        """Build from the root `Settings` (or a `WechatySettings`); ChannelConfigError without endpoint."""
        if isinstance(settings, WechatySettings):
            section, names = settings, ()
        else:
            section, names = settings.wechaty, (getattr(getattr(settings, "bot", None), "name", ""),)
        connection = section.connection(environ)
        if connection is None:
            raise ChannelConfigError(no_endpoint_message())
        return cls(section, connection, bot_names=names)

    # ------------------------------------------------------------------ Channel protocol
    @property
    def bot_id(self) -> str:
        return self._bot_id

    @property
    def connected(self) -> bool:
        return self._state is ConnState.CONNECTED

    @property
    def state(self) -> ConnState:
        return self._state

    async def start(self, on_message: MessageHandler) -> None:
        """Start the supervisor and return at once; it keeps (re)connecting in the background."""
        if self._supervisor is not None and not self._supervisor.done():
            return
        self._on_message = on_message
        self._supervisor = asyncio.create_task(self._supervise(), name="wechaty-supervisor")

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        task, self._supervisor = self._supervisor, None
        await cancel_and_wait(task)
        self._set_state(ConnState.STOPPED, "stopped by the application")

    # ------------------------------------------------------------------ supervision
    def _set_state(self, state: ConnState, reason: str = "") -> None:
        if state is self._state:
            return
        previous, self._state = self._state, state
        self.state_log.append((time.monotonic(), state, reason))
        if state is ConnState.CONNECTED:
            self._connected.set()
        else:
            self._connected.clear()
        level = logging.WARNING if state in (ConnState.BACKOFF,) else logging.INFO
        log.log(
            level,
            "wechat channel %s -> %s (%s) endpoint=%s",
            previous.value, state.value, reason or "-", self._conn.endpoint,
            extra={"channel": self.name, "state": state.value, "endpoint": self._conn.endpoint},
        )  # fmt: skip

    async def _supervise(self) -> None:
        delay = self._settings.reconnect_initial_s
        while True:
            self._set_state(ConnState.CONNECTING, f"attempt to {self._conn.endpoint}")
            problem = await probe_endpoint(self._conn.host, self._conn.port, self._settings.connect_timeout_s)
            if problem is not None:
                self.last_error = f"微信网关 {self._conn.endpoint} 无法连接 (puppet service unreachable): {problem}"
                log.error(
                    "%s; 请确认 wechaty gateway 已启动、%s 正确。将在 %.1f 秒后重试。",
                    self.last_error, ENDPOINT_ENV, delay,
                    extra={"channel": self.name, "endpoint": self._conn.endpoint},
                )  # fmt: skip
            else:
                reached_login = False
                try:
                    reached_login = await self._run_session()
                    problem = "event stream ended"
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # every failure of the client ends up here, never in the loop
                    problem = f"{type(exc).__name__}: {exc}"
                    self.last_error = problem
                    log.warning(
                        "wechat connection lost: %s", problem,
                        extra={"channel": self.name, "endpoint": self._conn.endpoint},
                    )  # fmt: skip
                if reached_login:
                    delay = self._settings.reconnect_initial_s
            self._set_state(ConnState.BACKOFF, f"{problem}; retry in {delay:.1f}s")
            await self._sleep(delay)
            delay = min(delay * self._settings.reconnect_factor, self._settings.reconnect_max_s)

    async def _run_session(self) -> bool:
        """One connection, from a fresh bot to the end of its event stream. True if it logged in."""
        session = self._new_session()
        self._session = session
        logins_before = self._logins
        try:
            bot = session.bot
            await bot.init_puppet()
            await bot.init_puppet_event_bridge(bot.puppet)
            # Liveness: the bridge listens on 'heart-beat' and never forwards heartbeats (#8), so we
            # listen on the puppet itself, and on dong/message/login as further signs of life.
            for event in ("heartbeat", "dong", "message", "login", "scan", "ready"):
                bot.puppet.on(event, self._on_puppet_event)
            self._last_event = time.monotonic()
            self._set_state(ConnState.WAITING_LOGIN, "event stream opening")
            # puppet.start() returns when the event stream ends cleanly (#4).
            stream = asyncio.create_task(bot.puppet.start(), name="wechaty-event-stream")
            verdict: list[str] = []
            watchdog = asyncio.create_task(self._watch_liveness(bot.puppet, stream, verdict))
            try:
                await stream
            except asyncio.CancelledError:
                if verdict:  # our watchdog ended a silent stream: a disconnect, not a shutdown
                    raise ConnectionError(f"liveness check failed: {verdict[0]}") from None
                raise
            finally:
                watchdog.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watchdog
        finally:
            self._session = None
            await self._close_session(session)
        return self._logins > logins_before

    async def _watch_liveness(self, puppet: Any, stream: asyncio.Task[Any], verdict: list[str]) -> None:
        """End the stream when the gateway stays silent: no event for `liveness_interval_s`, then a
        `Ding` that is not answered by a `dong` event within `liveness_timeout_s` (half-open TCP)."""
        interval = self._settings.liveness_interval_s
        timeout = self._settings.liveness_timeout_s
        if interval <= 0:
            return
        while not stream.done():
            await asyncio.sleep(interval)
            if time.monotonic() - self._last_event < interval:
                continue
            marker = self._last_event
            try:
                await asyncio.wait_for(puppet.puppet_stub.ding(data="xiaoai-liveness"), timeout)
            except Exception as exc:
                reason = f"Ding failed: {type(exc).__name__} {exc}"
            else:
                deadline = time.monotonic() + timeout
                while self._last_event == marker and time.monotonic() < deadline:
                    await asyncio.sleep(min(0.1, timeout / 10))
                if self._last_event != marker:
                    continue
                reason = f"no event within {interval + timeout:.0f}s (Ding unanswered)"
            log.warning("wechat event stream looks dead: %s; reconnecting", reason,
                        extra={"channel": self.name, "endpoint": self._conn.endpoint})  # fmt: skip
            verdict.append(reason)
            stream.cancel()
            return

    def _new_session(self) -> _Session:
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        reset_wechaty_globals()  # pooled contacts/rooms are bound to the previous puppet (#9)
        self._sessions += 1
        mods = self._mods
        scheduler = AsyncIOScheduler()
        options = mods.WechatyOptions(
            name=self._settings.name,
            puppet="wechaty-puppet-service",
            puppet_options=mods.PuppetOptions(end_point=self._conn.endpoint, token=self._conn.token),
            host="127.0.0.1",
            port=_free_port(),
            endpoint=self._conn.endpoint,
            token=self._conn.token,
            scheduler=scheduler,
        )
        bot = _bot_class(mods.Wechaty)(options, self)
        return _Session(bot, scheduler, self._sessions)

    async def _close_session(self, session: _Session) -> None:
        """Drop the connection without the `Stop` RPC (it would stop a shared gateway's puppet, #12)."""
        bot = session.bot
        puppet = getattr(bot, "_puppet", None)
        if puppet is not None:
            with contextlib.suppress(Exception):
                puppet._event_stream.remove_all_listeners()
            channel = getattr(puppet, "channel", None)
            if channel is not None:
                with contextlib.suppress(Exception):
                    channel.close()
                puppet.channel = None
            puppet._puppet_stub = None
        if session.scheduler.running:
            with contextlib.suppress(Exception):
                session.scheduler.shutdown(wait=False)

    def _live_puppet(self) -> Any:
        session = self._session
        if session is None or not self.connected:
            raise _SendFailed("微信未连接 (not connected to the puppet service)", maybe_delivered=False)
        puppet = session.bot._puppet
        if puppet is None or getattr(puppet, "channel", None) is None:
            raise _SendFailed("微信未连接 (no puppet channel)", maybe_delivered=False)
        return puppet

    # ------------------------------------------------------------------ events from the bot
    def _on_puppet_event(self, payload: Any) -> None:
        self._last_event = time.monotonic()
        if type(payload).__name__ == "EventHeartbeatPayload":
            self.last_heartbeat = self._last_event

    async def _handle_login(self, contact: Any) -> None:
        self._bot_id = contact.contact_id
        names = [contact.name] if getattr(contact, "payload", None) is not None else []
        self._bot_names = [n for n in names if n]
        self._logins += 1
        self._set_state(ConnState.CONNECTED, f"logged in as {self._bot_id}")

    async def _handle_logout(self, contact: Any) -> None:
        self._set_state(ConnState.WAITING_LOGIN, "logged out by the puppet")

    async def _handle_scan(self, qrcode: str, status: Any) -> None:
        log.warning(
            "wechat gateway waits for a QR scan (status %s); scan on the gateway side: %s",
            status, qrcode, extra={"channel": self.name},
        )  # fmt: skip

    async def _handle_message(self, msg: Any) -> None:
        """Convert and hand over; never raises (wechaty would just log an 'internal error', #7)."""
        message_id = getattr(msg, "message_id", "?")
        try:
            message = self._convert(msg)
            if message is None or self._on_message is None:
                return
            log.info(
                "wechat message in: %s from %s in %s", message_id, message.sender_id, message.chat_id,
                extra={"message_id": message_id, "user_id": message.sender_id, "chat_id": message.chat_id},
            )  # fmt: skip
            await self._on_message(message)
        except Exception:
            log.exception("handling wechat message %s failed", message_id, extra={"message_id": message_id})

    def _convert(self, msg: Any) -> Message | None:
        payload = msg.payload
        types = self._mods.MessageType
        talker_id = payload.from_id or ""
        if not talker_id or talker_id == self._bot_id:
            return None  # our own messages echo back on some puppets
        msg_type = payload.type
        if msg_type not in (types.MESSAGE_TYPE_TEXT, types.MESSAGE_TYPE_IMAGE):
            return None
        room_id = payload.room_id or ""
        talker = msg.talker()
        sender_name = talker.name if getattr(talker, "payload", None) is not None else talker_id
        self._names[talker_id] = sender_name
        mention_ids = tuple(payload.mention_ids or ())
        text = (payload.text or "") if msg_type == types.MESSAGE_TYPE_TEXT else ""
        mentions_bot = bool(self._bot_id) and self._bot_id in mention_ids
        if text and room_id:
            text, named = strip_mention(text, [*self._bot_names, *self._extra_bot_names])
            mentions_bot = mentions_bot or named
        timestamp = float(payload.timestamp or 0)
        if timestamp > 10**11:  # milliseconds
            timestamp /= 1000.0
        return Message(
            message_id=msg.message_id,
            chat_id=room_id or talker_id,
            kind=ChatKind.GROUP if room_id else ChatKind.PRIVATE,
            sender_id=talker_id,
            sender_name=sender_name,
            text=text,
            mentions=tuple(m for m in mention_ids if m != self._bot_id),
            mentions_bot=mentions_bot,
            image=ImageRef(msg.message_id) if msg_type == types.MESSAGE_TYPE_IMAGE else None,
            timestamp=timestamp or time.time(),
        )

    # ------------------------------------------------------------------ media in
    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        if message.image is None:
            raise ImageFetchError("message has no image")
        try:
            puppet = self._live_puppet()
            reply = await asyncio.wait_for(
                puppet.puppet_stub.message_image(id=message.image.image_id, type=IMAGE_TYPE_HD),
                self._settings.rpc_timeout_s,
            )
            box = grpc_media.parse_file_box(reply.filebox)
            if box.size is not None and box.size > max_bytes:
                raise ValueError(f"image is {box.size} bytes, over the {max_bytes} byte limit")
            if box.data is not None:
                data = box.data
            else:
                assert box.uuid is not None
                data = await grpc_media.download_uuid(
                    puppet.channel, box.uuid, max_bytes=max_bytes, timeout=self._settings.rpc_timeout_s
                )
        except grpc_media.MediaTooLarge as exc:
            raise ValueError(str(exc)) from exc
        except ValueError:
            raise
        except (_SendFailed, grpc_media.MediaError, GRPCError, StreamTerminatedError, OSError, TimeoutError) as exc:
            raise ImageFetchError(f"图片下载失败 (image fetch failed): {exc}") from exc
        if len(data) > max_bytes:
            raise ValueError(f"image is {len(data)} bytes, over the {max_bytes} byte limit")
        log.info(
            "wechat image fetched: %s, %d bytes", message.message_id, len(data),
            extra={"message_id": message.message_id, "user_id": message.sender_id, "bytes": len(data)},
        )  # fmt: skip
        return data

    # ------------------------------------------------------------------ sending
    async def _mention_prefix(self, chat_id: str, mention_ids: tuple[str, ...], text: str) -> str:
        if not mention_ids or not chat_id.endswith("@chatroom"):
            return text
        prefix = ""
        for contact_id in mention_ids:
            name = self._names.get(contact_id) or await self._lookup_name(contact_id)
            if f"@{name}" not in text:
                prefix += f"@{name}{MENTION_SEPARATOR}"
        return prefix + text

    async def _lookup_name(self, contact_id: str) -> str:
        try:
            puppet = self._live_puppet()
            reply = await asyncio.wait_for(puppet.puppet_stub.contact_payload(id=contact_id), 10)
            name = reply.name or contact_id
        except Exception:
            name = contact_id
        self._names[contact_id] = name
        return name

    async def _call(self, what: str, coro_factory: Callable[[Any], Awaitable[Any]]) -> Any:
        """Run one send RPC on the live puppet and classify its failure."""
        puppet = self._live_puppet()
        try:
            return await asyncio.wait_for(coro_factory(puppet), self._settings.rpc_timeout_s)
        except GRPCError as exc:
            certain = exc.status in _CERTAIN_FAILURES
            raise _SendFailed(f"{what}: {exc.status.name} {exc.message}", maybe_delivered=not certain,
                              status=exc.status) from exc  # fmt: skip
        except ConnectionRefusedError as exc:
            raise _SendFailed(f"{what}: {exc}", maybe_delivered=False) from exc
        except (StreamTerminatedError, OSError, TimeoutError) as exc:
            raise _SendFailed(f"{what}: {type(exc).__name__} {exc}", maybe_delivered=True) from exc

    async def _with_retries(self, what: str, attempt: Callable[[], Awaitable[Any]], ids: dict[str, str]) -> Any:
        """Retry certain failures with backoff; a maybe-delivered failure ends at once."""
        delay = self._settings.send_retry_initial_s
        for number in range(self._settings.send_retries + 1):
            try:
                return await attempt()
            except _SendFailed as exc:
                if exc.maybe_delivered:
                    log.error(
                        "%s failed after it may have been delivered; not retrying: %s", what, exc,
                        extra=ids,
                    )  # fmt: skip
                    raise DeliveryError(str(exc), maybe_delivered=True) from exc
                if number >= self._settings.send_retries:
                    log.error("%s failed for good after %d attempts: %s", what, number + 1, exc, extra=ids)
                    raise DeliveryError(str(exc), maybe_delivered=False) from exc
                log.warning("%s failed (attempt %d), retrying in %.1fs: %s", what, number + 1, delay, exc,
                            extra=ids)  # fmt: skip
                await self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def send_text(self, out: OutgoingText) -> None:
        ids = {"chat_id": out.chat_id, "user_id": ",".join(out.mention_ids)}

        async def attempt() -> None:
            text = await self._mention_prefix(out.chat_id, out.mention_ids, out.text)
            await self._call(
                "send text",
                lambda p: p.puppet_stub.message_send_text(
                    conversation_id=out.chat_id, text=text, mentonal_ids=list(out.mention_ids)
                ),
            )

        await self._with_retries("send text", attempt, ids)
        log.info("wechat text sent to %s", out.chat_id, extra=ids)

    async def send_video(self, out: OutgoingVideo) -> None:
        ids = {"chat_id": out.chat_id, "user_id": ",".join(out.mention_ids), "job_id": out.meta.get("job_id", "")}
        source = Path(out.video_path)
        if not source.is_file():
            raise DeliveryError(f"video file missing: {source}", maybe_delivered=False)
        try:
            prepared, cover = await asyncio.to_thread(self._prepare, source, out.cover_path)
        except wechat_media.MediaPrepError as exc:
            log.error("preparing video for wechat failed: %s", exc, extra=ids)
            raise DeliveryError(f"视频转码失败: {exc}", maybe_delivered=False) from exc
        data = prepared.path.read_bytes()
        name = source.stem + ".mp4"
        metadata: dict[str, Any] = {
            "duration": round(prepared.duration_s, 3),
            "width": prepared.width,
            "height": prepared.height,
        }
        if cover is not None:
            metadata["thumbnail"] = {"name": cover.name, "mediaType": "image/jpeg",
                                     "base64": _b64(cover.read_bytes())}  # fmt: skip
        as_file = not prepared.fits
        if as_file:
            log.warning("video over the wechat budget even after re-encoding; sending as a file", extra=ids)

        async def attempt() -> None:
            nonlocal as_file
            try:
                await self._send_file(out.chat_id, data, name, metadata, as_file=as_file)
            except _SendFailed as exc:
                if not as_file and not exc.maybe_delivered and exc.status in _VIDEO_REFUSED:
                    log.warning("puppet refused the video (%s); falling back to a file", exc, extra=ids)
                    as_file = True
                    await self._send_file(out.chat_id, data, name, metadata, as_file=True)
                else:
                    raise

        await self._with_retries("send video", attempt, ids)
        log.info(
            "wechat video sent to %s: %d bytes (%s, crf=%s, %s)", out.chat_id, len(data),
            "re-encoded" if prepared.reencoded else "as generated", prepared.crf,
            "file" if as_file else "video", extra={**ids, "bytes": len(data)},
        )  # fmt: skip
        if out.caption:
            try:
                await self.send_text(OutgoingText(out.chat_id, out.caption, out.mention_ids))
            except DeliveryError as exc:  # the video itself is delivered: never resend it for a caption
                log.error("caption after the video could not be sent: %s", exc, extra=ids)

    def _prepare(self, source: Path, cover_path: str | None) -> tuple[wechat_media.PreparedVideo, Path | None]:
        out_dir = source.parent / "wechat"
        prepared = wechat_media.prepare_video(
            source,
            out_dir,
            budget_bytes=self._settings.video_budget_bytes,
            crf_min=self._settings.crf_min,
            crf_max=self._settings.crf_max,
            min_height=self._settings.min_height,
        )
        cover: Path | None = None
        if cover_path and Path(cover_path).is_file() and Path(cover_path).stat().st_size <= self._settings.cover_max_bytes:
            cover = Path(cover_path)
        else:
            cover = wechat_media.make_cover(
                prepared.path, out_dir / f"{source.stem}.cover.jpg", max_bytes=self._settings.cover_max_bytes
            )
        return prepared, cover

    async def _send_file(
        self, chat_id: str, data: bytes, name: str, metadata: dict[str, Any], *, as_file: bool
    ) -> None:
        box_name = name
        meta = dict(metadata)
        if as_file:
            meta = {"sendAs": "file"}
        if len(data) > self._settings.upload_threshold_bytes:
            uuid = await self._call(
                "upload",
                lambda p: grpc_media.upload_bytes(
                    p.channel, data, chunk_size=self._settings.upload_chunk_bytes,
                    timeout=self._settings.rpc_timeout_s,
                ),
            )  # fmt: skip
            box = grpc_media.uuid_file_box(uuid, box_name, len(data), metadata=meta)
        else:
            box = grpc_media.base64_file_box(data, box_name, metadata=meta)
        if as_file:
            box = _as_attachment(box)
        await self._call(
            "send file", lambda p: p.puppet_stub.message_send_file(conversation_id=chat_id, filebox=box)
        )


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode("ascii")


def _as_attachment(box_json: str) -> str:
    import json

    obj = json.loads(box_json)
    obj["mediaType"] = "application/octet-stream"
    return json.dumps(obj, ensure_ascii=False)


def _bot_class(base: type) -> type:
    """A `Wechaty` subclass whose event hooks forward to the channel (built after the shim ran)."""

    class _ChannelBot(base):  # type: ignore[misc, valid-type]
        def __init__(self, options: Any, channel: WechatyChannel) -> None:
            super().__init__(options)
            self._channel = channel

        async def on_login(self, contact: Any) -> None:
            await self._channel._handle_login(contact)

        async def on_logout(self, contact: Any) -> None:
            await self._channel._handle_logout(contact)

        async def on_scan(self, qr_code: str, status: Any, data: str | None = None) -> None:
            await self._channel._handle_scan(qr_code, status)

        async def on_message(self, msg: Any) -> None:
            await self._channel._handle_message(msg)

    return _ChannelBot
