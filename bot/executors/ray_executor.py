"""Ray executor: generation actors on a Ray cluster, driven from the bot's host.

Three parts:

* `RayDispatcher` (runs on the bot's host, inside the Ray driver): one slot per actor (one actor per GPU,
  `num_gpus=1` by default), created from the `ActorSpec`s. Each tick it claims the next job in the
  queue's fair order for every idle actor (only jobs of the resolutions that actor serves), sends it to
  the actor, renews the lease, polls progress into the job row, relays cancel requests, writes the MP4
  bytes that come back under `worker.output_dir/<job id>/`, and records the end state with the same
  queue calls as the local worker (`complete` / `fail` / `finish_cancelled` / `release`).
* `run_ray_dispatcher`: the process main around it. Ray may end a driver process whose cluster went away,
  so the driver is never the bot process: `RayExecutor` runs this main under the same `WorkerSupervisor`
  as the local worker (restarted with backoff if it dies). It waits for an unreachable cluster, and when
  the cluster is lost it hands the running jobs back to the queue (no attempt used) and exits to start over.
* `RayExecutor`: the bot-side handle: starts/stops that process and reads the pool status it publishes.
  If the dispatcher process itself dies, its supervisor hands its jobs back at once (leases are held as
  `<process id>/<actor>#<n>`): as a failed attempt while the cluster answers, without using one when it
  went down with the cluster.

Faults: a dead actor (killed, OOM, lost node) fails its job as retryable, so another actor takes it if
attempts are left (the queue refunds otherwise; the charge is never repeated); the slot is re-created with
backoff, and Ray starts it as soon as a node with the resources is there again.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.clips import merge_with_parent
from bot.executors.base import PoolView, pool_notice
from bot.executors.ray_actor import GenerationActor
from bot.executors.settings import ActorSpec, ExecutorSettings
from bot.executors.status import ActorState, ActorStatus, ClusterState, PoolStore
from bot.jobs.models import Job
from bot.jobs.queue import JobQueue
from bot.jobs.settings import WorkerSettings
from bot.worker import CRASH_ERROR, OOM_ERROR, WorkerConfig, WorkerSupervisor, open_queue
from generation.logs import setup_child_logging
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)

EXIT_CLUSTER_LOST = 75
IMAGE_LOST_ERROR = "输入图片已丢失，无法生成，请重新发送图片"
MSG_CONNECTING = "正在连接生成集群"
MSG_UNREACHABLE = "生成集群暂时无法连接（{address}），任务会在队列中等待，恢复后自动开始"
MSG_LOST = "生成集群连接中断（{address}），正在重连；任务已放回队列，恢复后自动继续"


class ClusterLost(Exception):
    """The Ray cluster (its GCS) is gone: this driver must start over."""


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"Ray address must be host:port, got {address!r}")
    return host.strip("[]"), int(port)


def tcp_reachable(address: str, timeout_s: float) -> bool:
    """Cheap check before (or instead of) Ray calls that would block for a long time on a dead GCS."""
    try:
        host, port = split_address(address)
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")


def short_error(exc: BaseException | str) -> str:
    """One line for /pool: the root cause at the end of a Ray traceback (e.g. `CheckpointError: checkpoint
    folder missing: /models/x`) rather than Ray's generic header."""
    text = _ANSI.sub("", str(exc))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    causes = [line for line in lines[1:] if _EXC_LINE.match(line)]
    line = causes[-1] if causes else lines[0]
    name, sep, rest = line.partition(": ")
    if sep and "." in name:  # generation.loading.CheckpointError -> CheckpointError
        line = f"{name.rsplit('.', 1)[-1]}: {rest}"
    return line[:200]


def _is_oom(exc: BaseException) -> bool:
    return "OutOfMemory" in type(exc).__name__ or "OutOfMemory" in str(exc)[:2000]


@dataclass
class Slot:
    """One actor position of the pool (its actor is re-created under the same name after a failure)."""

    name: str
    spec: ActorSpec
    dispatcher_id: str
    state: ActorState = "dead"
    incarnation: int = 0
    handle: Any = None
    ready_ref: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    serves: list[str] = field(default_factory=list)
    job: Job | None = None
    run_ref: Any = None
    status_ref: Any = None
    ping_ref: Any = None
    ping_sent: float = 0.0
    job_started: float = 0.0
    job_started_wall: float | None = None
    last_renew: float = 0.0
    next_poll: float = 0.0
    next_ping: float = 0.0
    cancel_sent: bool = False
    lease_lost: bool = False
    jobs_done: int = 0
    busy_s: float = 0.0
    failures: int = 0
    retry_at: float = 0.0
    error: str = ""

    @property
    def worker_id(self) -> str:
        return f"{self.dispatcher_id}/{self.name}#{self.incarnation}"

    def status(self) -> ActorStatus:
        return ActorStatus(
            name=self.name, incarnation=self.incarnation, state=self.state, node=str(self.info.get("node", "")),
            gpu=str(self.info.get("gpu", "")), model=str(self.info.get("model", self.spec.model_name or "")),
            variants=tuple(self.serves), job_id=None if self.job is None else self.job.id,
            job_started_at=self.job_started_wall if self.job is not None else None, jobs_done=self.jobs_done,
            busy_s=self.busy_s, error=self.error)


class RayDispatcher:
    """Hands claimed jobs to idle actors and records what comes back. Call `tick()` in a loop (or `run`)."""

    def __init__(self, queue: JobQueue, store: PoolStore | None, ex: ExecutorSettings, worker: WorkerSettings,
                 generation: GenerationSettings | None, *, dispatcher_id: str, gcs_address: str | None = None,
                 monotonic: Callable[[], float] = time.monotonic, labels: Any = None,
                 content_check: Any = None) -> None:
        import ray

        self.ray = ray
        self.queue = queue
        self.store = store
        self.ex = ex
        self.worker = worker
        self.generation = generation
        # the operator's `labels` / `content_check` sections, handed to every actor (its finisher)
        self.finish_sections = {
            "labels": None if labels is None else labels.model_dump(mode="json"),
            "content_check": None if content_check is None else content_check.model_dump(mode="json"),
        }
        self.dispatcher_id = dispatcher_id
        self.monotonic = monotonic
        self.gcs_address = gcs_address or _current_gcs_address(ray)
        self.slots = [Slot(f"{spec.name}-{i}", spec, dispatcher_id) for spec in ex.actors for i in range(spec.count)]
        self.assignments: list[tuple[int, str]] = []  # (job id, actor name) in dispatch order
        self._actor_cls = ray.remote(GenerationActor)
        self._next_publish = 0.0
        self._next_health = monotonic() + ex.health_every_s
        self._gcs_misses = 0

    # ------------------------------------------------------------------ loop
    def run(self, stop: Any) -> None:
        while not stop.is_set():
            self.tick()
            stop.wait(self.ex.tick_s)

    def tick(self) -> None:
        now = self.monotonic()
        for slot in self.slots:
            try:
                self._tend(slot, now)
            except ClusterLost:
                raise
            except Exception:  # a database hiccup must not end the dispatcher
                log.exception("dispatcher error on actor %s", slot.name, extra={"worker_id": slot.worker_id})
        if now >= self._next_health:
            self._next_health = now + self.ex.health_every_s
            self._check_gcs()
        if now >= self._next_publish:
            self.publish()

    def publish(self) -> None:
        self._next_publish = self.monotonic() + self.ex.status_every_s
        if self.store is not None:
            self.store.put_actors([s.status() for s in self.slots])

    # ------------------------------------------------------------------ actor life
    def _create(self, slot: Slot, now: float) -> None:
        spec = slot.spec
        options: dict[str, Any] = dict(num_cpus=spec.num_cpus, num_gpus=spec.num_gpus, max_restarts=0,
                                       max_concurrency=self.ex.actor_max_concurrency)
        if spec.resources:
            options["resources"] = dict(spec.resources)
        if spec.memory_mb is not None:
            options["memory"] = spec.memory_mb * 1024 * 1024
        if spec.accelerator_type:
            options["accelerator_type"] = spec.accelerator_type
        slot.incarnation += 1
        generation = None if self.generation is None else self.generation.model_dump(mode="json")
        slot.handle = self._actor_cls.options(**options).remote(
            slot.name, spec.model_dump(mode="json"), self.worker.model_dump(mode="json"), generation,
            **self.finish_sections)
        slot.ready_ref = slot.handle.describe.remote()
        slot.state, slot.info, slot.serves = "starting", {}, []
        log.info("actor %s (incarnation %d) requested: %s", slot.name, slot.incarnation, options,
                 extra={"worker_id": slot.worker_id})

    def _actor_failed(self, slot: Slot, exc: BaseException | str, now: float) -> None:
        slot.error = short_error(exc)
        handle = slot.handle
        slot.handle = slot.ready_ref = slot.ping_ref = slot.status_ref = None
        slot.state = "dead"
        slot.failures += 1
        delay = min(self.ex.actor_restart_backoff_max_s, self.ex.actor_restart_backoff_s * 2 ** (slot.failures - 1))
        slot.retry_at = now + delay
        log.error("actor %s failed (%s); re-created in %.1fs", slot.name, slot.error, delay,
                  extra={"worker_id": slot.worker_id})
        if not self.cluster_alive():  # checked first: no Ray call may wait on a dead GCS
            raise ClusterLost(f"actor {slot.name} failed and the cluster does not answer")
        if handle is not None:  # a silent (hung) actor must give its GPU back before it is re-created
            try:
                self.ray.kill(handle, no_restart=True)
            except Exception as exc:  # already gone: nothing to give back
                log.debug("kill of failed actor %s: %s", slot.name, exc)

    def _serves(self, info: dict[str, Any]) -> list[str]:
        model = info.get("model")
        return [v for v in info.get("variants", []) if self.ex.route_model.get(v) in (None, model)]

    # ------------------------------------------------------------------ per tick
    def _tend(self, slot: Slot, now: float) -> None:
        if slot.state == "dead":
            if now >= slot.retry_at:
                self._create(slot, now)
            return
        if slot.state == "starting":
            ready, _ = self.ray.wait([slot.ready_ref], timeout=0)
            if not ready:
                return
            try:
                slot.info = self.ray.get(slot.ready_ref)
            except Exception as exc:
                self._actor_failed(slot, exc, now)
                return
            slot.serves = self._serves(slot.info)
            slot.state, slot.failures, slot.error, slot.next_ping = "idle", 0, "", now + self.ex.health_every_s
            log.info("actor %s ready on %s gpu=%s model=%s serves %s", slot.name, slot.info.get("node"),
                     slot.info.get("gpu"), slot.info.get("model"), slot.serves, extra={"worker_id": slot.worker_id})
            self.publish()
        if slot.state == "idle":
            if self._healthy(slot, now):
                self._dispatch(slot, now)
            return
        if slot.state == "busy":
            self._follow(slot, now)

    def _healthy(self, slot: Slot, now: float) -> bool:
        """Idle actors are pinged every `health_every_s`; a dead or silent one is replaced."""
        if slot.ping_ref is None:
            if now >= slot.next_ping:
                slot.ping_ref, slot.ping_sent = slot.handle.ping.remote(), now
            return True
        ready, _ = self.ray.wait([slot.ping_ref], timeout=0)
        if ready:
            try:
                self.ray.get(slot.ping_ref)
            except Exception as exc:
                self._actor_failed(slot, exc, now)
                return False
            slot.ping_ref, slot.next_ping = None, now + self.ex.health_every_s
            return True
        if now - slot.ping_sent > self.ex.call_timeout_s:
            self._actor_failed(slot, "actor did not answer a ping", now)
            return False
        return True

    def _dispatch(self, slot: Slot, now: float) -> None:
        if not slot.serves or slot.ping_ref is not None:
            return
        job = self.queue.claim(slot.worker_id, self.worker.lease_s, resolutions=slot.serves)
        if job is None:
            return
        ids = {"job_id": job.id, "user_id": job.user_id, "worker_id": slot.worker_id}
        image: bytes | None = None
        if job.image_path:
            try:
                image = Path(job.image_path).read_bytes()
            except OSError:
                self.queue.fail(job.id, slot.worker_id, IMAGE_LOST_ERROR, retryable=False)
                return
        task = {"job_id": job.id, "prompt": job.final_prompt or job.prompt, "resolution": job.resolution,
                "duration_s": job.duration_s, "seed": job.seed, "image": image,
                "negative_prompt": job.negative_prompt or None,
                "image_suffix": Path(job.image_path).suffix if job.image_path else None}
        slot.job, slot.run_ref, slot.state = job, slot.handle.run.remote(task), "busy"
        slot.job_started, slot.job_started_wall, slot.last_renew = now, job.started_at, now
        slot.next_poll, slot.cancel_sent, slot.lease_lost, slot.status_ref = now, False, False, None
        self.assignments.append((job.id, slot.name))
        log.info("job %s -> actor %s (attempt %d/%d) %s %ss", job.id, slot.name, job.attempts, job.max_attempts,
                 job.resolution, job.duration_s, extra=ids)

    def _follow(self, slot: Slot, now: float) -> None:
        job = slot.job
        assert job is not None
        ready, _ = self.ray.wait([slot.run_ref], timeout=0)
        if ready:
            try:
                result = self.ray.get(slot.run_ref)
            except Exception as exc:
                self._job_lost_with_actor(slot, exc, now)
                return
            self._finish(slot, result)
            return
        if now - slot.last_renew >= self.worker.heartbeat_s and not slot.lease_lost:
            slot.last_renew = now
            if now - slot.job_started <= self.worker.max_job_s:
                self.queue.renew(job.id, slot.worker_id, self.worker.lease_s)
                if not self.queue.holds_lease(job.id, slot.worker_id):
                    slot.lease_lost = True
                    log.warning("lease lost job=%s actor=%s", job.id, slot.name,
                                extra={"job_id": job.id, "worker_id": slot.worker_id})
                    self._send_cancel(slot)
        if now >= slot.next_poll:
            slot.next_poll = now + min(self.ex.status_every_s, max(self.worker.progress_every_s, 0.1))
            if not slot.cancel_sent and self.queue.cancel_requested(job.id):
                self._send_cancel(slot)
            if slot.status_ref is None:
                slot.status_ref = slot.handle.status.remote()
        if slot.status_ref is not None:
            done, _ = self.ray.wait([slot.status_ref], timeout=0)
            if done:
                try:
                    st = self.ray.get(slot.status_ref)
                except Exception:  # the run ref will tell what happened to the actor
                    st = None
                slot.status_ref = None
                if st and st.get("job_id") == job.id:
                    self.queue.report_progress(job.id, float(st["fraction"]), str(st["text"]))

    def _send_cancel(self, slot: Slot) -> None:
        assert slot.job is not None
        slot.cancel_sent = True
        slot.handle.cancel.remote(slot.job.id)
        log.info("cancel sent job=%s actor=%s", slot.job.id, slot.name,
                 extra={"job_id": slot.job.id, "worker_id": slot.worker_id})

    def _finish(self, slot: Slot, result: dict[str, Any]) -> None:
        job, wid = slot.job, slot.worker_id
        assert job is not None
        ids = {"job_id": job.id, "user_id": job.user_id, "worker_id": wid}
        status = result.get("status")
        if status == "ok":
            video, cover = self._write_output(job.id, result["video"], result.get("cover"))
            label = str(result.get("label", ""))
            if job.merge and job.parent_id:  # `/续写 #N 合并`: joined here, where both clips are
                video, label = merge_with_parent(self.queue, job, Path(video), label)
            self.queue.complete(job.id, wid, str(video), None if cover is None else str(cover),
                                float(result["seconds"]), label)
            run_s = float(result.get("run_s", result["seconds"]))  # generation wall time inside the actor
            slot.jobs_done += 1
            slot.busy_s += run_s
            log.info("job %s done on %s in %.1fs (%d bytes)", job.id, slot.name, run_s, len(result["video"]),
                     extra=ids)
        elif status == "cancelled":
            if slot.lease_lost:
                log.warning("job %s abandoned: lease lost", job.id, extra=ids)
            elif self.queue.cancel_requested(job.id):
                self.queue.finish_cancelled(job.id, wid)
            else:
                self.queue.release(job.id, wid)
        elif status == "invalid":
            self.queue.fail(job.id, wid, str(result.get("error") or CRASH_ERROR), retryable=False)
        else:
            log.error("job %s generator error on %s: %s", job.id, slot.name, result.get("error"), extra=ids)
            self.queue.fail(job.id, wid, OOM_ERROR if result.get("oom") else CRASH_ERROR, retryable=True)
        self._clear_job(slot)

    def _clear_job(self, slot: Slot) -> None:
        slot.job, slot.run_ref, slot.status_ref = None, None, None
        if slot.state == "busy":
            slot.state = "idle"
        self.publish()

    def _job_lost_with_actor(self, slot: Slot, exc: BaseException, now: float) -> None:
        job = slot.job
        assert job is not None
        ids = {"job_id": job.id, "user_id": job.user_id, "worker_id": slot.worker_id}
        if not self.cluster_alive():
            self.queue.release(job.id, slot.worker_id)
            self._clear_job(slot)
            slot.state = "dead"
            raise ClusterLost(f"actor {slot.name} lost with job {job.id}: the cluster does not answer")
        new_state = self.queue.fail(job.id, slot.worker_id, OOM_ERROR if _is_oom(exc) else CRASH_ERROR, retryable=True)
        log.error("actor %s died running job %s (%s) -> job %s", slot.name, job.id, type(exc).__name__, new_state,
                  extra=ids)
        self._clear_job(slot)
        self._actor_failed(slot, exc, now)

    def _write_output(self, job_id: int, video: bytes, cover: bytes | None) -> tuple[Path, Path | None]:
        out = Path(self.worker.output_dir) / str(job_id)
        out.mkdir(parents=True, exist_ok=True)
        paths: list[Path | None] = []
        for name, data in (("video.mp4", video), ("cover.jpg", cover)):
            if data is None:
                paths.append(None)
                continue
            tmp = out / f".{name}.part"
            tmp.write_bytes(data)
            os.replace(tmp, out / name)
            paths.append(out / name)
        assert paths[0] is not None
        return paths[0], paths[1]

    # ------------------------------------------------------------------ cluster
    def cluster_alive(self) -> bool:
        """The GCS answers on TCP twice, ~1 s apart (a head node going down stops its actors a moment before
        its GCS, so one early answer is not enough)."""
        if not self.gcs_address:
            return True
        for i in range(2):
            if i:
                time.sleep(1.0)
            if not tcp_reachable(self.gcs_address, self.ex.connect_timeout_s):
                return False
        return True

    def _check_gcs(self) -> None:
        if not self.gcs_address:
            return
        if tcp_reachable(self.gcs_address, self.ex.connect_timeout_s):
            self._gcs_misses = 0
            return
        self._gcs_misses += 1
        if self._gcs_misses >= 2:
            raise ClusterLost(f"GCS {self.gcs_address} does not answer")

    def release_all(self) -> None:
        """Hand every running job back to the queue without using an attempt (shutdown, lost cluster)."""
        for slot in self.slots:
            if slot.job is not None:
                try:
                    self.queue.release(slot.job.id, slot.worker_id)
                except Exception:
                    log.exception("release of job %s failed", slot.job.id)
                self._clear_job(slot)

    def shutdown(self) -> None:
        self.release_all()
        for slot in self.slots:
            if slot.handle is not None:
                try:
                    self.ray.kill(slot.handle, no_restart=True)
                except Exception as exc:  # already gone
                    log.debug("kill of actor %s at shutdown: %s", slot.name, exc)
            slot.handle, slot.state = None, "dead"
        self.publish()


def _current_gcs_address(ray: Any) -> str | None:
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:
        return None


# ====================================================================== process main
def connect_ray(ex: ExecutorSettings) -> None:
    import ray

    common: dict[str, Any] = dict(namespace=ex.namespace, logging_level=logging.WARNING, log_to_driver=False)
    if ex.runtime_env:
        common["runtime_env"] = ex.runtime_env
    if ex.node_ip_address:
        common["_node_ip_address"] = ex.node_ip_address
    if ex.address is None:
        # address="local": always a new instance owned by this process (never silently join a cluster that
        # `ray start` left on this host, nor one named by RAY_ADDRESS)
        ray.init(address="local", num_cpus=ex.local_num_cpus, num_gpus=ex.local_num_gpus,
                 resources=ex.local_resources or None, include_dashboard=False, **common)
    else:
        ray.init(address=ex.address, **common)


def run_ray_dispatcher(settings: WorkerConfig, worker_id: str, stop: Any) -> None:
    """Process main (spawned and restarted by `WorkerSupervisor`)."""
    setup_child_logging(f"ray-dispatcher {os.getpid()}")
    ex: ExecutorSettings = settings.executor  # type: ignore[attr-defined]
    queue = open_queue(settings)
    store = PoolStore(queue.db, time.time)
    where = ex.address or "本机"
    previous = store.cluster()
    if previous is None or previous.state not in ("lost", "unreachable"):  # keep telling users what is wrong
        store.set_cluster("ray", "connecting", MSG_CONNECTING, where)
    while not stop.is_set():
        if ex.address is not None and not tcp_reachable(ex.address, ex.connect_timeout_s):
            _set_unreachable(store, ex, where, "address does not answer")
            stop.wait(ex.reconnect_s)
            continue
        try:
            connect_ray(ex)
            _exit_once_on_sigterm()
            break
        except Exception as exc:
            _set_unreachable(store, ex, where, repr(exc))
            stop.wait(ex.reconnect_s)
    if stop.is_set():
        store.set_cluster("ray", "stopped", "", where)
        return
    dispatcher = RayDispatcher(queue, store, ex, settings.worker, getattr(settings, "generation", None),
                               dispatcher_id=worker_id, labels=getattr(settings, "labels", None),
                               content_check=getattr(settings, "content_check", None))
    store.set_cluster("ray", "ready", "", where)
    log.info("connected to Ray (%s) as %s; %d actor slots", where, worker_id, len(dispatcher.slots))
    try:
        dispatcher.run(stop)
    except ClusterLost as exc:
        log.error("Ray cluster lost: %s; running jobs go back to the queue", exc)
        dispatcher.release_all()
        for slot in dispatcher.slots:
            slot.state = "dead"
        dispatcher.publish()
        store.set_cluster("ray", "lost", MSG_LOST.format(address=where), where)
        logging.shutdown()
        os._exit(EXIT_CLUSTER_LOST)  # the driver's Ray state is unusable; the supervisor starts a fresh one
    dispatcher.shutdown()
    store.set_cluster("ray", "stopped", "", where)
    try:
        import ray

        ray.shutdown()
    except Exception:
        log.exception("ray.shutdown failed")


def _exit_once_on_sigterm() -> None:
    """After `ray.init`: the first SIGTERM ends the driver (`ray.shutdown` then runs at exit and stops the local
    Ray instance with its agents), later ones are ignored. Ray's own handler exits on every SIGTERM, and the
    kernel may send the parent-death SIGTERM more than once (once per exiting thread of a killed bot): a second
    exit inside `ray.shutdown` aborted it and left Ray's agent processes running."""
    if threading.current_thread() is not threading.main_thread():
        return

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        log.warning("SIGTERM: Ray dispatcher exits (pid %d)", os.getpid())
        sys.exit(signum)

    signal.signal(signal.SIGTERM, on_sigterm)


def _set_unreachable(store: PoolStore, ex: ExecutorSettings, where: str, why: str) -> None:
    previous = store.cluster()
    state: ClusterState = "lost" if previous is not None and previous.state == "lost" else "unreachable"
    message = (MSG_LOST if state == "lost" else MSG_UNREACHABLE).format(address=where)
    store.set_cluster("ray", state, message, where)
    log.warning("Ray cluster %s unreachable (%s); retrying in %.1fs", where, why, ex.reconnect_s)


# ====================================================================== bot side
class _DispatcherQueue(JobQueue):
    """The supervisor's queue: the dispatcher leases jobs as `<process id>/<actor>#<n>`, so when the dispatcher
    process dies, `recover_expired(owner=<process id>)` must cover those owners too. When the cluster does not
    answer at that moment (the driver died with its cluster), the jobs go back without using an attempt."""

    def __init__(self, base: JobQueue, cluster_down: Callable[[], bool]) -> None:
        super().__init__(base.db, base.quota, base.settings, base.clock)
        self._cluster_down = cluster_down

    def recover_expired(self, now: float | None = None, *, owner: str | None = None) -> list[Job]:
        recovered = super().recover_expired(now, owner=owner)
        if owner is None:
            return recovered
        down = self._cluster_down()  # also records a lost cluster for the notice when the driver died with it
        prefix = f"{owner}/"
        for job_id, actor_owner in self.running_owned_by(prefix):
            if down:
                if self.release(int(job_id), str(actor_owner)):
                    log.warning("dispatcher %s died with the cluster: job %s back to the queue (no attempt used)",
                                owner, job_id, extra={"job_id": job_id})
                    job = self.get(int(job_id))
                    if job is not None:
                        recovered.append(job)
            else:
                recovered += super().recover_expired(now, owner=str(actor_owner))
        return recovered


class DispatcherSupervisor(WorkerSupervisor):
    """`WorkerSupervisor` for the Ray dispatcher process (see `_DispatcherQueue`). It inherits the process
    lifetime: the dispatcher dies with the bot (its actors with it, as Ray ends the actors of a dead driver),
    and a dispatcher left by a SIGKILLed bot is stopped at start and its actors' jobs reclaimed at once."""

    def __init__(self, settings: WorkerConfig, *, cluster_down: Callable[[], bool], **kwargs: Any) -> None:
        self._cluster_down = cluster_down
        super().__init__(settings, **kwargs)

    def _open_queue(self) -> JobQueue:
        """Wrapped from the start, so the start-up reclaim of a stale dispatcher covers its actors' leases."""
        return _DispatcherQueue(super()._open_queue(), self._cluster_down)


class RayExecutor:
    """The bot's handle on the Ray pool: the supervised dispatcher process and the pool status it publishes."""

    kind = "ray"

    def __init__(self, settings: WorkerConfig, *, clock: Callable[[], float] = time.time,
                 target: Callable[[Any, str, Any], None] = run_ray_dispatcher) -> None:
        if importlib.util.find_spec("ray") is None:
            raise RuntimeError("executor.kind is ray but Ray is not installed: pip install 'xiaoai-video[ray]' "
                               "(未安装 Ray，请先安装 ray 可选依赖)")
        self.settings = settings
        self.clock = clock
        self.supervisor = DispatcherSupervisor(settings, worker_id="ray-dispatcher", clock=clock, target=target,
                                               cluster_down=self._cluster_down)
        self._store: PoolStore | None = None
        self._lock = threading.Lock()

    def _cluster_down(self) -> bool:
        """Called when the dispatcher process died: is its cluster gone too? (Then say so to users.)"""
        ex: ExecutorSettings = self.settings.executor  # type: ignore[attr-defined]
        if ex.address is None or tcp_reachable(ex.address, ex.connect_timeout_s):
            return False
        try:
            self._pool_store().set_cluster("ray", "lost", MSG_LOST.format(address=ex.address), ex.address)
        except Exception:
            log.exception("could not record the lost cluster")
        return True

    def _pool_store(self) -> PoolStore:
        with self._lock:
            if self._store is None:
                from bot.store.db import open_db

                storage = self.settings.storage
                self._store = PoolStore(open_db(storage.db_path, busy_timeout_ms=storage.busy_timeout_ms), self.clock)
            return self._store

    def start(self) -> None:
        ex: ExecutorSettings = self.settings.executor  # type: ignore[attr-defined]
        store = self._pool_store()
        store.put_actors([])  # rows left by a previous run are not this pool
        store.set_cluster("ray", "connecting", MSG_CONNECTING, ex.address or "本机")
        self.supervisor.start()

    def stop(self) -> None:
        self.supervisor.stop()

    def view(self) -> PoolView:
        store = self._pool_store()
        ex: ExecutorSettings = self.settings.executor  # type: ignore[attr-defined]
        cluster = store.cluster()
        actors = store.actors()
        latest = max([a.updated_at for a in actors], default=cluster.updated_at if cluster else 0.0)
        stale = cluster is not None and cluster.state == "ready" and self.clock() - latest > ex.stale_after_s
        return PoolView(kind="ray", cluster=cluster, actors=actors, process_alive=self.supervisor.alive, stale=stale)

    def notice(self) -> str | None:
        return pool_notice(self.view())
