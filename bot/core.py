"""Builds the message-handling core (plugins, context, router, flood control, dispatcher) from
already-open parts. `bot.app.App` uses it; tests use it directly with a real SQLite store."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from bot.channel import Channel
from bot.channels.hub import ChannelHub, as_hub
from bot.dispatcher import Dispatcher
from bot.executors.base import Executor
from bot.jobs.queue import JobQueue
from bot.permissions import Permissions
from bot.plugin import Plugin, PluginContext, PluginRegistry
from bot.ratelimit import FloodControl
from bot.router import Router
from bot.settings import Settings
from bot.store.quota import QuotaBook

if TYPE_CHECKING:
    from bot.prompts import PromptPipeline
    from generation.content_check import ContentChecker


def build_dispatcher(
    settings: Settings,
    *,
    channel: Channel | ChannelHub,
    quota: QuotaBook,
    queue: JobQueue,
    clock: Callable[[], float],
    plugins: Sequence[type[Plugin]],
    pipeline: PromptPipeline | None = None,
    executor: Executor | None = None,
    image_check: ContentChecker | None = None,
) -> Dispatcher:
    hub = as_hub(channel)
    registry = PluginRegistry(plugins)
    registry.check_settings(settings)
    bot = settings.bot
    ctx = PluginContext(
        settings=settings,
        channel=hub,
        quota=quota,
        queue=queue,
        clock=clock,
        permissions=Permissions(bot.admins),
        registry=registry,
        pipeline=pipeline,
        executor=executor,
        image_check=image_check,
    )
    router = Router(
        registry=registry,
        bot_name=bot.name,
        bot_id=lambda: hub.bot_ids,
        group_allowlist=bot.group_allowlist,
        allow_private=bot.allow_private,
        require_mention_in_groups=bot.require_mention_in_groups,
    )
    flood = FloodControl(
        user_max=bot.flood_user_max, chat_max=bot.flood_chat_max, window_s=bot.flood_window_s, clock=clock
    )
    return Dispatcher(ctx=ctx, router=router, flood=flood)
