"""REST client for the QQ bot API v2 (`https://api.sgroup.qq.com`), over httpx.

Every call carries `Authorization: QQBot <access_token>` (and `X-Union-Appid`, as botpy sends). Failures
are mapped to `QQApiError(status, code, message, maybe_delivered, attempts)`:

* a 401 fetches a new token once (single-flight, `AccessTokenManager.refresh`) and repeats the call;
* network errors, 429 and 5xx are retried with exponential backoff (`send_retries` times). A call marked
  `replay_safe=False` (a proactive message post, which the platform cannot de-duplicate) is retried only
  when the request certainly did not reach the server (connect errors) or the server answered 5xx/429;
  a timeout/broken connection after sending ends at once with `maybe_delivered=True`;
* other 4xx, and HTTP 200 bodies with a non-zero `code`, are final.

Error bodies look like `{"message": "...", "code": 40034024, "err_code": 40034024, "trace_id": "..."}`.
The platform codes the adapter acts on are collected here (`ANCHOR_DEAD`, `PROACTIVE_REFUSED`,
`DUPLICATE_SEQ`); they come from peers' code and issue threads, not from a real account (unverified).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

from bot.channels.qq.token import AccessTokenManager

log = logging.getLogger(__name__)

# msg_id no longer usable for a passive reply (expired, unknown, out of replies). Seen in AstrBot#6931
# (40034024 "请求参数msg_id无效或越权"), a 2026 peer's error table and a peer's production notes (40034005
# / 40034031 "msg_id已过期"). 22010/304023-style "reply limit" codes are not documented anywhere we read.
ANCHOR_DEAD = frozenset({40034005, 40034024, 40034025, 40034026, 40034027, 40034031, 40034128, 304027, 304103})
# Proactive (no msg_id) send refused: 40034102 "主动消息失败, 无权限" (openclaw-qqbot#52, 2026-02),
# 40034100 (active rate limited) and 40034105 (active messages off) from a 2026 peer's table, 22009
# ("消息发送超频" in the old docs). The adapter defers the send until the user writes again.
PROACTIVE_REFUSED = frozenset({22009, 40034100, 40034102, 40034105})
# The same (msg_id, msg_seq) was already accepted: "消息被去重，请检查请求msgseq".
DUPLICATE_SEQ = 40054005
# REST auth failures (token missing/expired); HTTP 401.
AUTH_CODES = frozenset({11241, 11242, 11243, 11244})

_CERTAINLY_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class QQApiError(Exception):
    """A REST call failed. `code` is the platform's error code when it sent one."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        maybe_delivered: bool = False,
        attempts: int = 1,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.maybe_delivered = maybe_delivered
        self.attempts = attempts

    @property
    def transient(self) -> bool:
        return self.status is None or self.status == 429 or self.status >= 500


def _code_of(data: Any) -> int | None:
    if not isinstance(data, dict):
        return None
    for key in ("code", "err_code"):
        value = data.get(key)
        if value is None:
            continue
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return None


def _message_of(data: Any) -> str:
    if isinstance(data, dict):
        return str(data.get("message") or data.get("msg") or "")[:300]
    return ""


class QQApi:
    """`request()` plus the handful of endpoints the channel uses."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        tokens: AccessTokenManager,
        *,
        base_url: str,
        app_id: str,
        retries: int = 3,
        retry_initial_s: float = 1.0,
        timeout_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._http = http
        self._tokens = tokens
        self._base = base_url.rstrip("/")
        self._app_id = app_id
        self._retries = retries
        self._retry_initial = retry_initial_s
        self._timeout = timeout_s
        self._sleep = sleep
        self.unauthorized = 0  # 401 answers seen (health checks, tests)

    # ------------------------------------------------------------------ core
    async def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        what: str,
        replay_safe: bool = True,
        timeout_s: float | None = None,
        ids: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One API call with auth, the 401 refresh and transient retries; the decoded JSON object."""
        delay = self._retry_initial
        refreshed = False
        attempt = 0
        while True:
            attempt += 1
            token = await self._tokens.get()
            headers = {"Authorization": f"QQBot {token}", "X-Union-Appid": self._app_id}
            try:
                response = await self._http.request(
                    method, self._base + path, json=body, headers=headers, timeout=timeout_s or self._timeout
                )
            except httpx.HTTPError as exc:
                certain = isinstance(exc, _CERTAINLY_NOT_SENT)
                error = QQApiError(
                    f"{what}: {type(exc).__name__}", maybe_delivered=not certain, attempts=attempt
                )
                if (certain or replay_safe) and attempt <= self._retries:
                    log.warning("qq %s failed (attempt %d): %s; retrying in %.1fs", what, attempt,
                                type(exc).__name__, delay, extra=ids or {})  # fmt: skip
                    await self._sleep(delay)
                    delay *= 2
                    continue
                raise error from None
            data: Any
            try:
                data = response.json() if response.content else {}
            except ValueError:
                data = None
            status = response.status_code
            code = _code_of(data)
            if status == 401 and not refreshed:
                self.unauthorized += 1
                refreshed = True
                log.info("qq %s: 401 (code %s); refreshing the access token once", what, code, extra=ids or {})
                await self._tokens.refresh(token)
                continue
            if status == 401:
                self.unauthorized += 1
            if status == 429 or status >= 500:
                if attempt <= self._retries:
                    log.warning("qq %s: HTTP %d (code %s), attempt %d; retrying in %.1fs", what, status, code,
                                attempt, delay, extra=ids or {})  # fmt: skip
                    await self._sleep(delay)
                    delay *= 2
                    continue
                raise QQApiError(f"{what}: HTTP {status} code {code} {_message_of(data)}".rstrip(),
                                 status=status, code=code, attempts=attempt)  # fmt: skip
            if status >= 400 or (code not in (None, 0) and not _looks_ok(data)):
                raise QQApiError(f"{what}: HTTP {status} code {code} {_message_of(data)}".rstrip(),
                                 status=status, code=code, attempts=attempt)  # fmt: skip
            if not isinstance(data, dict):
                data = {}
            return data

    # ------------------------------------------------------------------ endpoints
    async def gateway_url(self) -> str:
        data = await self.request("GET", "/gateway", what="get gateway")
        url = data.get("url")
        if not isinstance(url, str) or not url:
            raise QQApiError("get gateway: no url in the answer")
        return url

    async def post_message(
        self, scope: str, target: str, body: dict[str, Any], *, passive: bool, ids: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """POST /v2/{groups|users}/{openid}/messages. Passive replies carry msg_id+msg_seq, which the
        platform de-duplicates, so they may be replayed; proactive ones may not."""
        return await self.request(
            "POST", target_path(scope, target, "messages"), body, what="send message", replay_safe=passive, ids=ids
        )

    async def upload_file(
        self, scope: str, target: str, body: dict[str, Any], *, ids: dict[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        return await self.request("POST", target_path(scope, target, "files"), body, what="upload file",
                                  timeout_s=timeout_s, ids=ids)  # fmt: skip

    async def upload_prepare(self, scope: str, target: str, body: dict[str, Any],
                             *, ids: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        return await self.request("POST", target_path(scope, target, "upload_prepare"), body,
                                  what="upload prepare", ids=ids)  # fmt: skip

    async def upload_part_finish(self, scope: str, target: str, body: dict[str, Any],
                                 *, ids: dict[str, str] | None = None) -> dict[str, Any]:  # fmt: skip
        return await self.request("POST", target_path(scope, target, "upload_part_finish"), body,
                                  what="upload part finish", ids=ids)  # fmt: skip

    async def put_part(self, url: str, data: bytes, *, timeout_s: float, ids: dict[str, str] | None = None) -> None:
        """PUT one part to its presigned storage URL. No Authorization header: that host is not the API."""
        delay = self._retry_initial
        for attempt in range(1, self._retries + 2):
            try:
                response = await self._http.put(
                    url, content=data, headers={"Content-Type": "application/octet-stream"}, timeout=timeout_s
                )
            except httpx.HTTPError as exc:
                problem = type(exc).__name__
            else:
                if response.status_code < 300:
                    return
                if response.status_code < 500 and response.status_code != 429:
                    raise QQApiError(f"upload part: HTTP {response.status_code}", status=response.status_code)
                problem = f"HTTP {response.status_code}"
            if attempt > self._retries:
                raise QQApiError(f"upload part: {problem}", attempts=attempt)
            log.warning("qq upload part failed (%s), attempt %d; retrying in %.1fs", problem, attempt, delay,
                        extra=ids or {})  # fmt: skip
            await self._sleep(delay)
            delay *= 2


def _looks_ok(data: Any) -> bool:
    """A 200 body with a `code` field is still a success when it carries the result (e.g. an `id`)."""
    return isinstance(data, dict) and any(key in data for key in ("id", "file_info", "upload_id", "url"))


def target_path(scope: str, target: str, tail: str) -> str:
    if scope not in ("groups", "users"):
        raise ValueError(f"unknown QQ scope {scope!r}")
    return f"/v2/{scope}/{quote(target, safe='')}/{tail}"
