"""Chat plugins: video, quota/admin, help."""

from __future__ import annotations

from bot.plugin import Plugin


def default_plugins() -> list[type[Plugin]]:
    """The plugins the bot runs, in the order passive messages are offered to them."""
    from plugins.help import HelpPlugin
    from plugins.pool import PoolPlugin
    from plugins.quota import QuotaPlugin
    from plugins.video import VideoPlugin

    return [VideoPlugin, QuotaPlugin, PoolPlugin, HelpPlugin]
