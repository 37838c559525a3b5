"""Whether the worker process could build its generator (table `generator_health`, one row).

Written by the worker process (`record_generator_build`, around its one generator build) and read by its
executor (`bot.executors.base.GeneratorWatch`): a worker that keeps failing to load its model makes the bot
refuse new /视频 and alert the admins instead of crash-looping unseen. It lives in the store so that the
worker can import it without importing the executors (which import the worker).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

import sqlite_utils

from bot.store.db import db_lock, transaction

GeneratorState = Literal["ready", "failed"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class GeneratorHealth:
    """The last attempt of a worker process to build its generator (table generator_health, one row)."""

    worker_id: str
    state: GeneratorState
    error: str  # why the last build failed ('' when ready)
    failures: int  # consecutive failed builds (0 after a good one)
    device: str  # where the generator runs: "cpu", "cuda:0" ('' unknown)
    updated_at: float


class HealthStore:
    """Reads and writes the one `generator_health` row."""

    def __init__(self, db: sqlite_utils.Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock

    def generator_failed(self, worker_id: str, error: str) -> GeneratorHealth:
        """The worker could not build its generator (bad checkpoint, out of memory...): one more failure."""
        now = self.clock()
        with transaction(self.db):
            row = self.db.execute("SELECT state, failures FROM generator_health WHERE id = 1").fetchone()
            failures = (row[1] if row is not None and row[0] == "failed" else 0) + 1
            self._put_health(worker_id, "failed", error[:500], failures, "", now)
        return GeneratorHealth(worker_id, "failed", error[:500], failures, "", now)

    def generator_ready(self, worker_id: str, device: str = "") -> GeneratorHealth:
        now = self.clock()
        with transaction(self.db):
            self._put_health(worker_id, "ready", "", 0, device, now)
        return GeneratorHealth(worker_id, "ready", "", 0, device, now)

    def _put_health(self, worker_id: str, state: str, error: str, failures: int, device: str, now: float) -> None:
        self.db.execute(
            "INSERT INTO generator_health (id, worker_id, state, error, failures, device, updated_at) "
            "VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET worker_id = excluded.worker_id, "
            "state = excluded.state, error = excluded.error, failures = excluded.failures, "
            "device = excluded.device, updated_at = excluded.updated_at",
            [worker_id, state, error, failures, device, now])

    def generator_health(self) -> GeneratorHealth | None:
        with db_lock(self.db):
            rows = list(self.db.query("SELECT * FROM generator_health WHERE id = 1"))
        if not rows:
            return None
        r = rows[0]
        return GeneratorHealth(r["worker_id"], r["state"], r["error"], r["failures"], r["device"], r["updated_at"])


def generator_device(generator: object) -> str:
    """Where a built generator runs ("cpu", "cuda:0"); the synthetic one always on the CPU."""
    if getattr(generator, "name", "") == "synthetic":
        return "cpu"
    device = getattr(getattr(generator, "c", None), "device", None)
    return "" if device is None else str(device)


def record_generator_build(db: sqlite_utils.Database, worker_id: str, build: Callable[[], T]) -> T:
    """Build the worker's generator and record the outcome for the executor (`generator_health`), so that a
    worker that keeps failing to load its model makes the bot refuse new /视频 and alert the admins
    instead of crash-looping unseen. The worker process calls it once, in place of the plain build:

        generator = record_generator_build(queue.db, worker_id, lambda: build_worker_generator(settings))

    The exception of a failed build is re-raised (the process ends and its supervisor restarts it)."""
    store = HealthStore(db, time.time)
    try:
        generator = build()
    except Exception as exc:
        try:
            store.generator_failed(worker_id, f"{type(exc).__name__}: {exc}")
        except Exception:  # noqa: BLE001 - the build error matters more than the record
            pass
        raise
    store.generator_ready(worker_id, generator_device(generator))
    return generator
