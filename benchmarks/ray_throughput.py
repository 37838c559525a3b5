"""Jobs per minute: the local worker against the Ray executor with N CPU actors, on the tiny model.

Same jobs (text to video, 384p, 5 s, the tiny random-weight Pyramid Flow model unless --generator
synthetic), same SQLite queue code and output writing. Model loading is left out of the timing: the local
runner and every actor first run one warm-up job, then `--jobs` jobs are submitted at once and the clock
runs until the last one has succeeded (so the Ray figures include claiming, sending the task, progress
polling, MP4 bytes coming back through Ray and being written on this host).

* local: `JobRunner` (what the worker process runs) in this process; torch uses its default thread count.
* ray N: a local Ray instance with N logical CPUs, N actors with num_cpus=1 (Ray gives each actor
  OMP_NUM_THREADS=1) and num_gpus=0; a `RayDispatcher` in this process.

    .venv/bin/python -m benchmarks.ray_throughput --jobs 8 --actors 1,2,4
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

for _k, _v in {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "RAY_DEDUP_LOGS": "0",
               "RAY_DISABLE_DOCKER_CPU_WARNING": "1"}.items():
    os.environ.setdefault(_k, _v)

from bot.jobs.models import JobSpec, JobState  # noqa: E402
from bot.jobs.queue import JobQueue  # noqa: E402
from bot.jobs.settings import QueueSettings, WorkerSettings  # noqa: E402
from bot.store.db import open_db  # noqa: E402
from bot.store.quota import QuotaBook  # noqa: E402
from bot.store.settings import QuotaSettings  # noqa: E402
from generation.settings import GenerationSettings  # noqa: E402

_n = [0]


def make_queue(path: Path) -> JobQueue:
    db = open_db(path)
    return JobQueue(db, QuotaBook(db, QuotaSettings(daily=1_000_000)), QueueSettings(max_pending_per_user=1_000_000))


def submit(queue: JobQueue, count: int, tag: str) -> list[int]:
    ids = []
    for _ in range(count):
        _n[0] += 1
        i = _n[0]
        user = f"user{i % 5}"
        spec = JobSpec(message_id=f"{tag}-{i}", user_id=user, user_name=user, chat_id="g", chat_kind="group",
                       group_id="g", prompt=f"a cat number {i}", final_prompt=f"a cat number {i}",
                       resolution="384p", duration_s=5, seed=i, image_path=None, cost=1)
        ids.append(queue.submit(spec, with_place=False).job.id)
    return ids


def all_succeeded(queue: JobQueue, ids: list[int]) -> bool:
    states = [queue.get(i).state for i in ids]
    bad = [s for s in states if s in (JobState.FAILED, JobState.CANCELLED)]
    if bad:
        raise RuntimeError(f"jobs failed: {states}")
    return all(s is JobState.SUCCEEDED for s in states)


def worker_settings(out: Path, generator: str) -> WorkerSettings:
    return WorkerSettings(generator=generator, output_dir=out, heartbeat_s=2.0, lease_s=120.0, progress_every_s=0.5,
                          synthetic_steps=10, synthetic_step_delay_s=0.05, synthetic_width=320, synthetic_height=192)


def bench_local(root: Path, jobs: int, generator: str, gen: GenerationSettings) -> tuple[float, float]:
    import torch

    from bot.store.settings import StorageSettings
    from bot.worker import JobRunner, WorkerSections, build_worker_generator

    queue = make_queue(root / "local.db")
    ws = worker_settings(root / "local-out", generator)
    t0 = time.perf_counter()
    sections = WorkerSections(worker=ws, queue=QueueSettings(), quota=QuotaSettings(),
                              storage=StorageSettings(db_path=root / "local.db"), generation=gen)
    runner = JobRunner(queue, build_worker_generator(sections), ws, "bench-local")
    submit(queue, 1, "warm-local")
    runner.run_once()
    load_s = time.perf_counter() - t0
    ids = submit(queue, jobs, "local")
    t0 = time.perf_counter()
    while runner.run_once() is not None:
        pass
    elapsed = time.perf_counter() - t0
    assert all_succeeded(queue, ids)
    print(f"  local: torch threads {torch.get_num_threads()}, load + warm-up {load_s:.1f}s, {jobs} jobs in {elapsed:.1f}s")
    return jobs / elapsed * 60, load_s


def bench_ray(root: Path, actors: int, jobs: int, generator: str, gen: GenerationSettings) -> tuple[float, float]:
    import ray

    from bot.executors.ray_executor import RayDispatcher
    from bot.executors.settings import ActorSpec, ExecutorSettings

    queue = make_queue(root / f"ray{actors}.db")
    ws = worker_settings(root / f"ray{actors}-out", generator)
    ex = ExecutorSettings(kind="ray", actors=[ActorSpec(name="cpu", count=actors, num_gpus=0, num_cpus=1)],
                          tick_s=0.02, status_every_s=0.5)
    ray.init(address="local", num_cpus=actors, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING,
             log_to_driver=False)
    dispatcher = RayDispatcher(queue, None, ex, ws, gen, dispatcher_id=f"bench-ray{actors}")

    def run_until_done(ids: list[int]) -> None:
        while not all_succeeded(queue, ids):
            dispatcher.tick()
            time.sleep(ex.tick_s)

    try:
        t0 = time.perf_counter()
        warm = submit(queue, actors, f"warm-ray{actors}")  # one warm-up job per actor (model load)
        while not all(s.state == "idle" for s in dispatcher.slots) or not all_succeeded(queue, warm):
            dispatcher.tick()
            time.sleep(ex.tick_s)
        load_s = time.perf_counter() - t0
        ids = submit(queue, jobs, f"ray{actors}")
        t0 = time.perf_counter()
        run_until_done(ids)
        elapsed = time.perf_counter() - t0
        per_actor = {s.name: s.jobs_done for s in dispatcher.slots}
        print(f"  ray {actors}: start + load + warm-up {load_s:.1f}s, {jobs} jobs in {elapsed:.1f}s, "
              f"jobs per actor (incl. warm-up) {per_actor}")
    finally:
        dispatcher.shutdown()
        ray.shutdown()
    return jobs / elapsed * 60, load_s


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=8)
    ap.add_argument("--actors", default="1,2,4", help="comma-separated actor counts")
    ap.add_argument("--generator", choices=["pyramid_flow", "synthetic"], default="pyramid_flow")
    ap.add_argument("--no-local", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    gen = GenerationSettings(device="cpu")  # checkpoint None: the tiny random-weight model
    model = "tiny random Pyramid Flow (pyramid_flux, 128x64)" if args.generator == "pyramid_flow" else "synthetic"
    print(f"machine: {os.cpu_count()} CPU cores; model: {model}; {args.jobs} jobs of 384p/5s per run")
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="xiaoai-ray-bench-") as tmp:
        root = Path(tmp)
        if not args.no_local:
            rows.append(("local worker", bench_local(root, args.jobs, args.generator, gen)[0]))
        for n in [int(x) for x in args.actors.split(",") if x.strip()]:
            rows.append((f"ray, {n} actor{'s' if n > 1 else ''}", bench_ray(root, n, args.jobs, args.generator, gen)[0]))
    print()
    print(f"{'executor':<18} {'jobs/min':>9}")
    base = rows[0][1] if rows and not args.no_local else None
    for name, jpm in rows:
        rel = f"  ({jpm / base:.2f}x local)" if base else ""
        print(f"{name:<18} {jpm:>9.1f}{rel}")


if __name__ == "__main__":
    main()
