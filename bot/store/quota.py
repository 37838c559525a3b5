"""The quota ledger: every change of a user's units is one row, so any balance can be explained.

Row kinds: `grant` (first sight: the daily allowance), `spend` (a job was queued), `refund` (a job
failed / was cancelled), `adjust` (an admin changed the balance), `reset` (the daily reset put the
balance back to the allowance). `balance_after` on each row equals the running sum of `delta`.

The daily reset is keyed by the local calendar day in `quota.timezone`: the "day" starts at
`quota.reset_time`. `meta.quota_last_reset` holds the key of the last applied reset, and the check and
the reset rows are written in one `BEGIN IMMEDIATE` transaction, so a reset is applied at most once per
day however many processes or timers ask for it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any
from zoneinfo import ZoneInfo

import sqlite_utils

from bot.store.db import db_lock, meta_get, meta_set, transaction
from bot.store.settings import QuotaSettings

log = logging.getLogger(__name__)

Clock = Callable[[], float]

LAST_RESET_KEY = "quota_last_reset"
RESET_JOB_ID = "quota-daily-reset"


@dataclass(frozen=True, slots=True)
class LedgerRow:
    id: int
    user_id: str
    group_id: str | None
    kind: str
    delta: int
    balance_after: int
    job_id: int | None
    actor_id: str | None
    reason: str
    ts: float


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    actor_id: str
    action: str
    target_id: str | None
    detail: dict[str, Any]
    ts: float


_LEDGER_COLS = "id, user_id, group_id, kind, delta, balance_after, job_id, actor_id, reason, ts"


class QuotaBook:
    def __init__(self, db: sqlite_utils.Database, settings: QuotaSettings, clock: Clock = time.time) -> None:
        self.db = db
        self.settings = settings
        self.clock = clock
        self.tz = ZoneInfo(settings.timezone)

    # ---------------------------------------------------------------- reading
    def balance(self, user_id: str) -> int:
        with db_lock(self.db):
            row = self.db.execute(
                "SELECT balance_after FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT 1", [user_id]
            ).fetchone()
        return 0 if row is None else int(row[0])

    def is_known(self, user_id: str) -> bool:
        with db_lock(self.db):
            return self.db.execute("SELECT 1 FROM users WHERE user_id = ?", [user_id]).fetchone() is not None

    def allowance(self, user_id: str, group_id: str | None = None) -> int:
        """Daily units for this user: the override of their group (the group given, else the last group
        they were seen in), else `quota.daily`."""
        if group_id is None:
            with db_lock(self.db):
                row = self.db.execute("SELECT group_id FROM users WHERE user_id = ?", [user_id]).fetchone()
            group_id = None if row is None else row[0]
        if group_id is not None and group_id in self.settings.group_overrides:
            return self.settings.group_overrides[group_id]
        return self.settings.daily

    def cost_for(self, resolution: str, duration_s: int) -> int:
        table = self.settings.costs.get(resolution)
        if table is None or str(duration_s) not in table:
            raise ValueError(f"no cost configured for {resolution} / {duration_s}s")
        return table[str(duration_s)]

    def history(self, user_id: str, limit: int = 20) -> list[LedgerRow]:
        with db_lock(self.db):
            rows = self.db.execute(
                f"SELECT {_LEDGER_COLS} FROM ledger WHERE user_id = ? ORDER BY id DESC LIMIT ?", [user_id, limit]
            ).fetchall()
        return [LedgerRow(*row) for row in rows]

    def audit_log(self, limit: int = 20) -> list[AuditRow]:
        with db_lock(self.db):
            rows = self.db.execute(
                "SELECT id, actor_id, action, target_id, detail, ts FROM audit ORDER BY id DESC LIMIT ?", [limit]
            ).fetchall()
        return [AuditRow(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5]) for r in rows]

    def refund_totals(self) -> list[tuple[str, int, int]]:
        """(reason, refund rows, units refunded) over the whole ledger (kept forever), for /metrics."""
        with db_lock(self.db):
            rows = self.db.execute(
                "SELECT reason, COUNT(*), COALESCE(SUM(delta), 0) FROM ledger WHERE kind = 'refund' "
                "GROUP BY reason ORDER BY reason").fetchall()
        return [(str(r[0]), int(r[1]), int(r[2])) for r in rows]

    def is_banned(self, user_id: str) -> bool:
        with db_lock(self.db):
            return self.db.execute("SELECT 1 FROM bans WHERE user_id = ?", [user_id]).fetchone() is not None

    def spent_today(self, user_id: str, now: float | None = None) -> int:
        """Units spent since the start of the current quota day, net of refunds."""
        start = self.day_start(self.clock() if now is None else now)
        with db_lock(self.db):
            row = self.db.execute(
                "SELECT COALESCE(-SUM(delta), 0) FROM ledger WHERE user_id = ? AND ts >= ? "
                "AND kind IN ('spend', 'refund')",
                [user_id, start],
            ).fetchone()
        return int(row[0])

    # ---------------------------------------------------------------- ledger writes
    def ensure_user(self, user_id: str, group_id: str | None = None) -> int:
        """First sight of a user → a `grant` of their daily allowance. Remembers the latest group they
        were seen in (for per-group allowances). Returns the balance."""
        now = self.clock()
        with transaction(self.db):
            known = self.db.execute("SELECT group_id FROM users WHERE user_id = ?", [user_id]).fetchone()
            if known is None:
                self.db.execute(
                    "INSERT INTO users (user_id, group_id, first_seen, last_seen) VALUES (?, ?, ?, ?)",
                    [user_id, group_id, now, now],
                )
                allowance = self.allowance(user_id, group_id)
                balance = self._append(user_id, group_id, "grant", allowance, reason="first daily allowance")
                log.info("quota: new user %s granted %d", user_id, allowance, extra={"user_id": user_id})
                return balance
            if group_id is not None and known[0] != group_id:
                self.db.execute(
                    "UPDATE users SET group_id = ?, last_seen = ? WHERE user_id = ?", [group_id, now, user_id]
                )
            return self.balance(user_id)

    def try_spend(self, user_id: str, cost: int, *, job_id: int | None, group_id: str | None) -> int | None:
        """Debit `cost` if the balance covers it; returns the new balance, or None when it does not.
        Meant to run inside the caller's transaction (joins it)."""
        with transaction(self.db):
            balance = self.balance(user_id)
            if balance < cost:
                return None
            return self._append(user_id, group_id, "spend", -cost, job_id=job_id, reason="video job")

    def refund(self, user_id: str, amount: int, *, job_id: int, group_id: str | None, reason: str) -> int:
        """Give a job's units back (at most once per job: a unique index guards it)."""
        with transaction(self.db):
            balance = self._append(user_id, group_id, "refund", amount, job_id=job_id, reason=reason)
        log.info("quota: refund %d to %s for job %s (%s)", amount, user_id, job_id, reason,
                 extra={"user_id": user_id, "job_id": job_id})
        return balance

    def _append(
        self,
        user_id: str,
        group_id: str | None,
        kind: str,
        delta: int,
        *,
        job_id: int | None = None,
        actor_id: str | None = None,
        reason: str = "",
    ) -> int:
        if not self.db.conn.in_transaction:
            raise RuntimeError("ledger rows are only written inside a transaction")
        balance = self.balance(user_id) + delta
        self.db.execute(
            "INSERT INTO ledger (user_id, group_id, kind, delta, balance_after, job_id, actor_id, reason, ts) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [user_id, group_id, kind, delta, balance, job_id, actor_id, reason, self.clock()],
        )
        return balance

    def users(self) -> list[tuple[str, str | None, float, float]]:
        """(user id, group id, first seen, last seen) of every known user, the most recently seen first."""
        with db_lock(self.db):
            rows = self.db.execute(
                "SELECT user_id, group_id, first_seen, last_seen FROM users ORDER BY last_seen DESC").fetchall()
        return [(str(r[0]), r[1], float(r[2]), float(r[3])) for r in rows]

    def audit(self, actor_id: str, action: str, target_id: str | None, detail: dict[str, Any]) -> None:
        """Record an admin action done elsewhere (e.g. cancelling someone's job); joins an open transaction."""
        with transaction(self.db):
            self._audit(actor_id, action, target_id, detail)

    def _audit(self, actor_id: str, action: str, target_id: str | None, detail: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO audit (actor_id, action, target_id, detail, ts) VALUES (?, ?, ?, ?, ?)",
            [actor_id, action, target_id, json.dumps(detail, ensure_ascii=False), self.clock()],
        )
        log.info("admin %s: %s %s %s", actor_id, action, target_id, detail,
                 extra={"actor_id": actor_id, "user_id": target_id})

    # ---------------------------------------------------------------- admin
    def set_balance(self, actor_id: str, user_id: str, value: int, reason: str = "") -> int:
        value = max(0, int(value))
        with transaction(self.db):
            before = self.ensure_user(user_id)
            after = self._append(user_id, None, "adjust", value - before, actor_id=actor_id,
                                 reason=reason or "admin set")
            self._audit(actor_id, "set", user_id, {"before": before, "after": after, "reason": reason})
        return after

    def add(self, actor_id: str, user_id: str, delta: int, reason: str = "") -> int:
        """Add (or subtract) units; the balance never goes below 0 (the row records the real change)."""
        with transaction(self.db):
            before = self.ensure_user(user_id)
            applied = max(int(delta), -before)
            after = self._append(user_id, None, "adjust", applied, actor_id=actor_id, reason=reason or "admin add")
            self._audit(actor_id, "add", user_id,
                        {"requested": int(delta), "applied": applied, "before": before, "after": after,
                         "reason": reason})
        return after

    def reset_user(self, actor_id: str, user_id: str) -> int:
        """Back to the user's daily allowance now (an `adjust` row; `reset` rows are the daily reset's)."""
        with transaction(self.db):
            before = self.ensure_user(user_id)
            allowance = self.allowance(user_id)
            after = self._append(user_id, None, "adjust", allowance - before, actor_id=actor_id,
                                 reason="admin reset to daily allowance")
            self._audit(actor_id, "reset", user_id, {"before": before, "after": after})
        return after

    def ban(self, actor_id: str, user_id: str, reason: str = "") -> bool:
        """Returns False when the user was already banned (still audited)."""
        with transaction(self.db):
            was = self.is_banned(user_id)
            self.db.execute(
                "INSERT INTO bans (user_id, actor_id, reason, ts) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET actor_id = excluded.actor_id, reason = excluded.reason, "
                "ts = excluded.ts",
                [user_id, actor_id, reason, self.clock()],
            )
            self._audit(actor_id, "ban", user_id, {"reason": reason, "already": was})
        return not was

    def unban(self, actor_id: str, user_id: str) -> bool:
        """Returns False when the user was not banned (still audited)."""
        with transaction(self.db):
            was = self.is_banned(user_id)
            self.db.execute("DELETE FROM bans WHERE user_id = ?", [user_id])
            self._audit(actor_id, "unban", user_id, {"was_banned": was})
        return was

    # ---------------------------------------------------------------- daily reset
    def day_key(self, now: float) -> str:
        """The quota day `now` falls in (ISO date of the local day whose reset time is the last one ≤ now)."""
        return self._day_of(now).isoformat()

    def _day_of(self, now: float) -> date:
        hour, minute = self.settings.reset_hour_minute
        local = datetime.fromtimestamp(now, self.tz)
        boundary = datetime.combine(local.date(), dtime(hour, minute), self.tz)
        return local.date() if local >= boundary else local.date() - timedelta(days=1)

    def day_start(self, now: float) -> float:
        hour, minute = self.settings.reset_hour_minute
        return datetime.combine(self._day_of(now), dtime(hour, minute), self.tz).timestamp()

    def next_reset_at(self, now: float | None = None) -> float:
        hour, minute = self.settings.reset_hour_minute
        day = self._day_of(self.clock() if now is None else now) + timedelta(days=1)
        return datetime.combine(day, dtime(hour, minute), self.tz).timestamp()

    def last_reset_key(self) -> str | None:
        with db_lock(self.db):
            return meta_get(self.db, LAST_RESET_KEY)

    def daily_reset(self, now: float | None = None) -> bool:
        """Put every known user back to their allowance (one `reset` row each, delta = allowance − balance).
        No-op (False) when the reset for this quota day was already applied."""
        now = self.clock() if now is None else now
        key = self.day_key(now)
        with transaction(self.db):
            last = meta_get(self.db, LAST_RESET_KEY)
            if last is not None and last >= key:
                return False
            users = self.db.execute("SELECT user_id, group_id FROM users ORDER BY user_id").fetchall()
            for user_id, group_id in users:
                allowance = self.allowance(user_id, group_id)
                self._append(user_id, None, "reset", allowance - self.balance(user_id),
                             reason=f"daily reset {key}")
            meta_set(self.db, LAST_RESET_KEY, key)
        log.info("quota: daily reset %s applied to %d users", key, len(users))
        return True

    def apply_missed_reset(self, now: float | None = None) -> bool:
        """At start-up: if one or more resets were missed while the bot was down, apply the latest one,
        once. On a brand-new database the current day is only recorded (first-sight grants already hold
        today's allowance)."""
        now = self.clock() if now is None else now
        key = self.day_key(now)
        with transaction(self.db):
            last = meta_get(self.db, LAST_RESET_KEY)
            if last is None:
                meta_set(self.db, LAST_RESET_KEY, key)
                return False
            if last >= key:
                return False
            log.info("quota: applying missed daily reset (last %s, now %s)", last, key)
            return self.daily_reset(now)

    def schedule_daily_reset(self, scheduler: Any) -> Any:
        """Add the cron job to an APScheduler 3.x scheduler (Background or AsyncIO). Returns the job."""
        from apscheduler.triggers.cron import CronTrigger

        hour, minute = self.settings.reset_hour_minute
        trigger = CronTrigger(hour=hour, minute=minute, timezone=self.tz)
        return scheduler.add_job(
            self._scheduled_reset, trigger, id=RESET_JOB_ID, replace_existing=True,
            misfire_grace_time=6 * 3600, coalesce=True, max_instances=1,
        )

    def _scheduled_reset(self) -> None:
        try:
            self.daily_reset()
        except Exception:  # a scheduler thread must not die silently
            log.exception("quota: scheduled daily reset failed")
