"""The Starlette app of the playground and the dashboard, built from its dependencies.

    create_app(WebDeps(settings, channel, quota, queue, executor), dashboard_token=...)

Playground (no login; bind it to 127.0.0.1, the default):
  GET  /                      the chat page (static HTML/JS/CSS, no build step)
  GET  /api/config            room, members, bot name, limits
  POST /api/send              multipart: user_id, text, quote (optional: the id of an earlier upload the text
                              quotes), image (optional; size-limited, checked by
                              `bot.images.validate_image` before the bot ever sees it). A refusal is
                              {"ok": false, "error": "<Chinese text>"}, with "field": "image" when the
                              picture was the problem (the page then drops it)
  GET  /api/events            server-sent events: `chat` (history after Last-Event-ID, then live) and
                              `jobs` (the room's queued/running jobs with position and progress)
  GET  /media/video/<job id>  the MP4 of a finished job; files are found by job id, never by path
  GET  /media/cover/<job id>  its cover JPEG
  GET  /media/upload/<id>     an image a member uploaded (kept in memory)
  GET  /favicon.ico           the icon (also /static/favicon.svg, linked from every page)
Dashboard: see `bot.web.dashboard` (token from the environment, `DASHBOARD_TOKEN_ENV`).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bot.images import ImageRejected, validate_image
from bot.jobs.models import Job, JobState
from bot.settings import Settings
from bot.tasks import cancel_and_wait
from bot.web.channel import PlaygroundChannel
from bot.web.common import STATIC_DIR, same_origin, sse
from bot.web.dashboard import dashboard_routes

log = logging.getLogger(__name__)

DASHBOARD_TOKEN_ENV = "XIAOAI_DASHBOARD_TOKEN"
MAX_TEXT_CHARS = 2000
_UPLOAD_ID = re.compile(r"^img-[0-9a-f]{8}-\d{1,12}$")
_MIME = {"JPEG": "image/jpeg", "MPO": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif",
         "BMP": "image/bmp"}
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data: blob:; media-src 'self'; "
    "style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
}


@dataclass
class WebDeps:
    """Everything the web app needs, already started by `bot.app.App` (or built by a test)."""

    settings: Settings
    channel: PlaygroundChannel
    quota: Any  # bot.store.quota.QuotaBook
    queue: Any  # bot.jobs.queue.JobQueue
    executor: Any | None = None  # bot.executors.Executor, when this process runs one
    hub: Any | None = None  # bot.channels.hub.ChannelHub: the dashboard shows every channel's status
    clock: Callable[[], float] = time.time
    status_poll_s: float = 0.5  # how often job progress is pushed to open pages
    extra: dict[str, Any] = field(default_factory=dict)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message, **extra}, status_code=status)


def job_file(deps: WebDeps, job_id: int, which: str) -> Path | None:
    """The video/cover of a finished job, only if it lies inside the worker's output directory."""
    job: Job | None = deps.queue.get(job_id)
    if job is None or job.state not in (JobState.SUCCEEDED, JobState.DELIVERED):
        return None
    raw = job.video_path if which == "video" else job.cover_path
    if not raw:
        return None
    path = Path(raw).resolve()
    root = Path(deps.settings.worker.output_dir).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        log.warning("job %s: %s file %s is outside %s or missing", job_id, which, path, root,
                    extra={"job_id": job_id})
        return None
    return path


def room_jobs(deps: WebDeps) -> list[dict[str, Any]]:
    """The playground room's pending jobs in queue order, with place and progress."""
    room = deps.channel.settings.room_id
    out: list[dict[str, Any]] = []
    for job in deps.queue.snapshot():
        if job.chat_id != room:
            continue
        position, eta = deps.queue.place(job.id)
        out.append({
            "id": job.id, "user_id": job.user_id, "user_name": job.user_name, "prompt": job.prompt,
            "state": str(job.state), "position": position, "eta_s": None if eta is None else round(eta),
            "progress": round(float(job.progress or 0.0), 3), "progress_text": job.progress_text,
            "cancel_requested": job.cancel_requested, "image": bool(job.image_path),
        })
    return out


class JobWatcher:
    """Pushes the room's job list to open playground pages whenever it changes."""

    def __init__(self, deps: WebDeps) -> None:
        self.deps = deps
        self.latest: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.latest = room_jobs(self.deps)
        self._task = asyncio.create_task(self._run(), name="playground-job-watcher")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.deps.status_poll_s)
            try:
                now = room_jobs(self.deps)
            except Exception:
                log.exception("could not read the job list")
                continue
            if now != self.latest:
                self.latest = now
                self.deps.channel.publish("jobs", {"jobs": now})


# ------------------------------------------------------------------------------ playground routes
def _static(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})


async def playground_page(request: Request) -> Response:
    return _static("playground.html")


async def favicon(request: Request) -> Response:
    """Browsers ask for /favicon.ico whatever the page says: the same SVG icon the pages link to."""
    return FileResponse(STATIC_DIR / "favicon.svg", media_type="image/svg+xml",
                        headers={"Cache-Control": "public, max-age=86400"})


async def api_config(request: Request) -> Response:
    deps: WebDeps = request.app.state.deps
    pg = deps.channel.settings
    return JSONResponse({
        "room_id": pg.room_id, "room_name": pg.room_name, "bot_name": deps.channel.bot_name,
        "bot_id": deps.channel.bot_id,
        "users": [{"id": u.id, "name": u.name, "admin": u.id in deps.settings.bot.admins} for u in pg.users],
        "max_upload_bytes": pg.max_upload_bytes, "max_text_chars": MAX_TEXT_CHARS,
    })


async def _read_upload(upload: UploadFile, limit: int) -> bytes | None:
    """The file's bytes, or None when it is larger than `limit` (read at most limit + 1 bytes)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await upload.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _size_text(limit: int) -> str:
    return f"{limit / 1048576:g} MB" if limit >= 1048576 else f"{max(1, limit // 1024)} KB"


class _TooLarge(Exception):
    pass


def _image_format(data: bytes) -> str:
    """Pillow's format name from the header (the bytes were already validated)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return str(img.format)


async def api_send(request: Request) -> Response:
    deps: WebDeps = request.app.state.deps
    pg = deps.channel.settings
    limit = min(pg.max_upload_bytes, deps.settings.bot.max_image_bytes)
    if not same_origin(request):  # another web site posting into the local playground
        return error(403, "cross-origin request refused")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + 64 * 1024:
        return error(413, f"上传太大了，请选择 {_size_text(limit)} 以内的图片。", limit=limit, field="image")
    if not request.headers.get("content-type", "").startswith(("multipart/form-data",
                                                                "application/x-www-form-urlencoded")):
        return error(415, "请用表单（multipart/form-data）发送。")
    received = 0
    cap = limit + 64 * 1024  # the image plus the form's own bytes

    async def capped_receive() -> Any:  # also bounds chunked bodies that declare no length
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > cap:
                raise _TooLarge
        return message

    try:
        form = await Request(request.scope, capped_receive).form(max_files=1, max_fields=8,
                                                                 max_part_size=limit + 1024)
    except _TooLarge:
        log.info("playground: upload over %d bytes refused", cap)
        return error(413, f"上传太大了，请选择 {_size_text(limit)} 以内的图片。", limit=limit, field="image")
    except Exception as exc:  # malformed body, too many parts, a field over max_part_size
        log.info("playground: bad form: %s", exc)
        return error(400, "表单无效或上传太大了。", field="image")
    try:
        user_id = str(form.get("user_id") or "")
        text = str(form.get("text") or "")
        upload = form.get("image")
        quote = str(form.get("quote") or "") or None  # an earlier upload this text quotes
        if deps.channel.user(user_id) is None:
            return error(400, "没有这个试玩用户。")
        if quote is not None and (not _UPLOAD_ID.match(quote) or deps.channel.image_upload(quote) is None):
            return error(400, "引用的图片已经不在了，请重新发送图片。", field="quote")
        if quote is not None and not text.strip():
            return error(400, "引用图片时请写上文字，例如 /视频 提示词。", field="quote")
        if len(text) > MAX_TEXT_CHARS:
            return error(400, f"消息太长了（最多 {MAX_TEXT_CHARS} 字）。")
        image: bytes | None = None
        mime = "image/png"
        if isinstance(upload, UploadFile) and (upload.filename or upload.size):
            declared_type = (upload.content_type or "").lower()
            if not declared_type.startswith("image/"):
                return error(415, "只能上传图片（JPG、PNG、WEBP）。", field="image")
            image = await _read_upload(upload, limit)
            if image is None:
                return error(413, f"图片太大了，请选择 {_size_text(limit)} 以内的图片。", limit=limit, field="image")
            try:
                validate_image(image, max_bytes=limit, max_pixels=deps.settings.bot.max_image_pixels)
            except ImageRejected as err:
                return error(415, str(err), field="image")
            mime = _MIME.get(_image_format(image), "image/png")
        elif upload is not None and not isinstance(upload, UploadFile) and str(upload):
            return error(400, "image 必须是文件。", field="image")
        if image is None and not text.strip():
            return error(400, "消息是空的。")
    finally:
        await form.close()
    try:
        messages = await deps.channel.post(user_id, text, image, image_mime=mime, quote_image=quote)
    except KeyError:  # the quoted upload was dropped from memory meanwhile
        return error(400, "引用的图片已经不在了，请重新发送图片。", field="quote")
    return JSONResponse({"ok": True, "message_ids": [m.message_id for m in messages]})


async def api_events(request: Request) -> Response:
    deps: WebDeps = request.app.state.deps
    channel = deps.channel
    watcher: JobWatcher = request.app.state.watcher
    raw = request.headers.get("last-event-id") or request.query_params.get("since") or "0"
    since = int(raw) if raw.isdigit() else 0

    async def stream() -> AsyncIterator[bytes]:
        queue = channel.subscribe()
        try:
            yield b"retry: 1000\n\n"
            last = since
            for event in channel.history(since):
                last = event.seq
                yield sse("chat", event.to_json(), event.seq)
            yield sse("jobs", {"jobs": watcher.latest})
            while True:
                try:
                    item = await asyncio.wait_for(queue.get(), timeout=15)
                except TimeoutError:
                    if queue not in channel._subscribers and queue.empty():
                        return
                    yield b": keep-alive\n\n"
                    continue
                if item is None:
                    return
                kind, data = item
                if kind == "chat":
                    if data["seq"] <= last:
                        continue
                    last = data["seq"]
                    yield sse("chat", data, data["seq"])
                else:
                    yield sse(kind, data)
        finally:
            channel.unsubscribe(queue)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _job_media(kind: str, media_type: str, missing: str):
    """A route serving a job's video or cover by job id (never by path: see `job_file`)."""

    async def serve(request: Request) -> Response:
        deps: WebDeps = request.app.state.deps
        path = job_file(deps, int(request.path_params["job_id"]), kind)
        if path is None:
            return error(404, missing)
        return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=3600"})

    return serve


media_video = _job_media("video", "video/mp4", "没有这个视频。")
media_cover = _job_media("cover", "image/jpeg", "没有这个封面。")


async def media_upload(request: Request) -> Response:
    deps: WebDeps = request.app.state.deps
    image_id = request.path_params["image_id"]
    found = deps.channel.image_upload(image_id) if _UPLOAD_ID.match(image_id) else None
    if found is None:
        return error(404, "没有这张图片。")
    data, mime = found
    return Response(data, media_type=mime, headers={"Cache-Control": "private, max-age=3600"})


async def healthz(request: Request) -> Response:
    deps: WebDeps = request.app.state.deps
    return JSONResponse({"ok": True, "channel": deps.channel.connected})


class _SecurityHeaders:
    """Adds `SECURITY_HEADERS` to every HTTP response (a plain ASGI wrapper: streams stay streams)."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for key, value in SECURITY_HEADERS.items():
                    if key.lower().encode() not in present:
                        headers.append((key.lower().encode(), value.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


LOOPBACK_HOSTS = ["127.0.0.1", "localhost"]


def create_app(deps: WebDeps, *, dashboard_token: str | None, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app. `dashboard_token=None` disables the dashboard (every dashboard request is refused).
    `allowed_hosts` (e.g. `LOOPBACK_HOSTS` when bound to loopback) refuses other `Host` headers, so a web
    site cannot reach the playground through DNS rebinding."""


    watcher = JobWatcher(deps)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await watcher.start()
        log.info("web app started (dashboard %s)", "enabled" if dashboard_token else "disabled")
        try:
            yield
        finally:
            await watcher.stop()

    routes = [
        Route("/", playground_page),
        Route("/healthz", healthz),
        Route("/favicon.ico", favicon),
        Route("/api/config", api_config),
        Route("/api/send", api_send, methods=["POST"]),
        Route("/api/events", api_events),
        Route("/media/video/{job_id:int}", media_video),
        Route("/media/cover/{job_id:int}", media_cover),
        Route("/media/upload/{image_id:str}", media_upload),
        *dashboard_routes(),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.deps = deps
    app.state.watcher = watcher
    app.state.dashboard_token = dashboard_token
    app.add_middleware(_SecurityHeaders)
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return app
