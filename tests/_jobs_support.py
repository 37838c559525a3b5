"""Shared helpers for the jobs/store tests: a settable clock and real store objects on a tmp SQLite file."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

from bot.jobs.models import JobSpec
from bot.jobs.queue import JobQueue
from bot.jobs.settings import QueueSettings
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from bot.store.settings import QuotaSettings

_ids = itertools.count(1)


class Clock:
    def __init__(self, t: float = 1_750_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def tick(self, seconds: float = 1.0) -> float:
        self.t += seconds
        return self.t


@dataclass
class Store:
    path: Path
    quota: QuotaBook
    queue: JobQueue
    clock: Clock


def make_store(path: Path, clock: Clock | None = None, *, quota: QuotaSettings | None = None,
               queue: QueueSettings | None = None) -> Store:
    clock = clock or Clock()
    db = open_db(path)
    book = QuotaBook(db, quota or QuotaSettings(daily=100), clock)
    return Store(path, book, JobQueue(db, book, queue or QueueSettings(max_pending_per_user=100), clock), clock)


def spec(user: str = "u1", group: str | None = "g1", *, message_id: str | None = None, cost: int = 1,
         prompt: str = "a cat", resolution: str = "384p", duration_s: int = 5, seed: int = 7,
         image_path: str | None = None) -> JobSpec:
    return JobSpec(
        message_id=message_id or f"m{next(_ids)}", user_id=user, user_name=f"name-{user}",
        chat_id=group or user, chat_kind="group" if group else "private", group_id=group, prompt=prompt,
        final_prompt=prompt, resolution=resolution, duration_s=duration_s, seed=seed, image_path=image_path,
        cost=cost,
    )


def ledger(store: Store, user: str) -> list[tuple[str, int, int | None]]:
    """(kind, delta, job_id) oldest first."""
    return [(r.kind, r.delta, r.job_id) for r in reversed(store.quota.history(user, 10_000))]
