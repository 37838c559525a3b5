"""WeCom AI bot (企业微信智能机器人) channel over the WebSocket long connection.

`bot.channels.wecom.adapter.WecomChannel` implements `bot.channel.Channel`;
`bot.channels.wecom.settings.WecomSettings` is the `channels.wecom` settings section; the Secret comes
only from the environment variable `XIAOAI_WECOM_SECRET`. Nothing is imported here, so loading the
settings never pulls in websockets/httpx (the adapter is imported only when the channel is enabled).
"""
