"""How many jobs per second the SQLite job queue sustains on this machine.

Measures, on a fresh temporary database file (WAL, synchronous=NORMAL):
  * submit: `JobQueue.submit` (dedupe + ban + pending limit + quota check/spend + insert, one
    transaction) from 1 thread and from N threads with their own connections, without the reply's
    position/ETA; then submits that also compute position/ETA (O(queue length) each);
  * claim+complete: `claim` (fair-order pick over all queued jobs) followed by `complete`, one worker.

    .venv/bin/python -m benchmarks.queue_throughput --jobs 2000 --users 50 --threads 4
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

from bot.jobs.models import JobSpec
from bot.jobs.queue import JobQueue
from bot.jobs.settings import QueueSettings
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from bot.store.settings import QuotaSettings


def make_queue(path: Path) -> JobQueue:
    db = open_db(path)
    quota = QuotaBook(db, QuotaSettings(daily=1_000_000))
    return JobQueue(db, quota, QueueSettings(max_pending_per_user=1_000_000))


def spec(i: int, users: int, tag: str) -> JobSpec:
    user = f"user{i % users}"
    group = f"group{i % 7}"
    return JobSpec(message_id=f"{tag}-{i}", user_id=user, user_name=user, chat_id=group, chat_kind="group",
                   group_id=group, prompt="a cat", final_prompt="a cat", resolution="384p", duration_s=5,
                   seed=i, image_path=None, cost=1)


def bench_submit_single(path: Path, jobs: int, users: int, *, with_place: bool, tag: str) -> float:
    q = make_queue(path)
    t0 = time.perf_counter()
    for i in range(jobs):
        q.submit(spec(i, users, tag), with_place=with_place)
    return jobs / (time.perf_counter() - t0)


def bench_submit_threads(path: Path, jobs: int, users: int, threads: int) -> float:
    queues = [make_queue(path) for _ in range(threads)]
    barrier = threading.Barrier(threads + 1)

    def go(k: int) -> None:
        barrier.wait()
        for i in range(k, jobs, threads):
            queues[k].submit(spec(i, users, "t"), with_place=False)

    workers = [threading.Thread(target=go, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    barrier.wait()
    t0 = time.perf_counter()
    for w in workers:
        w.join()
    return jobs / (time.perf_counter() - t0)


def bench_claim_complete(path: Path, jobs: int) -> tuple[float, int]:
    q = make_queue(path)
    done = 0
    t0 = time.perf_counter()
    while done < jobs and (job := q.claim("bench", 60)) is not None:
        q.complete(job.id, "bench", "/dev/null", None, 0.0, "bench")
        done += 1
    return done / (time.perf_counter() - t0), done


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--place-jobs", type=int, default=100, help="submits that also compute position/ETA")
    parser.add_argument("--claim-jobs", type=int, default=1000, help="claim+complete this many of the queued jobs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        single = bench_submit_single(path, args.jobs, args.users, with_place=False, tag="s")
        multi = bench_submit_threads(path, args.jobs, args.users, args.threads)
        placed = bench_submit_single(path, args.place_jobs, args.users, with_place=True, tag="p")
        queued = 2 * args.jobs + args.place_jobs
        rate, done = bench_claim_complete(path, args.claim_jobs)
        print(f"submit, 1 thread:            {single:8.0f} jobs/s ({args.jobs} jobs, {args.users} users)")
        print(f"submit, {args.threads} threads/connections: {multi:8.0f} jobs/s ({args.jobs} jobs)")
        print(f"submit + position/ETA reply: {placed:8.0f} jobs/s ({args.place_jobs} jobs onto a queue of "
              f"{2 * args.jobs})")
        print(f"claim+complete, 1 worker:    {rate:8.0f} jobs/s ({done} jobs, queue started at {queued} queued)")


if __name__ == "__main__":
    main()
