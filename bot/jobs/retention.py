"""Retention: what the bot removes once a day so that months of running do not fill the disk.

Removed when older than `retention.keep_days` (default 30):
* media files under `worker.output_dir` (videos, covers: `<job id>/…`) and `bot.data_dir` (received images),
  judged by modification time; only media-like files (`MEDIA_SUFFIXES`) are ever deleted, and empty job
  folders after them;
* job rows that are over for good: delivered, or failed/cancelled with the user told
  (`JobQueue.prune_finished`, which adds them to the totals /metrics reports, so counters never go down);
* handled-message ids (`JobQueue.prune_seen`, also pruned every 6 h after `queue.seen_retention_s`).

Never removed: ledger and audit rows (kept forever), and anything a job still needs — a queued or running
job's image, a succeeded job's video and cover until it is delivered, a job parked until its user writes
again (deferred), a failed/cancelled job whose note is still due (`JobQueue.needed_files`). Nothing outside
the two folders is touched, symbolic links are not followed.

`App.start` schedules `Retention.run` daily at `retention.run_at` (quota time zone) on its scheduler, which
runs it in a worker thread (file walks never block the event loop).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.jobs.queue import JobQueue

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

DAY_S = 24 * 3600.0
JOB_ID = "retention"
MEDIA_SUFFIXES = frozenset({".mp4", ".webm", ".mov", ".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tmp",
                            ".part"})


@dataclass
class RetentionReport:
    files: int = 0  # media files deleted
    bytes: int = 0
    dirs: int = 0  # empty job folders removed
    kept_in_use: int = 0  # old files kept because a pending/undelivered/parked job needs them
    jobs: int = 0  # finished job rows removed
    seen: int = 0  # handled-message ids removed


class Retention:
    def __init__(self, queue: JobQueue, settings: Settings, clock: Callable[[], float] = time.time) -> None:
        self.queue = queue
        self.settings = settings
        self.clock = clock

    @property
    def roots(self) -> list[Path]:
        return [Path(self.settings.worker.output_dir), Path(self.settings.bot.data_dir)]

    def run(self, now: float | None = None) -> RetentionReport:
        """One pass; safe to run at any time and from any thread (each step is its own transaction)."""
        now = self.clock() if now is None else now
        keep_s = self.settings.retention.keep_days * DAY_S
        cutoff = now - keep_s
        report = RetentionReport()
        job_ids, paths = self.queue.needed_files()  # read before any file goes
        output_dir = Path(self.settings.worker.output_dir).resolve()
        needed_paths = {_resolved(p) for p in paths}
        needed_dirs = {output_dir / str(i) for i in job_ids}
        for root in self.roots:
            self._sweep(root, cutoff, needed_paths, needed_dirs, report)
        report.jobs = self.queue.prune_finished(cutoff)
        report.seen = self.queue.prune_seen(min(keep_s, self.settings.queue.seen_retention_s))
        log.info("retention (keep %d days): %d files (%.1f MB) and %d folders removed, %d old files kept for "
                 "pending jobs, %d job rows and %d message ids removed", self.settings.retention.keep_days,
                 report.files, report.bytes / 1e6, report.dirs, report.kept_in_use, report.jobs, report.seen)
        return report

    def _sweep(self, root: Path, cutoff: float, needed_paths: set[Path], needed_dirs: set[Path],
               report: RetentionReport) -> None:
        if not root.is_dir():
            return
        root = root.resolve()
        for dirpath, _dirnames, filenames in os.walk(root, topdown=False, followlinks=False):
            here = Path(dirpath)
            protected_dir = any(here == d or d in here.parents for d in needed_dirs)
            try:
                dir_mtime = here.stat().st_mtime  # before its files go (removing them touches the folder)
            except OSError:
                continue
            for name in filenames:
                path = here / name
                if path.suffix.lower() not in MEDIA_SUFFIXES or path.is_symlink():
                    continue
                try:
                    stat = path.stat()
                except OSError:
                    continue
                if stat.st_mtime >= cutoff:
                    continue
                if protected_dir or path in needed_paths:
                    report.kept_in_use += 1
                    continue
                try:
                    path.unlink()
                except OSError as exc:
                    log.warning("retention: could not remove %s: %s", path, exc)
                    continue
                report.files += 1
                report.bytes += stat.st_size
            if here != root and not protected_dir and here.parent == root and _is_job_dir(here):
                try:
                    if dir_mtime < cutoff and not any(here.iterdir()):
                        here.rmdir()
                        report.dirs += 1
                except OSError:
                    pass

    def schedule(self, scheduler: Any) -> Any:
        """Add the daily run to the App's APScheduler (replacing an earlier one); None when disabled."""
        section = self.settings.retention
        if not section.enabled:
            return None
        hour, minute = (int(x) for x in section.run_at.split(":"))
        return scheduler.add_job(self._scheduled, "cron", hour=hour, minute=minute, id=JOB_ID,
                                 replace_existing=True, coalesce=True, misfire_grace_time=6 * 3600)

    def _scheduled(self) -> None:
        try:
            self.run()
        except Exception:  # a failed pass is retried tomorrow; it must not kill the scheduler
            log.exception("retention pass failed")


def _resolved(path: str) -> Path:
    try:
        return Path(path).resolve()
    except OSError:
        return Path(path)


def _is_job_dir(path: Path) -> bool:
    """`output_dir/<job id>` (a worker's output folder): only these are removed once empty."""
    return path.name.isdigit()
