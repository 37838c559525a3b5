"""The worker process lives and dies with its bot ("Nothing answered twice, nothing left behind").

Real processes throughout: a bot subprocess (the real App on the local channel, synthetic generator) that is
SIGKILLed must take its worker (or Ray dispatcher and its Ray processes) along; a starting supervisor stops a
stale worker of the same database named by `<db>.worker.pid` and reclaims its running job at once (not after
the 60 s lease), reclaims at once for a recorded worker that is already dead, and never kills a process that
merely reuses the recorded pid. The SQLite file is real (tmp_path); nothing touches the network.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _jobs_support import spec

from bot import procs
from bot.jobs.models import JobState
from bot.jobs.queue import JobQueue
from bot.settings import Settings
from bot.worker import WorkerSupervisor, open_queue
from tests.chat_harness import make_settings

pytestmark = [pytest.mark.timeout(60), pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                          reason="reads /proc")]

ROOT = Path(__file__).resolve().parent.parent
LONG_LEASE_S = 60.0  # what the reclaim must not wait for
QUIET_RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
                 "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "RAY_DEDUP_LOGS": "0"}

# A bot: the real App (local channel, synthetic generator) in its own process; one slow job, then it idles.
BOT_SCRIPT = r"""
import asyncio, json, sys
from pathlib import Path
from bot.app import App
from bot.channels.local import LocalChannel
from tests.chat_harness import ROOM, make_settings

async def main(tmp: Path, sections: dict) -> None:
    channel = LocalChannel()
    app = App(make_settings(tmp, **sections), channel, pipeline=None)
    await app.start()
    await channel.say("/视频 a lighthouse at night", sender_id="wxid_alice", sender_name="Alice", chat_id=ROOM)
    print("started", app.supervisor.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main(Path(sys.argv[1]), json.loads(sys.argv[2])))
"""

# A worker of the database that its supervisor no longer owns (what a SIGKILLed bot used to leave behind).
FOREIGN_WORKER_SCRIPT = r"""
import json, sys, threading
from pathlib import Path
from bot.worker import run_worker
from tests.chat_harness import make_settings

run_worker(make_settings(Path(sys.argv[1]), **json.loads(sys.argv[2])), sys.argv[3], threading.Event())
"""

# A process that watches its parent with the portable check only (no prctl), under a parent we can kill.
WATCHER_SCRIPT = r"""
import sys, time
from bot.procs import ParentWatch
ParentWatch(int(sys.argv[1]), poll_s=0.1).start()
print("watching", flush=True)
time.sleep(30)
"""
MIDDLE_SCRIPT = r"""
import os, subprocess, sys
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], str(os.getpid())])
print(child.pid, flush=True)
child.wait()
"""


# ---------------------------------------------------------------------- helpers
def wait_for(cond: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> float:
    """Poll `cond` until true; the seconds it took. Fails the test after `timeout`."""
    began = time.monotonic()
    while not cond():
        if time.monotonic() - began > timeout:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - began


def ppid_of(pid: int) -> int | None:
    fields = procs._stat_fields(pid)
    return int(fields[1]) if fields else None


def descendants(root: int) -> set[int]:
    """Every live process below `root` (scans /proc: /proc/<pid>/task/*/children is not always there)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (ppid := ppid_of(int(entry.name))) is not None:
            parents[int(entry.name)] = ppid
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= frontier
    return {pid for pid in found if procs.pid_alive(pid)}


def lifetime_sections(tmp_path: Path, **worker: object) -> dict[str, dict[str, object]]:
    """Settings sections (JSON-able, for subprocesses too) of a small synthetic setup on tmp_path."""
    base: dict[str, object] = {"synthetic_steps": 4, "synthetic_step_delay_s": 0.02, "synthetic_width": 64,
                               "synthetic_height": 48, "synthetic_fps": 4, "poll_s": 0.05, "heartbeat_s": 0.5,
                               "lease_s": LONG_LEASE_S, "recover_every_s": 30.0, "restart_backoff_s": 0.1,
                               "stop_timeout_s": 5.0}
    base.update(worker)
    return {"worker": base, "queue": {"delivery_poll_s": 0.2, "max_attempts": 3}}


def settings_for(tmp_path: Path, **worker: object) -> Settings:
    return make_settings(tmp_path, **lifetime_sections(tmp_path, **worker))


def python(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", script, *args], cwd=ROOT, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def reap(proc: subprocess.Popen[str]) -> None:
    """Kill (the process group of) a helper process this test started, and wait for it."""
    if proc.poll() is None:
        with_group = os.getpgid(proc.pid) == proc.pid
        os.killpg(proc.pid, signal.SIGKILL) if with_group else proc.kill()
    proc.wait(10)


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        reap(proc)


def kill_leftovers(pids: set[int]) -> None:
    for pid in pids:
        if procs.pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def job_of(queue: JobQueue, job_id: int):
    job = queue.get(job_id)
    assert job is not None
    return job


# ---------------------------------------------------------------------- defect 1: the worker dies with its bot
@pytest.mark.parametrize("executor", ["local", "ray"])
def test_sigkilled_bot_takes_its_worker_along(tmp_path: Path, spawned: list, executor: str) -> None:
    """kill -9 of the bot process alone: its worker (or Ray dispatcher, with the local Ray instance it runs)
    is gone within seconds, instead of finishing jobs for nobody and claiming beside the next bot's worker."""
    sections = lifetime_sections(tmp_path, synthetic_steps=400, synthetic_step_delay_s=0.05)
    env: dict[str, str] = {}
    if executor == "ray":
        pytest.importorskip("ray")
        sections["executor"] = {"kind": "ray", "node_ip_address": "127.0.0.1", "local_num_cpus": 2,
                                "local_num_gpus": 1, "tick_s": 0.05, "status_every_s": 0.2,
                                "actors": [{"name": "gpu", "count": 1, "num_gpus": 1, "num_cpus": 1}]}
        env = QUIET_RAY_ENV
    bot = python(BOT_SCRIPT, str(tmp_path), json.dumps(sections), env=env)
    spawned.append(bot)
    assert bot.stdout is not None
    line = bot.stdout.readline().split()
    assert line[:1] == ["started"], f"bot did not start: {line}"
    worker_pid = int(line[1])
    queue = open_queue(make_settings(tmp_path, **sections))
    job_id = queue.recent(1)[0].id
    wait_for(lambda: job_of(queue, job_id).state is JobState.RUNNING and job_of(queue, job_id).progress > 0,
             40, "the job running in the worker")
    tree = descendants(bot.pid)
    assert worker_pid in tree and ppid_of(worker_pid) == bot.pid
    try:
        os.kill(bot.pid, signal.SIGKILL)
        bot.wait(5)
        took = wait_for(lambda: not procs.pid_alive(worker_pid), 5, f"{executor} worker {worker_pid} to end")
        wait_for(lambda: not any(procs.pid_alive(p) for p in tree), 10,
                 f"the bot's other processes to end: {sorted(p for p in tree if procs.pid_alive(p))}")
    finally:
        kill_leftovers(tree)
    assert took < 5
    running = job_of(queue, job_id)
    progress = running.progress
    time.sleep(0.5)
    assert job_of(queue, job_id).state is JobState.RUNNING and job_of(queue, job_id).progress == progress  # abandoned


def test_orphan_left_by_a_sigkilled_bot_is_reclaimed_by_the_next_bot_at_once(tmp_path: Path, spawned: list) -> None:
    """After the kill -9 the next bot of the database reclaims the abandoned job at once (the pid file names a
    dead worker) and one worker finishes it: no wait for the 60 s lease, no second worker."""
    sections = lifetime_sections(tmp_path, synthetic_steps=400, synthetic_step_delay_s=0.05)
    bot = python(BOT_SCRIPT, str(tmp_path), json.dumps(sections))
    spawned.append(bot)
    assert bot.stdout is not None
    worker_pid = int(bot.stdout.readline().split()[1])
    settings = settings_for(tmp_path)
    queue = open_queue(settings)
    job_id = queue.recent(1)[0].id
    wait_for(lambda: job_of(queue, job_id).progress > 0, 40, "the job running")
    old_owner = job_of(queue, job_id).lease_owner
    record = procs.read_record(procs.pid_file_for(settings.storage.db_path))  # type: ignore[arg-type]
    assert record is not None and (record.pid, record.worker_id) == (worker_pid, old_owner)
    os.kill(bot.pid, signal.SIGKILL)
    bot.wait(5)
    wait_for(lambda: not procs.pid_alive(worker_pid), 5, "the worker to end")

    began = time.monotonic()
    sup = WorkerSupervisor(settings)
    sup.start()
    try:
        assert job_of(queue, job_id).lease_owner != old_owner  # reclaimed before the new worker even ran
        wait_for(lambda: job_of(queue, job_id).state is JobState.SUCCEEDED, 20, "the job done by the new worker")
    finally:
        sup.stop()
    assert time.monotonic() - began < LONG_LEASE_S / 3
    done = job_of(queue, job_id)
    assert done.attempts == 2 and Path(done.video_path).exists()


def test_parent_watch_ends_the_child_without_prctl(tmp_path: Path, spawned: list) -> None:
    """The portable check alone (no parent-death signal): kill -9 of the parent, the watcher child exits."""
    middle = python(MIDDLE_SCRIPT, WATCHER_SCRIPT)
    spawned.append(middle)
    assert middle.stdout is not None
    child = int(middle.stdout.readline())
    try:
        assert middle.stdout.readline().strip() == "watching"  # the child shares the middle's stdout
        os.kill(middle.pid, signal.SIGKILL)
        middle.wait(5)
        took = wait_for(lambda: not procs.pid_alive(child), 5, "the orphaned child to exit")
    finally:
        kill_leftovers({child})
    assert took < 3


def test_parent_watch_sees_the_pipe_close_at_once() -> None:
    """EOF on the parent's pipe (its other end closed) is noticed without waiting for the ppid poll."""
    read_end, write_end = os.pipe()
    gone = threading.Event()
    try:
        procs.ParentWatch(os.getppid(), sentinel=read_end, poll_s=30.0, on_gone=gone.set).start()
        time.sleep(0.2)
        assert not gone.is_set()
        os.close(write_end)
        assert gone.wait(2)
    finally:
        os.close(read_end)


def test_child_exits_when_its_parent_is_already_gone() -> None:
    """The race before prctl: a parent pid that is not the real parent means the parent died; exit at once."""
    child = subprocess.run([sys.executable, "-c", "import os; from bot.procs import bind_to_parent; "
                            "bind_to_parent(os.getppid() + 1000000); print('survived')"],
                           cwd=ROOT, capture_output=True, text=True, timeout=20)
    assert child.returncode == procs.EXIT_ORPHANED and "survived" not in child.stdout


# ---------------------------------------------------------------------- defect 1 (restart side): the pid file
def claimed_job(tmp_path: Path, owner: str) -> tuple[Settings, JobQueue, int]:
    """A job running under `owner` with a long lease (as a worker of a previous bot left it)."""
    settings = settings_for(tmp_path)
    queue = open_queue(settings)
    job = queue.submit(spec("u1")).job
    claimed = queue.claim(owner, LONG_LEASE_S)
    assert claimed is not None and claimed.id == job.id
    return settings, queue, job.id


def pid_file(settings: Settings) -> Path:
    path = procs.pid_file_for(settings.storage.db_path)
    assert path is not None
    return path


def test_stale_worker_still_running_is_stopped_and_its_job_reclaimed_at_once(tmp_path: Path, spawned: list) -> None:
    """A live worker of the same database from a previous bot: stopped before ours starts, its running job back
    in the queue at once and finished by our worker, long before its lease would have run out."""
    sections = lifetime_sections(tmp_path, synthetic_steps=2000, synthetic_step_delay_s=0.05)
    settings = settings_for(tmp_path)
    queue = open_queue(settings)
    job = queue.submit(spec("u1")).job
    old = python(FOREIGN_WORKER_SCRIPT, str(tmp_path), json.dumps(sections), "old-worker-1")
    spawned.append(old)
    wait_for(lambda: job_of(queue, job.id).lease_owner == "old-worker-1" and job_of(queue, job.id).progress > 0,
             20, "the old worker running the job")
    procs.write_record(pid_file(settings), procs.WorkerRecord.of_process(old.pid, "old-worker-1",
                                                                         settings.storage.db_path))
    began = time.monotonic()
    sup = WorkerSupervisor(settings)
    sup.start()
    try:
        assert old.wait(1) == -signal.SIGTERM  # stopped (and reaped here) before start() returned
        assert job_of(queue, job.id).lease_owner != "old-worker-1"
        record = procs.read_record(pid_file(settings))
        assert record is not None and (record.pid, record.worker_id) == (sup.pid, sup.child_id)
        wait_for(lambda: job_of(queue, job.id).state is JobState.SUCCEEDED, 20, "the job done by our worker")
        assert job_of(queue, job.id).lease_owner is None
    finally:
        sup.stop()
    assert time.monotonic() - began < LONG_LEASE_S / 3
    assert job_of(queue, job.id).attempts == 2
    assert not pid_file(settings).exists()  # a clean stop removes it


def test_pid_file_of_a_dead_worker_reclaims_its_job_at_once(tmp_path: Path, spawned: list) -> None:
    settings, queue, job_id = claimed_job(tmp_path, "old-worker-2")
    gone = python("import time; time.sleep(30)")
    spawned.append(gone)
    record = procs.WorkerRecord.of_process(gone.pid, "old-worker-2", settings.storage.db_path)
    reap(gone)
    procs.write_record(pid_file(settings), record)
    sup = WorkerSupervisor(settings)
    sup.start()
    try:
        assert job_of(queue, job_id).lease_owner != "old-worker-2"
        wait_for(lambda: job_of(queue, job_id).state is JobState.SUCCEEDED, 20, "the job done by our worker")
    finally:
        sup.stop()
    assert job_of(queue, job_id).attempts == 2


def test_pid_reused_by_another_process_is_not_killed(tmp_path: Path, spawned: list) -> None:
    """The recorded pid now belongs to an unrelated process (`sleep`, started later than the recorded worker):
    it is left alone; the recorded worker itself is gone, so its job is reclaimed at once."""
    settings, queue, job_id = claimed_job(tmp_path, "old-worker-3")
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    stranger = procs.WorkerRecord.of_process(sleeper.pid, "old-worker-3", settings.storage.db_path)
    assert stranger.start_ticks is not None
    procs.write_record(pid_file(settings), dataclasses.replace(stranger, start_ticks=stranger.start_ticks - 100))
    sup = WorkerSupervisor(settings)
    try:
        sup.start()
        try:
            assert job_of(queue, job_id).lease_owner != "old-worker-3"
            wait_for(lambda: job_of(queue, job_id).state is JobState.SUCCEEDED, 20, "the job done by our worker")
        finally:
            sup.stop()
        assert sleeper.poll() is None and procs.pid_alive(sleeper.pid)  # not killed
    finally:
        sleeper.kill()
        sleeper.wait(5)


def test_same_pid_and_start_time_but_not_python_is_not_killed(tmp_path: Path) -> None:
    """Identity needs a python command line too: a record that matches `sleep` exactly is still not ours."""
    sleeper = subprocess.Popen(["sleep", "30"], start_new_session=True)
    try:
        record = procs.WorkerRecord.of_process(sleeper.pid, "w", tmp_path / "x.db")
        assert procs.liveness(record) is procs.Liveness.GONE
        path = tmp_path / "x.db.worker.pid"
        procs.write_record(path, record)
        assert procs.take_over(path) == "w" and sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait(5)
