"""`xiaoai run`: every configured channel side by side in one process, until SIGINT/SIGTERM.

Exit codes: 0 after a clean stop; 2 when no channel is configured or none can start (the reasons are
printed, one line per channel, with what to do). A channel that cannot start while others can is
reported in the log and to the admins on the other channels, and the bot runs on.
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

    from bot.app import App, build_pipeline  # the chat-core wiring, imported late (it is heavy)

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
    except ChannelStartError as exc:
        print(f"没有通道能启动 / no channel could start:\n{exc}", file=err)
        for sig in handled:
            loop.remove_signal_handler(sig)
        return 2
    for name, why in app.hub.failures.items():
        print(f"通道 {name} 未启动 / channel {name} not started: {why}", file=err)
    names = ", ".join(c.name for c in app.hub.started)
    log.info("xiaoai serving on %s", names)
    await _report_unconnected(app, err)
    try:
        await stop.wait()
    finally:
        await app.stop()
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 0


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
