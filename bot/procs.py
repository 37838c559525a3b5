"""Process lifetime of the generation worker: it dies with its bot, and a starting bot stops the one a dead bot
left behind.

The defect this closes: a SIGKILLed bot left its worker child running. That orphan finished jobs nobody
delivered, and after a restart two workers of the same database claimed jobs side by side (on a GPU: two model
copies, out of memory). Two layers:

* In the child (`run_child`, the spawned process main around the real target):
  - `bind_to_parent`: on Linux the kernel sends SIGTERM to the child when its parent ends
    (`prctl(PR_SET_PDEATHSIG)`); a parent that died before that call is caught by comparing `os.getppid()`
    with the pid the parent passed in.
  - `ParentWatch`, the portable check everywhere: a daemon thread waits on the multiprocessing parent
    sentinel (the child's end of a pipe the parent holds open: EOF means the parent is gone) and polls
    `os.getppid()`. When the parent is gone it ends the process (`leave_orphaned`: SIGTERM, `os._exit` after a
    short grace for a process that handles SIGTERM): no new job is claimed, and a running job is abandoned;
    its lease is reclaimed by the next bot (below) or when it expires.
* In the bot (`take_over`, called by `bot.worker.WorkerSupervisor.start`): the supervisor writes
  `<db>.worker.pid` (`WorkerRecord`: pid, the process's boot-relative start time from `/proc/<pid>/stat` and
  the boot id, so a reused pid is never mistaken for our worker, the lease owner id, the database) for every
  worker it spawns. A starting bot reads it: a live process that is really that worker is stopped (SIGTERM,
  a grace period, SIGKILL), and its running jobs are reclaimed at once with `recover_expired(owner=...)`
  instead of after the lease. A recorded worker that is already gone (dead, or its pid now belongs to another
  process) gets the same immediate reclaim, and the other process is left alone.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_DEATH_SIGNAL = signal.SIGTERM  # the worker's default SIGTERM action ends it; a Ray driver shuts down
EXIT_ORPHANED = 70  # the worker ended itself because its bot is gone (nobody reads it: for `ps`/core logs)
PARENT_POLL_S = 0.5  # how often the watch also compares os.getppid() (the sentinel answers at once)
ORPHAN_GRACE_S = 4.0  # an orphan that handles SIGTERM (the Ray driver) has this long before os._exit
STALE_TERM_GRACE_S = 5.0  # SIGTERM → SIGKILL for a stale worker
KILL_WAIT_S = 5.0  # after SIGKILL, how long to wait for the process to be gone
PID_FILE_SUFFIX = ".worker.pid"


# ====================================================================== the child side
def set_parent_death_signal(sig: int = PARENT_DEATH_SIGNAL) -> bool:
    """Ask the Linux kernel to send `sig` to this process when its parent ends. False where unsupported.

    Note: the kernel's "parent" is the *thread* that spawned this process, so the bot must spawn the worker
    from a thread that outlives it (`WorkerSupervisor` does, from its supervisor thread)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ulong = ctypes.c_ulong
        if libc.prctl(ctypes.c_int(PR_SET_PDEATHSIG), ulong(int(sig)), ulong(0), ulong(0), ulong(0)) != 0:
            log.warning("prctl(PR_SET_PDEATHSIG) failed: errno %d", ctypes.get_errno())
            return False
    except (OSError, AttributeError) as exc:  # no libc or no prctl symbol: the portable watch still runs
        log.warning("prctl is not available (%s); relying on the parent watch", exc)
        return False
    return True


def bind_to_parent(parent_pid: int, sig: int = PARENT_DEATH_SIGNAL) -> bool:
    """First thing in the child: arm the parent-death signal, then make sure the parent did not already die
    before it was armed (then nobody would ever send it). Ends the process when the parent is gone."""
    armed = set_parent_death_signal(sig)
    if os.getppid() != parent_pid:
        log.error("parent %d is gone before the worker started; exiting", parent_pid,
                  extra={"parent_pid": parent_pid})
        os._exit(EXIT_ORPHANED)
    return armed


def leave_orphaned(stop: Any = None, signalled: bool = False, grace_s: float = ORPHAN_GRACE_S) -> None:
    """End this process because its parent is gone, whatever it is doing.

    SIGTERM (unless the kernel already sent it, `signalled`): its default action ends a worker at once, while
    a process that handles it gets `grace_s` to clean up (the Ray driver shuts down the local Ray instance it
    started; killed outright, Ray leaves agent processes behind). `stop` is set so a cooperative loop claims
    no new job meanwhile. After `grace_s` the process ends regardless (`os._exit`, armed first: setting a
    multiprocessing event the dead parent may have left locked must not keep it alive)."""
    timer = threading.Timer(grace_s, os._exit, args=(EXIT_ORPHANED,))
    timer.daemon = True
    timer.start()
    if not signalled:
        os.kill(os.getpid(), PARENT_DEATH_SIGNAL)
    if stop is not None:
        stop.set()


class ParentWatch:
    """Ends this process as soon as its parent is gone (portable: no prctl needed).

    Waits on `sentinel` (EOF of a pipe whose other end only the parent holds, e.g. the multiprocessing parent
    sentinel of a spawned child) and every `poll_s` also compares `os.getppid()` with `parent_pid` (a dead
    parent's children are re-parented). `on_gone` runs on the watch thread; by default (`leave_orphaned`) it
    ends the process without waiting for the running job: its lease is reclaimed by the next bot."""

    def __init__(self, parent_pid: int, *, sentinel: Any = None, poll_s: float = PARENT_POLL_S,
                 on_gone: Callable[[], None] = leave_orphaned, worker_id: str = "") -> None:
        self.parent_pid = parent_pid
        self.sentinel = sentinel
        self.poll_s = poll_s
        self.on_gone = on_gone
        self.worker_id = worker_id
        self._thread = threading.Thread(target=self._run, name="parent-watch", daemon=True)

    def start(self) -> ParentWatch:
        self._thread.start()
        return self

    def parent_gone(self, timeout: float = 0.0) -> bool:
        """True when the parent has ended (waits up to `timeout` for the sentinel)."""
        if self.sentinel is not None:
            try:
                if mp_connection.wait([self.sentinel], timeout=timeout):
                    return True
            except OSError:  # the sentinel itself is broken: fall back to the ppid check
                self.sentinel = None
        elif timeout > 0:
            time.sleep(timeout)
        return os.getppid() != self.parent_pid

    def _run(self) -> None:
        while not self.parent_gone(self.poll_s):
            pass
        log.error("parent %d is gone: worker %s exits now, its running job is left to be reclaimed",
                  self.parent_pid, self.worker_id, extra={"worker_id": self.worker_id, "parent_pid": self.parent_pid})
        self.on_gone()


def run_child(target: Callable[[Any, str, Any], None], parent_pid: int, settings: Any, worker_id: str,
              stop: Any) -> None:
    """Process main of a supervised worker child: tie its life to the parent, then run `target`.

    `parent_pid` is the bot's pid as the bot saw it when spawning (compared with `os.getppid()` here)."""
    signalled = bind_to_parent(parent_pid)
    parent = mp.parent_process()
    sentinel = parent.sentinel if parent is not None and parent.pid == parent_pid else None
    ParentWatch(parent_pid, sentinel=sentinel, worker_id=worker_id,
                on_gone=functools.partial(leave_orphaned, stop, signalled)).start()
    target(settings, worker_id, stop)


# ====================================================================== process identity (no psutil)
def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat from the state on (field 3), so the command name (which may hold spaces
    and parentheses) is skipped. None when there is no such process or no /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2:].split()


def start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (field 22 of /proc/<pid>/stat): with the boot id it
    tells a process apart from a later one that got the same pid."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields is not None and len(fields) > 19 else None


def boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def cmdline(pid: int) -> str:
    """The command line of `pid`, arguments joined by spaces ("" when unknown)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def pid_alive(pid: int) -> bool:
    """The process exists and is not a zombie (a zombie has ended; only its exit status is left)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    fields = _stat_fields(pid)
    return not (fields and fields[0] in ("Z", "X"))


def wait_gone(pid: int, timeout: float, interval: float = 0.05) -> bool:
    """Wait until `pid` has ended; True when it did within `timeout`."""
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


def terminate(pid: int, grace_s: float = STALE_TERM_GRACE_S, kill_wait_s: float = KILL_WAIT_S) -> bool:
    """SIGTERM, up to `grace_s` to end, then SIGKILL. True when the process is gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_gone(pid, grace_s):
        return True
    log.warning("process %d ignored SIGTERM for %.1fs; killing it", pid, grace_s, extra={"pid": pid})
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return wait_gone(pid, kill_wait_s)


# ====================================================================== the pid file
@dataclass(frozen=True)
class WorkerRecord:
    """What `<db>.worker.pid` says about the worker process of that database."""

    pid: int
    worker_id: str  # its lease owner id
    db_path: str
    start_ticks: int | None  # /proc/<pid>/stat start time (None where there is no /proc)
    boot_id: str | None
    parent_pid: int  # the bot that spawned it
    written_at: float

    @classmethod
    def of_process(cls, pid: int, worker_id: str, db_path: Path | str) -> WorkerRecord:
        """The record for our freshly spawned child `pid` (read now, while it certainly is that process)."""
        return cls(pid=pid, worker_id=worker_id, db_path=str(Path(db_path).resolve()), start_ticks=start_ticks(pid),
                   boot_id=boot_id(), parent_pid=os.getpid(), written_at=time.time())


def pid_file_for(db_path: Path | str) -> Path | None:
    """`<db>.worker.pid` next to the database; None for an in-memory database (nothing to share)."""
    text = str(db_path)
    if not text or text == ":memory:" or text.startswith("file::memory:"):
        return None
    return Path(text + PID_FILE_SUFFIX)


def write_record(path: Path, record: WorkerRecord) -> None:
    """Write atomically (a reader never sees half a file)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(asdict(record)))
    os.replace(tmp, path)


def read_record(path: Path) -> WorkerRecord | None:
    """The record, or None when there is none; an unreadable file is removed (it cannot name a worker)."""
    try:
        data = json.loads(path.read_text())
        return WorkerRecord(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        log.warning("unreadable worker pid file %s (%s); removing it", path, exc)
        with contextlib.suppress(OSError):
            path.unlink()
        return None


def remove_record(path: Path, worker_id: str) -> None:
    """Remove the pid file if it still names `worker_id` (never one a newer bot wrote)."""
    record = read_record(path)
    if record is not None and record.worker_id == worker_id:
        with contextlib.suppress(OSError):
            path.unlink()


class Liveness(Enum):
    """What became of the worker a pid file names."""

    RUNNING = "running"  # that very process still runs
    GONE = "gone"  # it ended (no such pid, a zombie, or the pid now belongs to another process)
    UNKNOWN = "unknown"  # its pid is in use but the process cannot be identified (no /proc)


def liveness(record: WorkerRecord) -> Liveness:
    """Is the recorded worker still running? Identified by pid + start time + boot id, and it must be python."""
    if not pid_alive(record.pid):
        return Liveness.GONE
    ticks = start_ticks(record.pid)
    if record.start_ticks is None or ticks is None:
        return Liveness.UNKNOWN
    same = ticks == record.start_ticks and boot_id() == record.boot_id and "python" in cmdline(record.pid).lower()
    return Liveness.RUNNING if same else Liveness.GONE


def take_over(path: Path, grace_s: float = STALE_TERM_GRACE_S) -> str | None:
    """Stop the worker that `path` names if it still runs, and return its lease owner id so the caller can
    reclaim its jobs at once; None when there is nothing to reclaim (no file, or the process cannot be
    identified: its leases then expire as usual). The file is removed once the worker is known to be gone."""
    record = read_record(path)
    if record is None:
        return None
    ids = {"worker_id": record.worker_id, "pid": record.pid}
    state = liveness(record)
    if state is Liveness.UNKNOWN:
        log.warning("pid file %s names pid %d, which runs but cannot be identified; leaving it alone", path,
                    record.pid, extra=ids)
        return None
    if state is Liveness.RUNNING:
        if record.parent_pid != os.getpid() and pid_alive(record.parent_pid):
            log.error("worker %s (pid %d) may belong to another bot still running (pid %d) on this database; "
                      "stopping it anyway: one worker per database", record.worker_id, record.pid,
                      record.parent_pid, extra=ids)
        log.warning("stale worker %s (pid %d) of %s still runs; stopping it", record.worker_id, record.pid,
                    record.db_path, extra=ids)
        if not terminate(record.pid, grace_s):
            log.error("stale worker %s (pid %d) could not be stopped", record.worker_id, record.pid, extra=ids)
            return None
    else:
        log.info("worker %s (pid %d) of a previous run is gone", record.worker_id, record.pid, extra=ids)
    with contextlib.suppress(OSError):
        path.unlink()
    return record.worker_id
