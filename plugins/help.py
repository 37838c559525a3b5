"""`/help`: lists the commands the caller may use (admins also see the admin commands)."""

from __future__ import annotations

from bot.plugin import CommandCall, Plugin, PluginContext, command


class HelpPlugin(Plugin):
    name = "help"
    description = "帮助"

    @command("help", aliases=("帮助",), usage="/帮助", help="查看可用命令")
    async def help(self, ctx: PluginContext, call: CommandCall) -> None:
        name = ctx.settings.bot.name
        specs = ctx.registry.visible_commands(call.is_admin)
        user_lines = [f"{s.usage}  {s.help}（也可用 /{s.name}）" for s in specs if not s.admin_only]
        lines = [f"我是{name}，可以把文字或图片变成短视频。可用命令："] + user_lines
        admin = [f"{s.usage}  {s.help}（也可用 /{s.name}）" for s in specs if s.admin_only]
        if admin:
            lines += ["", "管理员命令："] + admin
        lines += [
            "",
            f"图生视频：先发一张图片，再在 {max(1, round(ctx.settings.bot.image_window_s / 60))} 分钟内发送 /视频 提示词。",
            "选项示例：/视频 768p 10秒 种子=7 一只猫在窗台上打盹",
        ]
        await ctx.reply(call.message, "\n".join(lines))
