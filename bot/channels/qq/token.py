"""The QQ bot access token: fetched with AppID + AppSecret, refreshed before it expires.

`POST token_url {"appId", "clientSecret"}` → `{"access_token", "expires_in"}` (`expires_in` arrives as a
string on the real service, as an int in some peers' fakes; both are accepted). The token goes into
`Authorization: QQBot <access_token>` on REST calls and into the gateway's Identify/Resume.

Refresh is single-flight: concurrent callers that find the token stale (or that got a 401 with the same
token) wait for one fetch. Neither the secret nor any token is ever logged or put in an exception.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

log = logging.getLogger(__name__)


class TokenRefused(Exception):
    """The token endpoint refused the AppID/AppSecret (no retry helps; the operator must fix it)."""


class TokenUnavailable(Exception):
    """The token endpoint could not be reached or failed (network error, 5xx); worth retrying."""


class AccessTokenManager:
    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        token_url: str,
        app_id: str,
        secret: str,
        refresh_margin_s: float,
        timeout_s: float = 15.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._http = http
        self._url = token_url
        self._app_id = app_id
        self.__secret = secret
        self._margin = refresh_margin_s
        self._timeout = timeout_s
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lifetime = 0.0
        self._lock = asyncio.Lock()
        self.fetches = 0  # how many tokens were fetched (health checks, tests)

    def __repr__(self) -> str:  # never show the secret or the token
        return f"AccessTokenManager(app_id={self._app_id!r}, token={'set' if self._token else 'unset'})"

    @property
    def current(self) -> str | None:
        """The token in hand (possibly stale), without fetching."""
        return self._token

    def _fresh(self) -> bool:
        if self._token is None:
            return False
        # A margin larger than half the lifetime would make every token look stale at once.
        margin = min(self._margin, self._lifetime / 2)
        return self._clock() < self._expires_at - margin

    async def get(self) -> str:
        """A token that is valid for at least the refresh margin; fetches one when needed."""
        if self._fresh():
            assert self._token is not None
            return self._token
        async with self._lock:
            if self._fresh():
                assert self._token is not None
                return self._token
            return await self._fetch("expiring")

    async def refresh(self, stale: str | None) -> str:
        """Fetch a new token because `stale` was refused (401). If another caller already replaced
        `stale`, that newer token is returned without another fetch."""
        async with self._lock:
            if self._token is not None and self._token != stale and self._fresh():
                return self._token
            return await self._fetch("refused by the API")

    async def _fetch(self, reason: str) -> str:
        body = {"appId": self._app_id, "clientSecret": self.__secret}
        try:
            response = await self._http.post(self._url, json=body, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise TokenUnavailable(f"QQ token endpoint unreachable: {type(exc).__name__}") from None
        if response.status_code >= 500:
            raise TokenUnavailable(f"QQ token endpoint failed: HTTP {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TokenUnavailable(f"QQ token endpoint gave no JSON object (HTTP {response.status_code})")
        token = data.get("access_token")
        if not token or not isinstance(token, str):
            code = data.get("code", data.get("err_code"))
            message = str(data.get("message") or data.get("msg") or "")[:200]
            raise TokenRefused(f"HTTP {response.status_code}, code {code}: {message}".strip())
        try:
            lifetime = float(data.get("expires_in") or 0)
        except (TypeError, ValueError):
            lifetime = 0.0
        if lifetime <= 0:
            lifetime = 7200.0  # the documented lifetime, when the field is missing or odd
        self._token = token
        self._lifetime = lifetime
        self._expires_at = self._clock() + lifetime
        self.fetches += 1
        log.info("qq access token fetched (%s), valid for %.0f s", reason, lifetime, extra={"channel": "qq"})
        return token
