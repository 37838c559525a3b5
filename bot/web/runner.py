"""`xiaoai playground`: the whole bot (router, plugins, SQLite quotas and queue, worker, delivery) on the
playground channel, served with uvicorn next to the admin dashboard.

The run keeps its data apart from the WeChat bot's: the SQLite file, videos and images go under the run
directory (default `var/playground`). The playground's admin members are added to `bot.admins` for
this run, and the room is added to `bot.group_allowlist` when that list is not empty.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from bot.prompts.status import translator_status
from bot.settings import Settings
from bot.web.server import DASHBOARD_TOKEN_ENV

log = logging.getLogger(__name__)

MIN_TOKEN_CHARS = 8


class PlaygroundError(RuntimeError):
    pass


def playground_settings(base: Settings, run_dir: Path | None, *, synthetic: bool = False,
                        host: str | None = None, port: int | None = None) -> Settings:
    data = base.model_dump(mode="python")
    if run_dir is not None:
        data["storage"]["db_path"] = run_dir / "xiaoai.db"
        data["worker"]["output_dir"] = run_dir / "videos"
        data["bot"]["data_dir"] = run_dir / "data"
    pg = data["playground"]
    if host is not None:
        pg["host"] = host
    if port is not None:
        pg["port"] = port
    admins = list(data["bot"]["admins"])
    for user in pg["users"]:
        if user["admin"] and user["id"] not in admins:
            admins.append(user["id"])
    data["bot"]["admins"] = admins
    if data["bot"]["group_allowlist"] and pg["room_id"] not in data["bot"]["group_allowlist"]:
        data["bot"]["group_allowlist"].append(pg["room_id"])
    data["bot"]["flood_user_max"] = max(data["bot"]["flood_user_max"], 20)
    if synthetic:
        data["worker"]["generator"] = "synthetic"
    return Settings.model_validate(data)


def dashboard_token(environ: dict[str, str] | os._Environ[str]) -> tuple[str, bool]:
    """(token, generated): from XIAOAI_DASHBOARD_TOKEN, else a random one for this run."""
    token = environ.get(DASHBOARD_TOKEN_ENV, "").strip()
    if token:
        if len(token) < MIN_TOKEN_CHARS:
            raise PlaygroundError(f"{DASHBOARD_TOKEN_ENV} 太短，至少 {MIN_TOKEN_CHARS} 个字符 / is too short "
                                  f"(at least {MIN_TOKEN_CHARS} characters)")
        return token, False
    return secrets.token_urlsafe(24), True


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            raise PlaygroundError(f"端口 {port} 已被占用（可能已有一个 xiaoai playground 在运行），请用 --port 换一个 / "
                                  f"cannot listen on {host}:{port}: the port is in use, choose another with --port"
                                  ) from None
        raise PlaygroundError(f"无法监听 {host}:{port} / cannot listen on {host}:{port}: {err.strerror or err}"
                              "（检查 --host / check --host）") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


def _server_class() -> Any:
    import uvicorn

    class PlaygroundServer(uvicorn.Server):
        """uvicorn, minus re-raising the captured Ctrl-C / SIGTERM after it stopped serving: the bot (worker,
        delivery loop, SQLite) is then stopped in order by `App.stop()` instead of being cut short."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

    return PlaygroundServer


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def run_playground(settings: Settings, *, out: TextIO = sys.stdout, environ: dict[str, str] | None = None,
                         pipeline: object | None = None) -> int:
    """Start the bot on the playground channel and serve the page until interrupted (Ctrl-C / SIGTERM)."""
    import uvicorn

    from bot.app import App
    from bot.web.channel import PlaygroundChannel
    from bot.web.server import LOOPBACK_HOSTS, WebDeps, create_app

    env = os.environ if environ is None else environ
    token, generated = dashboard_token(env)
    pg = settings.playground
    sock = bind(pg.host, pg.port)
    port = sock.getsockname()[1]
    if pg.host not in ("127.0.0.1", "localhost"):
        log.warning("the playground has no login and listens on %s: anyone who reaches it can act as its admin",
                    pg.host)
    channel = PlaygroundChannel(settings=pg, bot_name=settings.bot.name)
    app = App(settings, channel, pipeline=pipeline)
    await app.start()
    try:
        deps = WebDeps(settings=settings, channel=channel, quota=app.quota, queue=app.queue, executor=app.executor,
                       hub=app.hub)
        loopback = pg.host in LOOPBACK_HOSTS
        web = create_app(deps, dashboard_token=token, allowed_hosts=LOOPBACK_HOSTS if loopback else None)
        config = uvicorn.Config(web, log_config=None, access_log=False, timeout_graceful_shutdown=2,
                                lifespan="on")
        server = _server_class()(config)
        base = f"http://{_url_host(pg.host)}:{port}"
        print(f"小爱视频 网页试玩 / playground: {base}/", file=out)
        if generated:
            print(f"管理后台 / dashboard: {base}/dashboard?token={token}", file=out)
            print(f"  (本次随机令牌；固定令牌请设置 {DASHBOARD_TOKEN_ENV} / random token for this run, "
                  f"set {DASHBOARD_TOKEN_ENV} to fix it)", file=out)
        else:
            print(f"管理后台 / dashboard: {base}/dashboard  (令牌 / token: ${DASHBOARD_TOKEN_ENV})", file=out)
        print(f"生成器 / generator: {settings.worker.generator}; 数据 / data: {settings.storage.db_path}", file=out)
        print(translator_status(settings.prompts), file=out)
        print("按 Ctrl-C 退出 / Ctrl-C to stop", file=out, flush=True)
        log.info("playground serving on %s", base, extra={"port": port})
        await server.serve(sockets=[sock])
    finally:
        sock.close()
        await app.stop()
    return 0
