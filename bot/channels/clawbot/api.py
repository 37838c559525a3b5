"""A small httpx client of the iLink bot API (`/ilink/bot/*`, channels-2026.md §1.2–§1.8).

It only speaks the protocol: headers, `base_info`, JSON in and out, error classification. Rules
(quotas, context tokens, retries of whole sends) live in the adapter. The bot token is held here and
sent only in the `Authorization` header; it never appears in a URL, a log line or an exception.

JSON ids (`message_id`, …) are uint64; `json.loads` keeps them as exact Python ints and nothing here
converts them to float.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

import httpx

from bot.channels.clawbot.settings import ClawbotSettings

log = logging.getLogger(__name__)

RET_OK = 0
RET_STALE_CONTEXT = -2  # sendmessage: missing/stale/over-quota context token, or rate limited
RET_SESSION_EXPIRED = -14  # bot token no longer valid: the operator must scan a new QR code

# Errors raised before the request could reach the server: certainly nothing was delivered.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class IlinkTransportError(Exception):
    """The HTTP exchange failed (network error, timeout, HTTP 4xx/5xx, unreadable body).

    `maybe_sent` is True when the server may have received and acted on the request (read timeout,
    connection dropped after sending); `status` is the HTTP status when there was one.
    """

    def __init__(self, message: str, *, maybe_sent: bool, status: int | None = None,
                 timeout: bool = False) -> None:  # fmt: skip
        super().__init__(message)
        self.maybe_sent = maybe_sent
        self.status = status
        self.timeout = timeout

    @property
    def retryable(self) -> bool:
        """Safe and useful to try again: nothing was delivered and the server may recover."""
        return not self.maybe_sent and (self.status is None or self.status >= 500)


class IlinkError(Exception):
    """HTTP 200 with a non-zero `ret`/`errcode`."""

    def __init__(self, path: str, ret: int, errcode: int | None, errmsg: str) -> None:
        super().__init__(f"{path}: ret={ret} errcode={errcode} errmsg={errmsg[:200]!r}")
        self.path = path
        self.ret = ret
        self.errcode = errcode
        self.errmsg = errmsg

    @property
    def session_expired(self) -> bool:
        return RET_SESSION_EXPIRED in (self.ret, self.errcode)


def result_code(data: dict[str, Any]) -> tuple[int, int | None]:
    """(`ret`, `errcode`) of a response body; a body without `ret` counts as success."""
    ret = data.get("ret", RET_OK)
    errcode = data.get("errcode")
    try:
        ret = int(ret) if ret is not None else RET_OK
    except (TypeError, ValueError):
        ret = -1
    try:
        errcode = int(errcode) if errcode is not None else None
    except (TypeError, ValueError):
        errcode = None
    if ret == RET_OK and errcode not in (None, 0):
        ret = errcode
    return ret, errcode


def random_uin() -> str:
    """`X-WECHAT-UIN`: base64 of the decimal string of a random uint32, fresh per request."""
    return base64.b64encode(str(secrets.randbits(32)).encode("ascii")).decode("ascii")


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


class IlinkApi:
    """Requests against one API origin with one bot token (or none, for the QR login endpoints)."""

    def __init__(self, http: httpx.AsyncClient, settings: ClawbotSettings, *, base_url: str,
                 token: str | None = None) -> None:  # fmt: skip
        self._http = http
        self._settings = settings
        self.base_url = base_url.rstrip("/")
        self._token = token

    def __repr__(self) -> str:  # never print the token
        return f"IlinkApi({self.base_url}, token={'set' if self._token else 'unset'})"

    def set_token(self, token: str | None, base_url: str | None = None) -> None:
        self._token = token
        if base_url:
            self.base_url = base_url.rstrip("/")

    # ------------------------------------------------------------------ plumbing
    def base_info(self) -> dict[str, str]:
        return {"channel_version": self._settings.channel_version, "bot_agent": self._settings.bot_agent}

    def headers(self) -> dict[str, str]:
        headers = {
            "Content-Type": "application/json",
            "X-WECHAT-UIN": random_uin(),
            "iLink-App-Id": "bot",
            "iLink-App-ClientVersion": str(self._settings.client_version),
        }
        if self._token:
            headers["AuthorizationType"] = "ilink_bot_token"
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    async def _exchange(self, method: str, url: str, path: str, *, body: dict[str, Any] | None,
                        timeout: float | None) -> dict[str, Any]:  # fmt: skip
        content = None if body is None else json.dumps(body, ensure_ascii=False).encode("utf-8")
        limit = self._settings.http_timeout_s if timeout is None else timeout
        try:
            response = await self._http.request(method, url, content=content, headers=self.headers(),
                                                 timeout=httpx.Timeout(limit, connect=min(limit, 10.0)))
        except _NOT_SENT as exc:
            raise IlinkTransportError(f"{path}: {_describe(exc)}", maybe_sent=False,
                                      timeout=isinstance(exc, httpx.TimeoutException)) from None
        except httpx.TimeoutException as exc:
            raise IlinkTransportError(f"{path}: {_describe(exc)}", maybe_sent=True, timeout=True) from None
        except httpx.HTTPError as exc:
            raise IlinkTransportError(f"{path}: {_describe(exc)}", maybe_sent=True) from None
        if response.status_code >= 400:
            raise IlinkTransportError(f"{path}: HTTP {response.status_code}", maybe_sent=False,
                                      status=response.status_code)
        if not response.content.strip():
            return {}
        try:
            data = json.loads(response.content)
        except ValueError:
            raise IlinkTransportError(f"{path}: response is not JSON", maybe_sent=True,
                                      status=response.status_code) from None
        if not isinstance(data, dict):
            raise IlinkTransportError(f"{path}: response is not a JSON object", maybe_sent=True,
                                      status=response.status_code)
        return data

    async def post(self, path: str, body: dict[str, Any], *, timeout: float | None = None,
                   check: bool = True) -> dict[str, Any]:  # fmt: skip
        """POST `body` + `base_info` to `path`; IlinkError on a non-zero `ret` when `check`."""
        payload = dict(body)
        payload["base_info"] = self.base_info()
        data = await self._exchange("POST", self.base_url + path, path, body=payload, timeout=timeout)
        if check:
            ret, errcode = result_code(data)
            if ret != RET_OK:
                raise IlinkError(path, ret, errcode, str(data.get("errmsg") or ""))
        return data

    # ------------------------------------------------------------------ login (unauthenticated)
    async def get_bot_qrcode(self, local_tokens: list[str] | None = None) -> dict[str, Any]:
        path = "/ilink/bot/get_bot_qrcode"
        query = urlencode({"bot_type": self._settings.bot_type})
        body = {"local_token_list": list(local_tokens or [])[:10], "base_info": self.base_info()}
        data = await self._exchange("POST", f"{self.base_url}{path}?{query}", path, body=body, timeout=None)
        ret, errcode = result_code(data)
        if ret != RET_OK:
            raise IlinkError(path, ret, errcode, str(data.get("errmsg") or ""))
        return data

    async def get_qrcode_status(self, qrcode: str, *, base_url: str | None = None,
                                verify_code: str | None = None, timeout: float | None = None) -> dict[str, Any]:  # fmt: skip
        path = "/ilink/bot/get_qrcode_status"
        params = {"qrcode": qrcode}
        if verify_code:
            params["verify_code"] = verify_code
        url = f"{(base_url or self.base_url).rstrip('/')}{path}?{urlencode(params)}"
        return await self._exchange("GET", url, path, body=None, timeout=timeout)

    # ------------------------------------------------------------------ bot endpoints
    async def getupdates(self, cursor: str, *, timeout: float) -> dict[str, Any]:
        return await self.post("/ilink/bot/getupdates", {"get_updates_buf": cursor}, timeout=timeout)

    async def sendmessage(self, msg: dict[str, Any]) -> dict[str, Any]:
        """Unchecked: the caller classifies `ret` (−2 means "later", not "failed"). An empty body
        (older servers' refusal for a missing context) is reported as ret −2."""
        data = await self.post("/ilink/bot/sendmessage", {"msg": msg}, check=False)
        return data if data else {"ret": RET_STALE_CONTEXT, "errmsg": "empty response"}

    async def getuploadurl(self, request: dict[str, Any]) -> dict[str, Any]:
        return await self.post("/ilink/bot/getuploadurl", request)

    async def notifystart(self) -> dict[str, Any]:
        return await self.post("/ilink/bot/msg/notifystart", {})

    async def notifystop(self, *, timeout: float | None = None) -> dict[str, Any]:
        return await self.post("/ilink/bot/msg/notifystop", {}, timeout=timeout)

    async def getconfig(self, user_id: str, context_token: str) -> dict[str, Any]:
        return await self.post("/ilink/bot/getconfig", {"ilink_user_id": user_id, "context_token": context_token})

    async def sendtyping(self, user_id: str, typing_ticket: str, *, typing: bool = True) -> dict[str, Any]:
        body = {"ilink_user_id": user_id, "typing_ticket": typing_ticket, "status": 1 if typing else 2}
        return await self.post("/ilink/bot/sendtyping", body)
