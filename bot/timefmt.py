"""Small Chinese formatting helpers for times shown to users."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo


def format_eta(seconds: float | None, *, approx: bool = True) -> str:
    """`约 3 分钟` style (`3 分钟` with approx=False, for times measured here); unknown → `暂无法估计`."""
    if seconds is None:
        return "暂无法估计"
    about = "约 " if approx else ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{about}{max(1, round(seconds))} 秒"
    if seconds < 3600:
        return f"{about}{round(seconds / 60)} 分钟"
    hours, rest = divmod(round(seconds / 60), 60)
    return f"{about}{hours} 小时 {rest} 分钟" if rest else f"{about}{hours} 小时"


def format_duration(seconds: float) -> str:
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f} 秒"
    minutes, sec = divmod(round(seconds), 60)
    return f"{minutes} 分 {sec} 秒"


def next_reset(now: float, reset_time: str, timezone: str) -> datetime:
    """The next local wall-clock time `reset_time` (HH:MM) strictly after `now`."""
    tz = ZoneInfo(timezone)
    hour, minute = (int(x) for x in reset_time.split(":"))
    local_now = datetime.fromtimestamp(now, tz)
    candidate = local_now.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if candidate <= local_now:
        candidate = (candidate + timedelta(days=1)).replace(hour=hour, minute=minute)
    return candidate


def format_next_reset(now: float, reset_time: str, timezone: str) -> str:
    """`明天 00:00（Asia/Shanghai）`."""
    when = next_reset(now, reset_time, timezone)
    today = datetime.fromtimestamp(now, ZoneInfo(timezone)).date()
    days = (when.date() - today).days
    day = {0: "今天", 1: "明天"}.get(days, f"{when:%m-%d}")
    return f"{day} {when:%H:%M}（{timezone}）"

