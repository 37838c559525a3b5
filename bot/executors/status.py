"""The pool's status, kept in two small tables of the bot's SQLite file.

The Ray dispatcher runs in its own process (a Ray driver can be ended by Ray when the cluster goes away,
and that must never take the chat bot with it), so it publishes what it knows here and the bot reads it
for `/pool`, for the notice added to users' replies and for the admin alerts.

    pool_cluster: one row: executor kind, cluster state, message, since, updated_at, address
    pool_actors:  one row per actor slot: state, node, GPU, model, variants, current job, jobs done, time
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import sqlite_utils

from bot.store.db import db_lock, transaction
from bot.store.health import GeneratorHealth, HealthStore, generator_device, record_generator_build

ClusterState = Literal["connecting", "ready", "unreachable", "lost", "stopped"]
ActorState = Literal["starting", "idle", "busy", "dead"]


@dataclass(frozen=True, slots=True)
class ClusterStatus:
    kind: str
    state: ClusterState
    message: str
    address: str
    since: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class ActorStatus:
    name: str
    incarnation: int
    state: ActorState
    node: str = ""
    gpu: str = ""
    model: str = ""
    variants: tuple[str, ...] = ()
    job_id: int | None = None
    job_started_at: float | None = None
    jobs_done: int = 0
    busy_s: float = 0.0
    error: str = ""
    updated_at: float = 0.0

    @property
    def mean_s(self) -> float | None:
        return self.busy_s / self.jobs_done if self.jobs_done else None


class PoolStore(HealthStore):
    def __init__(self, db: sqlite_utils.Database, clock: Callable[[], float]) -> None:
        self.db = db
        self.clock = clock
        # its tables (pool_cluster, pool_actors) are created by bot.store.db.open_db

    def set_cluster(self, kind: str, state: ClusterState, message: str = "", address: str = "") -> ClusterStatus:
        """Record the cluster state; `since` only moves when the state changes."""
        now = self.clock()
        with transaction(self.db):
            row = self.db.execute("SELECT state, since FROM pool_cluster WHERE id = 1").fetchone()
            since = row[1] if row is not None and row[0] == state else now
            self.db.execute(
                "INSERT INTO pool_cluster (id, kind, state, message, address, since, updated_at) "
                "VALUES (1, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET kind = excluded.kind, "
                "state = excluded.state, message = excluded.message, address = excluded.address, "
                "since = excluded.since, updated_at = excluded.updated_at",
                [kind, state, message, address, since, now])
        return ClusterStatus(kind, state, message, address, since, now)

    def cluster(self) -> ClusterStatus | None:
        with db_lock(self.db):
            rows = list(self.db.query("SELECT * FROM pool_cluster WHERE id = 1"))
        if not rows:
            return None
        r = rows[0]
        return ClusterStatus(r["kind"], r["state"], r["message"], r["address"], r["since"], r["updated_at"])

    def put_actors(self, actors: list[ActorStatus]) -> None:
        """Replace the actor rows with this list (the dispatcher's whole view)."""
        now = self.clock()
        with transaction(self.db):
            self.db.execute("DELETE FROM pool_actors")
            for a in actors:
                self.db.execute(
                    "INSERT INTO pool_actors (name, incarnation, state, node, gpu, model, variants, job_id, "
                    "job_started_at, jobs_done, busy_s, error, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [a.name, a.incarnation, a.state, a.node, a.gpu, a.model, json.dumps(list(a.variants)), a.job_id,
                     a.job_started_at, a.jobs_done, a.busy_s, a.error, now])

    def actors(self) -> list[ActorStatus]:
        with db_lock(self.db):
            rows = list(self.db.query("SELECT * FROM pool_actors ORDER BY name"))
        return [ActorStatus(name=r["name"], incarnation=r["incarnation"], state=r["state"], node=r["node"],
                            gpu=r["gpu"], model=r["model"], variants=tuple(json.loads(r["variants"])),
                            job_id=r["job_id"], job_started_at=r["job_started_at"], jobs_done=r["jobs_done"],
                            busy_s=r["busy_s"], error=r["error"], updated_at=r["updated_at"]) for r in rows]


__all__ = ["ActorStatus", "ClusterStatus", "GeneratorHealth", "PoolStore", "generator_device",
           "record_generator_build"]
