"""Check-and-debit + enqueue is one transaction: 200 concurrent /video submits from one user holding
3 units (threads with their own connections, and separate processes) → exactly 3 jobs and 3 spends."""

from __future__ import annotations

import multiprocessing as mp
import threading
from pathlib import Path

from bot.jobs.models import JobSpec
from bot.jobs.queue import JobQueue
from bot.jobs.settings import QueueSettings
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from bot.store.settings import QuotaSettings

N = 200
QUOTA = QuotaSettings(daily=3)
QUEUE = QueueSettings(max_pending_per_user=50)


def _spec(i: int) -> JobSpec:
    return JobSpec(message_id=f"msg-{i}", user_id="greedy", user_name="greedy", chat_id="room", chat_kind="group",
                   group_id="room", prompt="a dog", final_prompt="a dog", resolution="384p", duration_s=5, seed=i,
                   image_path=None, cost=1)


def _queue(path: Path) -> JobQueue:
    db = open_db(path)
    book = QuotaBook(db, QUOTA)
    return JobQueue(db, book, QUEUE)


def _assert_exactly_three(path: Path, statuses: list[str]) -> None:
    assert statuses.count("queued") == 3, statuses.count("queued")
    assert statuses.count("no_quota") == N - 3
    q = _queue(path)
    jobs = q.jobs_of("greedy")
    assert len(jobs) == 3
    rows = q.quota.history("greedy", 1000)
    spends = [r for r in rows if r.kind == "spend"]
    assert len(spends) == 3 and sorted(r.job_id for r in spends) == sorted(j.id for j in jobs)
    assert [r.kind for r in rows if r.kind == "grant"] == ["grant"]  # first sight granted exactly once
    assert q.quota.balance("greedy") == 0
    assert q.db.execute("SELECT COUNT(*) FROM seen_messages").fetchone()[0] == N


def test_200_threads_each_with_own_connection(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    open_db(path)
    queues = [_queue(path) for _ in range(N)]
    barrier = threading.Barrier(N)
    statuses: list[str] = []
    lock = threading.Lock()

    def go(i: int) -> None:
        barrier.wait()
        status = queues[i].submit(_spec(i)).status
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=go, args=(i,)) for i in range(N)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(statuses) == N
    _assert_exactly_three(path, statuses)
    # redelivery of all 200 messages: nothing new
    again = [queues[0].submit(_spec(i)).status for i in range(N)]
    assert set(again) == {"duplicate"}
    _assert_exactly_three(path, statuses)


def _process_main(path: str, indices: list[int], start: mp.synchronize.Event, out: mp.Queue) -> None:
    q = _queue(Path(path))  # one connection per process, shared by its threads
    results: list[str] = []
    lock = threading.Lock()

    def go(i: int) -> None:
        status = q.submit(_spec(i)).status
        with lock:
            results.append(status)

    start.wait(30)
    threads = [threading.Thread(target=go, args=(i,)) for i in indices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    out.put(results)


def test_200_submits_from_separate_processes(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    open_db(path)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_process_main, args=(str(path), list(range(k, N, 8)), start, out))
             for k in range(8)]
    for p in procs:
        p.start()
    start.set()
    statuses: list[str] = []
    for _ in procs:
        statuses.extend(out.get(timeout=120))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    _assert_exactly_three(path, statuses)
