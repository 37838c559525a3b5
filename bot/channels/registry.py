"""Which channels `xiaoai run` starts, built from the settings.

wechaty runs when a puppet endpoint is configured (`wechaty.endpoint` or
`WECHATY_PUPPET_SERVICE_ENDPOINT`, exactly as before); ClawBot, WeCom and QQ run when
`channels.<name>.enabled` is true. Adapters are imported only when enabled, so a broken optional
client library never stops the others.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from bot.channel import Channel
from bot.settings import Settings

log = logging.getLogger(__name__)


def build_channels(settings: Settings, environ: Mapping[str, str] | None = None) -> tuple[list[Channel], dict[str, str]]:
    """(channels to start, {channel name: why it cannot be built}) for the configured channels."""
    env = os.environ if environ is None else environ
    channels: list[Channel] = []
    problems: dict[str, str] = {}
    if settings.wechaty.connection(env) is not None:
        try:
            from bot.channels.wechaty.adapter import WechatyChannel

            channels.append(WechatyChannel.from_settings(settings, env))
        except Exception as exc:  # ImportError of the wechaty stack, bad endpoint, ...
            problems["wechat"] = f"{type(exc).__name__}: {exc}"
    section = settings.channels
    bot_name = settings.bot.name
    if section.clawbot.enabled:
        try:
            from bot.channels.clawbot.adapter import ClawbotChannel

            channels.append(ClawbotChannel(section.clawbot, environ=env))
        except Exception as exc:
            problems["clawbot"] = f"{type(exc).__name__}: {exc}"
    if section.wecom.enabled:
        try:
            from bot.channels.wecom.adapter import WecomChannel

            wecom = section.wecom if section.wecom.bot_name else section.wecom.model_copy(update={"bot_name": bot_name})
            channels.append(WecomChannel(wecom, environ=env))
        except Exception as exc:
            problems["wecom"] = f"{type(exc).__name__}: {exc}"
    if section.qq.enabled:
        try:
            from bot.channels.qq.adapter import QQChannel

            qq = section.qq if section.qq.bot_name else section.qq.model_copy(update={"bot_name": bot_name})
            channels.append(QQChannel(qq, environ=env))
        except Exception as exc:
            problems["qq"] = f"{type(exc).__name__}: {exc}"
    return channels, problems
