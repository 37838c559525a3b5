"""Admin commands: recognised by contact id only (a spoofed display name changes nothing), target by
@-mention or contact id, every action in the ledger and the audit table; /quota and /help."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chat_harness import ADMIN, async_test, make_harness, make_settings

ADMIN_MSG = {"sender_id": ADMIN, "sender_name": "群主"}
ALICE = {"sender_id": "wxid_alice", "sender_name": "Alice"}
MALLORY = {"sender_id": "wxid_mallory", "sender_name": "群主"}  # same display name as the admin
AT_ALICE = {"mentions": ("wxid_alice",)}


@async_test
async def test_admin_by_id_sets_adds_resets_with_ledger_and_audit(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/额度", **ALICE)  # Alice is seen: daily grant of 3
    await h.say("/设置额度 @Alice\u200510 活动奖励", **ADMIN_MSG, **AT_ALICE)
    assert h.quota.balance("wxid_alice") == 10 and "10 点" in h.last_text()
    await h.say("/addquota wxid_alice -4 扣除", **ADMIN_MSG)
    assert h.quota.balance("wxid_alice") == 6
    await h.say("/加额度 @Alice 2", **ADMIN_MSG, **AT_ALICE)
    assert h.quota.balance("wxid_alice") == 8
    await h.say("/重置额度 @Alice", **ADMIN_MSG, **AT_ALICE)
    assert h.quota.balance("wxid_alice") == 3

    rows = h.ledger("wxid_alice")
    assert [(r.kind, r.delta, r.balance_after) for r in rows] == [
        ("grant", 3, 3),
        ("adjust", 7, 10),
        ("adjust", -4, 6),
        ("adjust", 2, 8),
        ("adjust", -5, 3),
    ]
    assert all(r.actor_id == ADMIN for r in rows[1:])
    assert rows[1].reason == "活动奖励" and rows[2].reason == "扣除"
    # every balance is explained row by row
    assert sum(r.delta for r in rows) == rows[-1].balance_after == h.quota.balance("wxid_alice")
    audit = h.quota.audit_log(10)
    assert len(audit) == 4 and {a.target_id for a in audit} == {"wxid_alice"} and {a.actor_id for a in audit} == {ADMIN}


@async_test
async def test_spoofed_display_name_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/额度", **ALICE)
    commands = [
        "/设置额度 @Alice 100",
        "/加额度 @Alice 100",
        "/重置额度 @Alice",
        "/封禁 @Alice",
        "/解封 @Alice",
        "/流水 @Alice",
        "/审计",
    ]
    for text in commands:
        await h.say(text, **MALLORY, **AT_ALICE)
        assert "只有管理员" in h.last_text(), text
    await h.say("/setquota wxid_mallory 100", **MALLORY)
    assert "只有管理员" in h.last_text()
    assert h.quota.balance("wxid_alice") == 3 and h.quota.balance("wxid_mallory") == 0
    assert [r.kind for r in h.ledger("wxid_alice")] == ["grant"]
    assert h.quota.audit_log(10) == [] and not h.quota.is_banned("wxid_alice")


@async_test
async def test_ban_and_unban(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/封禁 @Alice 刷屏", **ADMIN_MSG, **AT_ALICE)
    assert h.quota.is_banned("wxid_alice")
    await h.say("/视频 一只猫", **ALICE)
    assert "暂停使用" in h.last_text() and h.queue.jobs_of("wxid_alice") == []
    await h.say("/额度", **ALICE)
    assert "暂停使用" in h.last_text()
    await h.say("/解封 wxid_alice", **ADMIN_MSG)
    assert not h.quota.is_banned("wxid_alice")
    await h.say("/视频 一只猫", **ALICE)
    assert len(h.queue.jobs_of("wxid_alice")) == 1
    await h.say(f"/ban {ADMIN}", **ADMIN_MSG)
    assert "不能封禁管理员" in h.last_text() and not h.quota.is_banned(ADMIN)
    actions = [a.action for a in reversed(h.quota.audit_log(10))]
    assert len(actions) == 2 and "ban" in actions[0] and "unban" in actions[1]


@async_test
async def test_ledger_and_audit_views(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视频 一只猫", **ALICE)
    await h.say("/流水 @Alice", **ADMIN_MSG, **AT_ALICE)
    text = h.last_text()
    assert "发放 +3 → 3" in text and "消耗 -1 → 2" in text and "任务#" in text
    await h.say("/流水 wxid_nobody", **ADMIN_MSG)
    assert "还没有" in h.last_text()
    await h.say("/加额度 @Alice 1 补偿", **ADMIN_MSG, **AT_ALICE)
    await h.say("/审计", **ADMIN_MSG)
    assert "wxid_alice" in h.last_text() and ADMIN in h.last_text()


@pytest.mark.parametrize(
    ("text", "mentions", "expected"),
    [
        ("/设置额度", (), "请 @"),
        ("/设置额度 @某人 5", (), "请 @"),
        ("/设置额度 @Alice", ("wxid_alice",), "请写上数量"),
        ("/设置额度 @Alice -3", ("wxid_alice",), "不能设为负数"),
    ],
)
def test_bad_admin_arguments_explain_and_change_nothing(
    tmp_path: Path, text: str, mentions: tuple[str, ...], expected: str
) -> None:
    @async_test
    async def body() -> None:
        h = await make_harness(make_settings(tmp_path))
        await h.say(text, mentions=mentions, **ADMIN_MSG)
        assert expected in h.last_text()
        assert h.quota.audit_log(10) == []

    body()


@async_test
async def test_quota_command_and_help_by_role(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.say("/视频 384p 10秒 一只猫", **ALICE)
    await h.say("/额度", **ALICE)
    text = h.last_text()
    assert "剩余额度 1 点" in text and "今日已用 2 点" in text and "明天 00:00（Asia/Shanghai）" in text
    await h.say("/额度 @Alice", **ADMIN_MSG, **AT_ALICE)
    assert "wxid_alice" in h.last_text() and "剩余额度 1 点" in h.last_text()

    await h.say("/帮助", **ALICE)
    user_help = h.last_text()
    assert "/视频" in user_help and "/额度" in user_help and "/取消" in user_help and "/队列" in user_help
    assert "管理员命令" not in user_help and "/设置额度" not in user_help
    await h.say("/help", **ADMIN_MSG)
    admin_help = h.last_text()
    assert "管理员命令" in admin_help and "/设置额度" in admin_help and "/封禁" in admin_help
    await h.say("/help", **MALLORY)
    assert "管理员命令" not in h.last_text()
