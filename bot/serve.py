"""`xiaoai run`: every configured channel side by side in one process, until SIGINT/SIGTERM.

Exit codes: 0 after a clean stop; 2 when no channel is configured or none can start (the reasons are
printed, one line per channel, with what to do), or when the configured checkpoint cannot be loaded (one
line, checked before any channel opens: `bot.app.StartupError`). A channel that cannot start while others can is
reported in the log and to the admins on the other channels, and the bot runs on.

Once the bot runs, the admin console (`bot.web.admin`, section `admin:`, default 127.0.0.1:8766) serves the
dashboard, `/healthz` and `/metrics` in the same event loop; it is stopped before the bot. Its token is
`XIAOAI_DASHBOARD_TOKEN` (a random one is made and printed when unset; one shorter than 8 characters exits 2).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Mapping
from typing import TextIO

from bot.channel import ChannelStartError
from bot.channels.registry import build_channels
from bot.settings import Settings

log = logging.getLogger(__name__)

NO_CHANNEL_HELP = """\
没有可用的聊天通道。请至少启用一个 / No chat channel is configured. Enable at least one:
  微信 ClawBot（私聊）:  channels.clawbot.enabled: true，然后运行 xiaoai login clawbot 扫码登录
  企业微信智能机器人:     channels.wecom.enabled: true + channels.wecom.bot_id + 环境变量 XIAOAI_WECOM_SECRET
  QQ 官方机器人:          channels.qq.enabled: true + channels.qq.app_id + 环境变量 XIAOAI_QQ_SECRET
  wechaty（需可用的 puppet）: WECHATY_PUPPET_SERVICE_ENDPOINT=host:port + WECHATY_PUPPET_SERVICE_TOKEN
详见 README「接入聊天平台」/ see the README section on connecting chat platforms.
"""


async def serve(
    settings: Settings,
    environ: Mapping[str, str] | None = None,
    *,
    stop: asyncio.Event | None = None,
    err: TextIO | None = None,
) -> int:
    err = err or sys.stderr
    channels, problems = build_channels(settings, environ)
    for name, why in problems.items():
        print(f"通道 {name} 无法创建 / channel {name} cannot be built: {why}", file=err)
    if not channels:
        if not problems:
            from bot.channels.wechaty.adapter import no_endpoint_message

            print(no_endpoint_message(), file=err)
            print(NO_CHANNEL_HELP, file=err)
        return 2

    token, generated = None, False
    if settings.admin.enabled:  # the console's token first: a bad one stops us before anything opens
        from bot.web.admin import AdminError, console_token

        try:
            token, generated = console_token(environ)
        except AdminError as exc:
            print(str(exc), file=err)
            return 2

    from bot.app import App, StartupError, build_pipeline  # the chat-core wiring, imported late (it is heavy)

    app = App(settings, channels, pipeline=build_pipeline(settings))
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        await app.start()
    except (ChannelStartError, StartupError) as exc:
        head = "" if isinstance(exc, StartupError) else "没有通道能启动 / no channel could start:\n"
        print(f"{head}{exc}", file=err)
        for sig in handled:
            loop.remove_signal_handler(sig)
        return 2
    for name, why in app.hub.failures.items():
        print(f"通道 {name} 未启动 / channel {name} not started: {why}", file=err)
    names = ", ".join(c.name for c in app.hub.started)
    log.info("xiaoai serving on %s", names)
    console = await _start_console(app, settings, token, generated, err) if token else None
    await _report_unconnected(app, err)
    try:
        await stop.wait()
    finally:
        if console is not None:
            await console.stop()
        await app.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


async def _start_console(app: object, settings: Settings, token: str, generated: bool, err: TextIO) -> object | None:
    """The admin console (`bot.web.admin`: dashboard, /healthz, /metrics) on `admin.host:admin.port`, in this
    event loop. When it cannot listen the bot runs on without it (said on stderr and in the log)."""
    from bot.web.admin import AdminConsole, AdminError, print_links

    console = AdminConsole(app, settings.admin, token)
    try:
        await console.start()
    except AdminError as exc:
        log.error("%s", exc)
        print(f"{exc}\n机器人继续运行，但没有管理后台 / the bot runs on without its admin console", file=err)
        return None
    print_links(console, generated, err)
    return console


async def _report_unconnected(app: object, err: TextIO) -> None:
    """Channels that connect in the background (wechaty's gateway) get a few seconds; the ones still
    offline are named once, they keep retrying on their own."""
    hub = app.hub  # type: ignore[attr-defined]
    for channel in hub.started:
        wait = getattr(channel, "wait_connected", None)
        if wait is None or channel.connected:
            continue
        timeout = getattr(getattr(channel, "_settings", None), "connect_timeout_s", 5.0)
        if not await wait(timeout):
            why = getattr(channel, "last_error", "") or "等待登录 / waiting for login"
            print(f"通道 {channel.name} 暂未连接，后台将自动重试：{why}\n"
                  f"channel {channel.name} not connected yet; retrying in the background.", file=err)
