"""Builds the message-handling core (plugins, context, router, flood control, dispatcher) from
already-open parts. `bot.app.App` uses it; tests use it directly with a real SQLite store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from bot.channel import Channel
from bot.dispatcher import Dispatcher
from bot.permissions import Permissions
from bot.plugin import Plugin, PluginContext, PluginRegistry
from bot.ratelimit import FloodControl
from bot.router import Router
from bot.settings import Settings


def build_dispatcher(
    settings: Settings,
    *,
    channel: Channel,
    quota: Any,
    queue: Any,
    clock: Callable[[], float],
    plugins: Sequence[type[Plugin]],
    pipeline: Any | None = None,
    extras: dict[str, Any] | None = None,
) -> Dispatcher:
    registry = PluginRegistry(plugins)
    registry.check_settings(settings)
    bot = settings.bot
    ctx = PluginContext(
        settings=settings,
        channel=channel,
        quota=quota,
        queue=queue,
        clock=clock,
        permissions=Permissions(bot.admins),
        registry=registry,
        pipeline=pipeline,
        extras=extras if extras is not None else {},
    )
    router = Router(
        registry=registry,
        bot_name=bot.name,
        bot_id=lambda: channel.bot_id,
        group_allowlist=bot.group_allowlist,
        allow_private=bot.allow_private,
        require_mention_in_groups=bot.require_mention_in_groups,
    )
    flood = FloodControl(
        user_max=bot.flood_user_max, chat_max=bot.flood_chat_max, window_s=bot.flood_window_s, clock=clock
    )
    return Dispatcher(ctx=ctx, router=router, flood=flood)
