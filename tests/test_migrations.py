"""Schema migrations (`bot.store.db.MIGRATIONS`): a file of the first release (tests/fixtures/xiaoai-v1.db,
written by tests/fixtures/make_xiaoai_v1_db.py with that release's schema code) opens under the current
code with every row kept, re-opening changes nothing, and a new file gets the same schema."""

from __future__ import annotations

import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
import sqlite_utils

from bot.jobs.models import JobState
from bot.jobs.queue import JobQueue
from bot.jobs.settings import QueueSettings
from bot.store.db import (
    MIGRATIONS,
    SCHEMA_VERSION,
    SchemaTooNew,
    migrate,
    open_db,
    schema_version,
    transaction,
)
from bot.store.quota import QuotaBook
from bot.store.settings import QuotaSettings

FIXTURES = Path(__file__).resolve().parent / "fixtures"
V1 = FIXTURES / "xiaoai-v1.db"
V1_TABLES = ("jobs", "ledger", "users", "audit", "bans", "seen_messages", "meta")


def _copy(tmp_path: Path) -> Path:
    path = tmp_path / "xiaoai.db"
    shutil.copyfile(V1, path)
    return path


def _rows(path: Path, table: str, columns: list[str] | None = None) -> list[tuple]:
    conn = sqlite3.connect(str(path))
    try:
        cols = ", ".join(columns) if columns else "*"
        return conn.execute(f"SELECT {cols} FROM {table} ORDER BY rowid").fetchall()
    finally:
        conn.close()


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple]:
    return [tuple(r[1:]) for r in conn.execute(f"PRAGMA table_info({table})").fetchall()]


def _schema(path: Path) -> dict[str, list[tuple]]:
    conn = sqlite3.connect(str(path))
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        out = {t: _columns(conn, t) for t in tables}
        out["<indexes>"] = sorted(conn.execute(
            "SELECT name, tbl_name FROM sqlite_master WHERE type = 'index' AND name NOT LIKE 'sqlite_%'").fetchall())
        return out
    finally:
        conn.close()


def test_the_fixture_is_a_version_1_file() -> None:
    conn = sqlite3.connect(f"file:{V1}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0  # v1 never set it
        assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] == "1"
        assert "deferred_at" not in {c[0] for c in _columns(conn, "jobs")}
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert set(V1_TABLES) <= tables and "pool_actors" not in tables
        assert conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 6
        assert conn.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] >= 10
        assert conn.execute("SELECT COUNT(*) FROM audit").fetchone()[0] == 2
    finally:
        conn.close()


def test_v1_file_upgrades_with_no_row_lost(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    v1_columns = {t: [c[0] for c in _schema(path)[t]] for t in V1_TABLES}
    before = {t: _rows(path, t, v1_columns[t]) for t in V1_TABLES if t != "meta"}
    meta_before = dict(_rows(path, "meta", ["key", "value"]))

    db = open_db(path)
    try:
        assert schema_version(db) == SCHEMA_VERSION
        for table, rows in before.items():
            assert _rows(path, table, v1_columns[table]) == rows, table
        meta_after = dict(_rows(path, "meta", ["key", "value"]))
        assert meta_after == {**meta_before, "schema_version": str(SCHEMA_VERSION)}
        new_cols = _rows(path, "jobs", ["deferred_at", "send_started_at", "model"])
        assert new_cols == [(None, None, "")] * 6

        # the current code reads the old rows
        quota = QuotaBook(db, QuotaSettings())
        queue = JobQueue(db, quota, QueueSettings())
        assert queue.counts() == {"delivered": 1, "failed": 1, "cancelled": 1, "succeeded": 1, "running": 1,
                                  "queued": 1}
        assert [j.id for j in queue.undelivered()] == [4]
        assert queue.get(6).state is JobState.QUEUED
        assert quota.balance("wxid_c") == 3 - 1 - 6 + 5
        assert quota.is_banned("wxid_spam")
        assert [a.action for a in quota.audit_log(10)] == ["ban", "adjust"]
        assert queue.seen_state("m-help") == "seen"
    finally:
        db.conn.close()


def test_reopening_is_idempotent(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    open_db(path).conn.close()
    schema = _schema(path)
    rows = {t: _rows(path, t) for t in schema if not t.startswith("<")}
    db = open_db(path)
    try:
        with transaction(db):
            assert migrate(db) == []  # nothing left to apply
            for step in MIGRATIONS:  # and every step can run again without harm
                step.apply(db)
    finally:
        db.conn.close()
    assert _schema(path) == schema
    assert {t: _rows(path, t) for t in rows} == rows


def test_a_new_file_gets_the_same_schema_as_an_upgraded_one(tmp_path: Path) -> None:
    upgraded = _copy(tmp_path)
    open_db(upgraded).conn.close()
    fresh = tmp_path / "new.db"
    open_db(fresh).conn.close()
    assert _schema(fresh) == _schema(upgraded)


def test_step_1_is_the_first_release_schema(tmp_path: Path) -> None:
    """Migration 1 must stay what the first release wrote (never edit a released step)."""
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(str(path), isolation_level=None)
    db = sqlite_utils.Database(conn)
    with transaction(db):
        assert migrate(db, upto=1) == [1]
    conn.close()
    assert _schema(path) == _schema(V1)


def test_a_file_of_the_unversioned_v2_code_upgrades(tmp_path: Path) -> None:
    """Files written between the first release and numbered migrations: tables at version 2, user_version 0."""
    path = _copy(tmp_path)
    conn = sqlite3.connect(str(path))
    conn.execute("ALTER TABLE jobs ADD COLUMN deferred_at REAL")
    conn.execute("ALTER TABLE jobs ADD COLUMN send_started_at REAL")
    conn.execute("UPDATE jobs SET deferred_at = 123.0 WHERE id = 4")
    conn.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    conn.commit()
    conn.close()
    db = open_db(path)
    try:
        assert schema_version(db) == SCHEMA_VERSION
        assert db.execute("SELECT deferred_at FROM jobs WHERE id = 4").fetchone()[0] == 123.0
    finally:
        db.conn.close()


def test_a_newer_file_is_refused(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    open_db(path).conn.close()
    conn = sqlite3.connect(str(path))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(SchemaTooNew, match="newer"):
        open_db(path)


def test_two_openers_at_once_migrate_once(tmp_path: Path) -> None:
    path = _copy(tmp_path)
    errors: list[BaseException] = []
    versions: list[int] = []
    barrier = threading.Barrier(4)

    def opener() -> None:
        try:
            barrier.wait()
            db = open_db(path)
            versions.append(schema_version(db))
            db.conn.close()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert versions == [SCHEMA_VERSION] * 4
    assert len(_rows(path, "jobs")) == 6
