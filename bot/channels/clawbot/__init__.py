"""WeChat ClawBot (iLink bot API) channel: private chats with a personal-WeChat bot identity.

Modules, one job each:
* `settings` — `ClawbotSettings`, the `channels.clawbot` config section (no secrets).
* `api` — httpx client of `/ilink/bot/*` (headers, `base_info`, error classification).
* `crypto` — AES-128-ECB / PKCS#7 and the platform's key forms.
* `cdn` — media upload (encrypted) and download.
* `state` — credentials, cursor, seen ids, context tokens, sent records (JSON, atomic, mode 600).
* `login` — `xiaoai login clawbot` (QR code in the terminal).
* `adapter` — `ClawbotChannel`, the `bot.channel.Channel` implementation.

Only the settings are imported eagerly (the root settings model needs them); `ClawbotChannel` loads on
first use. The login entry point is `bot.channels.clawbot.login.login` (import it from the module: the
package attribute `login` is the submodule).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bot.channels.clawbot.settings import ClawbotSettings

if TYPE_CHECKING:
    from bot.channels.clawbot.adapter import ClawbotChannel

__all__ = ["ClawbotChannel", "ClawbotSettings"]


def __getattr__(name: str) -> Any:
    if name == "ClawbotChannel":
        from bot.channels.clawbot.adapter import ClawbotChannel

        return ClawbotChannel
    raise AttributeError(name)
