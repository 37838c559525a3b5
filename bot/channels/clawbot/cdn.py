"""The WeChat C2C CDN: upload of encrypted media and download of inbound media (channels-2026.md §1.6/§1.7).

Uploads POST the AES-128-ECB ciphertext; success is HTTP 200 *with* an `x-encrypted-param` header (the
download parameter the media item must carry). 4xx is final (reason in `x-error-message`); 5xx,
network errors and a missing header are retried with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import httpx

log = logging.getLogger(__name__)

Sleep = Callable[[float], Awaitable[None]]


class CdnError(Exception):
    """An upload or download failed; `retryable` is False for a definite refusal (HTTP 4xx)."""

    def __init__(self, message: str, *, retryable: bool, status: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status


class TooLarge(ValueError):
    """The downloaded media is bigger than the caller allows."""


def upload_url(cdn_base_url: str, response: dict[str, Any], filekey: str) -> str:
    """`upload_full_url` when the server gave one, else the legacy `upload_param` form."""
    full = str(response.get("upload_full_url") or "").strip()
    if full:
        return full
    param = str(response.get("upload_param") or "").strip()
    if not param:
        raise CdnError("getuploadurl returned neither upload_full_url nor upload_param", retryable=False)
    return f"{cdn_base_url.rstrip('/')}/upload?encrypted_query_param={quote(param, safe='')}&filekey={quote(filekey, safe='')}"


def download_url(cdn_base_url: str, media: dict[str, Any]) -> str:
    full = str(media.get("full_url") or "").strip()
    if full:
        return full
    param = str(media.get("encrypt_query_param") or "").strip()
    if not param:
        raise CdnError("media has neither full_url nor encrypt_query_param", retryable=False)
    return f"{cdn_base_url.rstrip('/')}/download?encrypted_query_param={quote(param, safe='')}"


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__


async def _upload_once(http: httpx.AsyncClient, url: str, ciphertext: bytes, timeout: float) -> str:
    try:
        response = await http.post(url, content=ciphertext, headers={"Content-Type": "application/octet-stream"},
                                   timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))
    except httpx.HTTPError as exc:
        raise CdnError(f"CDN upload: {_describe(exc)}", retryable=True) from None
    status = response.status_code
    if 400 <= status < 500:
        reason = response.headers.get("x-error-message") or response.text[:200] or "no reason given"
        raise CdnError(f"CDN upload refused: HTTP {status}: {reason[:200]}", retryable=False, status=status)
    if status >= 500 or status != 200:
        reason = response.headers.get("x-error-message") or ""
        raise CdnError(f"CDN upload: HTTP {status} {reason[:200]}".rstrip(), retryable=True, status=status)
    param = response.headers.get("x-encrypted-param", "").strip()
    if not param:
        raise CdnError("CDN upload: HTTP 200 without x-encrypted-param header", retryable=True, status=status)
    return param


async def upload(http: httpx.AsyncClient, url: str, ciphertext: bytes, *, attempts: int, initial_backoff_s: float,
                 timeout_s: float, sleep: Sleep = asyncio.sleep) -> str:  # fmt: skip
    """POST `ciphertext` to `url`; the `x-encrypted-param` download parameter, or CdnError."""
    delay = initial_backoff_s
    for attempt in range(1, max(1, attempts) + 1):
        try:
            return await _upload_once(http, url, ciphertext, timeout_s)
        except CdnError as exc:
            if not exc.retryable or attempt >= attempts:
                raise
            log.warning("CDN upload attempt %d/%d failed (%s); retrying in %.1fs", attempt, attempts, exc, delay)
            await sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


async def download(http: httpx.AsyncClient, url: str, *, max_bytes: int, timeout_s: float) -> bytes:
    """GET the ciphertext at `url`; TooLarge when it exceeds `max_bytes`, CdnError when it fails."""
    try:
        async with http.stream("GET", url, timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0))) as response:
            if response.status_code != 200:
                raise CdnError(f"CDN download: HTTP {response.status_code}", retryable=response.status_code >= 500,
                               status=response.status_code)
            declared = response.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise TooLarge(f"media is {declared} bytes, more than {max_bytes}")
            chunks: list[bytes] = []
            total = 0
            async for chunk in response.aiter_bytes():
                total += len(chunk)
                if total > max_bytes:
                    raise TooLarge(f"media is more than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise CdnError(f"CDN download: {_describe(exc)}", retryable=True) from None
