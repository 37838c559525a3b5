"""A minimal async JSON-over-HTTP client (stdlib `urllib` run in a worker thread).

Injectable: anything with the same `post_json` signature can replace it (a shared client of the app,
or an httpx-based one later). Loopback addresses never go through an environment proxy.
"""

from __future__ import annotations

import asyncio
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
MAX_RESPONSE_BYTES = 1 << 20  # a prompt translation is a few hundred bytes; never buffer a huge body


class HttpTimeout(Exception):
    """No complete answer within the time limit."""


class HttpConnectionError(Exception):
    """The server could not be reached (refused, DNS, reset...)."""


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    body: bytes


class HttpClient(Protocol):
    async def post_json(
        self, url: str, payload: Mapping[str, Any], *, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse: ...


class UrllibHttpClient:
    def __init__(self) -> None:
        self._direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self._default = urllib.request.build_opener()

    def _post_sync(self, url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> HttpResponse:
        host = urlsplit(url).hostname or ""
        opener = self._direct if host in _LOOPBACK else self._default
        request = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with opener.open(request, timeout=timeout_s) as resp:
                return HttpResponse(status=resp.status, body=resp.read(MAX_RESPONSE_BYTES))
        except urllib.error.HTTPError as exc:
            return HttpResponse(status=exc.code, body=exc.read(MAX_RESPONSE_BYTES) if exc.fp else b"")
        except TimeoutError as exc:
            raise HttpTimeout(str(exc)) from exc
        except urllib.error.URLError as exc:
            if isinstance(exc.reason, TimeoutError | socket.timeout):
                raise HttpTimeout(str(exc.reason)) from exc
            raise HttpConnectionError(str(exc.reason)) from exc
        except (ConnectionError, OSError) as exc:
            raise HttpConnectionError(str(exc)) from exc

    async def post_json(
        self, url: str, payload: Mapping[str, Any], *, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        all_headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        try:
            # urllib's timeout is per socket operation; the outer wait_for bounds the whole exchange.
            return await asyncio.wait_for(
                asyncio.to_thread(self._post_sync, url, data, all_headers, timeout_s), timeout=timeout_s
            )
        except TimeoutError as exc:
            raise HttpTimeout(f"no answer within {timeout_s:.1f}s") from exc
