"""Settings section `channels`: the official chat platforms, one sub-section each.

    channels:
      clawbot: {enabled: true}                 # WeChat ClawBot (iLink), private chats; `xiaoai login clawbot`
      wecom:   {enabled: true, bot_id: ...}    # WeCom AI bot; secret in XIAOAI_WECOM_SECRET
      qq:      {enabled: true, app_id: ...}    # QQ official bot; secret in XIAOAI_QQ_SECRET

Every key can be overridden as `XIAOAI__CHANNELS__<NAME>__<KEY>`. The wechaty section stays at the top
level (`wechaty:`), as it always was.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from bot.channels.clawbot.settings import ClawbotSettings
from bot.channels.qq.settings import QQSettings
from bot.channels.wecom.settings import WecomSettings


class ChannelsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    clawbot: ClawbotSettings = Field(default_factory=ClawbotSettings)
    wecom: WecomSettings = Field(default_factory=WecomSettings)
    qq: QQSettings = Field(default_factory=QQSettings)

    def enabled(self) -> list[str]:
        return [name for name in ("clawbot", "wecom", "qq") if getattr(self, name).enabled]
