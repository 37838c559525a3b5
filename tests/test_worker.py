"""The worker: runs jobs with the synthetic generator into real MP4s, honours cancel, fails with refunds,
and survives SIGKILL (job re-queued and completed once, or failed + refunded once: never lost, never
double-charged)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from _jobs_support import Clock, ledger, make_store, spec

from bot.jobs.models import JobState
from bot.jobs.settings import QueueSettings, WorkerSettings
from bot.store.settings import QuotaSettings, StorageSettings
from bot.worker import JobRunner, WorkerSections, WorkerSupervisor, open_queue
from generation.api import GenerationRequest
from generation.synthetic import SYNTHETIC_LABEL, SyntheticGenerator
from generation.video_io import probe


def worker_settings(tmp_path: Path, **kw: object) -> WorkerSettings:
    base = dict(generator="synthetic", output_dir=tmp_path / "out", synthetic_steps=6, synthetic_step_delay_s=0.0,
                synthetic_fps=4, synthetic_width=64, synthetic_height=48, heartbeat_s=0.2, lease_s=5.0,
                progress_every_s=0.0, poll_s=0.05, recover_every_s=0.5, restart_backoff_s=0.1)
    base.update(kw)
    return WorkerSettings(**base)


def runner_for(store, settings: WorkerSettings, worker_id: str = "w1") -> JobRunner:
    return JobRunner(store.queue, SyntheticGenerator.from_settings(settings), settings, worker_id)


def test_synthetic_generator_writes_labelled_mp4(tmp_path: Path) -> None:
    gen = SyntheticGenerator(steps=3, step_delay_s=0, fps=4, width=64, height=48)
    seen: list[float] = []
    result = gen.generate(GenerationRequest(prompt="a red fox", duration_s=5, seed=3), tmp_path,
                          progress=lambda p: seen.append(p.fraction))
    info = probe(result.video_path)
    assert (info["codec"], info["pix_fmt"], info["width"], info["height"], info["frames"]) == (
        "h264", "yuv420p", 64, 48, 20)
    assert result.cover_path.exists() and result.label == SYNTHETIC_LABEL
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])
    a = gen.frames(GenerationRequest(prompt="a red fox"))
    b = gen.frames(GenerationRequest(prompt="a blue whale"))
    assert a.shape == (20, 48, 64, 3) and not (a == b).all() and not (a[0] == a[1]).all()


def test_runner_completes_job(tmp_path: Path) -> None:
    store = make_store(tmp_path / "w.db")
    ws = worker_settings(tmp_path)
    job = store.queue.submit(spec("u1", prompt="a shiba inu in the snow")).job
    done = runner_for(store, ws).run_once()
    assert done.id == job.id and done.state is JobState.SUCCEEDED
    assert Path(done.video_path) == ws.output_dir / str(job.id) / "video.mp4"
    assert probe(Path(done.video_path))["codec"] == "h264"
    assert done.label == SYNTHETIC_LABEL and done.progress == 1.0 and done.seconds > 0
    assert runner_for(store, ws).run_once() is None


def test_bad_image_fails_once_with_refund_and_chinese_reason(tmp_path: Path) -> None:
    store = make_store(tmp_path / "w.db")
    bad = tmp_path / "not-an-image.jpg"
    bad.write_bytes(b"this is not a jpeg")
    job = store.queue.submit(spec("u1", image_path=str(bad), cost=2)).job
    done = runner_for(store, worker_settings(tmp_path)).run_once()
    assert done.state is JobState.FAILED and done.attempts == 1
    assert "图片" in done.error
    assert ledger(store, "u1") == [("grant", 100, None), ("spend", -2, job.id), ("refund", 2, job.id)]


def test_crash_is_retried_then_failed_and_refunded(tmp_path: Path) -> None:
    store = make_store(tmp_path / "w.db", queue=QueueSettings(max_attempts=2))
    blocker = tmp_path / "out-is-a-file"
    blocker.write_text("x")  # the output folder cannot be created: a real OSError inside the generator
    ws = worker_settings(tmp_path, output_dir=blocker)
    job = store.queue.submit(spec("u1")).job
    runner = runner_for(store, ws)
    assert runner.run_once().state is JobState.QUEUED
    final = runner.run_once()
    assert final.state is JobState.FAILED and final.attempts == 2 and final.error == "生成过程出错"
    assert [k for k, _, _ in ledger(store, "u1")] == ["grant", "spend", "refund"]
    assert job.id == final.id


def test_cancel_running_job_stops_at_next_step(tmp_path: Path) -> None:
    store = make_store(tmp_path / "w.db")
    ws = worker_settings(tmp_path, synthetic_steps=200, synthetic_step_delay_s=0.02)
    job = store.queue.submit(spec("u1")).job
    runner = runner_for(open_store := make_store(tmp_path / "w.db", Clock(store.clock())), ws)
    result: list = []
    thread = threading.Thread(target=lambda: result.append(runner.run_once()))
    thread.start()
    deadline = time.monotonic() + 20
    while store.queue.get(job.id).progress <= 0.02 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert store.queue.cancel_latest("u1", "g1").cancel_requested
    thread.join(20)
    final = result[0]
    assert final.state is JobState.CANCELLED and final.progress < 0.9
    assert not (ws.output_dir / str(job.id) / "video.mp4").exists()
    assert [k for k, _, _ in ledger(store, "u1")] == ["grant", "spend", "refund"]
    assert [j.id for j in open_store.queue.undelivered()] == [job.id]


def _sections(tmp_path: Path, max_attempts: int, **kw: object) -> WorkerSections:
    return WorkerSections(worker=worker_settings(tmp_path, **kw), queue=QueueSettings(max_attempts=max_attempts),
                          quota=QuotaSettings(daily=5), storage=StorageSettings(db_path=tmp_path / "sup.db"))


def _wait(cond, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _kill_mid_job(tmp_path: Path, max_attempts: int):
    settings = _sections(tmp_path, max_attempts, synthetic_steps=40, synthetic_step_delay_s=0.1)
    queue = open_queue(settings)
    job = queue.submit(spec("u1", cost=2)).job
    sup = WorkerSupervisor(settings)
    sup.start()
    try:
        _wait(lambda: queue.get(job.id).state is JobState.RUNNING and queue.get(job.id).progress > 0)
        first_pid = sup.pid
        os.kill(first_pid, signal.SIGKILL)
        _wait(lambda: queue.get(job.id).state in (JobState.SUCCEEDED, JobState.FAILED), timeout=90)
        _wait(lambda: sup.restarts >= 1 and sup.alive)  # the supervisor restarted the worker
        assert sup.pid != first_pid
    finally:
        sup.stop()
    assert not sup.alive
    return queue, job


def test_sigkill_mid_job_requeues_and_completes_once(tmp_path: Path) -> None:
    queue, job = _kill_mid_job(tmp_path, max_attempts=2)
    final = queue.get(job.id)
    assert final.state is JobState.SUCCEEDED and final.attempts == 2
    assert Path(final.video_path).exists()
    rows = [(r.kind, r.delta, r.job_id) for r in reversed(queue.quota.history("u1"))]
    assert rows == [("grant", 5, None), ("spend", -2, job.id)]  # charged once, not refunded
    assert len(queue.jobs_of("u1")) == 1


def test_sigkill_on_last_attempt_fails_and_refunds_once(tmp_path: Path) -> None:
    queue, job = _kill_mid_job(tmp_path, max_attempts=1)
    final = queue.get(job.id)
    assert final.state is JobState.FAILED and final.attempts == 1 and not final.notified
    rows = [(r.kind, r.delta, r.job_id) for r in reversed(queue.quota.history("u1"))]
    assert rows == [("grant", 5, None), ("spend", -2, job.id), ("refund", 2, job.id)]
    assert queue.quota.balance("u1") == 5


def test_graceful_stop_hands_running_job_back(tmp_path: Path) -> None:
    settings = _sections(tmp_path, 1, synthetic_steps=400, synthetic_step_delay_s=0.05)
    queue = open_queue(settings)
    job = queue.submit(spec("u1")).job
    sup = WorkerSupervisor(settings)
    sup.start()
    _wait(lambda: queue.get(job.id).state is JobState.RUNNING)
    sup.stop()
    back = queue.get(job.id)
    assert back.state is JobState.QUEUED and back.attempts == 0  # no attempt used up, nothing refunded
    assert [k for k, _, _ in ledger_of(queue, "u1")] == ["grant", "spend"]


def ledger_of(queue, user: str):
    return [(r.kind, r.delta, r.job_id) for r in reversed(queue.quota.history(user))]
