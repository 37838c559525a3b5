"""The GPU worker process and its supervisor.

`run_worker` is the process main: it owns the generator (built once), claims jobs in fair order,
runs them with progress + cancel wired to the queue, and records the result. A crash or OOM there
only kills this process: `WorkerSupervisor` (in the bot process) notices, hands the dead worker's
jobs back to the queue (bounded attempts, else failed + refunded), and restarts it with backoff.

Lease: while a job runs, a heartbeat thread renews its lease every `worker.heartbeat_s` (for at most
`worker.max_job_s`), so a long denoising step never looks like a dead worker, while a SIGKILLed worker
stops renewing and its job is recovered.

Lifetime (see `bot.procs`): the worker dies with its bot (parent-death signal + a parent watch in the child),
and the supervisor records it in `<db>.worker.pid`, so a bot that starts after one was SIGKILLed stops a
worker that outlived it and reclaims its jobs at once: never two workers on one database.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from bot import procs
from bot.clips import merge_with_parent
from bot.jobs.models import Job
from bot.jobs.queue import JobQueue
from bot.jobs.settings import QueueSettings, WorkerSettings
from bot.store.db import open_db
from bot.store.health import record_generator_build
from bot.store.quota import QuotaBook
from bot.store.settings import QuotaSettings, StorageSettings
from generation.api import GenerationCancelled, GenerationRequest, InvalidRequest, Progress, VideoGenerator
from generation.content_check import ContentBlocked
from generation.labels import new_produce_id
from generation.logs import setup_child_logging

log = logging.getLogger(__name__)

Clock = Callable[[], float]

OOM_ERROR = "显存或内存不足，生成失败"
CRASH_ERROR = "生成过程出错"


class WorkerConfig(Protocol):
    """What the worker needs from the root `bot.settings.Settings` (which satisfies it)."""

    worker: WorkerSettings
    queue: QueueSettings
    quota: QuotaSettings
    storage: StorageSettings
    generation: Any
    labels: Any  # generation.labels.LabelSettings
    content_check: Any  # generation.content_check.ContentCheckSettings


@dataclass
class WorkerSections:
    """The sections the worker reads, for use without the root settings object (tests, tools)."""

    worker: WorkerSettings
    queue: QueueSettings
    quota: QuotaSettings
    storage: StorageSettings
    generation: Any = None
    labels: Any = None  # None: default label settings
    content_check: Any = None  # None: default content check settings


def open_queue(settings: WorkerConfig, clock: Clock = time.time) -> JobQueue:
    db = open_db(settings.storage.db_path, busy_timeout_ms=settings.storage.busy_timeout_ms)
    return JobQueue(db, QuotaBook(db, settings.quota, clock), settings.queue, clock)


def build_worker_generator(settings: WorkerConfig) -> VideoGenerator:
    generator = _build_generator(settings)
    # every video: the content check on its frames, the AI label in the picture and the AIGC metadata
    from generation.finisher import VideoFinisher

    finisher = VideoFinisher.from_settings(getattr(settings, "labels", None), getattr(settings, "content_check", None))
    finisher.check_ready()  # no CJK font: fail at start, never draw boxes
    finisher.warm()  # the NSFW model now, not in the first user's video
    generator.finisher = finisher  # type: ignore[attr-defined]
    return generator


def _build_generator(settings: WorkerConfig) -> VideoGenerator:
    if settings.worker.generator == "synthetic":
        from generation.synthetic import SyntheticGenerator

        return SyntheticGenerator.from_settings(settings.worker)
    from generation.pipeline import build_generator

    if settings.generation is None:
        from generation.settings import GenerationSettings

        return build_generator(GenerationSettings())
    return build_generator(settings.generation)


def _is_oom(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"


def build_request(job: Job) -> GenerationRequest:
    """The generation request of a job: its prompt, size, seed, image and negative prompt (a job without one,
    e.g. of an older version, gets the generator's own default)."""
    return GenerationRequest(prompt=job.final_prompt or job.prompt, resolution=job.resolution,  # type: ignore[arg-type]
                             duration_s=job.duration_s, seed=job.seed, image_path=job.image_path,
                             negative_prompt=job.negative_prompt or None, produce_id=new_produce_id(job.id))


class _Heartbeat:
    """Renews one job's lease in the background; notes a lost lease."""

    def __init__(self, queue: JobQueue, job: Job, worker_id: str, settings: WorkerSettings) -> None:
        self.queue, self.job, self.worker_id, self.settings = queue, job, worker_id, settings
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(5)

    def _run(self) -> None:
        started = time.monotonic()
        while not self._done.wait(self.settings.heartbeat_s):
            if time.monotonic() - started > self.settings.max_job_s:
                log.error("job %s exceeded max_job_s; lease no longer renewed", self.job.id,
                          extra={"job_id": self.job.id, "worker_id": self.worker_id})
                return
            try:
                self.queue.renew(self.job.id, self.worker_id, self.settings.lease_s)
                if not self.queue.holds_lease(self.job.id, self.worker_id):
                    self.lost = True
                    log.warning("lease lost job=%s worker=%s", self.job.id, self.worker_id,
                                extra={"job_id": self.job.id, "worker_id": self.worker_id})
                    return
            except Exception:  # keep trying: a busy database is not a lost lease
                log.exception("lease renewal failed job=%s", self.job.id, extra={"job_id": self.job.id})


class JobRunner:
    """Claims and runs jobs against one generator. Used inside the worker process (and directly in tests)."""

    def __init__(self, queue: JobQueue, generator: VideoGenerator, settings: WorkerSettings, worker_id: str,
                 *, stop: threading.Event | Any | None = None) -> None:
        self.queue = queue
        self.generator = generator
        self.settings = settings
        self.worker_id = worker_id
        self.stop = stop

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.is_set()

    def run_once(self) -> Job | None:
        """Claim one job and run it to an end state; None when the queue is empty."""
        job = self.queue.claim(self.worker_id, self.settings.lease_s)
        if job is None:
            return None
        self.run_job(job)
        return self.queue.get(job.id)

    def run_job(self, job: Job) -> None:
        ids = {"job_id": job.id, "user_id": job.user_id, "worker_id": self.worker_id}
        out_dir = Path(self.settings.output_dir) / str(job.id)
        request = build_request(job)
        last_report = [0.0]

        def on_progress(p: Progress) -> None:
            now = time.monotonic()
            if now - last_report[0] >= self.settings.progress_every_s or p.fraction >= 1.0:
                last_report[0] = now
                self.queue.report_progress(job.id, p.fraction, p.message)

        with _Heartbeat(self.queue, job, self.worker_id, self.settings) as beat:

            def should_cancel() -> bool:
                return beat.lost or self._stopping() or self.queue.cancel_requested(job.id)

            log.info("job %s start (attempt %d) %s %ss seed=%s", job.id, job.attempts, job.resolution,
                     job.duration_s, job.seed, extra=ids)
            try:
                result = self.generator.generate(request, out_dir, progress=on_progress, should_cancel=should_cancel)
            except GenerationCancelled:
                if beat.lost:
                    log.warning("job %s abandoned: lease lost", job.id, extra=ids)
                elif self.queue.cancel_requested(job.id):
                    self.queue.finish_cancelled(job.id, self.worker_id)
                else:  # worker shutting down: hand it back without using up an attempt
                    self.queue.release(job.id, self.worker_id)
                return
            except ContentBlocked as exc:  # nothing was written; failed once, refunded, admins alerted on delivery
                log.error("job %s blocked by the output content check (%s): scores %s", job.id, exc.verdict.reason,
                          exc.verdict.describe(), extra={**ids, "chat_id": job.chat_id})
                self.queue.fail(job.id, self.worker_id, str(exc), retryable=False)
                return
            except InvalidRequest as exc:
                self.queue.fail(job.id, self.worker_id, str(exc), retryable=False)
                return
            except Exception as exc:
                log.exception("job %s generator error", job.id, extra=ids)
                self.queue.fail(job.id, self.worker_id, OOM_ERROR if _is_oom(exc) else CRASH_ERROR, retryable=True)
                return
        video_path, label = Path(result.video_path), result.label
        if job.merge and job.parent_id:  # `/续写 #N 合并`: the parent's clip, then this one, as one MP4
            video_path, label = merge_with_parent(self.queue, job, video_path, label)
        self.queue.complete(job.id, self.worker_id, str(video_path),
                            None if result.cover_path is None else str(result.cover_path), result.seconds,
                            label)


def _configure_child_logging() -> None:
    setup_child_logging(f"worker {os.getpid()}")


class WorkerSignals:
    """The events between the bot and its worker process: ``stop`` (the bot asks the worker to end), ``work``
    (a job was queued: claim now rather than at the next poll) and ``ended`` (a job reached an end state: the
    bot's delivery loop looks now rather than at its next poll). Behaves as the stop event
    (`is_set`/`set`/`wait`), so a worker target that only needs to stop can take it as one."""

    def __init__(self, stop: Any, work: Any, ended: Any) -> None:
        self.stop, self.work, self.ended = stop, work, ended

    def is_set(self) -> bool:
        return bool(self.stop.is_set())

    def set(self) -> None:
        self.stop.set()
        self.work.set()  # an idle worker waits on `work`: wake it to see the stop

    def wait(self, timeout: float | None = None) -> bool:
        return bool(self.stop.wait(timeout))


def serve_jobs(queue: JobQueue, generator: VideoGenerator, settings: WorkerSettings, worker_id: str,
               stop: Any) -> None:
    """The worker's claim loop, until `stop` is set: claim in fair order, run, claim again; idle, wait for
    `stop.work` (`WorkerSignals`) or `poll_s`; after each job, set `stop.ended`."""
    runner = JobRunner(queue, generator, settings, worker_id, stop=stop)
    work, ended = getattr(stop, "work", None), getattr(stop, "ended", None)
    while not stop.is_set():
        if work is not None:
            work.clear()  # before the claim: a job queued after it sets it again, and is not missed
        try:
            job = runner.run_once()
        except Exception:  # a database hiccup must not end the worker; back off and retry
            log.exception("worker %s loop error", worker_id, extra={"worker_id": worker_id})
            job = None
        if job is not None and ended is not None:
            ended.set()
        if job is None:
            (work or stop).wait(settings.poll_s)


def run_worker(settings: WorkerConfig, worker_id: str, stop: Any) -> None:
    """Process main of the GPU worker. `stop` is a (multiprocessing) Event, or `WorkerSignals`; returns when
    it is set."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the bot stops us in order
    _configure_child_logging()
    queue = open_queue(settings)
    generator = record_generator_build(queue.db, worker_id, lambda: build_worker_generator(settings))
    warm_up = getattr(generator, "warm_up", None)
    if callable(warm_up):
        warm_up()  # compiles before the first claim (a job's lease would otherwise run during compilation)
    log.info("worker %s ready (pid %d, generator %s)", worker_id, os.getpid(), generator.name,
             extra={"worker_id": worker_id})
    prewarm = getattr(generator, "prewarm", None)
    if callable(prewarm) and not stop.is_set():
        prewarm()  # the default video's CUDA graphs, before the first claim: the first job replays them
    serve_jobs(queue, generator, settings.worker, worker_id, stop)
    log.info("worker %s stopped", worker_id, extra={"worker_id": worker_id})


class WorkerSupervisor:
    """Runs `run_worker` in a separate (spawned) process, restarts it with backoff when it dies, and
    sweeps expired leases every `worker.recover_every_s`.

    One supervisor thread spawns, watches and ends the child: the child's parent-death signal (Linux) fires
    when the thread that spawned it ends, so that thread must outlive the child. `start` first stops a worker
    that a previous bot of the same database left running (`<db>.worker.pid`, see `bot.procs.take_over`)."""

    def __init__(self, settings: WorkerConfig, *, worker_id: str = "gpu-worker", clock: Clock = time.time,
                 target: Callable[[Any, str, Any], None] = run_worker) -> None:
        self.settings = settings
        self.worker_id = worker_id
        self.clock = clock
        self.target = target
        self.restarts = 0
        self._ctx = mp.get_context("spawn")
        self._proc: Any = None
        self._child_stop: Any = None
        self._work = self._ctx.Event()  # shared by every child this supervisor spawns (see `WorkerSignals`)
        self._ended = self._ctx.Event()
        self.on_job_ended: Callable[[], None] | None = None  # called (from a thread) when the worker ends a job
        self._ended_thread: threading.Thread | None = None
        self._child_id = ""
        self._started_at = 0.0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._queue: JobQueue | None = None
        self._pid_file = procs.pid_file_for(settings.storage.db_path)

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def child_id(self) -> str:
        return self._child_id

    @property
    def pid_file(self) -> Path | None:
        """`<db>.worker.pid`: the worker process of this database (None for an in-memory database)."""
        return self._pid_file

    @property
    def queue(self) -> JobQueue | None:
        """The supervisor's own job book (opened by `start`), for status reads."""
        return self._queue

    def _open_queue(self) -> JobQueue:
        """The supervisor's job book (a subclass may wrap it to reclaim more lease owners per process)."""
        return open_queue(self.settings, self.clock)

    def start(self) -> None:
        """Take over from a stale worker, reclaim expired leases, then spawn the worker (from the supervisor
        thread; returns once it is spawned)."""
        if self._thread is not None:
            return
        self._queue = self._open_queue()
        self._take_over_stale_worker()
        recovered = self._queue.recover_expired()
        if recovered:
            log.warning("start-up: recovered %d jobs with expired leases", len(recovered))
        self._stopping.clear()
        spawned: list[BaseException | None] = []
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready, spawned), name="worker-supervisor",
                                        daemon=True)
        self._thread.start()
        self._ended_thread = threading.Thread(target=self._watch_ended, name="worker-ended", daemon=True)
        self._ended_thread.start()
        ready.wait(60)
        if spawned and spawned[0] is not None:
            self._thread.join(5)
            self._thread = None
            raise spawned[0]

    def notify_work(self) -> None:
        """A job was queued: the idle worker claims it now (safe from any thread)."""
        self._work.set()

    def _watch_ended(self) -> None:
        """Supervisor side of `WorkerSignals.ended`: tell `on_job_ended` (the delivery loop) at once."""
        while not self._stopping.is_set():
            if not self._ended.wait(0.5):
                continue
            self._ended.clear()
            callback = self.on_job_ended
            if callback is not None:
                try:
                    callback()
                except Exception:  # a wake-up is an optimisation: the delivery loop polls anyway
                    log.debug("on_job_ended callback failed", exc_info=True)

    def _take_over_stale_worker(self) -> None:
        """A worker left by a previous bot of this database (SIGKILLed bot, no parent-death signal) is stopped
        and its running jobs go back to the queue now, not after their lease (`worker.lease_s`) runs out."""
        assert self._queue is not None
        if self._pid_file is None:
            return
        try:
            owner = procs.take_over(self._pid_file)
        except Exception:  # never keep the bot from starting; the lease sweep still recovers the jobs
            log.exception("could not check for a stale worker (%s)", self._pid_file)
            return
        if owner is None:
            return
        recovered = self._queue.recover_expired(owner=owner)
        log.warning("reclaimed %d running job(s) of the previous worker %s", len(recovered), owner,
                    extra={"worker_id": owner, "job_ids": [j.id for j in recovered]})

    def _run(self, ready: threading.Event, spawned: list[BaseException | None]) -> None:
        """Supervisor thread main: spawn the worker, watch it, and end it when the supervisor stops."""
        try:
            self._spawn()
        except BaseException as exc:
            spawned.append(exc)
            ready.set()
            return
        spawned.append(None)
        ready.set()
        try:
            self._monitor()
        except Exception:  # the child must still be ended by this thread (below)
            log.exception("worker supervisor failed", extra={"worker_id": self._child_id})
        finally:
            self._end_child()

    def _spawn(self) -> None:
        self._child_id = f"{self.worker_id}-{os.getpid()}-{self.restarts}-{uuid.uuid4().hex[:6]}"
        self._child_stop = WorkerSignals(self._ctx.Event(), self._work, self._ended)
        self._proc = self._ctx.Process(
            target=procs.run_child, args=(self.target, os.getpid(), self.settings, self._child_id, self._child_stop),
            name=self._child_id, daemon=True)
        self._proc.start()
        self._started_at = time.monotonic()
        self._record_child()
        log.info("worker process %s started (pid %s)", self._child_id, self._proc.pid,
                 extra={"worker_id": self._child_id, "pid": self._proc.pid})

    def _record_child(self) -> None:
        """Write `<db>.worker.pid` for the child just spawned (what a later bot needs to stop it)."""
        if self._pid_file is None:
            return
        try:
            procs.write_record(self._pid_file, procs.WorkerRecord.of_process(
                self._proc.pid, self._child_id, self.settings.storage.db_path))
        except OSError:
            log.exception("could not write the worker pid file %s", self._pid_file,
                          extra={"worker_id": self._child_id})

    def _monitor(self) -> None:
        assert self._queue is not None
        ws = self.settings.worker
        backoff = ws.restart_backoff_s
        next_sweep = time.monotonic() + ws.recover_every_s
        while not self._stopping.wait(0.2):
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + ws.recover_every_s
                try:
                    self._queue.recover_expired()
                except Exception:
                    log.exception("lease sweep failed")
            if self._proc is not None and not self._proc.is_alive():
                dead, code = self._child_id, self._proc.exitcode
                log.error("worker process %s died (exit code %s); restarting in %.1fs", dead, code, backoff,
                          extra={"worker_id": dead})
                try:
                    self._queue.recover_expired(owner=dead)
                except Exception:
                    log.exception("recovering jobs of %s failed", dead)
                if time.monotonic() - self._started_at > 60:
                    backoff = ws.restart_backoff_s  # it had been running fine: restart promptly
                if self._stopping.wait(backoff):
                    return
                backoff = min(ws.restart_backoff_max_s, max(backoff * 2, 0.1))
                self.restarts += 1
                self._spawn()

    def _end_child(self) -> None:
        """Ask the child to stop (it hands a running job back), kill it after `worker.stop_timeout_s`."""
        proc = self._proc
        if proc is None or not proc.is_alive():
            return
        self._child_stop.set()
        proc.join(self.settings.worker.stop_timeout_s)
        if proc.is_alive():
            log.warning("worker %s did not stop in time; killing it", self._child_id,
                        extra={"worker_id": self._child_id})
            proc.kill()
            proc.join(5)

    def stop(self) -> None:
        self._stopping.set()
        if self._ended_thread is not None:
            self._ended_thread.join(2)
            self._ended_thread = None
        thread = self._thread
        if thread is not None:
            thread.join(self.settings.worker.stop_timeout_s + 15)
            self._thread = None
        proc = self._proc
        if proc is not None and proc.is_alive():  # the supervisor thread is stuck: end the child from here
            self._end_child()
        if self._queue is not None and proc is not None:
            self._queue.recover_expired(owner=self._child_id)  # jobs of a killed worker go back now
        if self._pid_file is not None and self._child_id and (proc is None or not proc.is_alive()):
            procs.remove_record(self._pid_file, self._child_id)  # a clean stop leaves nothing behind
        self._proc = None
