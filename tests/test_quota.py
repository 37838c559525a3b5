"""QuotaBook on a real SQLite file: ledger arithmetic, per-group allowance, costs, admin + audit."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.store.db import open_db
from bot.store.quota import QuotaBook
from bot.store.settings import QuotaSettings


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_book(tmp_path: Path, **overrides: object) -> QuotaBook:
    return QuotaBook(open_db(tmp_path / "q.db"), QuotaSettings(**overrides), Clock())


def assert_ledger_consistent(book: QuotaBook, user_id: str) -> None:
    rows = list(reversed(book.history(user_id, limit=10_000)))
    running = 0
    for row in rows:
        running += row.delta
        assert row.balance_after == running, row
    assert book.balance(user_id) == running


def test_first_sight_grants_daily_allowance_once(tmp_path: Path) -> None:
    book = make_book(tmp_path, daily=4)
    assert book.ensure_user("u1") == 4
    assert book.ensure_user("u1") == 4
    rows = book.history("u1")
    assert [(r.kind, r.delta, r.balance_after) for r in rows] == [("grant", 4, 4)]


def test_group_override_decides_allowance(tmp_path: Path) -> None:
    book = make_book(tmp_path, daily=3, group_overrides={"room-vip": 10})
    assert book.ensure_user("vip", "room-vip") == 10
    assert book.ensure_user("plain", "room-x") == 3
    assert book.allowance("vip") == 10
    assert book.allowance("plain") == 3


def test_spend_refund_and_insufficient(tmp_path: Path) -> None:
    book = make_book(tmp_path, daily=3)
    book.ensure_user("u")
    from bot.store.db import transaction

    with transaction(book.db):
        assert book.try_spend("u", 2, job_id=1, group_id=None) == 1
        assert book.try_spend("u", 2, job_id=2, group_id=None) is None  # not enough left
    assert book.refund("u", 2, job_id=1, group_id=None, reason="failed") == 3
    with pytest.raises(sqlite3.IntegrityError):  # a job is refunded at most once (unique index)
        book.refund("u", 2, job_id=1, group_id=None, reason="again")
    assert book.balance("u") == 3
    assert [r.kind for r in book.history("u")] == ["refund", "spend", "grant"]
    assert_ledger_consistent(book, "u")


def test_ledger_writes_need_a_transaction(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    with pytest.raises(RuntimeError):
        book._append("u", None, "grant", 1)


def test_costs_from_settings(tmp_path: Path) -> None:
    book = make_book(tmp_path, costs={"384p": {"5": 1, "10": 2}, "768p": {"5": 4}})
    assert book.cost_for("384p", 5) == 1
    assert book.cost_for("384p", 10) == 2
    assert book.cost_for("768p", 5) == 4
    with pytest.raises(ValueError):
        book.cost_for("768p", 10)


def test_admin_actions_are_ledgered_and_audited(tmp_path: Path) -> None:
    book = make_book(tmp_path, daily=3)
    assert book.set_balance("admin", "u", 10, reason="活动奖励") == 10
    assert book.add("admin", "u", -4) == 6
    assert book.add("admin", "u", -100) == 0  # clamped at zero, the row records the real change
    assert book.reset_user("admin", "u") == 3
    assert book.ban("admin", "u", reason="刷屏") is True
    assert book.is_banned("u")
    assert book.unban("admin", "u") is True
    assert not book.is_banned("u")
    assert book.unban("admin", "u") is False

    kinds = [(r.kind, r.delta, r.actor_id) for r in reversed(book.history("u"))]
    assert kinds == [("grant", 3, None), ("adjust", 7, "admin"), ("adjust", -4, "admin"),
                     ("adjust", -6, "admin"), ("adjust", 3, "admin")]
    assert_ledger_consistent(book, "u")

    audit = list(reversed(book.audit_log(limit=50)))
    assert [a.action for a in audit] == ["set", "add", "add", "reset", "ban", "unban", "unban"]
    assert all(a.actor_id == "admin" and a.target_id == "u" for a in audit)
    assert audit[2].detail == {"requested": -100, "applied": -6, "before": 6, "after": 0, "reason": ""}
    assert audit[0].detail["reason"] == "活动奖励"


def test_settings_validation() -> None:
    QuotaSettings()  # empty section is valid
    with pytest.raises(ValidationError):
        QuotaSettings(reset_time="24:00")
    with pytest.raises(ValidationError):
        QuotaSettings(timezone="Mars/Olympus")
    with pytest.raises(ValidationError):
        QuotaSettings(unknown=1)
    with pytest.raises(ValidationError):
        QuotaSettings(costs={"384p": {"five": 1}})


def test_open_db_is_idempotent_and_wal(tmp_path: Path) -> None:
    db = open_db(tmp_path / "x.db")
    db2 = open_db(tmp_path / "x.db")
    assert db2.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert {"jobs", "ledger", "audit", "bans", "seen_messages", "meta", "users"} <= set(db.table_names())
