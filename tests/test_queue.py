"""JobQueue on a real SQLite file: submit rules, fair order, claim/lease/finish, cancel, recovery, delivery rows."""

from __future__ import annotations

from pathlib import Path

import pytest
from _jobs_support import Clock, ledger, make_store, spec

from bot.jobs.fairness import Pending, fair_order
from bot.jobs.models import JobState
from bot.jobs.settings import QueueSettings
from bot.store.settings import QuotaSettings


def test_submit_spends_and_queues(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db", quota=QuotaSettings(daily=3))
    out = s.queue.submit(spec("u1", cost=2))
    assert out.status == "queued" and out.job is not None
    assert out.job.state is JobState.QUEUED and out.balance == 1 and out.position == 1
    assert out.eta_s == pytest.approx(180.0)  # default for 384p/5 with no history
    assert ledger(s, "u1") == [("grant", 3, None), ("spend", -2, out.job.id)]


def test_refusals_debit_nothing(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db", quota=QuotaSettings(daily=2), queue=QueueSettings(max_pending_per_user=2))
    assert s.queue.submit(spec("u1", cost=3)).status == "no_quota"
    assert s.queue.submit(spec("u1")).status == "queued"
    assert s.queue.submit(spec("u1")).status == "queued"
    s.quota.add("admin", "u1", 5)
    full = s.queue.submit(spec("u1"))
    assert full.status == "too_many_pending" and full.job is None and full.balance == 5
    s.quota.ban("admin", "u2")
    assert s.queue.submit(spec("u2")).status == "banned"
    assert ledger(s, "u2") == []
    assert [k for k, _, _ in ledger(s, "u1")] == ["grant", "spend", "spend", "adjust"]


def test_duplicate_message_never_makes_second_job_or_debit(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db")
    first = s.queue.submit(spec("u1", message_id="wx-1"))
    again = s.queue.submit(spec("u1", message_id="wx-1"))
    assert again.status == "duplicate" and again.job is not None and again.job.id == first.job.id
    refused = spec("u9", message_id="wx-2", cost=1000)
    assert s.queue.submit(refused).status == "no_quota"
    dup = s.queue.submit(refused)
    assert dup.status == "duplicate" and dup.job is None
    assert len(s.queue.jobs_of("u1")) == 1
    assert [k for k, _, _ in ledger(s, "u1")] == ["grant", "spend"]
    assert s.queue.mark_seen("cmd-1") is True and s.queue.mark_seen("cmd-1") is False
    assert s.queue.mark_seen("wx-1") is False


def test_fair_order_round_robin_users_and_groups(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db")
    ids: dict[str, int] = {}

    def add(name: str, user: str, group: str | None) -> None:
        s.clock.tick()
        ids[name] = s.queue.submit(spec(user, group)).job.id

    for i in range(1, 6):  # busy user A in a busy group submits first
        add(f"A{i}", "A", "big")
    add("B1", "B", "big")
    add("B2", "B", "big")
    add("C1", "C", "small")
    add("P1", "P", None)  # private chat: its own scheduling group
    add("A6", "A", "big")

    expected = ["A1", "C1", "P1", "B1", "A2", "B2", "A3", "A4", "A5", "A6"]
    # group order by least recently served: big (A1), small (C1), private P (P1), big again (B1: user B
    # never served inside big), big (A2) ... once small/private are empty, big alternates B and A.
    assert [j.id for j in s.queue.snapshot()] == [ids[n] for n in expected]
    assert s.queue.position(ids["C1"]) == 2

    claimed = []
    while (job := s.queue.claim("w", 60)) is not None:
        s.clock.tick()
        claimed.append(job.id)
        assert s.queue.complete(job.id, "w", "/tmp/v.mp4", None, 1.0, "test")
        s.clock.tick()
    assert claimed == [ids[n] for n in expected]


def test_fair_order_remembers_who_was_served() -> None:
    queued = [Pending(1, "A", "g", 1.0), Pending(2, "B", "g", 2.0), Pending(3, "A", "g", 3.0)]
    assert fair_order(queued, {}, {}) == [1, 2, 3]
    assert fair_order(queued, {"A": 10.0}, {"g": 10.0}) == [2, 1, 3]  # A was served recently, B never
    assert fair_order(queued, {"A": 10.0, "B": 20.0}, {}) == [1, 2, 3]
    assert fair_order(queued, {}, {}, limit=1) == [1]


def test_position_and_eta_from_history(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db")
    for secs in (10.0, 30.0, 20.0):  # history: median 20 s for 384p/5
        job = s.queue.submit(spec("h")).job
        s.queue.claim("w", 60)
        s.clock.tick(secs)
        s.queue.complete(job.id, "w", "/tmp/v.mp4", None, secs, "")
    assert s.queue.expected_seconds("384p", 5) == 20.0
    assert s.queue.expected_seconds("768p", 10) == 1200.0  # default from settings
    a = s.queue.submit(spec("a")).job
    s.queue.claim("w", 60)
    s.clock.tick(5)
    b = s.queue.submit(spec("b")).job
    c = s.queue.submit(spec("c")).job
    assert s.queue.position(a.id) == 1 and s.queue.position(b.id) == 2 and s.queue.position(c.id) == 3
    assert s.queue.eta_s(a.id) == pytest.approx(15.0)
    assert s.queue.eta_s(c.id) == pytest.approx(15.0 + 20.0 + 20.0)
    s.queue.report_progress(a.id, 0.5, "stage 2")  # 5 s for half → 5 s left
    assert s.queue.eta_s(b.id) == pytest.approx(5.0 + 20.0)


def test_claim_lease_renew_progress_complete(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db")
    job = s.queue.submit(spec("u1")).job
    got = s.queue.claim("w1", 30)
    assert got.id == job.id and got.state is JobState.RUNNING and got.attempts == 1
    assert got.lease_owner == "w1" and got.lease_until == s.clock() + 30
    assert s.queue.claim("w2", 30) is None  # nothing else queued
    s.clock.tick(10)
    assert s.queue.renew(job.id, "w1", 30) is True
    assert s.queue.renew(job.id, "w2", 30) is False
    assert s.queue.get(job.id).lease_until == s.clock() + 30
    s.queue.report_progress(job.id, 0.4, "阶段 1/3")
    assert (s.queue.get(job.id).progress, s.queue.get(job.id).progress_text) == (0.4, "阶段 1/3")
    assert s.queue.complete(job.id, "w2", "/x.mp4", None, 1, "") is False  # not the lease holder
    assert s.queue.complete(job.id, "w1", "/x.mp4", "/x.jpg", 12.5, "合成") is True
    done = s.queue.get(job.id)
    assert (done.state, done.video_path, done.cover_path, done.seconds, done.label, done.lease_owner) == (
        JobState.SUCCEEDED, "/x.mp4", "/x.jpg", 12.5, "合成", None)
    assert [j.id for j in s.queue.undelivered()] == [job.id]
    assert s.queue.mark_delivered(job.id) and s.queue.get(job.id).state is JobState.DELIVERED
    assert s.queue.undelivered() == []
    assert not s.queue.mark_delivered(job.id)


def test_fail_retries_then_refunds_once(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db", queue=QueueSettings(max_attempts=2))
    job = s.queue.submit(spec("u1", cost=2)).job
    s.queue.claim("w", 30)
    assert s.queue.fail(job.id, "w", "生成出错", retryable=True) is JobState.QUEUED
    assert s.queue.get(job.id).error == "生成出错"
    s.queue.claim("w", 30)
    assert s.queue.fail(job.id, "w", "生成出错", retryable=True) is JobState.FAILED  # 2 attempts used
    assert s.queue.fail(job.id, "w", "again", retryable=False) is None
    assert ledger(s, "u1")[1:] == [("spend", -2, job.id), ("refund", 2, job.id)]
    assert [j.id for j in s.queue.undelivered()] == [job.id]
    assert s.queue.mark_notified(job.id) and s.queue.undelivered() == []

    bad = s.queue.submit(spec("u1")).job
    s.queue.claim("w", 30)
    assert s.queue.fail(bad.id, "w", "图片无法识别", retryable=False) is JobState.FAILED  # no retry
    assert s.quota.balance("u1") == 100


def test_cancel_queued_refunds_now_and_running_stops_later(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db")
    first = s.queue.submit(spec("u1")).job
    s.clock.tick()
    second = s.queue.submit(spec("u1")).job
    assert s.queue.claim("w", 30).id == first.id

    cancelled = s.queue.cancel_latest("u1", "g1")  # latest = the queued one
    assert cancelled.id == second.id and cancelled.state is JobState.CANCELLED and cancelled.notified
    assert ("refund", 1, second.id) in ledger(s, "u1")

    requested = s.queue.cancel_latest("u1", "g1")  # now the running one
    assert requested.id == first.id and requested.state is JobState.RUNNING and requested.cancel_requested
    assert s.queue.cancel_requested(first.id) and s.queue.renew(first.id, "w", 30) is False
    assert s.queue.cancel_latest("u1", "g1") is None
    assert s.queue.cancel_latest("u1", "other-chat") is None
    assert s.queue.finish_cancelled(first.id, "w") is True
    assert s.queue.finish_cancelled(first.id, "w") is False
    assert s.queue.get(first.id).state is JobState.CANCELLED
    assert [j.id for j in s.queue.undelivered()] == [first.id]  # the user still has to be told
    refunds = [j for k, _, j in ledger(s, "u1") if k == "refund"]
    assert sorted(refunds) == sorted([first.id, second.id])
    assert s.quota.balance("u1") == 100


def test_cancel_by_id_any_pending_job_once(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db")
    first = s.queue.submit(spec("u1")).job
    s.clock.tick()
    second = s.queue.submit(spec("u1")).job
    assert s.queue.claim("w", 30).id == first.id
    assert s.queue.cancel(999) is None
    running = s.queue.cancel(first.id)  # not the latest: by id it can still be cancelled
    assert running.state is JobState.RUNNING and running.cancel_requested
    assert s.queue.cancel(first.id) is None  # already stopping
    queued = s.queue.cancel(second.id)
    assert queued.state is JobState.CANCELLED and queued.notified
    assert s.queue.cancel(second.id) is None  # over
    assert [j for k, _, j in ledger(s, "u1") if k == "refund"] == [second.id]  # the running one refunds on stop
    assert s.queue.finish_cancelled(first.id, "w") is True
    assert sorted(j for k, _, j in ledger(s, "u1") if k == "refund") == sorted([first.id, second.id])
    assert s.quota.balance("u1") == 100


def test_recover_expired_requeues_then_fails_with_one_refund(tmp_path: Path) -> None:
    clock = Clock()
    s = make_store(tmp_path / "q.db", clock, queue=QueueSettings(max_attempts=2))
    job = s.queue.submit(spec("u1")).job
    s.queue.claim("dead-1", 30)
    assert s.queue.recover_expired() == []  # lease still valid
    clock.tick(31)
    again = s.queue.recover_expired()
    assert [(j.id, j.state) for j in again] == [(job.id, JobState.QUEUED)]
    s.queue.claim("dead-2", 30)
    failed = s.queue.recover_expired(owner="dead-2")  # known-dead worker: no need to wait for the lease
    assert [(j.id, j.state) for j in failed] == [(job.id, JobState.FAILED)]
    assert s.queue.recover_expired(clock() + 1000) == []
    assert [k for k, _, _ in ledger(s, "u1")] == ["grant", "spend", "refund"]
    # a late result from the lost worker is not accepted for a failed (refunded) job
    assert s.queue.complete(job.id, "dead-2", "/v.mp4", None, 1, "") is False


def test_late_result_of_requeued_job_is_used(tmp_path: Path) -> None:
    clock = Clock()
    s = make_store(tmp_path / "q.db", clock)
    job = s.queue.submit(spec("u1")).job
    s.queue.claim("slow", 10)
    clock.tick(11)
    s.queue.recover_expired()
    assert s.queue.complete(job.id, "slow", "/v.mp4", None, 11, "") is True
    assert s.queue.get(job.id).state is JobState.SUCCEEDED
    assert s.queue.claim("other", 10) is None


def test_delivery_backoff_and_give_up_refunds(tmp_path: Path) -> None:
    s = make_store(tmp_path / "q.db", queue=QueueSettings(delivery_backoff_s=2, delivery_backoff_max_s=5))
    job = s.queue.submit(spec("u1")).job
    s.queue.claim("w", 30)
    s.queue.complete(job.id, "w", "/v.mp4", None, 1, "")
    assert s.queue.record_delivery_attempt(job.id, "timeout") == 1
    assert s.queue.get(job.id).next_delivery_at == s.clock() + 2
    assert s.queue.record_delivery_attempt(job.id, "timeout") == 2
    assert s.queue.get(job.id).next_delivery_at == s.clock() + 4
    assert s.queue.record_delivery_attempt(job.id, "timeout") == 3
    assert s.queue.get(job.id).next_delivery_at == s.clock() + 5  # capped
    assert s.queue.give_up_delivery(job.id) is True
    gone = s.queue.get(job.id)
    assert gone.state is JobState.FAILED and not gone.notified and gone.delivery_attempts == 0
    assert ledger(s, "u1")[-1] == ("refund", 1, job.id)
    assert s.queue.give_up_delivery(job.id) is False


def _reference_order(queued, user_served, group_served):
    """The rule exactly as the fairness docstring states it, written the slow, obvious way."""
    remaining = sorted(queued, key=lambda p: (p.created_at, p.job_id))
    users, groups = dict(user_served), dict(group_served)
    tick = max([0.0, *users.values(), *groups.values()]) + 1.0
    order = []
    never = float("-inf")
    while remaining:
        def oldest(ps):
            return min(ps, key=lambda q: (q.created_at, q.job_id))
        by_group = {}
        for p in remaining:
            by_group.setdefault(p.group, []).append(p)
        group = min(by_group, key=lambda g: (groups.get(g, never), oldest(by_group[g]).created_at,
                                             oldest(by_group[g]).job_id))
        by_user = {}
        for p in by_group[group]:
            by_user.setdefault(p.user_id, []).append(p)
        user = min(by_user, key=lambda u: (users.get(u, never), oldest(by_user[u]).created_at,
                                           oldest(by_user[u]).job_id))
        pick = oldest(by_user[user])
        order.append(pick.job_id)
        remaining.remove(pick)
        users[user] = groups[group] = tick
        tick += 1.0
    return order


def test_fast_fair_order_matches_the_stated_rule() -> None:
    import random

    rng = random.Random(1234)
    for _ in range(300):
        n = rng.randint(1, 30)
        users = [f"u{i}" for i in range(rng.randint(1, 6))]
        groups = [f"g{i}" for i in range(rng.randint(1, 4))]
        queued = [Pending(i + 1, rng.choice(users), rng.choice(groups), float(rng.randint(0, 10))) for i in range(n)]
        user_served = {u: float(rng.randint(0, 12)) for u in users if rng.random() < 0.5}
        group_served = {g: float(rng.randint(0, 12)) for g in groups if rng.random() < 0.5}
        assert fair_order(queued, user_served, group_served) == _reference_order(queued, user_served, group_served)
        assert fair_order(queued, user_served, group_served, limit=3) == _reference_order(
            queued, user_served, group_served)[:3]
