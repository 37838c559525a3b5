"""The async JSON-over-HTTP client of the translator and the moderation hook: pooled `httpx.AsyncClient`s.

Injectable: anything with the same `post_json` signature can replace it. Connections are kept alive and
reused (one pool per event loop: an `httpx.AsyncClient` belongs to the loop it first ran on, and tests or
the CLI may call from several `asyncio.run`s). Loopback addresses never go through an environment proxy;
other hosts honour `HTTPS_PROXY` / `NO_PROXY`. Answers are read up to `MAX_RESPONSE_BYTES`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

import httpx

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


class HttpxClient:
    """`post_json` over pooled `httpx.AsyncClient`s; `aclose()` when done (the owner's shutdown)."""

    def __init__(self, *, max_connections: int = 20, max_keepalive: int = 10, keepalive_expiry_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_keepalive,
                                    keepalive_expiry=keepalive_expiry_s)  # fmt: skip
        self._transport = transport  # tests: httpx.MockTransport
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: dict[bool, httpx.AsyncClient] = {}  # direct (loopback) → client

    def _client(self, direct: bool) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # the clients of a finished loop cannot be used (nor closed) here
            self._loop, self._clients = loop, {}
        client = self._clients.get(direct)
        if client is None:
            client = httpx.AsyncClient(limits=self._limits, trust_env=not direct, transport=self._transport,
                                       follow_redirects=False)  # fmt: skip
            self._clients[direct] = client
        return client

    async def _exchange(self, url: str, data: bytes, headers: dict[str, str], timeout_s: float) -> HttpResponse:
        host = urlsplit(url).hostname or ""
        client = self._client(host in _LOOPBACK)
        try:
            async with client.stream("POST", url, content=data, headers=headers,
                                     timeout=httpx.Timeout(timeout_s)) as resp:  # fmt: skip
                body = bytearray()
                async for chunk in resp.aiter_bytes():
                    body += chunk
                    if len(body) >= MAX_RESPONSE_BYTES:
                        del body[MAX_RESPONSE_BYTES:]
                        break
                return HttpResponse(status=resp.status_code, body=bytes(body))
        except httpx.TimeoutException as exc:
            raise HttpTimeout(f"{type(exc).__name__}: {exc}") from exc
        except TimeoutError as exc:
            raise HttpTimeout(str(exc) or "timed out") from exc
        except (httpx.RequestError, httpx.InvalidURL, OSError) as exc:
            raise HttpConnectionError(f"{type(exc).__name__}: {exc}") from exc

    async def post_json(
        self, url: str, payload: Mapping[str, Any], *, headers: Mapping[str, str], timeout_s: float
    ) -> HttpResponse:
        data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        all_headers = {"Content-Type": "application/json", "Accept": "application/json", **headers}
        try:
            # httpx's timeout is per operation (connect, each read...); this bounds the whole exchange.
            async with asyncio.timeout(timeout_s):
                return await self._exchange(url, data, all_headers, timeout_s)
        except TimeoutError as exc:
            raise HttpTimeout(f"no answer within {timeout_s:.1f}s") from exc

    async def aclose(self) -> None:
        """Close the pools of the running loop (those of a finished loop are only dropped)."""
        clients, self._clients = self._clients, {}
        if self._loop is asyncio.get_running_loop():
            for client in clients.values():
                await client.aclose()
