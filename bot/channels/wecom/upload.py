"""Chunked media upload over the long connection (`aibot_upload_media_init/chunk/finish`).

1. init `{type, filename, total_size, total_chunks, md5}` → ack body `{upload_id}`;
2. chunk `{upload_id, chunk_index (0-based), base64_data}`, ≤ 512 KiB per chunk before base64,
   ≤ 100 chunks; sent with the SDK's limited concurrency (all for ≤ 4 chunks, 3 for ≤ 10, 2 above:
   WeCom answers many parallel chunks with "system error"); each chunk is retried on refusal/timeout;
3. finish `{upload_id}` → ack body `{media_id}` (valid three days).

A lost connection is not retried here: the caller's next attempt starts a fresh upload after the
reconnect (a half-finished upload_id is useless on a new socket).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bot.channels.wecom.protocol import (
    CMD_UPLOAD_CHUNK,
    CMD_UPLOAD_FINISH,
    CMD_UPLOAD_INIT,
    AckError,
    AckTimeout,
    ConnectionLost,
    WecomConnection,
)
from bot.channels.wecom.settings import MAX_CHUNK_BYTES, MAX_UPLOAD_CHUNKS

log = logging.getLogger(__name__)


class UploadError(Exception):
    """The upload failed while the connection stayed up (refused, too large, no media_id)."""


@dataclass(frozen=True, slots=True)
class UploadResult:
    media_id: str
    size: int
    chunks: int
    md5: str


def chunk_size_for(total_size: int, preferred: int) -> int:
    """`preferred` (≤ 512 KiB), raised when needed so the file fits in ≤ 100 chunks."""
    size = min(max(1, preferred), MAX_CHUNK_BYTES)
    return max(size, math.ceil(total_size / MAX_UPLOAD_CHUNKS))


def concurrency_for(chunks: int) -> int:
    if chunks <= 4:
        return max(1, chunks)
    if chunks <= 10:
        return 3
    return 2


async def upload_media(
    conn: WecomConnection,
    data: bytes,
    *,
    media_type: str,
    filename: str,
    chunk_bytes: int,
    retries: int,
    retry_initial_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> UploadResult:
    """Upload `data` and return its media_id. Raises ConnectionLost (socket gone: retry after a
    reconnect) or UploadError (the server refused; retrying the same bytes will not help soon)."""
    total = len(data)
    if total == 0:
        raise UploadError("empty file")
    size = chunk_size_for(total, chunk_bytes)
    if size > MAX_CHUNK_BYTES:
        raise UploadError(f"{total} bytes do not fit in {MAX_UPLOAD_CHUNKS} chunks of {MAX_CHUNK_BYTES}")
    chunks = [data[i : i + size] for i in range(0, total, size)]
    md5 = hashlib.md5(data).hexdigest()
    try:
        init = await conn.request(
            CMD_UPLOAD_INIT,
            {"type": media_type, "filename": filename, "total_size": total, "total_chunks": len(chunks), "md5": md5},
        )
    except (AckError, AckTimeout) as exc:
        raise UploadError(f"upload init failed: {exc}") from exc
    upload_id = str((init.get("body") or {}).get("upload_id") or "")
    if not upload_id:
        raise UploadError("upload init ack without upload_id")

    gate = asyncio.Semaphore(concurrency_for(len(chunks)))

    async def send_chunk(index: int, payload: bytes) -> None:
        body = {"upload_id": upload_id, "chunk_index": index, "base64_data": base64.b64encode(payload).decode()}
        delay = retry_initial_s
        async with gate:
            for attempt in range(retries + 1):
                try:
                    await conn.request(CMD_UPLOAD_CHUNK, body)
                    return
                except (AckError, AckTimeout) as exc:
                    if attempt >= retries:
                        raise UploadError(f"chunk {index} failed after {attempt + 1} tries: {exc}") from exc
                    log.warning("wecom upload: chunk %d of %s failed (%s), retrying", index, filename, exc)
                    await sleep(delay)
                    delay *= 2

    try:
        async with asyncio.TaskGroup() as group:
            for index, payload in enumerate(chunks):
                group.create_task(send_chunk(index, payload))
    except BaseExceptionGroup as errors:
        lost = errors.subgroup(ConnectionLost)
        if lost is not None:
            raise ConnectionLost(f"connection lost during upload: {lost.exceptions[0]}", written=True) from None
        refused = errors.subgroup(UploadError)
        if refused is not None:
            raise refused.exceptions[0] from None
        raise

    try:
        done = await conn.request(CMD_UPLOAD_FINISH, {"upload_id": upload_id})
    except (AckError, AckTimeout) as exc:
        raise UploadError(f"upload finish failed: {exc}") from exc
    media_id = str((done.get("body") or {}).get("media_id") or "")
    if not media_id:
        raise UploadError("upload finish ack without media_id")
    log.info("wecom upload: %s %s, %d bytes in %d chunks", media_type, filename, total, len(chunks))
    return UploadResult(media_id, total, len(chunks), md5)
