"""Helpers for the Ray executor tests and the throughput benchmark: a quiet, offline local Ray (in this
process, or a head node started with `ray start --head --block` that a test can kill and bring back),
real SQLite stores on tmp files, and a loop that drives a `RayDispatcher` in the test process."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Nothing may reach the network, nothing is written to ~/.ray (no auth token), no usage report.
QUIET_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
    "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0",
    "RAY_DEDUP_LOGS": "0",
}
for _k, _v in QUIET_RAY_ENV.items():
    os.environ.setdefault(_k, _v)

import ray  # noqa: E402

from bot.executors.ray_executor import RayDispatcher  # noqa: E402
from bot.executors.settings import ActorSpec, ExecutorSettings  # noqa: E402
from bot.executors.status import PoolStore  # noqa: E402
from bot.jobs.models import JobSpec, JobState  # noqa: E402
from bot.jobs.queue import JobQueue  # noqa: E402
from bot.jobs.settings import QueueSettings, WorkerSettings  # noqa: E402
from bot.store.db import open_db  # noqa: E402
from bot.store.quota import QuotaBook  # noqa: E402
from bot.store.settings import QuotaSettings  # noqa: E402

NODE_IP = "127.0.0.1"
_ids = itertools.count(1)


def init_local_ray(*, num_cpus: int, num_gpus: int, resources: dict[str, float] | None = None) -> str:
    """Start a local Ray instance owned by this process (fake GPUs are just declared); its GCS address."""
    ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, resources=resources or None,
             include_dashboard=False, _node_ip_address=NODE_IP, logging_level=logging.WARNING,
             log_to_driver=False, namespace="xiaoai-tests")
    return str(ray.get_runtime_context().gcs_address)


def free_port() -> int:
    with socket.socket() as s:
        s.bind((NODE_IP, 0))
        return int(s.getsockname()[1])


class HeadNode:
    """`ray start --head --block` in its own process group: `kill()` takes the whole cluster down at once
    (GCS, raylet, actors: a lost head host), `start()` brings it back on the same port."""

    def __init__(self, port: int, log_dir: Path, *, num_cpus: int = 4, num_gpus: int = 2) -> None:
        self.port, self.log_dir, self.num_cpus, self.num_gpus = port, log_dir, num_cpus, num_gpus
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def address(self) -> str:
        return f"{NODE_IP}:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        self.starts += 1
        log = self.log_dir / f"ray-head-{self.starts}.log"
        ray_cli = Path(sys.executable).with_name("ray")
        cmd = [str(ray_cli), "start", "--head", f"--port={self.port}", f"--node-ip-address={NODE_IP}",
               f"--num-cpus={self.num_cpus}", f"--num-gpus={self.num_gpus}", "--include-dashboard=false",
               "--disable-usage-stats", "--block"]
        with log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL the process group this object started (ray start, GCS, raylet, workers)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.proc = None
        time.sleep(0.5)  # the raylet's workers notice their parent is gone


@dataclass
class Store:
    path: Path
    quota: QuotaBook
    queue: JobQueue


def make_store(path: Path, *, max_attempts: int = 2, clock: Callable[[], float] = time.time) -> Store:
    """Real QuotaBook + JobQueue on a tmp SQLite file, with the real clock (claim order uses start times)."""
    db = open_db(path)
    book = QuotaBook(db, QuotaSettings(daily=100), clock)
    queue = JobQueue(db, book, QueueSettings(max_pending_per_user=100, max_attempts=max_attempts), clock)
    return Store(path, book, queue)


def spec(user: str, *, group: str | None = "g1", resolution: str = "384p", cost: int = 1,
         prompt: str | None = None, image_path: str | None = None) -> JobSpec:
    n = next(_ids)
    text = prompt or f"{user} job {n}"
    return JobSpec(message_id=f"ray-m{n}", user_id=user, user_name=f"name-{user}", chat_id=group or user,
                   chat_kind="group" if group else "private", group_id=group, prompt=text, final_prompt=text,
                   resolution=resolution, duration_s=5, seed=n, image_path=image_path, cost=cost)


def ledger(store: Store, user: str) -> list[tuple[str, int, int | None]]:
    return [(r.kind, r.delta, r.job_id) for r in reversed(store.quota.history(user, 10_000))]


def synthetic_worker(tmp_path: Path, **kw: Any) -> WorkerSettings:
    base: dict[str, Any] = dict(generator="synthetic", output_dir=tmp_path / "out", synthetic_steps=6,
                                synthetic_step_delay_s=0.05, synthetic_fps=4, synthetic_width=64,
                                synthetic_height=48, heartbeat_s=0.5, lease_s=10.0, progress_every_s=0.0)
    base.update(kw)
    return WorkerSettings(**base)


def fast_executor(actors: list[ActorSpec], **kw: Any) -> ExecutorSettings:
    base: dict[str, Any] = dict(kind="ray", actors=actors, tick_s=0.02, status_every_s=0.1, health_every_s=0.5,
                                call_timeout_s=10.0, actor_restart_backoff_s=0.2, connect_timeout_s=0.5,
                                reconnect_s=0.3)
    base.update(kw)
    return ExecutorSettings(**base)


@dataclass
class Driven:
    """A RayDispatcher in the test process plus what was observed while driving it."""

    dispatcher: RayDispatcher
    store: Store
    max_running: int = 0
    progress_seen: dict[int, list[float]] = field(default_factory=dict)
    _errors: dict[str, str] = field(default_factory=dict)

    @property
    def assignments(self) -> list[tuple[int, str]]:
        return self.dispatcher.assignments

    def slot(self, name: str) -> Any:
        return next(s for s in self.dispatcher.slots if s.name == name)

    def run_until(self, cond: Callable[[], bool], timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not cond():
            if time.monotonic() > deadline:
                states = {j.id: (j.state, j.attempts) for j in self.store.queue.snapshot()}
                slots = [(s.name, s.state, s.error) for s in self.dispatcher.slots]
                raise AssertionError(f"timed out waiting for {what}; queue {states}; slots {slots}")
            self.dispatcher.tick()
            for s in self.dispatcher.slots:
                if s.error:
                    self._errors[s.name] = s.error
            running = self.store.queue.snapshot()
            running = [j for j in running if j.state is JobState.RUNNING]
            self.max_running = max(self.max_running, len(running))
            for j in running:
                if 0 < j.progress < 1:
                    self.progress_seen.setdefault(j.id, []).append(j.progress)
            time.sleep(self.dispatcher.ex.tick_s)

    @property
    def last_errors(self) -> dict[str, str]:
        return dict(self._errors)

    def publish_now(self) -> None:
        self.dispatcher.publish()

    def run_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        self.run_until(lambda: time.monotonic() >= end, timeout=seconds + 5, what="time")

    def states(self, *ids: int) -> list[JobState]:
        return [self.store.queue.get(i).state for i in ids]

    def all_in(self, ids: list[int], *states: JobState) -> Callable[[], bool]:
        return lambda: all(self.store.queue.get(i).state in states for i in ids)

    def idle(self, *names: str) -> Callable[[], bool]:
        return lambda: all(self.slot(n).state == "idle" for n in names)

    def shutdown(self) -> None:
        self.dispatcher.shutdown()


def drive(store: Store, ex: ExecutorSettings, worker: WorkerSettings, generation: Any = None) -> Driven:
    pool = PoolStore(store.queue.db, time.time)
    d = RayDispatcher(store.queue, pool, ex, worker, generation, dispatcher_id=f"test{next(_ids)}")
    return Driven(d, store)
