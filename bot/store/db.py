"""The one SQLite file: opening it, its schema (every table lives here), and the transaction helper.

Every process (the bot, the worker process, the worker's heartbeat thread) opens its own connection
with `open_db`. Connections run in autocommit mode (`isolation_level=None`) with WAL and a busy
timeout; multi-statement changes go through `transaction(db)`, which issues `BEGIN IMMEDIATE` so the
write lock is taken up front and two writers can never interleave a read-check-write sequence.

Writes inside a transaction use `db.execute(...)` with plain SQL, never sqlite-utils' table helpers:
those wrap themselves in `with conn:` which would COMMIT our outer transaction half-way.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import sqlite_utils

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- migrations
# The schema is the result of numbered steps (`MIGRATIONS`). `PRAGMA user_version` holds the last step
# applied to a file; `open_db` applies the missing ones in order inside one BEGIN IMMEDIATE transaction (two
# processes opening an old file at once migrate it once) and then sets user_version. Every step is
# idempotent (IF NOT EXISTS; a column is added only when missing): files written before user_version was kept
# (0, though their tables may already be at version 2 or 3) simply run every step. Never edit a released
# step: append a new one. tests/test_migrations.py upgrades a version-1 file (tests/fixtures/xiaoai-v1.db).

# Version 1: the tables as first released (bot/store/db.py of the first release, unchanged).
_V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    user_id TEXT NOT NULL,
    user_name TEXT NOT NULL DEFAULT '',
    chat_id TEXT NOT NULL,
    chat_kind TEXT NOT NULL,
    group_id TEXT,
    sched_group TEXT NOT NULL,
    prompt TEXT NOT NULL,
    final_prompt TEXT NOT NULL,
    resolution TEXT NOT NULL,
    duration_s INTEGER NOT NULL,
    seed INTEGER NOT NULL,
    image_path TEXT,
    cost INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    lease_owner TEXT,
    lease_until REAL,
    progress REAL NOT NULL DEFAULT 0,
    progress_text TEXT NOT NULL DEFAULT '',
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    video_path TEXT,
    cover_path TEXT,
    label TEXT NOT NULL DEFAULT '',
    seconds REAL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    delivered_at REAL,
    notified INTEGER NOT NULL DEFAULT 0,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    next_delivery_at REAL,
    delivery_error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, created_at);
CREATE INDEX IF NOT EXISTS jobs_user ON jobs (user_id, created_at);
CREATE INDEX IF NOT EXISTS jobs_user_started ON jobs (user_id, started_at);
CREATE INDEX IF NOT EXISTS jobs_group_started ON jobs (sched_group, started_at);
CREATE INDEX IF NOT EXISTS jobs_eta ON jobs (resolution, duration_s, finished_at);

CREATE TABLE IF NOT EXISTS ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    group_id TEXT,
    kind TEXT NOT NULL CHECK (kind IN ('grant', 'spend', 'refund', 'adjust', 'reset')),
    delta INTEGER NOT NULL,
    balance_after INTEGER NOT NULL,
    job_id INTEGER,
    actor_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    ts REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_user ON ledger (user_id, id);
CREATE UNIQUE INDEX IF NOT EXISTS ledger_job_once ON ledger (job_id, kind)
    WHERE kind IN ('spend', 'refund') AND job_id IS NOT NULL;

CREATE TABLE IF NOT EXISTS users (
    user_id TEXT PRIMARY KEY,
    group_id TEXT,
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    actor_id TEXT NOT NULL,
    action TEXT NOT NULL,
    target_id TEXT,
    detail TEXT NOT NULL DEFAULT '{}',
    ts REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS bans (
    user_id TEXT PRIMARY KEY,
    actor_id TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    ts REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS seen_messages (
    message_id TEXT PRIMARY KEY,
    job_id INTEGER,
    outcome TEXT NOT NULL DEFAULT '',
    ts REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

# Version 2: two jobs columns, and the executor status tables (before, the Ray executor made them itself).
_V2_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("jobs", "deferred_at", "REAL"),  # parked until the user writes again (the channel allowed no send)
    ("jobs", "send_started_at", "REAL"),  # a video send began (intent recorded before the send)
)
_V2_TABLES = """
CREATE TABLE IF NOT EXISTS pool_cluster (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    address TEXT NOT NULL DEFAULT '',
    since REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE IF NOT EXISTS pool_actors (
    name TEXT PRIMARY KEY,
    incarnation INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    node TEXT NOT NULL DEFAULT '',
    gpu TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    variants TEXT NOT NULL DEFAULT '[]',
    job_id INTEGER,
    job_started_at REAL,
    jobs_done INTEGER NOT NULL DEFAULT 0,
    busy_s REAL NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
"""

# Version 3: which model makes a job (`Settings.model_key`, for per-model ETAs); the worker's last attempt to
# build its generator (`bot.executors.status`).
_V3_COLUMNS: tuple[tuple[str, str, str], ...] = (("jobs", "model", "TEXT NOT NULL DEFAULT ''"),)
_V3_TABLES = """
CREATE TABLE IF NOT EXISTS generator_health (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    worker_id TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    failures INTEGER NOT NULL DEFAULT 0,
    device TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
"""

# Version 4: totals of finished job rows that retention removed (`JobQueue.prune_finished`), so the counters
# read from the database (/metrics) never go backwards. One row per (state, error, resolution, model, le:
# the upper bound of the job's generation-seconds histogram bucket, '+Inf', or '' when it has no time).
_V4_TABLES = """
CREATE TABLE IF NOT EXISTS job_rollup (
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    resolution TEXT NOT NULL DEFAULT '',
    model TEXT NOT NULL DEFAULT '',
    le TEXT NOT NULL DEFAULT '',
    jobs INTEGER NOT NULL DEFAULT 0,
    seconds_sum REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (state, error, resolution, model, le)
)
"""

# Version 5: what a request adds to the generation (`/视频 不要=…`, `风格=…`: the negative prompt the generator gets,
# '' = the generator's own default) and which clip a `/续写 #N` continues (`parent_id`; `merge` 1 = join the two
# into one MP4 when the new one is made).
_V5_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("jobs", "negative_prompt", "TEXT NOT NULL DEFAULT ''"),
    ("jobs", "parent_id", "INTEGER"),
    ("jobs", "merge", "INTEGER NOT NULL DEFAULT 0"),
)


def _run_script(db: sqlite_utils.Database, script: str) -> None:
    for statement in _split_statements(script):
        db.execute(statement)


def _add_columns(db: sqlite_utils.Database, columns: tuple[tuple[str, str, str], ...]) -> None:
    for table, column, decl in columns:
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})").fetchall()}
        if column not in have:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")


def _v2(db: sqlite_utils.Database) -> None:
    _add_columns(db, _V2_COLUMNS)
    _run_script(db, _V2_TABLES)


def _v3(db: sqlite_utils.Database) -> None:
    _add_columns(db, _V3_COLUMNS)
    _run_script(db, _V3_TABLES)


@dataclass(frozen=True)
class Migration:
    version: int
    what: str
    apply: Callable[[sqlite_utils.Database], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "original tables (jobs, ledger, users, audit, bans, seen_messages, meta)",
              lambda db: _run_script(db, _V1_SCHEMA)),
    Migration(2, "jobs.deferred_at, jobs.send_started_at; pool_cluster, pool_actors", _v2),
    Migration(3, "jobs.model; generator_health", _v3),
    Migration(4, "job_rollup (totals of job rows removed by retention)", lambda db: _run_script(db, _V4_TABLES)),
    Migration(5, "jobs.negative_prompt, jobs.parent_id, jobs.merge", lambda db: _add_columns(db, _V5_COLUMNS)),
)
SCHEMA_VERSION = MIGRATIONS[-1].version


class SchemaTooNew(RuntimeError):
    """The file was migrated by a newer version of the bot than this one: refuse rather than guess."""


def schema_version(db: sqlite_utils.Database) -> int:
    """The last migration step applied to this file (`PRAGMA user_version`; 0 for a new or unversioned one)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite_utils.Database, upto: int = SCHEMA_VERSION) -> list[int]:
    """Apply the missing steps up to `upto`, inside the caller's transaction (see `open_db`); returns the
    versions applied. Raises `SchemaTooNew` for a file newer than this code."""
    current = schema_version(db)
    if current > SCHEMA_VERSION:
        raise SchemaTooNew(f"数据库版本 {current} 比本程序支持的 {SCHEMA_VERSION} 新 / database schema version "
                           f"{current} is newer than this program's ({SCHEMA_VERSION}): run the newer version "
                           f"or restore a backup (xiaoai restore)")
    applied = []
    for step in MIGRATIONS:
        if current < step.version <= upto:
            step.apply(db)
            applied.append(step.version)
    if applied:
        db.execute(f"PRAGMA user_version = {int(applied[-1])}")
        meta_set(db, "schema_version", str(applied[-1]))
    return applied

_LOCK_ATTR = "_xiaoai_lock"


def open_db(path: Path, *, busy_timeout_ms: int = 30_000) -> sqlite_utils.Database:
    """Open (creating and migrating if needed) the shared SQLite file. Idempotent and safe to call
    from several processes at once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(
        str(path), isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000
    )
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if str(mode).lower() != "wal":
        log.warning("sqlite journal_mode is %s, not wal (path=%s)", mode, path)
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    db = sqlite_utils.Database(conn)
    setattr(db, _LOCK_ATTR, threading.RLock())
    try:
        with transaction(db):
            applied = migrate(db)
    except BaseException:
        conn.close()
        raise
    if applied:
        log.info("database %s: schema steps %s applied (now version %d)", path, applied, SCHEMA_VERSION)
    return db


def _split_statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";\n") if s.strip()]


def db_lock(db: sqlite_utils.Database) -> threading.RLock:
    """The per-connection lock: threads sharing one connection take turns for whole transactions."""
    lock = getattr(db, _LOCK_ATTR, None)
    if lock is None:
        lock = threading.RLock()
        setattr(db, _LOCK_ATTR, lock)
    return lock


@contextmanager
def transaction(db: sqlite_utils.Database) -> Iterator[sqlite_utils.Database]:
    """`BEGIN IMMEDIATE` … `COMMIT` (or `ROLLBACK` on error). Nested use joins the outer transaction,
    so QuotaBook methods can run inside a JobQueue transaction."""
    with db_lock(db):
        if db.conn.in_transaction:
            yield db
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def meta_get(db: sqlite_utils.Database, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
    return None if row is None else str(row[0])


def meta_set(db: sqlite_utils.Database, key: str, value: str) -> None:
    db.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
