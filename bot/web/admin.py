"""The admin console of `xiaoai run`: the dashboard on the real database, `/healthz` and `/metrics`, served by
uvicorn inside the bot's own event loop (`AdminConsole`, started by `bot.serve` after `App.start`, stopped
before `App.stop`). Settings: section `admin:` (`AdminSettings`: host, port, enabled; default
127.0.0.1:8766). The playground (`xiaoai playground`) keeps its own server with the same dashboard.

  GET  /                      → /dashboard
  GET  /dashboard, /api/dashboard/*
                              the dashboard (`bot.web.dashboard`): queue with live progress, recent jobs,
                              ledger and audit, quota/ban/cancel through the chat admin commands' code, the
                              worker/GPU and every chat channel (connected, last message, login needed, error)
  GET  /media/video/<job id>, /media/cover/<job id>
                              a finished job's files, for the dashboard's links (token required)
  GET  /healthz               no token. 200 when the database answers, the generation process is alive
                              (`executor.view().process_alive`, and its generator not reported down) and at
                              least one channel is connected; else 503. The JSON body names what failed:
                              {"ok": false, "failing": ["worker"], "database": {...}, "worker": {...},
                               "channels": {...}}
  GET  /metrics               Prometheus text format (`bot.web.metrics`), behind the same token as the
                              dashboard: `Authorization: Bearer <XIAOAI_DASHBOARD_TOKEN>` (Prometheus:
                              `authorization: {credentials_file: …}`) or the dashboard's session cookie.
                              Loopback alone is not trusted: a reverse proxy on the same host makes every
                              request look local.

The token is `XIAOAI_DASHBOARD_TOKEN`; when unset a random one is made per run and printed with the link, as
the playground does (`bot.web.runner.dashboard_token`). Bound to loopback (the default), requests with another
`Host` header are refused (DNS rebinding).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from starlette.applications import Starlette
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from bot.web.common import STATIC_DIR
from bot.web.dashboard import check_token, dashboard_routes
from bot.web.metrics import CONTENT_TYPE_LATEST, build_registry, render
from bot.web.server import LOOPBACK_HOSTS, WebDeps, _SecurityHeaders, media_cover, media_video
from bot.web.settings import AdminSettings

log = logging.getLogger(__name__)

HEALTH_TIMEOUT_S = 5.0  # a database that does not answer within this is reported as down


class AdminError(RuntimeError):
    """The console cannot start (bad token, port in use); one line for the operator."""


# ------------------------------------------------------------------------------------------ health
def health_report(app: Any) -> dict[str, Any]:
    """What /healthz says (blocking: reads the database; run it in a thread)."""
    try:
        counts = app.queue.counts()
        database: dict[str, Any] = {"ok": True, "queued": counts.get("queued", 0),
                                    "running": counts.get("running", 0)}
    except Exception as exc:  # what is wrong is the answer, not an error of the endpoint
        database = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    executor = app.executor
    if executor is None:
        worker: dict[str, Any] = {"ok": False, "error": "no generation process runs in this bot"}
    else:
        try:
            view = executor.view()
            down = getattr(view, "down", None)
            worker = {"ok": bool(view.process_alive) and not down, "kind": view.kind,
                      "process_alive": bool(view.process_alive)}
            if down:
                worker["error"] = str(down)
        except Exception as exc:
            worker = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    hub = app.hub
    up, down_names = [], []
    for channel in hub.channels:
        try:
            connected = channel.name not in hub.failures and bool(channel.connected)
        except Exception:
            connected = False
        (up if connected else down_names).append(channel.name)
    channels = {"ok": bool(up), "connected": up, "not_connected": down_names}
    failing = [name for name, part in (("database", database), ("worker", worker), ("channels", channels))
               if not part["ok"]]
    return {"ok": not failing, "failing": failing, "database": database, "worker": worker, "channels": channels}


async def healthz(request: Request) -> Response:
    app = request.app.state.bot
    try:
        report = await asyncio.wait_for(asyncio.to_thread(health_report, app), HEALTH_TIMEOUT_S)
    except TimeoutError:
        report = {"ok": False, "failing": ["database"],
                  "database": {"ok": False, "error": f"no answer within {HEALTH_TIMEOUT_S:g} s"}}
    return JSONResponse(report, status_code=200 if report["ok"] else 503, headers={"Cache-Control": "no-store"})


# ------------------------------------------------------------------------------------------ metrics
async def metrics(request: Request) -> Response:
    ok, status = check_token(request)
    if not ok:
        return Response("dashboard token required\n" if status == 401 else "invalid dashboard token\n",
                        status_code=status, media_type="text/plain",
                        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None)
    body = await asyncio.to_thread(render, request.app.state.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


# ------------------------------------------------------------------------------------------ the app
def _guarded(handler: Any) -> Any:
    async def serve(request: Request) -> Response:
        ok, status = check_token(request)
        if not ok:
            return JSONResponse({"ok": False, "error": "需要管理令牌 / dashboard token required"}, status_code=status)
        return await handler(request)

    return serve


async def _home(request: Request) -> Response:
    return RedirectResponse("/dashboard", status_code=307)


def create_admin_app(app: Any, *, dashboard_token: str, allowed_hosts: list[str] | None = None,
                     registry: Any = None) -> Starlette:
    """The console's ASGI app over a started `bot.app.App` (duck-typed: settings, quota, queue, hub,
    executor, delivery)."""
    deps = WebDeps(settings=app.settings, channel=app.hub, quota=app.quota, queue=app.queue,
                   executor=app.executor, hub=app.hub)
    routes = [
        Route("/", _home),
        Route("/healthz", healthz),
        Route("/metrics", metrics),
        *dashboard_routes(),
        Route("/media/video/{job_id:int}", _guarded(media_video)),
        Route("/media/cover/{job_id:int}", _guarded(media_cover)),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]
    web = Starlette(routes=routes)
    web.state.deps = deps
    web.state.bot = app
    web.state.dashboard_token = dashboard_token
    web.state.registry = registry if registry is not None else build_registry(app)
    web.add_middleware(_SecurityHeaders)
    if allowed_hosts:
        web.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    return web


def _server_class() -> Any:
    import uvicorn

    class ConsoleServer(uvicorn.Server):
        """uvicorn that leaves signals alone: the bot (`bot.serve`) owns SIGINT/SIGTERM and stops us."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return ConsoleServer


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class AdminConsole:
    """uvicorn serving `create_admin_app` as a task of the running event loop."""

    def __init__(self, app: Any, settings: AdminSettings, token: str) -> None:
        self.app = app
        self.settings = settings
        self.token = token
        self.port: int | None = None
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None

    @property
    def base_url(self) -> str:
        return f"http://{_url_host(self.settings.host)}:{self.port}"

    async def start(self, timeout_s: float = 10.0) -> str:
        """Listen and serve; returns the base URL. Raises `AdminError` when it cannot listen."""
        import uvicorn

        from bot.web.runner import PlaygroundError, bind

        try:
            self._sock = bind(self.settings.host, self.settings.port)
        except PlaygroundError as exc:
            raise AdminError(f"管理后台无法启动 / admin console: {exc} (admin.host / admin.port)") from None
        self.port = int(self._sock.getsockname()[1])
        loopback = self.settings.host in LOOPBACK_HOSTS
        web = create_admin_app(self.app, dashboard_token=self.token, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
        config = uvicorn.Config(web, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2)
        self._server = _server_class()(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name="admin-console")
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._server.started:
            if self._task.done():
                await self.stop()
                raise AdminError("管理后台无法启动 / the admin console did not start (see the log)")
            if asyncio.get_running_loop().time() > deadline:
                await self.stop()
                raise AdminError("管理后台启动超时 / the admin console did not start in time")
            await asyncio.sleep(0.02)
        if not loopback:
            log.warning("admin console listens on %s: keep XIAOAI_DASHBOARD_TOKEN secret and put TLS in front",
                        self.settings.host)
        log.info("admin console on %s", self.base_url, extra={"port": self.port})
        return self.base_url

    async def stop(self, timeout_s: float = 5.0) -> None:
        server, task, self._task = self._server, self._task, None
        if server is not None:
            server.should_exit = True
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), timeout_s)
            except TimeoutError:
                server.force_exit = True
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            except Exception:
                log.exception("admin console ended with an error")
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def console_token(environ: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(token, generated) exactly as the playground gets it; raises `AdminError` for a too-short one."""
    from bot.web.runner import PlaygroundError, dashboard_token
    from generation.logs import register_secret

    try:
        token, generated = dashboard_token(os.environ if environ is None else environ)  # type: ignore[arg-type]
    except PlaygroundError as exc:
        raise AdminError(str(exc)) from None
    register_secret(token)  # never in a log line (a URL with ?token=…)
    return token, generated


def print_links(console: AdminConsole, generated: bool, out: TextIO) -> None:
    from bot.web.server import DASHBOARD_TOKEN_ENV

    base = console.base_url
    if generated:
        print(f"管理后台 / admin console: {base}/dashboard?token={console.token}", file=out)
        print(f"  (本次随机令牌；固定令牌请设置 {DASHBOARD_TOKEN_ENV} / random token for this run, "
              f"set {DASHBOARD_TOKEN_ENV} to fix it)", file=out)
    else:
        print(f"管理后台 / admin console: {base}/dashboard  (令牌 / token: ${DASHBOARD_TOKEN_ENV})", file=out)
    print(f"健康检查 / health: {base}/healthz   指标 / metrics: {base}/metrics (Bearer token)", file=out, flush=True)
