"""QQ official bot API v2 channel (groups via @-mentions, private chats, MP4 replies).

`QQChannel` is the `bot.channel.Channel` adapter; `QQSettings` is the `channels.qq` settings section;
the AppSecret is read only from the environment variable `XIAOAI_QQ_SECRET` (`SECRET_ENV`).
Modules: `settings` (config), `token` (access token), `api` (REST), `gateway` (WebSocket session),
`state` (passive-reply windows, de-duplication, idempotency), `adapter` (the channel).
"""

from bot.channels.qq.adapter import DEFERRED_HINT, QQChannel
from bot.channels.qq.settings import SECRET_ENV, QQSettings

__all__ = ["DEFERRED_HINT", "SECRET_ENV", "QQChannel", "QQSettings"]
