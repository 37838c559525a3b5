"""`xiaoai backup` / `xiaoai restore` (bot.store.backup): a consistent online copy while jobs are being
written, and a restore that refuses to replace the database of a running bot."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bot import procs
from bot.cli import main
from bot.store.backup import (
    BackupError,
    DatabaseInUse,
    _exclusive,
    backup,
    hold_running_lock,
    restore,
)
from bot.store.db import SCHEMA_VERSION, open_db, schema_version
from tests._jobs_support import make_store, spec


def _counts(path: Path) -> dict[str, int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("jobs", "ledger")}
    finally:
        conn.close()


def test_backup_while_jobs_are_written_is_consistent(tmp_path: Path) -> None:
    db_path = tmp_path / "xiaoai.db"
    store = make_store(db_path)
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:  # its own connection, like the worker process: submit = job row + spend row, atomically
        try:
            own = make_store(db_path)
            n = 0
            while not stop.is_set():
                n += 1
                outcome = own.queue.submit(spec(user=f"u{n % 7}", message_id=f"w{n}"), with_place=False)
                written.append(outcome.job.id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 50:
            time.sleep(0.005)
        copies = [backup(db_path, tmp_path / f"copy-{i}.db") for i in range(3)]
        assert len(written) > 50  # the writer kept going during the copies
    finally:
        stop.set()
        thread.join()
    assert not errors
    previous = 0
    for info in copies:
        conn = sqlite3.connect(f"file:{info.path}?mode=ro", uri=True)
        try:
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
            jobs = {r[0] for r in conn.execute("SELECT id FROM jobs")}
            spends = {r[0] for r in conn.execute("SELECT job_id FROM ledger WHERE kind = 'spend'")}
            assert jobs == spends  # no transaction half in: every job has its spend row and nothing more
            assert jobs == set(range(1, len(jobs) + 1))  # a prefix of what was written
            assert info.rows["jobs"] == len(jobs) and info.schema_version == SCHEMA_VERSION
        finally:
            conn.close()
        assert not Path(f"{info.path}-wal").exists()
        assert len(jobs) >= previous
        previous = len(jobs)
    assert store.queue.counts()["queued"] == len(written)


def test_backup_refuses_to_overwrite_and_names_a_folder_target(tmp_path: Path) -> None:
    db_path = tmp_path / "xiaoai.db"
    make_store(db_path)
    out = tmp_path / "backups"
    out.mkdir()
    info = backup(db_path, out)
    assert info.path.parent == out and info.path.name.startswith("xiaoai-")
    with pytest.raises(BackupError, match="exists"):
        backup(db_path, info.path)
    assert backup(db_path, info.path, overwrite=True).path == info.path
    with pytest.raises(BackupError, match="no database"):
        backup(tmp_path / "missing.db", tmp_path / "x.db")


def test_restore_refuses_while_a_bot_holds_the_database(tmp_path: Path) -> None:
    db_path = tmp_path / "xiaoai.db"
    make_store(db_path).queue.submit(spec(message_id="old"))
    saved = backup(db_path, tmp_path / "saved.db").path
    lock = hold_running_lock(db_path)  # what App.start holds
    try:
        with pytest.raises(DatabaseInUse, match="running bot"):
            restore(saved, db_path)
        with _exclusive(tmp_path / "other.db"), pytest.raises(DatabaseInUse, match="restore"):
            hold_running_lock(tmp_path / "other.db")  # and a bot cannot start while a restore runs
    finally:
        lock.release()


def test_restore_refuses_while_the_worker_pid_file_names_a_live_process(tmp_path: Path) -> None:
    db_path = tmp_path / "xiaoai.db"
    make_store(db_path)
    saved = backup(db_path, tmp_path / "saved.db").path
    pid_file = procs.pid_file_for(db_path)
    assert pid_file is not None
    procs.write_record(pid_file, procs.WorkerRecord.of_process(os.getpid(), "worker-x", db_path))  # "alive"
    with pytest.raises(DatabaseInUse, match="worker"):
        restore(saved, db_path)
    dead = procs.WorkerRecord(pid=2**22 + 12345, worker_id="gone", db_path=str(db_path), start_ticks=1,
                              boot_id=procs.boot_id(), parent_pid=1, written_at=0.0)
    procs.write_record(pid_file, dead)  # a worker of an earlier run that is gone does not block a restore
    restore(saved, db_path)


def test_restore_puts_the_backup_in_place_atomically_and_keeps_the_old_file(tmp_path: Path) -> None:
    db_path = tmp_path / "xiaoai.db"
    store = make_store(db_path)
    store.queue.submit(spec(message_id="before"))
    saved = backup(db_path, tmp_path / "saved.db").path
    store.queue.submit(spec(message_id="after-1"))
    store.queue.submit(spec(message_id="after-2"))
    store.queue.db.conn.close()
    assert _counts(db_path)["jobs"] == 3
    info, kept = restore(saved, db_path)
    assert info.rows["jobs"] == 1
    assert kept is not None and _counts(kept)["jobs"] == 3  # the replaced file is kept beside it
    assert not Path(f"{db_path}-wal").exists()
    db = open_db(db_path)
    try:
        assert [r[0] for r in db.execute("SELECT message_id FROM jobs")] == ["before"]
        assert schema_version(db) == SCHEMA_VERSION
    finally:
        db.conn.close()


def test_restore_refuses_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    db_path = tmp_path / "xiaoai.db"
    make_store(db_path).queue.submit(spec())
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not sqlite at all" * 100)
    with pytest.raises((BackupError, sqlite3.DatabaseError)):
        restore(junk, db_path)
    assert _counts(db_path)["jobs"] == 1  # untouched


def test_cli_backup_and_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    db_path = tmp_path / "xiaoai.db"
    make_store(db_path).queue.submit(spec(message_id="one"))
    monkeypatch.setenv("XIAOAI__STORAGE__DB_PATH", str(db_path))
    monkeypatch.chdir(tmp_path)  # no ./config.yaml: defaults + the override
    out = tmp_path / "b.db"
    assert main(["backup", str(out)]) == 0
    assert "integrity_check ok" in capsys.readouterr().out
    lock = hold_running_lock(db_path)
    try:
        assert main(["restore", str(out)]) == 2
        assert "running bot" in capsys.readouterr().err
    finally:
        lock.release()
    assert main(["restore", str(out)]) == 0
    assert "pre-restore" in capsys.readouterr().out
