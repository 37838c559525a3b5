"""The durable, fair job queue on the shared SQLite file.

Both sides use it: the bot submits / cancels / delivers, the worker process claims / renews /
reports / finishes. Every state change is one `BEGIN IMMEDIATE` transaction guarded by the expected
current state, so each transition (and its refund) happens exactly once even with several processes.

Fair order: see `bot.jobs.fairness` (two-level round-robin, least recently served group, then
user, then that user's oldest job).

Position and ETA: `position` is 1 + the number of jobs ahead in `snapshot()` (running jobs first), so 1
means "running now or next". `eta_s` is the estimated time until the job is *finished*: the remaining
time of the running jobs ahead, plus the expected duration of each queued job ahead, plus its own.
Expected durations are the median of the last `queue.eta_history` finished jobs of the same model
(`JobSpec.model`) and resolution/duration (start → finish), else `queue.eta_defaults_s` (then the reply says
the estimate is rough: `SubmitOutcome.eta_measured`). One worker is assumed.
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from bot.jobs.fairness import Pending, fair_order, sched_group
from bot.jobs.models import Job, JobSpec, JobState, SubmitOutcome
from bot.jobs.settings import MODEL_ETA_DEFAULTS, QueueSettings
from bot.store.db import db_lock, transaction
from bot.store.quota import QuotaBook

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Upper bounds (seconds) of the generation-time histogram buckets (/metrics; `JobQueue.job_totals`).
GENERATION_BUCKETS_S: tuple[float, ...] = (5, 10, 20, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600)

LEASE_LOST_ERROR = "生成进程中断，已多次重试仍未完成"
DELIVERY_GAVE_UP_ERROR = "视频已生成，但多次发送失败"


@dataclass(frozen=True, slots=True)
class JobTotal:
    """Finished jobs of one kind (`JobQueue.job_totals`); `le` is the generation-seconds bucket ('' untimed)."""

    state: str
    error: str
    resolution: str
    model: str
    le: str
    jobs: int
    seconds_sum: float


class JobQueue:
    def __init__(
        self, db: sqlite_utils.Database, quota: QuotaBook, settings: QueueSettings, clock: Clock = time.time
    ) -> None:
        self.db = db
        self.quota = quota
        self.settings = settings
        self.clock = clock
        # called after a job was queued (the app wakes its local worker with it, instead of the next poll)
        self.on_queued: Callable[[], None] | None = None

    # ================================================================ helpers
    def _rows(self, sql: str, params: Iterable[Any] = ()) -> list[dict[str, Any]]:
        with db_lock(self.db):
            return list(self.db.query(sql, list(params)))

    def get(self, job_id: int) -> Job | None:
        if not 0 < job_id < 2**63:  # SQLite integers are 64-bit: a larger id (from a URL) names no job
            return None
        rows = self._rows("SELECT * FROM jobs WHERE id = ?", [job_id])
        return Job.from_row(rows[0]) if rows else None

    def _require(self, job_id: int) -> Job:
        job = self.get(job_id)
        if job is None:
            raise KeyError(f"no job {job_id}")
        return job

    def _update(self, job_id: int, where_state: Iterable[JobState], **values: Any) -> bool:
        states = list(where_state)
        sets = ", ".join(f"{k} = ?" for k in values)
        marks = ", ".join("?" for _ in states)
        cur = self.db.execute(
            f"UPDATE jobs SET {sets} WHERE id = ? AND state IN ({marks})",
            [*values.values(), job_id, *[str(s) for s in states]],
        )
        return cur.rowcount == 1

    def _refund(self, job: Job, reason: str) -> None:
        self.quota.refund(job.user_id, job.cost, job_id=job.id, group_id=job.group_id, reason=reason)

    # ================================================================ submit side
    def mark_seen(self, message_id: str) -> bool:
        """Record a message id; True the first time (dedupe for commands that make no job)."""
        with transaction(self.db):
            cur = self.db.execute(
                "INSERT OR IGNORE INTO seen_messages (message_id, job_id, outcome, ts) VALUES (?, NULL, 'seen', ?)",
                [message_id, self.clock()],
            )
            return cur.rowcount == 1

    # A handled message's record (table seen_messages, one row per message id), written before any
    # reply goes out so that a message re-delivered after a restart is never answered twice:
    #   received  the dispatcher took it (written before the handler runs; a crash here re-handles it)
    #   answered  a reply is being sent (written before the send; a replay is dropped from here on)
    #   queued / no_quota / too_many_pending / banned   the outcome of /视频 (written by `submit`)
    REPLAYABLE = ("received",)

    def seen_state(self, message_id: str) -> str | None:
        """The recorded outcome of a message id, or None when it was never handled."""
        rows = self._rows("SELECT outcome FROM seen_messages WHERE message_id = ?", [message_id])
        if rows:
            return str(rows[0]["outcome"])
        if self._rows("SELECT 1 FROM jobs WHERE message_id = ?", [message_id]):
            return "queued"  # made a job before its seen row was pruned
        return None

    def mark_received(self, message_id: str) -> bool:
        """Record that the dispatcher took this message; True the first time."""
        with transaction(self.db):
            cur = self.db.execute(
                "INSERT OR IGNORE INTO seen_messages (message_id, job_id, outcome, ts) VALUES (?, NULL, 'received', ?)",
                [message_id, self.clock()])
            return cur.rowcount == 1

    def mark_answered(self, message_id: str) -> None:
        """A reply to this message is about to be sent: from now on a re-delivery of it is dropped."""
        with transaction(self.db):
            self.db.execute(
                "INSERT INTO seen_messages (message_id, job_id, outcome, ts) VALUES (?, NULL, 'answered', ?) "
                "ON CONFLICT (message_id) DO UPDATE SET outcome = 'answered' WHERE outcome = 'received'",
                [message_id, self.clock()])

    def prune_seen(self, older_than_s: float) -> int:
        """Forget handled message ids older than the retention window (jobs keep their own message id)."""
        with transaction(self.db):
            cur = self.db.execute("DELETE FROM seen_messages WHERE ts < ?", [self.clock() - older_than_s])
            return int(cur.rowcount)

    def pending_count(self, user_id: str) -> int:
        with db_lock(self.db):
            row = self.db.execute(
                "SELECT COUNT(*) FROM jobs WHERE user_id = ? AND state IN ('queued', 'running')", [user_id]
            ).fetchone()
        return int(row[0])

    def submit(self, spec: JobSpec, *, with_place: bool = True) -> SubmitOutcome:
        """Dedupe, ban check, pending limit, quota check + spend and job insert: one transaction. Then
        (outside it, unless `with_place=False`) the job's position and ETA for the reply."""
        now = self.clock()
        job_id: int | None = None
        with transaction(self.db):
            seen = self.db.execute(
                "SELECT job_id, outcome FROM seen_messages WHERE message_id = ?", [spec.message_id]
            ).fetchone()
            made = self.db.execute("SELECT id FROM jobs WHERE message_id = ?", [spec.message_id]).fetchone()
            if made is not None or (seen is not None and seen[1] not in ("received", "answered")):
                # `answered` without a job is a /视频 that waited for its image: its submit is still to come
                status = "duplicate"
                job_id = made[0] if made is not None else seen[0]
            else:
                status = self._admit(spec, now)
                if status == "queued":
                    job_id = self._insert(spec, now)
                    balance = self.quota.try_spend(spec.user_id, spec.cost, job_id=job_id, group_id=spec.group_id)
                    if balance is None:  # cannot happen: _admit checked the balance in this transaction
                        raise RuntimeError("balance changed inside the submit transaction")
                self.db.execute(
                    "INSERT INTO seen_messages (message_id, job_id, outcome, ts) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (message_id) DO UPDATE SET job_id = excluded.job_id, outcome = excluded.outcome",
                    [spec.message_id, job_id, status, now],
                )
            balance = self.quota.balance(spec.user_id)
            pending = self.pending_count(spec.user_id)
        job = self.get(job_id) if job_id is not None else None
        position = eta = None
        measured = False
        if with_place and job is not None and job.is_pending:
            position, eta, measured = self.place_detail(job.id)
        log.info(
            "submit message=%s user=%s status=%s job=%s cost=%d balance=%d",
            spec.message_id, spec.user_id, status, job_id, spec.cost, balance,
            extra={"user_id": spec.user_id, "job_id": job_id, "message_id": spec.message_id},
        )
        if job is not None and status == "queued" and self.on_queued is not None:
            try:
                self.on_queued()
            except Exception:  # a wake-up is an optimisation: the worker's poll finds the job anyway
                log.debug("on_queued hook failed", exc_info=True)
        return SubmitOutcome(status=status, job=job, position=position, eta_s=eta, balance=balance,  # type: ignore[arg-type]
                             cost=spec.cost, pending=pending, eta_measured=measured)

    def _admit(self, spec: JobSpec, now: float) -> str:
        if self.quota.is_banned(spec.user_id):
            return "banned"
        self.quota.ensure_user(spec.user_id, spec.group_id)
        if self.pending_count(spec.user_id) >= self.settings.max_pending_per_user:
            return "too_many_pending"
        if self.quota.balance(spec.user_id) < spec.cost:
            return "no_quota"
        return "queued"

    def _insert(self, spec: JobSpec, now: float) -> int:
        cur = self.db.execute(
            "INSERT INTO jobs (message_id, user_id, user_name, chat_id, chat_kind, group_id, sched_group, prompt, "
            "final_prompt, resolution, duration_s, seed, image_path, cost, state, max_attempts, created_at, model, "
            "negative_prompt, parent_id, merge) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            [spec.message_id, spec.user_id, spec.user_name, spec.chat_id, str(spec.chat_kind), spec.group_id,
             sched_group(spec.group_id, spec.user_id), spec.prompt, spec.final_prompt, spec.resolution,
             int(spec.duration_s), int(spec.seed), spec.image_path, int(spec.cost), self.settings.max_attempts, now,
             spec.model, spec.negative_prompt, spec.parent_id, int(spec.merge)],
        )
        return int(cur.lastrowid)

    # ================================================================ order, position, ETA
    def _pending_and_served(self) -> tuple[list[Pending], dict[str, float], dict[str, float]]:
        queued = [
            Pending(r["id"], r["user_id"], r["sched_group"], r["created_at"])
            for r in self._rows(
                "SELECT id, user_id, sched_group, created_at FROM jobs WHERE state = 'queued' ORDER BY created_at, id"
            )
        ]
        if not queued:
            return [], {}, {}
        users = self._rows(
            "SELECT user_id AS k, MAX(started_at) AS t FROM jobs WHERE started_at IS NOT NULL AND user_id IN "
            "(SELECT user_id FROM jobs WHERE state = 'queued') GROUP BY user_id"
        )
        groups = self._rows(
            "SELECT sched_group AS k, MAX(started_at) AS t FROM jobs WHERE started_at IS NOT NULL AND sched_group IN "
            "(SELECT sched_group FROM jobs WHERE state = 'queued') GROUP BY sched_group"
        )
        return queued, {r["k"]: r["t"] for r in users}, {r["k"]: r["t"] for r in groups}

    def snapshot(self) -> list[Job]:
        """Running jobs (oldest start first), then queued jobs in the order they will run."""
        with db_lock(self.db):
            running = [Job.from_row(r) for r in self._rows(
                "SELECT * FROM jobs WHERE state = 'running' ORDER BY started_at, id")]
            queued, users, groups = self._pending_and_served()
            order = fair_order(queued, users, groups)
            by_id = {r["id"]: Job.from_row(r) for r in self._rows("SELECT * FROM jobs WHERE state = 'queued'")}
        return running + [by_id[i] for i in order if i in by_id]

    def _ordered_light(self, until: int | None = None) -> list[dict[str, Any]]:
        """Like `snapshot()` (up to job `until`) but only the columns position/ETA need."""
        cols = "id, state, resolution, duration_s, progress, started_at, model"
        with db_lock(self.db):
            running = self._rows(f"SELECT {cols} FROM jobs WHERE state = 'running' ORDER BY started_at, id")
            queued, users, groups = self._pending_and_served()
            order = fair_order(queued, users, groups, until=until)
            by_id = {r["id"]: r for r in self._rows(f"SELECT {cols} FROM jobs WHERE state = 'queued'")}
        return running + [by_id[i] for i in order if i in by_id]

    def place(self, job_id: int) -> tuple[int | None, float | None]:
        """(position, eta_s) of a pending job in one pass; (None, None) when it is not pending."""
        position, eta, _ = self.place_detail(job_id)
        return position, eta

    def place_detail(self, job_id: int) -> tuple[int | None, float | None, bool]:
        """`place` plus whether the ETA rests only on durations measured here (False when a default from
        `queue.eta_defaults_s` went into it: the reply then says the estimate is rough)."""
        now = self.clock()
        expected: dict[tuple[str, str, int], tuple[float, bool]] = {}
        total = 0.0
        measured = True
        for index, row in enumerate(self._ordered_light(until=job_id)):
            key = (row["model"] or "", row["resolution"], row["duration_s"])
            if key not in expected:
                expected[key] = self._expected(key[1], key[2], key[0])
            seconds, known = expected[key]
            measured = measured and known
            total += self._remaining(seconds, row, now)
            if row["id"] == job_id:
                return index + 1, total, measured
        return None, None, False

    def position(self, job_id: int) -> int | None:
        return self.place(job_id)[0]

    def eta_s(self, job_id: int) -> float | None:
        return self.place(job_id)[1]

    def expected_seconds(self, resolution: str, duration_s: int, model: str | None = None) -> float:
        """Expected generation time of one job (of `model`, when given: timings are per model)."""
        return self._expected(resolution, duration_s, model)[0]

    def _expected(self, resolution: str, duration_s: int, model: str | None) -> tuple[float, bool]:
        """(seconds, measured): the median of recent finished jobs of this model and size, else a default."""
        where = "" if model is None else " AND model = ?"
        rows = self._rows(
            "SELECT finished_at - started_at AS s FROM jobs WHERE resolution = ? AND duration_s = ? "
            "AND state IN ('succeeded', 'delivered') AND started_at IS NOT NULL AND finished_at IS NOT NULL"
            f"{where} ORDER BY finished_at DESC LIMIT ?",
            [resolution, duration_s, *([] if model is None else [model]), self.settings.eta_history],
        )
        if rows:
            return float(statistics.median(max(0.0, r["s"]) for r in rows)), True
        return self._default_seconds(resolution, duration_s, model or ""), False

    def _default_seconds(self, resolution: str, duration_s: int, model: str) -> float:
        """`queue.eta_defaults_s` by `model:res/dur`, then `model`, then `res/dur`. The built-in entries of the
        synthetic and tiny demo generators (seconds, not minutes) hold even when the config lists only sizes."""
        table = self.settings.eta_defaults_s
        keys = (f"{model}:{resolution}/{duration_s}", model) if model else ()
        for source in (table, MODEL_ETA_DEFAULTS):
            for key in keys:
                if key in source:
                    return float(source[key])
        return float(table.get(f"{resolution}/{duration_s}", self.settings.eta_fallback_s))

    @staticmethod
    def _remaining(expected: float, row: dict[str, Any], now: float) -> float:
        if row["state"] != JobState.RUNNING or row["started_at"] is None:
            return expected
        elapsed = max(0.0, now - row["started_at"])
        if row["progress"] >= 0.05:
            return max(0.0, elapsed / row["progress"] - elapsed)
        return max(0.0, expected - elapsed)

    # ================================================================ worker side
    def claim(self, worker_id: str, lease_s: float, *, resolutions: Iterable[str] | None = None) -> Job | None:
        """Atomically take the next job in fair order and lease it to `worker_id`. With `resolutions`,
        only jobs of those resolutions are considered (a pool whose workers serve different variants)."""
        now = self.clock()
        with transaction(self.db):
            queued, users, groups = self._pending_and_served()
            if resolutions is not None and queued:
                wanted = sorted(set(resolutions))
                marks = ", ".join("?" for _ in wanted)
                allowed = {r["id"] for r in self._rows(
                    f"SELECT id FROM jobs WHERE state = 'queued' AND resolution IN ({marks})", wanted)}
                queued = [p for p in queued if p.job_id in allowed]
            if not queued:
                return None
            job_id = fair_order(queued, users, groups, limit=1)[0]
            ok = self._update(job_id, [JobState.QUEUED], state=str(JobState.RUNNING), attempts=self._attempts(job_id) + 1,
                              lease_owner=worker_id, lease_until=now + lease_s, started_at=now, progress=0.0,
                              progress_text="", finished_at=None)
            if not ok:  # cannot happen inside BEGIN IMMEDIATE; be loud if it ever does
                raise RuntimeError(f"job {job_id} changed under an immediate transaction")
        job = self._require(job_id)
        log.info("claim job=%s user=%s worker=%s attempt=%d/%d", job.id, job.user_id, worker_id, job.attempts,
                 job.max_attempts, extra={"job_id": job.id, "user_id": job.user_id, "worker_id": worker_id})
        return job

    def _attempts(self, job_id: int) -> int:
        return int(self.db.execute("SELECT attempts FROM jobs WHERE id = ?", [job_id]).fetchone()[0])

    def renew(self, job_id: int, worker_id: str, lease_s: float) -> bool:
        """Extend the lease. False when the lease was lost or a cancel was requested."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE jobs SET lease_until = ? WHERE id = ? AND state = 'running' AND lease_owner = ?",
                [self.clock() + lease_s, job_id, worker_id],
            )
            if cur.rowcount != 1:
                return False
            return not self.cancel_requested(job_id)

    def holds_lease(self, job_id: int, worker_id: str) -> bool:
        with db_lock(self.db):
            row = self.db.execute(
                "SELECT 1 FROM jobs WHERE id = ? AND state = 'running' AND lease_owner = ?", [job_id, worker_id]
            ).fetchone()
        return row is not None

    def report_progress(self, job_id: int, fraction: float, text: str = "") -> None:
        with transaction(self.db):
            self.db.execute(
                "UPDATE jobs SET progress = ?, progress_text = ? WHERE id = ? AND state = 'running'",
                [min(1.0, max(0.0, float(fraction))), text, job_id],
            )

    def cancel_requested(self, job_id: int) -> bool:
        with db_lock(self.db):
            row = self.db.execute("SELECT cancel_requested FROM jobs WHERE id = ?", [job_id]).fetchone()
        return bool(row and row[0])

    def complete(self, job_id: int, worker_id: str, video_path: str, cover_path: str | None, seconds: float,
                 label: str) -> bool:
        """Record the result. Accepted from the lease holder, or for a job re-queued after its lease
        expired that nobody re-claimed yet (the video exists, so use it). A cancel requested meanwhile
        wins: the job becomes cancelled and is refunded. False when the result was discarded."""
        now = self.clock()
        with transaction(self.db):
            job = self._require(job_id)
            mine = job.state is JobState.RUNNING and job.lease_owner == worker_id
            orphan = job.state is JobState.QUEUED and job.lease_owner is None
            if not (mine or orphan):
                log.warning("complete ignored job=%s worker=%s state=%s owner=%s", job_id, worker_id, job.state,
                            job.lease_owner, extra={"job_id": job_id, "worker_id": worker_id})
                return False
            common = dict(video_path=str(video_path), cover_path=None if cover_path is None else str(cover_path),
                          seconds=float(seconds), label=label, finished_at=now, lease_owner=None,
                          lease_until=None, progress=1.0)
            if job.cancel_requested:
                self._update(job_id, [job.state], state=str(JobState.CANCELLED), **common)
                self._refund(job, "cancelled")
            else:
                self._update(job_id, [job.state], state=str(JobState.SUCCEEDED), error=None, **common)
        log.info("complete job=%s user=%s seconds=%.1f", job_id, job.user_id, seconds,
                 extra={"job_id": job_id, "user_id": job.user_id, "worker_id": worker_id})
        return True

    def fail(self, job_id: int, worker_id: str, error: str, retryable: bool) -> JobState | None:
        """Retryable with attempts left → queued again; else failed + refund. `error` is user-facing.
        Returns the new state, or None if this worker no longer held the job."""
        now = self.clock()
        with transaction(self.db):
            job = self._require(job_id)
            if job.state is not JobState.RUNNING or job.lease_owner != worker_id:
                return None
            new = self._settle(job, error, retryable, now)
        log.warning("fail job=%s user=%s retryable=%s -> %s: %s", job_id, job.user_id, retryable, new, error,
                    extra={"job_id": job_id, "user_id": job.user_id, "worker_id": worker_id})
        return new

    def _settle(self, job: Job, error: str, retryable: bool, now: float) -> JobState:
        """Inside a transaction: a running job that stopped without a result."""
        release: dict[str, Any] = dict(lease_owner=None, lease_until=None, error=error)
        if job.cancel_requested:
            self._update(job.id, [JobState.RUNNING], state=str(JobState.CANCELLED), finished_at=now, **release)
            self._refund(job, "cancelled")
            return JobState.CANCELLED
        if retryable and job.attempts < job.max_attempts:
            self._update(job.id, [JobState.RUNNING], state=str(JobState.QUEUED), progress=0.0, progress_text="",
                         **release)
            return JobState.QUEUED
        self._update(job.id, [JobState.RUNNING], state=str(JobState.FAILED), finished_at=now, **release)
        self._refund(job, "failed")
        return JobState.FAILED

    def finish_cancelled(self, job_id: int, worker_id: str) -> bool:
        with transaction(self.db):
            job = self._require(job_id)
            if job.state is not JobState.RUNNING or job.lease_owner != worker_id:
                return False
            self._update(job_id, [JobState.RUNNING], state=str(JobState.CANCELLED), finished_at=self.clock(),
                         lease_owner=None, lease_until=None)
            self._refund(job, "cancelled")
        log.info("cancelled running job=%s user=%s", job_id, job.user_id,
                 extra={"job_id": job_id, "user_id": job.user_id, "worker_id": worker_id})
        return True

    def release(self, job_id: int, worker_id: str) -> bool:
        """Graceful worker shutdown: hand a running job back to the queue without using up an attempt."""
        with transaction(self.db):
            job = self._require(job_id)
            if job.state is not JobState.RUNNING or job.lease_owner != worker_id:
                return False
            self._update(job_id, [JobState.RUNNING], state=str(JobState.QUEUED), attempts=max(0, job.attempts - 1),
                         lease_owner=None, lease_until=None, progress=0.0, progress_text="")
        log.info("released job=%s worker=%s", job_id, worker_id, extra={"job_id": job_id, "worker_id": worker_id})
        return True

    # ================================================================ user side
    def cancel_latest(self, user_id: str, chat_id: str) -> Job | None:
        """The caller's latest pending job in this chat: queued → cancelled + refunded at once (and marked
        notified: the command's reply is the notification); running → cancel requested, the worker stops at
        the next step and the delivery loop tells the user. None when there is nothing to cancel."""
        with transaction(self.db):
            rows = list(self.db.query(
                "SELECT * FROM jobs WHERE user_id = ? AND chat_id = ? AND state IN ('queued', 'running') "
                "AND cancel_requested = 0 ORDER BY created_at DESC, id DESC LIMIT 1", [user_id, chat_id]))
            if not rows:
                return None
            job = Job.from_row(rows[0])
            self._cancel_pending(job)
        log.info("cancel job=%s user=%s was=%s", job.id, user_id, job.state,
                 extra={"job_id": job.id, "user_id": user_id})
        return self._require(job.id)

    def cancel(self, job_id: int, *, actor: str | None = None, reason: str = "") -> Job | None:
        """Cancel one pending job by id, with the same effects as `cancel_latest`. None when the job does
        not exist, is already over or is already stopping. When `actor` is someone other than the job's
        owner (an admin, the dashboard), the audit row is written in the same transaction."""
        with transaction(self.db):
            rows = list(self.db.query(
                "SELECT * FROM jobs WHERE id = ? AND state IN ('queued', 'running') AND cancel_requested = 0",
                [job_id]))
            if not rows:
                return None
            job = Job.from_row(rows[0])
            self._cancel_pending(job)
            if actor is not None and actor != job.user_id:
                detail: dict[str, Any] = {"job_id": job.id, "was": str(job.state)}
                if reason:
                    detail["reason"] = reason
                self.quota.audit(actor, "cancel", job.user_id, detail)
        log.info("cancel job=%s user=%s was=%s (by id)", job.id, job.user_id, job.state,
                 extra={"job_id": job.id, "user_id": job.user_id})
        return self._require(job.id)

    def _cancel_pending(self, job: Job) -> None:
        """Inside a transaction: queued → cancelled + refunded now; running → cancel requested."""
        if job.state is JobState.QUEUED:
            self._update(job.id, [JobState.QUEUED], state=str(JobState.CANCELLED), finished_at=self.clock(),
                         notified=1, cancel_requested=1)
            self._refund(job, "cancelled")
        else:
            self._update(job.id, [JobState.RUNNING], cancel_requested=1)

    def jobs_of(self, user_id: str, states: Iterable[JobState | str] | None = None) -> list[Job]:
        if states is None:
            rows = self._rows("SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at, id", [user_id])
        else:
            wanted = [str(s) for s in states]
            marks = ", ".join("?" for _ in wanted)
            rows = self._rows(f"SELECT * FROM jobs WHERE user_id = ? AND state IN ({marks}) ORDER BY created_at, id",
                              [user_id, *wanted])
        return [Job.from_row(r) for r in rows]

    def latest_of(self, user_id: str, limit: int = 5) -> list[Job]:
        """The user's newest `limit` jobs, newest first (`/我的视频`, `/重来`)."""
        rows = self._rows("SELECT * FROM jobs WHERE user_id = ? ORDER BY created_at DESC, id DESC LIMIT ?",
                          [user_id, limit])
        return [Job.from_row(r) for r in rows]

    def counts(self) -> dict[str, int]:
        return {r["state"]: r["n"] for r in self._rows("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")}

    # ================================================================ reads for the console and the pool view
    def recent(self, limit: int) -> list[Job]:
        """The newest `limit` jobs, newest first."""
        return [Job.from_row(r) for r in self._rows("SELECT * FROM jobs ORDER BY id DESC LIMIT ?", [limit])]

    def running(self) -> list[Job]:
        """Running jobs, the longest-running first."""
        rows = self._rows("SELECT * FROM jobs WHERE state = 'running' ORDER BY started_at, id")
        return [Job.from_row(r) for r in rows]

    def running_owned_by(self, owner_prefix: str) -> list[tuple[int, str]]:
        """(job id, lease owner) of running jobs whose lease owner starts with `owner_prefix`."""
        rows = self._rows(
            "SELECT id, lease_owner FROM jobs WHERE state = 'running' AND substr(lease_owner, 1, ?) = ?",
            [len(owner_prefix), owner_prefix])
        return [(int(r["id"]), str(r["lease_owner"])) for r in rows]

    def finished_since(self, since: float) -> tuple[int, float]:
        """(count, total generation seconds) of jobs that finished generating since `since`."""
        rows = self._rows(
            "SELECT COUNT(*) AS n, COALESCE(SUM(seconds), 0) AS busy FROM jobs WHERE state IN "
            "('succeeded', 'delivered') AND seconds IS NOT NULL AND finished_at >= ?", [since])
        return int(rows[0]["n"]), float(rows[0]["busy"])

    def created_since(self, since: float) -> list[tuple[float, str]]:
        """(created_at, state) of every job created since `since` (the console's daily chart)."""
        rows = self._rows("SELECT created_at, state FROM jobs WHERE created_at >= ?", [since])
        return [(float(r["created_at"]), str(r["state"])) for r in rows]

    def latest_user_names(self) -> dict[str, str]:
        """Each user's name as of their latest job."""
        rows = self._rows(
            "SELECT user_id, user_name FROM jobs WHERE id IN (SELECT MAX(id) FROM jobs GROUP BY user_id)")
        return {str(r["user_id"]): str(r["user_name"]) for r in rows}

    # ================================================================ recovery
    def recover_expired(self, now: float | None = None, *, owner: str | None = None) -> list[Job]:
        """Running jobs whose lease ran out (or, with `owner`, every running job of a worker known to be
        dead) → queued again if attempts are left, else failed + refunded. Exactly once per job."""
        now = self.clock() if now is None else now
        changed: list[tuple[int, JobState]] = []
        with transaction(self.db):
            rows = list(self.db.query(
                "SELECT * FROM jobs WHERE state = 'running' AND (lease_until < ? OR lease_owner = ?)",
                [now, owner if owner is not None else "\x00no-owner"]))
            for row in rows:
                job = Job.from_row(row)
                changed.append((job.id, self._settle(job, LEASE_LOST_ERROR, retryable=True, now=now)))
        for job_id, state in changed:
            log.warning("recovered job=%s (lease lost) -> %s", job_id, state, extra={"job_id": job_id})
        return [self._require(job_id) for job_id, _ in changed]

    # ================================================================ delivery bookkeeping
    def undelivered(self) -> list[Job]:
        """Succeeded but not sent; failed/cancelled but not told. Oldest finish first. Jobs parked until
        the user writes again (`defer_delivery`) are left out until `wake_deferred`."""
        rows = self._rows(
            "SELECT * FROM jobs WHERE (state = 'succeeded' OR (state IN ('failed', 'cancelled') AND notified = 0)) "
            "AND deferred_at IS NULL ORDER BY finished_at, id")
        return [Job.from_row(r) for r in rows]

    def mark_send_unknown(self, job_id: int) -> None:
        """The last send may or may not have arrived (the connection died mid-send): the next delivery
        round asks the channel or tells the user how to get the video, instead of resending blindly."""
        with transaction(self.db):
            self.db.execute("UPDATE jobs SET send_started_at = 0 WHERE id = ?", [job_id])

    def mark_send_started(self, job_id: int) -> None:
        """Record the intent before a video send: after a crash the outcome of that send is unknown, and
        the delivery loop asks the channel (or tells the user) instead of sending the video again."""
        with transaction(self.db):
            self.db.execute("UPDATE jobs SET send_started_at = ? WHERE id = ?", [self.clock(), job_id])

    def defer_delivery(self, job_id: int, reason: str) -> bool:
        """The channel cannot send to this chat until the user writes again: park the job (not failed,
        not refunded, no attempt used)."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE jobs SET deferred_at = ?, delivery_error = ? WHERE id = ? AND deferred_at IS NULL "
                "AND (state = 'succeeded' OR (state IN ('failed', 'cancelled') AND notified = 0))",
                [self.clock(), reason, job_id])
            return cur.rowcount == 1

    def wake_deferred(self, chat_id: str) -> int:
        """The user wrote in `chat_id` again: every parked job of that chat is due now. Returns how many."""
        with transaction(self.db):
            cur = self.db.execute(
                "UPDATE jobs SET deferred_at = NULL, next_delivery_at = NULL WHERE chat_id = ? "
                "AND deferred_at IS NOT NULL", [chat_id])
            return int(cur.rowcount)

    def deferred(self) -> list[Job]:
        """Jobs parked until their user writes again."""
        rows = self._rows("SELECT * FROM jobs WHERE deferred_at IS NOT NULL ORDER BY finished_at, id")
        return [Job.from_row(r) for r in rows]

    def mark_delivered(self, job_id: int) -> bool:
        with transaction(self.db):
            return self._update(job_id, [JobState.SUCCEEDED], state=str(JobState.DELIVERED),
                                delivered_at=self.clock(), notified=1)

    def mark_notified(self, job_id: int) -> bool:
        with transaction(self.db):
            return self._update(job_id, [JobState.FAILED, JobState.CANCELLED], notified=1)

    def record_delivery_attempt(self, job_id: int, error: str) -> int:
        """A certain send failure: count it and schedule the next try with exponential backoff."""
        with transaction(self.db):
            job = self._require(job_id)
            attempts = job.delivery_attempts + 1
            delay = min(self.settings.delivery_backoff_max_s, self.settings.delivery_backoff_s * 2 ** (attempts - 1))
            self.db.execute(
                "UPDATE jobs SET delivery_attempts = ?, delivery_error = ?, next_delivery_at = ? WHERE id = ?",
                [attempts, error, self.clock() + delay, job_id])
        return attempts

    def give_up_delivery(self, job_id: int) -> bool:
        """The video could not be sent after all retries: fail the job and refund; the delivery loop then
        tells the user through the failure path."""
        with transaction(self.db):
            job = self._require(job_id)
            if not self._update(job_id, [JobState.SUCCEEDED], state=str(JobState.FAILED),
                                error=DELIVERY_GAVE_UP_ERROR, delivery_attempts=0, next_delivery_at=None):
                return False
            self._refund(job, "delivery failed")
        return True

    # ================================================================ retention and totals (bot.jobs.retention, /metrics)
    def needed_files(self) -> tuple[set[int], set[str]]:
        """(job ids, file paths) that must be kept: every job that is queued, running, succeeded but not yet
        delivered, parked until its user writes (deferred) or still owes its user a failure note, with its
        image, video and cover paths (as stored)."""
        rows = self._rows(
            "SELECT id, image_path, video_path, cover_path FROM jobs WHERE state IN ('queued', 'running', "
            "'succeeded') OR deferred_at IS NOT NULL OR (state IN ('failed', 'cancelled') AND notified = 0)")
        paths = {str(r[k]) for r in rows for k in ("image_path", "video_path", "cover_path") if r[k]}
        return {int(r["id"]) for r in rows}, paths

    _DONE = ("(state = 'delivered' OR (state IN ('failed', 'cancelled') AND notified = 1)) "
             "AND deferred_at IS NULL")

    def _totals(self, where: str, params: list[Any], buckets: Iterable[float]) -> list[JobTotal]:
        bounds = sorted(float(b) for b in buckets)
        case = "CASE WHEN seconds IS NULL THEN ''" + "".join(
            f" WHEN seconds <= {b!r} THEN '{b!r}'" for b in bounds) + " ELSE '+Inf' END"
        rows = self._rows(
            f"SELECT state, COALESCE(error, '') AS error, resolution, COALESCE(model, '') AS model, {case} AS le, "
            f"COUNT(*) AS jobs, COALESCE(SUM(seconds), 0) AS seconds_sum FROM jobs WHERE {where} "
            "GROUP BY 1, 2, 3, 4, 5", params)
        return [JobTotal(r["state"], r["error"], r["resolution"], r["model"], r["le"], int(r["jobs"]),
                         float(r["seconds_sum"])) for r in rows]

    def prune_finished(self, before: float, buckets: Iterable[float] = GENERATION_BUCKETS_S) -> int:
        """Delete the rows of jobs that are over for good (delivered; failed or cancelled and told) and finished
        before `before`; they are added to the totals (`job_rollup`) in the same transaction, so `job_totals`
        never goes down. Returns how many rows were removed. Ledger rows naming them are kept."""
        where = f"{self._DONE} AND COALESCE(finished_at, created_at) < ?"
        with transaction(self.db):
            gone = self._totals(where, [before], buckets)
            for t in gone:
                self.db.execute(
                    "INSERT INTO job_rollup (state, error, resolution, model, le, jobs, seconds_sum) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (state, error, resolution, model, le) DO UPDATE SET "
                    "jobs = jobs + excluded.jobs, seconds_sum = seconds_sum + excluded.seconds_sum",
                    [t.state, t.error, t.resolution, t.model, t.le, t.jobs, t.seconds_sum])
            cur = self.db.execute(f"DELETE FROM jobs WHERE {where}", [before])
            removed = int(cur.rowcount)
        if removed:
            log.info("retention removed %d finished job rows older than %.0f", removed, before)
        return removed

    def job_totals(self, buckets: Iterable[float] = GENERATION_BUCKETS_S) -> list[JobTotal]:
        """Every job that finished generating or stopped (succeeded, delivered, failed, cancelled), grouped by
        (state, error, resolution, model, seconds bucket): the rows still here plus those retention removed."""
        bounds = sorted(float(b) for b in buckets)
        merged: dict[tuple[str, str, str, str, str], list[float]] = {}
        live = self._totals("state IN ('succeeded', 'delivered', 'failed', 'cancelled')", [], bounds)
        rolled = [JobTotal(r["state"], r["error"], r["resolution"], r["model"], _rebucket(r["le"], bounds),
                           int(r["jobs"]), float(r["seconds_sum"]))
                  for r in self._rows("SELECT * FROM job_rollup")]
        for t in (*live, *rolled):
            acc = merged.setdefault((t.state, t.error, t.resolution, t.model, t.le), [0, 0.0])
            acc[0] += t.jobs
            acc[1] += t.seconds_sum
        return [JobTotal(*key, int(v[0]), float(v[1])) for key, v in sorted(merged.items())]


def _rebucket(le: str, bounds: list[float]) -> str:
    """A stored bucket bound mapped onto today's bounds (the smallest one that holds it)."""
    if le in ("", "+Inf"):
        return le
    value = float(le)
    for b in bounds:
        if value <= b:
            return repr(b)
    return "+Inf"
