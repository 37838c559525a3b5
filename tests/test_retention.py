"""Retention (bot.jobs.retention): old videos, covers, received images and finished job rows go; ledger and
audit rows stay; nothing a queued, running, succeeded-but-undelivered, parked or still-to-be-told job needs
is touched; the totals /metrics reads never go down."""

from __future__ import annotations

import os
from pathlib import Path

from bot.app import App
from bot.channels.local import LocalChannel
from bot.jobs.models import JobState
from bot.jobs.retention import Retention
from bot.settings import Settings
from tests._jobs_support import Clock, Store, make_store, spec
from tests.chat_harness import async_test, make_settings

DAY = 86400.0
W = "worker-1"


def _settings(tmp_path: Path, **retention: object) -> Settings:
    return make_settings(tmp_path, retention=dict(retention))


def _touch(path: Path, mtime: float, data: bytes = b"x" * 100) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))
    return str(path)


class World:
    """Jobs in every state, their files 40 days old unless said otherwise."""

    def __init__(self, tmp_path: Path) -> None:
        self.settings = _settings(tmp_path)
        self.clock = Clock(1_760_000_000.0)
        self.old = self.clock.t
        self.store: Store = make_store(self.settings.storage.db_path, self.clock)
        self.out = Path(self.settings.worker.output_dir)
        self.images = Path(self.settings.bot.data_dir) / "images"
        q = self.store.queue
        self.ids: dict[str, int] = {}

        def job(name: str, *, image: bool = False, video: bool = False, mtime: float | None = None,
                resolution: str = "384p") -> int:
            when = self.old if mtime is None else mtime
            img = _touch(self.images / f"{name}.png", when) if image else None
            job_id = q.submit(spec(user=f"u-{name}", message_id=f"m-{name}", image_path=img, resolution=resolution),
                              with_place=False).job.id
            self.ids[name] = job_id
            if video:
                claimed = q.claim(W, 60, resolutions=["384p"])
                assert claimed is not None and claimed.id == job_id
                q.complete(job_id, W, _touch(self.out / str(job_id) / "video.mp4", when),
                           _touch(self.out / str(job_id) / "cover.jpg", when), 12.5, "")
                os.utime(self.out / str(job_id), (when, when))  # the folder is as old as its files
            return job_id

        job("delivered", image=True, video=True)
        q.mark_delivered(self.ids["delivered"])
        job("undelivered", video=True)  # succeeded, not sent yet
        job("parked", video=True)
        assert q.defer_delivery(self.ids["parked"], "deferred: no context")
        job("told-failure", image=True)
        assert q.claim(W, 60) is not None
        q.fail(self.ids["told-failure"], W, "生成过程出错", retryable=False)
        q.mark_notified(self.ids["told-failure"])
        job("untold-failure")
        assert q.claim(W, 60) is not None
        q.fail(self.ids["untold-failure"], W, "显存或内存不足，生成失败", retryable=False)
        job("running", image=True)
        assert q.claim(W, 3600).id == self.ids["running"]
        _touch(self.out / str(self.ids["running"]) / "partial.tmp", self.old)
        job("queued", image=True, resolution="768p")  # stays queued (claims below take 384p only)
        self.clock.tick(35 * DAY)  # the jobs above are 35 days old now
        self.recent_mtime = self.clock.t
        job("recent", image=True, video=True, mtime=self.clock.t)
        q.mark_delivered(self.ids["recent"])
        self.stray_image = Path(_touch(self.images / "stray.png", self.old))
        self.notes = Path(_touch(Path(self.settings.bot.data_dir) / "notes.json", self.old))  # not media
        self.store.quota.add("wxid_admin", "u-queued", 2, reason="test")
        self.clock.tick(1.0)


def test_retention_removes_old_finished_data_and_keeps_what_jobs_need(tmp_path: Path) -> None:
    w = World(tmp_path)
    q, quota = w.store.queue, w.store.quota
    ledger_before = w.store.queue.db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0]
    audit_before = quota.audit_log(100)
    totals_before = q.job_totals()

    report = Retention(q, w.settings, w.clock).run()

    ids = w.ids
    # gone: the delivered job (row, video, cover, its image), the told failure (row, image), a stray image
    assert q.get(ids["delivered"]) is None and q.get(ids["told-failure"]) is None
    assert not (w.out / str(ids["delivered"])).exists()
    assert not (w.images / "delivered.png").exists() and not (w.images / "told-failure.png").exists()
    assert not w.stray_image.exists()
    assert report.jobs == 2 and report.files == 5 and report.dirs == 1
    # kept: everything a job still needs, however old
    assert q.get(ids["undelivered"]).state is JobState.SUCCEEDED
    assert (w.out / str(ids["undelivered"]) / "video.mp4").exists()
    assert (w.out / str(ids["undelivered"]) / "cover.jpg").exists()
    assert q.get(ids["parked"]).deferred_at is not None
    assert (w.out / str(ids["parked"]) / "video.mp4").exists()
    untold = q.get(ids["untold-failure"])
    assert untold is not None and untold.state is JobState.FAILED and not untold.notified
    assert (w.images / "running.png").exists() and (w.out / str(ids["running"]) / "partial.tmp").exists()
    assert (w.images / "queued.png").exists() and q.get(ids["queued"]).state is JobState.QUEUED
    assert report.kept_in_use == 7
    # kept: recent things, non-media files, ledger and audit rows
    assert q.get(ids["recent"]) is not None and (w.out / str(ids["recent"]) / "video.mp4").exists()
    assert (w.images / "recent.png").exists()
    assert w.notes.exists()
    assert w.store.queue.db.execute("SELECT COUNT(*) FROM ledger").fetchone()[0] == ledger_before
    assert quota.audit_log(100) == audit_before
    # the totals /metrics reads are the same after the rows went
    assert q.job_totals() == totals_before
    assert sum(t.jobs for t in totals_before if t.state == "delivered") == 2

    # a second pass finds nothing more; once delivered, the parked video goes on the next pass
    again = Retention(q, w.settings, w.clock).run()
    assert (again.jobs, again.files) == (0, 0)
    q.wake_deferred(q.get(ids["parked"]).chat_id)
    q.mark_delivered(ids["parked"])
    w.clock.tick(31 * DAY)
    Retention(q, w.settings, w.clock).run()
    assert not (w.out / str(ids["parked"])).exists() and q.get(ids["parked"]) is None
    delivered = [t for t in q.job_totals() if t.state == "delivered"]
    assert sum(t.jobs for t in delivered) == 3 and sum(t.seconds_sum for t in delivered) == 3 * 12.5


def test_keep_days_is_honoured(tmp_path: Path) -> None:
    w = World(tmp_path)
    settings = w.settings.model_copy(update={"retention": w.settings.retention.model_copy(update={"keep_days": 60})})
    report = Retention(w.store.queue, settings, w.clock).run()
    assert (report.jobs, report.files) == (0, 0)  # 35 days old is within 60
    assert w.stray_image.exists()


def test_seen_message_ids_are_pruned(tmp_path: Path) -> None:
    w = World(tmp_path)
    q = w.store.queue
    assert q.mark_seen("old-help")  # at "now"
    w.clock.tick(40 * DAY)
    report = Retention(q, w.settings, w.clock).run()
    assert report.seen >= 1 and q.seen_state("old-help") is None


@async_test
async def test_the_app_schedules_a_daily_run(tmp_path: Path) -> None:
    app = App(_settings(tmp_path, run_at="03:15"), LocalChannel(), run_worker=False)
    await app.start()
    try:
        assert app.scheduler is not None and app.retention is not None
        job = app.scheduler.get_job("retention")
        assert job is not None and "hour='3'" in str(job.trigger) and "minute='15'" in str(job.trigger)
    finally:
        await app.stop()
    off = App(_settings(tmp_path / "off", enabled=False), LocalChannel(), run_worker=False)
    await off.start()
    try:
        assert off.scheduler is not None and off.scheduler.get_job("retention") is None
    finally:
        await off.stop()
