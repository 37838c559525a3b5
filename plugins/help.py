"""`/help`: lists the commands the caller may use, most important first (admins also see the admin commands),
with the options the configured model makes."""

from __future__ import annotations

from bot.plugin import CommandCall, CommandSpec, Plugin, PluginContext, command
from plugins.video import video_example  # the one place that knows what the model makes


class HelpPlugin(Plugin):
    name = "help"
    description = "帮助"

    @command("help", aliases=("帮助",), usage="/帮助", help="查看可用命令")
    async def help(self, ctx: PluginContext, call: CommandCall) -> None:
        name = ctx.settings.bot.name
        styles = ctx.settings.prompts.styles
        specs = [s for s in ctx.registry.visible_commands(call.is_admin) if _shown(ctx, s)]
        specs.sort(key=_importance)

        def line(s: CommandSpec) -> str:
            return f"{ctx.registry.plugin_of(s).usage_for(ctx, s)}  {s.help}（也可用 /{s.name}）"

        lines = [f"我是{name}，可以把文字或图片变成短视频。可用命令："]
        lines += [line(s) for s in specs if not s.admin_only]
        admin = [line(s) for s in specs if s.admin_only]
        if admin:
            lines += ["", "管理员命令："] + admin
        lines += [
            "",
            f"图生视频：先发一张图片，再在 {max(1, round(ctx.settings.bot.image_window_s / 60))} 分钟内发送 /视频 提示词"
            "（平台支持引用时，也可以引用那张图片回复 /视频 提示词）。",
            f"选项示例：{video_example(ctx)}" + (f"；风格={next(iter(styles))}（见 /风格）" if styles else "")
            + "；不要=模糊,变形 写在最后。",
        ]
        lines += _channel_lines(ctx, call)
        await ctx.reply(call.message, "\n".join(lines))


def _channel_lines(ctx: PluginContext, call: CommandCall) -> list[str]:
    """What this chat's platform allows (`ChannelCapabilities`): private-only bots, held videos."""
    caps = ctx.capabilities(call.message.chat_id)
    lines: list[str] = []
    if not caps.groups:
        lines.append("这个平台的机器人只能私聊：在这里直接发命令，视频也发到这里。")
    if caps.deferred_hint:
        lines.append(caps.deferred_hint.rstrip("。") + "。")
    return lines


# Most used first: what people come for, then what they need while waiting, then the rest.
ORDER = ("video", "queue", "cancel", "quota", "mine", "again", "continue", "styles", "resend", "help",
         "addquota", "setquota", "resetquota", "ledger", "ban", "unban", "audit", "pool")


def _importance(spec: CommandSpec) -> int:
    return ORDER.index(spec.name) if spec.name in ORDER else len(ORDER)


def _shown(ctx: PluginContext, spec: CommandSpec) -> bool:
    """/资源池 describes a Ray pool: listed only when jobs run on one (it still answers when typed)."""
    return spec.name != "pool" or ctx.settings.executor.kind == "ray"
