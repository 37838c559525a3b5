"""The WeCom long-connection wire protocol: JSON frames, req_ids, acks, per-req_id serialised sends.

Frames are JSON text: commands `{"cmd": ..., "headers": {"req_id": ...}, "body": {...}}` in both
directions; the server answers every command with an ack that carries the same req_id and no `cmd`:
`{"headers": {"req_id": ...}, "errcode": 0, "errmsg": "ok", "body"?: {...}}`.

`WecomConnection` owns one socket. `request()` writes a command and waits for its ack; sends sharing a
req_id (several replies to one callback) are serialised, as the official SDK does, because the ack can
only be matched by req_id. Failures say whether the frame had been written (`written`), which is what
decides between "safe to resend" and "maybe delivered" for the caller.

The secret travels only inside the subscribe frame; nothing here logs frame bodies, and websockets'
own frame-level DEBUG logging is silenced (`quiet_ws_logger`) because it would print them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

log = logging.getLogger(__name__)

CMD_SUBSCRIBE = "aibot_subscribe"
CMD_PING = "ping"
CMD_MSG_CALLBACK = "aibot_msg_callback"
CMD_EVENT_CALLBACK = "aibot_event_callback"
CMD_RESPOND = "aibot_respond_msg"
CMD_SEND = "aibot_send_msg"
CMD_UPLOAD_INIT = "aibot_upload_media_init"
CMD_UPLOAD_CHUNK = "aibot_upload_media_chunk"
CMD_UPLOAD_FINISH = "aibot_upload_media_finish"

ERR_BUSY = 6000  # "命令冲突": the server asks to retry the command shortly

FrameHandler = Callable[[dict[str, Any]], Awaitable[None]]


class ProtocolError(Exception):
    """A command did not succeed. `written` tells whether its frame reached the socket."""

    written: bool = False


class ConnectionLost(ProtocolError):
    """The socket closed before the command was acked."""

    def __init__(self, message: str, *, written: bool) -> None:
        super().__init__(message)
        self.written = written


class AckTimeout(ProtocolError):
    """The frame was written but no ack came within the timeout (the server may have acted on it)."""

    written = True


class AckError(ProtocolError):
    """The server acked with errcode != 0: it refused the command (nothing was delivered)."""

    written = True

    def __init__(self, cmd: str, errcode: int, errmsg: str) -> None:
        super().__init__(f"{cmd} refused: errcode={errcode} errmsg={errmsg}")
        self.cmd, self.errcode, self.errmsg = cmd, errcode, errmsg


def new_req_id(cmd: str) -> str:
    """`<cmd>_<unix ms>_<random>`, the SDK's shape; unique per command."""
    return f"{cmd}_{int(time.time() * 1000)}_{uuid.uuid4().hex[:8]}"


def command_frame(cmd: str, req_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"cmd": cmd, "headers": {"req_id": req_id}}
    if body is not None:
        frame["body"] = body
    return frame


def frame_req_id(frame: dict[str, Any]) -> str:
    headers = frame.get("headers")
    return str(headers.get("req_id", "")) if isinstance(headers, dict) else ""


class _QuietWsLogger(logging.LoggerAdapter):
    """websockets logs every frame (our subscribe frame holds the secret) at DEBUG: drop DEBUG."""

    def isEnabledFor(self, level: int) -> bool:  # noqa: N802 (logging API name)
        return level > logging.DEBUG and self.logger.isEnabledFor(level)

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if level > logging.DEBUG:
            super().log(level, msg, *args, **kwargs)


def quiet_ws_logger() -> logging.LoggerAdapter:
    return _QuietWsLogger(logging.getLogger("bot.channels.wecom.websocket"), {})


async def open_socket(url: str, *, open_timeout: float) -> ClientConnection:
    """Open the WebSocket (no library keepalive: the protocol's own `ping` command is the heartbeat;
    the server's WebSocket pings are still answered). Raises OSError/TimeoutError/InvalidHandshake."""
    try:
        return await connect(
            url, open_timeout=open_timeout, ping_interval=None, max_size=16 * 1024 * 1024,
            logger=quiet_ws_logger(), compression=None,
        )  # fmt: skip
    except InvalidURI as exc:
        raise OSError(f"invalid ws_url: {exc}") from exc
    except InvalidHandshake as exc:
        raise OSError(f"handshake failed: {type(exc).__name__}: {exc}") from exc


class WecomConnection:
    """One subscribed (or subscribing) socket: command/ack matching and the receive loop."""

    def __init__(self, ws: ClientConnection, *, ack_timeout_s: float, number: int = 0) -> None:
        self._ws = ws
        self._ack_timeout_s = ack_timeout_s
        self.number = number
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._locks: dict[str, list[Any]] = {}  # req_id → [Lock, users]
        self._closed = False
        self.close_reason = ""

    @property
    def closed(self) -> bool:
        return self._closed

    # ------------------------------------------------------------------ commands
    @contextlib.asynccontextmanager
    async def _serial(self, req_id: str) -> AsyncIterator[None]:
        entry = self._locks.get(req_id)
        if entry is None:
            entry = self._locks[req_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._locks.pop(req_id, None)

    async def request(
        self, cmd: str, body: dict[str, Any] | None = None, *, req_id: str | None = None,
        timeout: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """Send a command and return its ack (errcode 0). Raises ConnectionLost / AckTimeout / AckError."""
        req_id = req_id or new_req_id(cmd)
        timeout = self._ack_timeout_s if timeout is None else timeout
        async with self._serial(req_id):
            if self._closed:
                raise ConnectionLost(f"{cmd}: connection closed ({self.close_reason})", written=False)
            future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
            self._pending[req_id] = future
            try:
                try:
                    await self._ws.send(json.dumps(command_frame(cmd, req_id, body), ensure_ascii=False))
                except ConnectionClosed as exc:
                    raise ConnectionLost(f"{cmd}: connection closed while sending ({exc.rcvd})", written=False) from exc
                try:
                    ack = await asyncio.wait_for(future, timeout)
                except TimeoutError as exc:
                    raise AckTimeout(f"{cmd}: no ack within {timeout:g}s") from exc
            finally:
                self._pending.pop(req_id, None)
                if future.done() and not future.cancelled():
                    future.exception()  # mark it retrieved even when this request was cancelled
        errcode = ack.get("errcode", 0)
        if errcode not in (0, None):
            raise AckError(cmd, int(errcode) if str(errcode).lstrip("-").isdigit() else -1, str(ack.get("errmsg", "")))
        return ack

    # ------------------------------------------------------------------ receiving
    async def run(self, on_command: FrameHandler) -> None:
        """Read frames until the socket closes: acks resolve `request()`s, commands go to `on_command`
        (which must not block for long: it runs inside the receive loop). Never raises for bad frames."""
        try:
            async for raw in self._ws:
                try:
                    frame = json.loads(raw)
                except (TypeError, ValueError):
                    log.warning("wecom: ignoring a frame that is not JSON (%d bytes)", len(raw))
                    continue
                if not isinstance(frame, dict):
                    continue
                req_id = frame_req_id(frame)
                future = self._pending.get(req_id)
                if future is not None and ("errcode" in frame or "cmd" not in frame):
                    if not future.done():
                        future.set_result(frame)
                    continue
                if "cmd" not in frame:
                    log.debug("wecom: ack for an unknown req_id %s (errcode=%s)", req_id, frame.get("errcode"))
                    continue
                try:
                    await on_command(frame)
                except Exception:  # the receive loop never dies on a handler bug
                    log.exception("wecom: handling %s failed", frame.get("cmd"))
        except ConnectionClosed as exc:
            self.close_reason = f"closed code={exc.rcvd.code if exc.rcvd else '-'}"
        finally:
            self._mark_closed(self.close_reason or "closed")

    def _mark_closed(self, reason: str) -> None:
        self._closed = True
        self.close_reason = reason
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionLost(f"connection closed before the ack ({reason})", written=True))

    async def close(self, reason: str = "closed by us") -> None:
        if not self._closed:
            self.close_reason = reason
        with contextlib.suppress(Exception):
            await self._ws.close()
