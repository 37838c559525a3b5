"""`xiaoai backup PATH` and `xiaoai restore PATH`: a consistent copy of the SQLite file while the bot runs,
and putting one back while it does not.

Backup: SQLite's online backup API copies the whole file in one step from a read transaction, so the copy
is one consistent snapshot (every transaction wholly in or wholly out) while the bot and the worker keep
writing (WAL: readers never block writers). The copy is written next to the destination, switched to the
rollback journal (one self-contained file), checked with `PRAGMA integrity_check` and only then renamed
into place. Videos, covers and received images are files under `worker.output_dir` / `bot.data_dir`; copy
those with the usual tools (the database names them by path).

Restore: refused while a bot or its worker uses the database: every running `App` holds a shared advisory
lock on `<db>.lock` (`hold_running_lock`), and the worker's pid file `<db>.worker.pid` (`bot.procs`) must not
name a live process. Otherwise the backup is checked (integrity, not newer than this program), copied next to
the database, the current file is checkpointed and kept as `<db>.pre-restore-<time>`, and the copy is renamed
over the database in one step (`os.replace`); stale `-wal`/`-shm` files are removed first so SQLite never
applies an old log to the restored file. The next `open_db` migrates it if it is older.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

try:  # advisory locks: POSIX only (elsewhere only the pid file is checked)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_SUFFIX = ".lock"
COUNTED_TABLES = ("jobs", "ledger", "audit", "users")


class BackupError(RuntimeError):
    """The backup or restore did not happen; the message says why (one line)."""


class DatabaseInUse(BackupError):
    """A running bot (or its worker) uses the database: restoring over it would lose or corrupt data."""


@dataclass(frozen=True)
class BackupInfo:
    path: Path
    bytes: int
    schema_version: int
    rows: dict[str, int]
    seconds: float


def lock_path(db_path: Path | str) -> Path | None:
    """`<db>.lock`; None for an in-memory database."""
    text = str(db_path)
    if not text or text == ":memory:" or text.startswith("file::memory:"):
        return None
    return Path(text + LOCK_SUFFIX)


class RunningLock:
    """The shared lock a running bot holds on its database (see `hold_running_lock`)."""

    def __init__(self, fd: int | None) -> None:
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor drops the flock


def hold_running_lock(db_path: Path | str) -> RunningLock:
    """Taken by `App.start` for as long as the bot runs: a shared flock on `<db>.lock` (any number of bots and
    tools may hold it; `restore` needs it exclusively). Raises `DatabaseInUse` while a restore is running."""
    path = lock_path(db_path)
    if path is None or fcntl is None:
        return RunningLock(None)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise DatabaseInUse(f"数据库正在恢复，请稍后再启动 / a restore of {db_path} is running; start the bot "
                            f"after it finished") from None
    return RunningLock(fd)


@contextlib.contextmanager
def _exclusive(db_path: Path) -> Iterator[None]:
    path = lock_path(db_path)
    if path is None or fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise DatabaseInUse(
                f"机器人正在使用 {db_path}，请先停止它 / a running bot uses {db_path} (it holds {path}): "
                f"stop it first (xiaoai run / playground / demo)") from None
        yield
    finally:
        os.close(fd)


def _worker_running(db_path: Path) -> str | None:
    """A line naming the live worker process of this database, or None (no pid file / the process is gone)."""
    from bot.procs import Liveness, liveness, pid_file_for, read_record

    pid_file = pid_file_for(db_path)
    record = read_record(pid_file) if pid_file is not None else None
    if record is None or liveness(record) is Liveness.GONE:
        return None
    return f"生成进程仍在运行 / the worker process {record.pid} of {db_path} still runs ({pid_file})"


def _check(conn: sqlite3.Connection, what: str) -> None:
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    if rows != [("ok",)]:
        problems = "; ".join(str(r[0]) for r in rows[:5])
        raise BackupError(f"{what}: integrity_check failed: {problems}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _copy(src: sqlite3.Connection, dest: Path) -> sqlite3.Connection:
    """Copy `src` into a new file `dest` in one step; returns the open, checked destination connection."""
    dest.unlink(missing_ok=True)
    dst = sqlite3.connect(str(dest), isolation_level=None)
    try:
        src.backup(dst)  # pages=-1: the whole file from one read transaction, a consistent snapshot
        dst.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
        _check(dst, str(dest))
    except BaseException:
        dst.close()
        dest.unlink(missing_ok=True)
        raise
    return dst


def _info(conn: sqlite3.Connection, path: Path, began: float) -> BackupInfo:
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    rows = {t: int(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]) for t in COUNTED_TABLES if t in tables}
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    return BackupInfo(path=path, bytes=path.stat().st_size if path.exists() else 0, schema_version=version,
                      rows=rows, seconds=time.monotonic() - began)


def _free_name(db_path: Path, stamp: str) -> Path:
    kept = db_path.with_name(f"{db_path.name}.pre-restore-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = db_path.with_name(f"{db_path.name}.pre-restore-{stamp}-{n}")
    return kept


def default_name(now: float | None = None) -> str:
    return time.strftime("xiaoai-%Y%m%d-%H%M%S.db", time.localtime(now))


def backup(db_path: Path | str, dest: Path | str, *, overwrite: bool = False,
           busy_timeout_ms: int = 30_000) -> BackupInfo:
    """Copy the database at `db_path` to `dest` (a file, or an existing directory: a timestamped file in it)
    while the bot may be running. The result is checked before it is renamed into place."""
    began = time.monotonic()
    db_path, dest = Path(db_path), Path(dest)
    if not db_path.is_file():
        raise BackupError(f"没有数据库文件 / no database at {db_path}")
    if dest.is_dir():
        dest = dest / default_name()
    if dest.exists() and not overwrite:
        raise BackupError(f"{dest} 已存在 / {dest} exists (use --force to replace it)")
    if dest.resolve() == db_path.resolve():
        raise BackupError("backup destination is the database itself")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    src = sqlite3.connect(str(db_path), timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        src.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        info = _copy_checked(src, tmp, dest, began)
    finally:
        src.close()
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)
    info = BackupInfo(path=dest, bytes=dest.stat().st_size, schema_version=info.schema_version, rows=info.rows,
                      seconds=time.monotonic() - began)
    log.info("backup of %s written to %s (%d bytes, schema %d, %s)", db_path, dest, info.bytes,
             info.schema_version, info.rows)
    return info


def _copy_checked(src: sqlite3.Connection, tmp: Path, target: Path, began: float) -> BackupInfo:
    """Copy `src` into the file `tmp`, check the copy (`_info`) and flush it to disk; `tmp` is then ready to be
    moved over `target`. The one copy step of backup and restore."""
    dst = _copy(src, tmp)
    try:
        info = _info(dst, target, began)
    finally:
        dst.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    return info


def restore(source: Path | str, db_path: Path | str, *, now: float | None = None) -> tuple[BackupInfo, Path | None]:
    """Put the backup `source` in place of the database at `db_path`. Refused (`DatabaseInUse`) while a bot
    or its worker uses it. Returns (what was restored, where the replaced file was kept or None)."""
    from bot.store.db import SCHEMA_VERSION

    began = time.monotonic()
    source, db_path = Path(source), Path(db_path)
    if not source.is_file():
        raise BackupError(f"没有备份文件 / no backup at {source}")
    if source.resolve() == db_path.resolve():
        raise BackupError("the backup is the database itself")
    db_path.parent.mkdir(parents=True, exist_ok=True)
    with _exclusive(db_path):
        if (running := _worker_running(db_path)) is not None:
            raise DatabaseInUse(running)
        tmp = db_path.with_name(f".{db_path.name}.restore-{os.getpid()}")
        src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, isolation_level=None)
        try:
            _check(src, str(source))
            if not src.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'jobs'").fetchone():
                raise BackupError(f"{source} is not a xiaoai database (no jobs table)")
            version = int(src.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise BackupError(f"{source} has schema version {version}, newer than this program's "
                                  f"({SCHEMA_VERSION})")
            info = _copy_checked(src, tmp, db_path, began)
        finally:
            src.close()
        kept = None
        if db_path.exists():
            old = sqlite3.connect(str(db_path), isolation_level=None)
            try:  # fold the old log into the old file: nothing of it may be applied to the restored one
                old.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                old.close()
            kept = _free_name(db_path, time.strftime("%Y%m%d-%H%M%S", time.localtime(now)))
            try:
                os.link(db_path, kept)  # the same inode: instant, and the rename below leaves it intact
            except OSError:
                shutil.copy2(db_path, kept)
        for suffix in ("-wal", "-shm", "-journal"):
            Path(f"{db_path}{suffix}").unlink(missing_ok=True)
        os.replace(tmp, db_path)
        _fsync_dir(db_path.parent)
    info = BackupInfo(path=db_path, bytes=db_path.stat().st_size, schema_version=info.schema_version,
                      rows=info.rows, seconds=time.monotonic() - began)
    log.warning("database %s restored from %s (schema %d, %s); the previous file is %s", db_path, source,
                info.schema_version, info.rows, kept)
    return info, kept
