"""Media over the puppet gRPC protocol, beyond what python-wechaty 0.10.7 can do.

* FileBox JSON is parsed and written here, not by wechaty's `FileBox`: its `from_json` knows only
  base64/url/qrcode boxes (a 1.x server hands out UUID boxes for anything over 20 KB) and its URL
  boxes would trigger an HTTP GET.
* `download_uuid()` fetches a UUID box through the `Download` server stream and `upload_bytes()`
  stores bytes through the `Upload` client stream (returns the UUID); wechaty-grpc 0.20.19 has no
  stubs for either, so the two message pairs are declared here, field numbers as in wechaty/grpc
  `proto/wechaty/puppet/download-upload.proto`.
* Files are sent inline (base64 in one `MessageSendFile`) only below a threshold: the TypeScript
  server rejects gRPC messages over 4 MiB (about 3 MiB of raw bytes once base64-encoded).
"""

from __future__ import annotations

import base64
import json
import mimetypes
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import betterproto
import grpclib.client
import grpclib.const

DOWNLOAD_ROUTE = "/wechaty.Puppet/Download"
UPLOAD_ROUTE = "/wechaty.Puppet/Upload"

# FileBoxType numbers of the TypeScript `file-box` package.
BOX_BASE64 = 1
BOX_URL = 2
BOX_QRCODE = 3
BOX_UUID = 7


@dataclass(eq=False, repr=False)
class DownloadRequest(betterproto.Message):
    id: str = betterproto.string_field(1)


@dataclass(eq=False, repr=False)
class DownloadResponse(betterproto.Message):
    chunk: bytes = betterproto.bytes_field(1)


@dataclass(eq=False, repr=False)
class UploadRequest(betterproto.Message):
    chunk: bytes = betterproto.bytes_field(1)


@dataclass(eq=False, repr=False)
class UploadResponse(betterproto.Message):
    id: str = betterproto.string_field(1)


class MediaError(Exception):
    """A file box could not be read or written."""


class MediaTooLarge(MediaError):
    pass


@dataclass(frozen=True, slots=True)
class FileBoxRef:
    """A parsed FileBox JSON: inline bytes, a UUID to download, or something we refuse."""

    box_type: int
    name: str
    data: bytes | None = None
    uuid: str | None = None
    size: int | None = None
    media_type: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def parse_file_box(text: str) -> FileBoxRef:
    try:
        obj = json.loads(text)
    except (TypeError, ValueError) as exc:
        raise MediaError(f"file box is not JSON: {text[:80]!r}") from exc
    if not isinstance(obj, dict):
        raise MediaError("file box JSON is not an object")
    box_type = obj.get("type", obj.get("boxType"))
    name = str(obj.get("name") or "file")
    size = obj.get("size") if isinstance(obj.get("size"), int) else None
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    media_type = obj.get("mediaType") or obj.get("mimeType")
    if box_type == BOX_BASE64:
        try:
            data = base64.b64decode(obj.get("base64") or "", validate=False)
        except (ValueError, TypeError) as exc:
            raise MediaError("file box has invalid base64") from exc
        return FileBoxRef(BOX_BASE64, name, data=data, size=len(data), media_type=media_type, metadata=metadata)
    if box_type == BOX_UUID:
        uuid = obj.get("uuid")
        if not uuid:
            raise MediaError("UUID file box without uuid")
        return FileBoxRef(BOX_UUID, name, uuid=str(uuid), size=size, media_type=media_type, metadata=metadata)
    raise MediaError(f"unsupported file box type {box_type!r} (only base64 and uuid boxes are read)")


def guess_media_type(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def base64_file_box(data: bytes, name: str, *, metadata: dict[str, Any] | None = None) -> str:
    """FileBox JSON understood by python-wechaty and the TS `file-box` (both `type` and `boxType`)."""
    return json.dumps(
        {
            "type": BOX_BASE64,
            "boxType": BOX_BASE64,
            "name": name,
            "size": len(data),
            "mediaType": guess_media_type(name),
            "metadata": metadata or {},
            "base64": base64.b64encode(data).decode("ascii"),
        },
        ensure_ascii=False,
    )


def uuid_file_box(uuid: str, name: str, size: int, *, metadata: dict[str, Any] | None = None) -> str:
    return json.dumps(
        {
            "type": BOX_UUID,
            "boxType": BOX_UUID,
            "name": name,
            "size": size,
            "mediaType": guess_media_type(name),
            "metadata": metadata or {},
            "uuid": uuid,
        },
        ensure_ascii=False,
    )


async def download_uuid(
    channel: grpclib.client.Channel, uuid: str, *, max_bytes: int, timeout: float
) -> bytes:
    """Fetch the bytes behind a UUID file box through the `Download` server stream."""
    chunks: list[bytes] = []
    total = 0
    async with channel.request(
        DOWNLOAD_ROUTE,
        grpclib.const.Cardinality.UNARY_STREAM,
        DownloadRequest,
        DownloadResponse,
        timeout=timeout,
    ) as stream:
        await stream.send_message(DownloadRequest(id=uuid), end=True)
        async for message in stream:
            total += len(message.chunk)
            if total > max_bytes:
                raise MediaTooLarge(f"download exceeds {max_bytes} bytes")
            chunks.append(message.chunk)
    return b"".join(chunks)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def upload_bytes(
    channel: grpclib.client.Channel, data: bytes, *, chunk_size: int, timeout: float
) -> str:
    """Store `data` on the puppet service through the `Upload` client stream; returns its UUID."""
    async with channel.request(
        UPLOAD_ROUTE,
        grpclib.const.Cardinality.STREAM_UNARY,
        UploadRequest,
        UploadResponse,
        timeout=timeout,
    ) as stream:
        async for chunk in _chunks(data, chunk_size):
            await stream.send_message(UploadRequest(chunk=chunk))
        await stream.end()
        reply = await stream.recv_message()
    if reply is None or not reply.id:
        raise MediaError("Upload returned no uuid")
    return reply.id
