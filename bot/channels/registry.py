"""Which channels `xiaoai run` starts, built from the settings.

wechaty runs when a puppet endpoint is configured (`wechaty.endpoint` or
`WECHATY_PUPPET_SERVICE_ENDPOINT`, exactly as before); ClawBot, WeCom and QQ run when
`channels.<name>.enabled` is true. Adapters are imported only when enabled, so a broken optional
client library never stops the others.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Mapping

from bot.channel import Channel
from bot.settings import Settings

log = logging.getLogger(__name__)


# The official channels: settings section name -> (adapter module, class). Imported only when enabled.
OFFICIAL: dict[str, tuple[str, str]] = {
    "clawbot": ("bot.channels.clawbot.adapter", "ClawbotChannel"),
    "wecom": ("bot.channels.wecom.adapter", "WecomChannel"),
    "qq": ("bot.channels.qq.adapter", "QQChannel"),
}


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
    for name, (module, cls) in OFFICIAL.items():
        section = getattr(settings.channels, name)
        if not section.enabled:
            continue
        if getattr(section, "bot_name", "unset") is None:  # "@小爱" in groups: the bot's own name by default
            section = section.model_copy(update={"bot_name": settings.bot.name})
        try:
            adapter = getattr(importlib.import_module(module), cls)
            channels.append(adapter(section, environ=env))
        except Exception as exc:  # a broken optional client library never stops the others
            problems[name] = f"{type(exc).__name__}: {exc}"
    return channels, problems
