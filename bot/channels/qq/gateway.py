"""The QQ bot gateway: one WebSocket session with Hello/Identify/READY, heartbeats, Resume and reconnects.

Opcodes (QQ bot API v2, as in botpy): 0 Dispatch, 1 Heartbeat, 2 Identify, 6 Resume, 7 Reconnect,
9 Invalid Session, 10 Hello, 11 Heartbeat ACK.

1. `GET /gateway` (authenticated REST) → `{"url": "wss://…/websocket"}`; connect.
2. Hello `{op:10, d:{heartbeat_interval: ms}}`. With a session in hand we Resume
   `{op:6, d:{token:"QQBot <tok>", session_id, seq}}` (the server replays what we missed, then RESUMED);
   otherwise Identify `{op:2, d:{token, intents, shard:[0,1], properties}}` → dispatch READY
   `{session_id, user, shard}`.
3. Heartbeat `{op:1, d:<last seq or null>}` every heartbeat_interval; two unanswered heartbeats mean a
   dead (half-open) connection, which we close and resume.
4. Dispatches `{op:0, s, t, id, d}`: `s` is remembered for heartbeats and Resume; the payload goes to the
   channel's handler (which never raises into this loop).
5. Op 7 Reconnect: close and resume at once. Op 9 Invalid Session: forget the session, identify afresh.
   Close codes: 4004 (token invalid) fetches a new token; 4006/4007/9001/9005 forget the session;
   4010–4014, 4914 (bot taken down: sandbox only) and 4915 (bot banned) are reported to the operator.
   Every other end of the connection resumes. Reconnects use capped exponential backoff with jitter,
   reset once a connection reaches READY/RESUMED.

Frames are never logged (Identify and Resume carry the access token): the websockets library gets a
logger adapter that refuses DEBUG, so its frame dumps stay off whatever the logging configuration says.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from bot.channels.qq.api import QQApi
from bot.channels.qq.settings import QQSettings
from bot.channels.qq.token import AccessTokenManager, TokenRefused

log = logging.getLogger(__name__)


class _NoFrameDumps(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger handed to websockets: it dumps every frame at DEBUG, and Identify/Resume frames hold
    the access token. DEBUG is refused here whatever levels the logging configuration sets."""

    def isEnabledFor(self, level: int) -> bool:
        return level > logging.DEBUG and self.logger.isEnabledFor(level)


_WIRE_LOG = _NoFrameDumps(logging.getLogger("bot.channels.qq.wire"), {})

OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_RESUME = 6
OP_RECONNECT = 7
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

CLOSE_TOKEN_INVALID = 4004
CLOSE_NEW_SESSION = frozenset({4006, 4007, 9001, 9005})
CLOSE_OPERATOR = {
    4010: "分片无效 (invalid shard)",
    4011: "分片数过多 (too many guilds for one shard)",
    4012: "网关版本无效 (invalid version)",
    4013: "intents 无效 (invalid intents)",
    4014: "intents 无权限：请在 QQ 开放平台开通群聊/单聊事件 (intents not permitted)",
    4914: "机器人已下架，只能连接沙箱环境 (bot offline: sandbox only)",
    4915: "机器人已被封禁 (bot banned)",
}
# Our own close codes (never sent by the server).
_CLOSE_ZOMBIE = 4900
_CLOSE_RECONNECT = 4901

DispatchHandler = Callable[[str, Any, str | None], Awaitable[None]]
ReadyHandler = Callable[[dict[str, Any]], Awaitable[None]]
AlertHandler = Callable[[str, str], Awaitable[None]]
Connector = Callable[..., Any]


class GatewayState(enum.StrEnum):
    IDLE = "idle"
    CONNECTING = "connecting"
    CONNECTED = "connected"  # READY or RESUMED received: dispatches flow
    BACKOFF = "backoff"
    STOPPED = "stopped"


class GatewayError(Exception):
    """The gateway broke the protocol or did not answer in time."""


class GatewayClient:
    """Runs the gateway connection forever (`run()`), reconnecting and resuming as needed."""

    def __init__(
        self,
        api: QQApi,
        tokens: AccessTokenManager,
        settings: QQSettings,
        *,
        on_dispatch: DispatchHandler,
        on_ready: ReadyHandler,
        on_alert: AlertHandler,
        connect: Connector = ws_connect,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._api = api
        self._tokens = tokens
        self._settings = settings
        self._on_dispatch = on_dispatch
        self._on_ready = on_ready
        self._on_alert = on_alert
        self._connect = connect
        self._sleep = sleep
        self._rng = rng
        self.session_id: str | None = None
        self.seq: int | None = None
        self.user: dict[str, Any] = {}
        self.state = GatewayState.IDLE
        self.connected = asyncio.Event()
        self.last_error: str | None = None
        self.identifies = 0  # Identify frames sent
        self.resumes = 0  # Resume frames sent
        self.state_log: deque[tuple[float, GatewayState, str]] = deque(maxlen=500)
        self._ws: Any = None
        self._awaiting_ack = False
        self._own_close: str | None = None

    # ------------------------------------------------------------------ state
    def _set_state(self, state: GatewayState, reason: str = "") -> None:
        if state is self.state:
            return
        previous, self.state = self.state, state
        self.state_log.append((time.monotonic(), state, reason))
        if state is GatewayState.CONNECTED:
            self.connected.set()
        else:
            self.connected.clear()
        level = logging.WARNING if state is GatewayState.BACKOFF else logging.INFO
        log.log(level, "qq gateway %s -> %s (%s)", previous.value, state.value, reason or "-",
                extra={"channel": "qq", "state": state.value})  # fmt: skip

    def forget_session(self) -> None:
        self.session_id = None
        self.seq = None

    async def close(self) -> None:
        """Close the socket (the supervisor task is cancelled by the owner)."""
        ws = self._ws
        if ws is not None:
            self._own_close = "stopping"
            with contextlib.suppress(Exception):
                await ws.close()
        self._set_state(GatewayState.STOPPED, "stopped")

    # ------------------------------------------------------------------ supervisor
    async def run(self) -> None:
        failures = 0
        while True:
            self._set_state(GatewayState.CONNECTING, "resume" if self.session_id else "identify")
            reached = False
            immediate = False
            try:
                reached, immediate, problem = await self._connect_once()
            except asyncio.CancelledError:
                raise
            except TokenRefused as exc:
                problem = f"access token refused: {exc}"
                await self._on_alert(
                    "token",
                    f"QQ 机器人的 AppSecret 被拒绝，无法连接（{exc}）。请检查 XIAOAI_QQ_SECRET 与 app_id。",
                )
            except Exception as exc:  # every failure ends up here and is retried, never raised
                problem = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
            self.last_error = problem
            failures = 0 if reached else failures + 1
            if immediate:
                delay = 0.0
            else:
                base = self._settings.reconnect_initial_s * self._settings.reconnect_factor ** max(failures - 1, 0)
                delay = min(base, self._settings.reconnect_max_s) * (0.5 + self._rng() / 2)
            self._set_state(GatewayState.BACKOFF, f"{problem}; retry in {delay:.2f}s")
            if delay > 0:
                await self._sleep(delay)

    async def _connect_once(self) -> tuple[bool, bool, str]:
        """One connection. Returns (reached READY/RESUMED, reconnect at once, why it ended)."""
        url = await self._api.gateway_url()
        timeout = self._settings.gateway_timeout_s
        self._own_close = None
        async with self._connect(
            url, open_timeout=timeout, ping_interval=None, close_timeout=2, max_size=16 * 1024 * 1024,
            logger=_WIRE_LOG,
        ) as ws:  # fmt: skip
            self._ws = ws
            hello = await self._recv(ws, timeout)
            if hello.get("op") != OP_HELLO:
                raise GatewayError(f"expected Hello (op 10), got op {hello.get('op')}")
            try:
                interval = float((hello.get("d") or {})["heartbeat_interval"]) / 1000.0
            except (KeyError, TypeError, ValueError):
                raise GatewayError("Hello without a heartbeat_interval") from None
            token = await self._tokens.get()
            if self.session_id:
                self.resumes += 1
                await self._send(ws, {"op": OP_RESUME, "d": {"token": f"QQBot {token}",
                                      "session_id": self.session_id, "seq": self.seq or 0}})  # fmt: skip
                log.info("qq gateway: resuming session at seq %s", self.seq, extra={"channel": "qq"})
            else:
                self.identifies += 1
                await self._send(ws, {"op": OP_IDENTIFY, "d": {
                    "token": f"QQBot {token}", "intents": self._settings.intents, "shard": [0, 1],
                    "properties": {"$os": "linux", "$browser": "xiaoai-video", "$device": "xiaoai-video"},
                }})  # fmt: skip
            self._awaiting_ack = False
            heartbeat = asyncio.create_task(self._heartbeat(ws, interval), name="qq-heartbeat")
            reached = False
            try:
                while True:
                    wait = None if self.connected.is_set() else timeout
                    try:
                        payload = await self._recv(ws, wait)
                        if await self._handle(ws, payload):
                            reached = True
                    except ConnectionClosed as exc:
                        code = exc.rcvd.code if exc.rcvd is not None else None
                        return reached, *(await self._after_close(code, token))
            finally:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
                self.connected.clear()

    async def _after_close(self, code: int | None, token: str) -> tuple[bool, str]:
        """Decide what the next connection does after the socket closed with `code`."""
        own, self._own_close = self._own_close, None
        if own is not None:
            return own == "reconnect requested (op 7)", own
        if code == CLOSE_TOKEN_INVALID:
            await self._tokens.refresh(token)
            return False, "closed 4004: token invalid; fetched a new token"
        if code in CLOSE_NEW_SESSION:
            self.forget_session()
            return False, f"closed {code}: session cannot be resumed; will identify"
        if code in CLOSE_OPERATOR:
            self.forget_session()
            text = CLOSE_OPERATOR[code]
            await self._on_alert(f"close-{code}", f"QQ 机器人网关拒绝连接（{code}）：{text}。请到 QQ 开放平台处理。")
            return False, f"closed {code}: {text}"
        return False, f"connection closed (code {code})"

    # ------------------------------------------------------------------ frames
    async def _recv(self, ws: Any, timeout: float | None) -> dict[str, Any]:
        while True:
            try:
                raw = await asyncio.wait_for(ws.recv(), timeout)
            except TimeoutError:
                raise GatewayError(f"no answer from the gateway within {timeout:.0f}s") from None
            try:
                payload = json.loads(raw)
            except ValueError:
                log.warning("qq gateway: ignoring a frame that is not JSON", extra={"channel": "qq"})
                continue
            if isinstance(payload, dict):
                return payload

    async def _send(self, ws: Any, payload: dict[str, Any]) -> None:
        await ws.send(json.dumps(payload, ensure_ascii=False))

    async def _handle(self, ws: Any, payload: dict[str, Any]) -> bool:
        """Handle one frame; True when it was READY or RESUMED."""
        op = payload.get("op")
        if op == OP_DISPATCH:
            seq = payload.get("s")
            if isinstance(seq, int) and seq > 0:
                self.seq = seq
            kind = str(payload.get("t") or "")
            data = payload.get("d")
            if kind == "READY":
                data = data if isinstance(data, dict) else {}
                self.session_id = str(data.get("session_id") or "") or None
                self.user = data.get("user") if isinstance(data.get("user"), dict) else {}
                self._set_state(GatewayState.CONNECTED, f"READY as {self.user.get('id', '?')}")
                try:
                    await self._on_ready(self.user)
                except Exception:
                    log.exception("qq READY handler failed", extra={"channel": "qq"})
                return True
            if kind == "RESUMED":
                self._set_state(GatewayState.CONNECTED, f"RESUMED at seq {self.seq}")
                return True
            try:
                await self._on_dispatch(kind, data, payload.get("id"))
            except Exception:
                log.exception("qq dispatch %s failed", kind, extra={"channel": "qq"})
            return False
        if op == OP_HEARTBEAT_ACK:
            self._awaiting_ack = False
        elif op == OP_HEARTBEAT:  # the server asks for a heartbeat now
            await self._send(ws, {"op": OP_HEARTBEAT, "d": self.seq})
        elif op == OP_RECONNECT:
            log.info("qq gateway asked us to reconnect (op 7)", extra={"channel": "qq"})
            self._own_close = "reconnect requested (op 7)"
            await ws.close(code=_CLOSE_RECONNECT, reason="reconnect requested")
        elif op == OP_INVALID_SESSION:
            log.warning("qq gateway: invalid session (op 9); will identify afresh", extra={"channel": "qq"})
            self.forget_session()
            self._own_close = "invalid session (op 9)"
            await ws.close(code=_CLOSE_RECONNECT, reason="invalid session")
        elif op == OP_HELLO:
            pass
        else:
            log.debug("qq gateway: ignoring op %s", op, extra={"channel": "qq"})
        return False

    async def _heartbeat(self, ws: Any, interval: float) -> None:
        missed = 0
        while True:
            await asyncio.sleep(interval)
            if self._awaiting_ack:
                missed += 1
                if missed >= 2:
                    log.warning("qq gateway: %d heartbeats unanswered; reconnecting", missed, extra={"channel": "qq"})
                    self._own_close = "heartbeat not acknowledged"
                    with contextlib.suppress(Exception):
                        await ws.close(code=_CLOSE_ZOMBIE, reason="heartbeat timeout")
                    return
            else:
                missed = 0
            self._awaiting_ack = True
            try:
                await self._send(ws, {"op": OP_HEARTBEAT, "d": self.seq})
            except ConnectionClosed:
                return
