"""Daily reset: keyed by the local day in the configured zone, applied once, missed resets caught up once."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler

from bot.store.db import open_db, transaction
from bot.store.quota import QuotaBook
from bot.store.settings import QuotaSettings

SH = ZoneInfo("Asia/Shanghai")


def at(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, tzinfo=SH).timestamp()


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def spend(book: QuotaBook, user: str, units: int, job_id: int) -> None:
    with transaction(book.db):
        assert book.try_spend(user, units, job_id=job_id, group_id=None) is not None


def reset_rows(book: QuotaBook, user: str) -> list[tuple[int, int]]:
    return [(r.delta, r.balance_after) for r in reversed(book.history(user, 1000)) if r.kind == "reset"]


def test_day_key_follows_reset_time_and_zone(tmp_path: Path) -> None:
    book = QuotaBook(open_db(tmp_path / "a.db"), QuotaSettings(reset_time="04:30"), Clock(0))
    assert book.day_key(at(2026, 3, 2, 4, 29)) == "2026-03-01"
    assert book.day_key(at(2026, 3, 2, 4, 30)) == "2026-03-02"
    assert book.next_reset_at(at(2026, 3, 2, 4, 29)) == at(2026, 3, 2, 4, 30)
    assert book.next_reset_at(at(2026, 3, 2, 4, 30)) == at(2026, 3, 3, 4, 30)
    # 00:00 Shanghai is 16:00 UTC of the previous day
    book0 = QuotaBook(book.db, QuotaSettings(), Clock(0))
    assert book0.day_key(datetime(2026, 3, 1, 15, 59, tzinfo=ZoneInfo("UTC")).timestamp()) == "2026-03-01"
    assert book0.day_key(datetime(2026, 3, 1, 16, 0, tzinfo=ZoneInfo("UTC")).timestamp()) == "2026-03-02"


def test_reset_once_per_day(tmp_path: Path) -> None:
    clock = Clock(at(2026, 3, 1, 10))
    book = QuotaBook(open_db(tmp_path / "b.db"), QuotaSettings(daily=3, group_overrides={"g": 5}), clock)
    assert book.apply_missed_reset() is False  # fresh db: records today, grants already hold today's units
    book.ensure_user("a")
    book.ensure_user("b", "g")
    spend(book, "a", 2, 1)
    book.add("admin", "b", 4)  # 9 > allowance: the reset brings it back down to 5
    assert book.daily_reset() is False  # same day: nothing

    clock.t = at(2026, 3, 2, 0, 0, 1)
    assert book.daily_reset() is True
    assert book.daily_reset() is False
    assert book.balance("a") == 3 and book.balance("b") == 5
    assert reset_rows(book, "a") == [(2, 3)]
    assert reset_rows(book, "b") == [(-4, 5)]


def test_missed_reset_applied_exactly_once_after_restart(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    clock = Clock(at(2026, 3, 1, 9))
    book = QuotaBook(open_db(path), QuotaSettings(daily=2), clock)
    book.apply_missed_reset()
    users = ["u1", "u2", "u3"]
    for i, user in enumerate(users):
        book.ensure_user(user)
        spend(book, user, 1 + (i % 2), 100 + i)
    book.db.conn.close()  # the bot goes down on day 1 ...

    clock.t = at(2026, 3, 4, 8, 15)  # ... and comes back three days later
    for _ in range(3):  # several restarts that day: still one reset
        book = QuotaBook(open_db(path), QuotaSettings(daily=2), clock)
        book.apply_missed_reset()
        book.daily_reset()  # a scheduler firing late on the same day is a no-op too
        book.db.conn.close()

    book = QuotaBook(open_db(path), QuotaSettings(daily=2), clock)
    for user in users:
        rows = reset_rows(book, user)
        assert len(rows) == 1, (user, rows)
        assert book.balance(user) == 2
    assert book.last_reset_key() == "2026-03-04"

    clock.t = at(2026, 3, 5, 0, 0)
    assert book.apply_missed_reset() is True
    assert all(len(reset_rows(book, u)) == 2 for u in users)


def test_reset_is_scheduled_at_local_midnight(tmp_path: Path) -> None:
    book = QuotaBook(open_db(tmp_path / "d.db"), QuotaSettings(), Clock(0))
    scheduler = BackgroundScheduler(timezone=SH)
    scheduler.start(paused=True)
    try:
        job = book.schedule_daily_reset(scheduler)
        now = datetime.now(SH)
        fire = job.trigger.get_next_fire_time(None, now)
        assert (fire.hour, fire.minute, fire.utcoffset().total_seconds()) == (0, 0, 8 * 3600)
        assert 0 < (fire - now).total_seconds() <= 24 * 3600
        assert book.schedule_daily_reset(scheduler).id == job.id  # replace, not duplicate
        assert len(scheduler.get_jobs()) == 1
    finally:
        scheduler.shutdown(wait=False)


def test_spent_today_counts_since_reset_boundary(tmp_path: Path) -> None:
    clock = Clock(at(2026, 3, 1, 23, 0))
    book = QuotaBook(open_db(tmp_path / "e.db"), QuotaSettings(daily=5), clock)
    book.ensure_user("u")
    spend(book, "u", 2, 1)
    clock.t = at(2026, 3, 2, 1, 0)
    spend(book, "u", 1, 2)
    book.refund("u", 1, job_id=2, group_id=None, reason="failed")
    spend(book, "u", 1, 3)
    assert book.spent_today("u") == 1
