"""Quota plugin: `/quota` for everyone, and the admin commands that change quotas and bans.

Admins are recognised by contact id only (`bot.admins`); the dispatcher refuses admin commands
for everyone else before the handler runs, so nothing changes. The target user is given by
@-mention (the channel's mention ids, never the display name) or by a contact id:

  /设置额度 @张三 10 [原因]     /setquota wxid_abc 10
  /加额度 @张三 5 [原因]        (negative numbers take units away)
  /重置额度 @张三               back to the daily allowance
  /封禁 @张三 [原因]  /解封 @张三
  /流水 @张三                   the user's ledger rows
  /审计                         latest admin actions

Every change goes through QuotaBook, which writes the ledger row and the audit row.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime
from zoneinfo import ZoneInfo

from bot.plugin import CommandCall, Plugin, PluginContext, TargetError, command
from bot.store.audit_text import audit_text
from bot.timefmt import format_next_reset

log = logging.getLogger(__name__)

_INT = re.compile(r"^[+-]?\d+$")
KIND_TEXT = {"grant": "发放", "spend": "消耗", "refund": "退还", "adjust": "调整", "reset": "每日重置"}
# The ledger's reasons are written in English by the code (QuotaBook, JobQueue); admins read them in Chinese.
REASON_TEXT = {
    "first daily allowance": "首次发放每日额度", "video job": "生成视频", "cancelled": "取消退还",
    "failed": "生成失败退还", "delivery failed": "发送失败退还", "admin set": "管理员设置",
    "admin add": "管理员调整", "admin reset to daily allowance": "管理员恢复为每日额度",
}
ACTOR_TEXT = {"dashboard": "管理后台"}  # bot.web.dashboard.DASHBOARD_ACTOR


def reason_text(reason: str) -> str:
    """A ledger reason in Chinese (`daily reset 2026-01-01` → `每日重置（2026-01-01）`); an admin's own words as is."""
    if reason.startswith("daily reset"):
        day = reason[len("daily reset"):].strip()
        return f"每日重置（{day}）" if day else "每日重置"
    return REASON_TEXT.get(reason, reason)


def who(user_id: str | None, names: dict[str, str]) -> str:
    """`Alice（wxid_alice）` when the name is known from the user's jobs, else the id."""
    if not user_id:
        return "—"
    if user_id in ACTOR_TEXT:
        return ACTOR_TEXT[user_id]
    name = names.get(user_id)
    return f"{name}（{user_id}）" if name and name != user_id else user_id


def split_value(tokens: tuple[str, ...]) -> tuple[int, str]:
    """First integer token is the value; what follows is the reason."""
    for i, tok in enumerate(tokens):
        if _INT.match(tok):
            return int(tok), " ".join(tokens[i + 1 :])
    raise TargetError("请写上数量，例如：/设置额度 @张三 10")


def _fmt_ts(ts: float, tz: str) -> str:
    return datetime.fromtimestamp(ts, ZoneInfo(tz)).strftime("%m-%d %H:%M")


class QuotaPlugin(Plugin):
    name = "quota"
    description = "额度查询与管理"
    settings_section = "quota"

    @command("quota", aliases=("额度",), usage="/额度", help="查看你的剩余额度、今日用量和重置时间",
             target="optional")
    async def quota(self, ctx: PluginContext, call: CommandCall) -> None:
        message = call.message
        user_id = message.sender_id
        prefix = ""
        if call.target is not None:
            user_id = call.target
            prefix = f"用户 {who(user_id, ctx.queue.latest_user_names())}："
        else:
            ctx.quota.ensure_user(user_id, message.chat_id if message.is_group else None)
        settings = self.section(ctx)
        now = ctx.clock()
        spent = ctx.quota.spent_today(user_id, now)
        reset = format_next_reset(now, settings.reset_time, settings.timezone)
        lines = [
            f"{prefix}剩余额度 {ctx.quota.balance(user_id)} 点，今日已用 {max(0, spent)} 点。",
            f"额度将在{reset}重置。",
            "费用：" + "；".join(  # only what the configured model makes
                f"{res} {sec}秒 {ctx.quota.cost_for(res, sec)} 点" for res, sec in ctx.settings.offered()
            ),
        ]
        if ctx.quota.is_banned(user_id):
            lines.append("（已被管理员暂停使用，如有疑问请联系管理员）")
        await ctx.reply(message, "\n".join(lines))

    @command("setquota", aliases=("设置额度",), usage="/设置额度 @用户 数量 [原因]", help="把用户额度设为指定值", admin_only=True, target="required")
    async def set_quota(self, ctx: PluginContext, call: CommandCall) -> None:
        target, rest = call.target or "", call.rest
        try:
            value, reason = split_value(rest)
        except TargetError as err:
            await ctx.reply(call.message, str(err))
            return
        if value < 0:
            await ctx.reply(call.message, "额度不能设为负数。")
            return
        ctx.quota.set_balance(call.message.sender_id, target, value, reason=reason)
        log.info("admin %s set quota of %s to %s", call.message.sender_id, target, value)
        name = who(target, ctx.queue.latest_user_names())
        await ctx.reply(call.message, f"已把 {name} 的额度设为 {ctx.quota.balance(target)} 点。")

    @command("addquota", aliases=("加额度", "增加额度"), usage="/加额度 @用户 数量 [原因]", help="给用户增加（负数为扣减）额度", admin_only=True, target="required")
    async def add_quota(self, ctx: PluginContext, call: CommandCall) -> None:
        target, rest = call.target or "", call.rest
        try:
            delta, reason = split_value(rest)
        except TargetError as err:
            await ctx.reply(call.message, str(err))
            return
        ctx.quota.add(call.message.sender_id, target, delta, reason=reason)
        log.info("admin %s added %s to %s", call.message.sender_id, delta, target)
        name = who(target, ctx.queue.latest_user_names())
        await ctx.reply(call.message, f"已为 {name} 调整 {delta:+d} 点，当前 {ctx.quota.balance(target)} 点。")

    @command("resetquota", aliases=("重置额度",), usage="/重置额度 @用户", help="把用户额度恢复为每日额度", admin_only=True, target="required")
    async def reset_quota(self, ctx: PluginContext, call: CommandCall) -> None:
        target = call.target or ""
        ctx.quota.reset_user(call.message.sender_id, target)
        log.info("admin %s reset quota of %s", call.message.sender_id, target)
        name = who(target, ctx.queue.latest_user_names())
        await ctx.reply(call.message, f"已把 {name} 的额度恢复为 {ctx.quota.balance(target)} 点。")

    @command("ban", aliases=("封禁",), usage="/封禁 @用户 [原因]", help="暂停用户使用视频生成", admin_only=True, target="required")
    async def ban(self, ctx: PluginContext, call: CommandCall) -> None:
        target, rest = call.target or "", call.rest
        if ctx.permissions.is_admin(target):
            await ctx.reply(call.message, "不能封禁管理员。")
            return
        ctx.quota.ban(call.message.sender_id, target, reason=" ".join(rest))
        log.info("admin %s banned %s", call.message.sender_id, target)
        await ctx.reply(call.message, f"已暂停 {who(target, ctx.queue.latest_user_names())} 使用视频生成。")

    @command("unban", aliases=("解封",), usage="/解封 @用户", help="恢复用户使用视频生成", admin_only=True, target="required")
    async def unban(self, ctx: PluginContext, call: CommandCall) -> None:
        target = call.target or ""
        ctx.quota.unban(call.message.sender_id, target)
        log.info("admin %s unbanned %s", call.message.sender_id, target)
        await ctx.reply(call.message, f"已恢复 {who(target, ctx.queue.latest_user_names())} 使用视频生成。")

    @command("ledger", aliases=("流水",), usage="/流水 @用户", help="查看用户的额度流水（每一笔增减）", admin_only=True, target="required")
    async def ledger(self, ctx: PluginContext, call: CommandCall) -> None:
        target = call.target or ""
        tz = self.section(ctx).timezone
        rows = ctx.quota.history(target, limit=20)
        names = ctx.queue.latest_user_names()
        if not rows:
            await ctx.reply(call.message, f"{who(target, names)} 还没有任何额度记录（还没用过小爱）。")
            return
        lines = [f"{who(target, names)} 的额度流水（最近 {len(rows)} 条）："]
        for row in rows:
            extra = f" 任务#{row.job_id}" if row.job_id else ""
            actor = f" 由 {who(row.actor_id, names)}" if row.actor_id else ""
            reason = f" {reason_text(row.reason)}" if row.reason else ""
            lines.append(
                f"{_fmt_ts(row.ts, tz)} {KIND_TEXT.get(row.kind, row.kind)} {row.delta:+d} → {row.balance_after}"
                f"{extra}{actor}{reason}"
            )
        await ctx.reply(call.message, "\n".join(lines))

    @command("audit", aliases=("审计",), usage="/审计", help="查看最近的管理操作记录", admin_only=True)
    async def audit(self, ctx: PluginContext, call: CommandCall) -> None:
        tz = self.section(ctx).timezone
        rows = ctx.quota.audit_log(10)
        if not rows:
            await ctx.reply(call.message, "还没有管理操作记录。")
            return
        names = ctx.queue.latest_user_names()
        lines = ["最近的管理操作："]
        for row in rows:
            detail = row.detail if isinstance(row.detail, dict) else {}
            lines.append(f"{_fmt_ts(row.ts, tz)} {who(row.actor_id, names)} "
                         f"{audit_text(row.action, who(row.target_id, names), detail)}")
        await ctx.reply(call.message, "\n".join(lines))
