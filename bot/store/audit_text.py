"""Audit rows in words: one admin action as a short Chinese phrase, for `/审计` in the chat and the console.

The row's `detail` is the dict `QuotaBook` / `JobQueue.cancel` wrote; unknown actions fall back to
"action target (key value, ...)" rather than a raw dict.
"""

from __future__ import annotations

from typing import Any

STATE_TEXT = {"queued": "排队中", "running": "生成中"}


def audit_text(action: str, target: str, detail: dict[str, Any]) -> str:
    """One admin action as a Chinese phrase (the audit row's detail is a dict written by QuotaBook/JobQueue)."""
    why = f"，原因：{detail['reason']}" if detail.get("reason") else ""
    if action == "set":
        return f"把 {target} 的额度设为 {detail.get('after')} 点（原来 {detail.get('before')} 点）{why}"
    if action == "add":
        applied, asked = detail.get("applied", 0), detail.get("requested", detail.get("applied", 0))
        verb = f"给 {target} 加了 {applied} 点" if applied >= 0 else f"扣了 {target} {-applied} 点"
        capped = f"（要求 {asked:+d}，余额不够扣）" if asked != applied else ""
        return f"{verb}{capped}，{detail.get('before')} → {detail.get('after')} 点{why}"
    if action == "reset":
        return f"把 {target} 的额度恢复为每日额度，{detail.get('before')} → {detail.get('after')} 点"
    if action == "ban":
        return f"暂停了 {target} 使用视频生成{'（之前已暂停）' if detail.get('already') else ''}{why}"
    if action == "unban":
        return f"恢复了 {target} 使用视频生成{'' if detail.get('was_banned', True) else '（之前未暂停）'}"
    if action == "cancel":
        state = STATE_TEXT.get(str(detail.get("was", "")), "")
        return f"取消了 {target} 的任务 #{detail.get('job_id')}{f'（{state}）' if state else ''}{why}"
    rest = "，".join(f"{k} {v}" for k, v in detail.items())
    return f"{action} {target}{f'（{rest}）' if rest else ''}"
