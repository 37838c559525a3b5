"""The Ray executor on a real local Ray cluster (CPU only: the GPUs are declared, not real).

Most tests drive a `RayDispatcher` in the test process against a module-scoped cluster with 3 fake GPUs
(one actor per fake GPU, `num_gpus=1`), the real JobQueue/QuotaBook on a tmp SQLite file and the fast
synthetic generator; one runs the tiny random Pyramid Flow model inside an actor. The last two run the
whole bot (`App` + LocalChannel, dispatcher in its own supervised process): once against the module
cluster (`/资源池`), once against a `ray start --head` cluster that is missing at start-up, then killed
mid-job and brought back (the bot keeps answering with a notice; jobs wait and resume, charged once).
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from pathlib import Path

import pytest
from _ray_support import (
    NODE_IP,
    HeadNode,
    drive,
    fast_executor,
    free_port,
    init_local_ray,
    ledger,
    make_store,
    ray,
    spec,
    synthetic_worker,
)
from PIL import Image

from bot.app import App
from bot.channels.local import LocalChannel
from bot.dispatcher import ADMIN_ONLY_TEXT
from bot.executors import build_executor
from bot.executors.ray_executor import RayExecutor
from bot.executors.settings import ActorSpec
from bot.executors.status import ActorStatus, PoolStore
from bot.jobs.models import JobState
from generation.settings import GenerationSettings
from generation.synthetic import SYNTHETIC_LABEL
from generation.video_io import probe
from plugins.pool import format_actor
from tests.chat_harness import ADMIN, ROOM, async_test, make_settings

pytestmark = pytest.mark.timeout(240)

ALICE = {"sender_id": "wxid_alice", "sender_name": "Alice", "chat_id": ROOM}
BOB = {"sender_id": "wxid_bob", "sender_name": "Bob", "chat_id": ROOM}
BOSS = {"sender_id": ADMIN, "sender_name": "管理员", "chat_id": ADMIN, "group": False}


@pytest.fixture(scope="module")
def cluster() -> str:
    address = init_local_ray(num_cpus=8, num_gpus=3, resources={"vram80": 1})
    try:
        yield address
    finally:
        ray.shutdown()


def gpu(name: str = "gpu", count: int = 1, **kw: object) -> ActorSpec:
    return ActorSpec(**{"name": name, "count": count, "num_gpus": 1, "num_cpus": 1, **kw})


# ---------------------------------------------------------------------- dispatcher in the test process
def test_actors_run_in_parallel_in_fair_order_with_progress_and_mp4s_on_the_bot_host(cluster, tmp_path: Path):
    store = make_store(tmp_path / "q.db")
    ws = synthetic_worker(tmp_path, synthetic_steps=8, synthetic_step_delay_s=0.1)
    jobs = [store.queue.submit(spec(u)).job for u in ("alice", "alice", "alice", "bob", "bob", "carol")]
    fair = [j.id for j in store.queue.snapshot()]
    users = {j.id: j.user_id for j in jobs}
    assert [users[i] for i in fair] == ["alice", "bob", "carol", "alice", "bob", "alice"]
    d = drive(store, fast_executor([gpu(count=2)]), ws)
    try:
        d.run_until(d.all_in([j.id for j in jobs], JobState.SUCCEEDED), what="all jobs done")
        assert [job_id for job_id, _ in d.assignments] == fair  # handed out in the queue's fair order
        assert d.max_running == 2 and {a for _, a in d.assignments} == {"gpu-0", "gpu-1"}
        gpus = [s.info["gpu"] for s in d.dispatcher.slots]
        assert len(set(gpus)) == 2 and all(g.isdigit() for g in gpus)  # one (fake) GPU per actor
        assert all(s.info["pid"] != d.dispatcher.slots[0].info["pid"] for s in d.dispatcher.slots[1:])
        assert d.progress_seen and all(0 < p < 1 for ps in d.progress_seen.values() for p in ps)
        for job in jobs:
            done = store.queue.get(job.id)
            assert Path(done.video_path) == ws.output_dir / str(job.id) / "video.mp4"  # written on this host
            assert Path(done.cover_path).is_file() and done.label == SYNTHETIC_LABEL and done.progress == 1.0
            assert probe(Path(done.video_path))["codec"] == "h264" and done.lease_owner is None
        assert [k for k, _, _ in ledger(store, "alice")] == ["grant", "spend", "spend", "spend"]
        assert sum(s.jobs_done for s in d.dispatcher.slots) == 6
        assert all(s.busy_s > 0 for s in d.dispatcher.slots)
    finally:
        d.shutdown()


def test_cancel_reaches_the_running_actor_and_refunds(cluster, tmp_path: Path):
    store = make_store(tmp_path / "q.db")
    ws = synthetic_worker(tmp_path, synthetic_steps=300, synthetic_step_delay_s=0.05)
    job = store.queue.submit(spec("alice")).job
    d = drive(store, fast_executor([gpu()]), ws)
    try:
        d.run_until(lambda: store.queue.get(job.id).progress > 0.02, what="progress")
        assert store.queue.cancel_latest("alice", "g1").cancel_requested
        began = time.monotonic()
        d.run_until(d.all_in([job.id], JobState.CANCELLED), timeout=10, what="cancelled")
        assert time.monotonic() - began < 5  # stopped at the next step, not at the end (15 s)
        final = store.queue.get(job.id)
        assert final.progress < 0.9 and not (ws.output_dir / str(job.id) / "video.mp4").exists()
        assert ledger(store, "alice") == [("grant", 100, None), ("spend", -1, job.id), ("refund", 1, job.id)]
        assert d.slot("gpu-0").state == "idle" and d.slot("gpu-0").incarnation == 1  # the actor lives on
        assert [j.id for j in store.queue.undelivered()] == [job.id]  # the delivery loop tells the user
    finally:
        d.shutdown()


@pytest.mark.parametrize("max_attempts", [2, 1])
def test_actor_killed_mid_job_is_retried_elsewhere_and_charged_once(cluster, tmp_path: Path, max_attempts: int):
    store = make_store(tmp_path / "q.db", max_attempts=max_attempts)
    ws = synthetic_worker(tmp_path, synthetic_steps=20, synthetic_step_delay_s=0.1)
    job = store.queue.submit(spec("alice", cost=2)).job
    d = drive(store, fast_executor([gpu(count=2)]), ws)
    try:
        d.run_until(lambda: store.queue.get(job.id).progress > 0, what="job running")
        victim = next(s for s in d.dispatcher.slots if s.job is not None)
        ray.kill(victim.handle, no_restart=True)  # like an OOM kill or a lost node
        d.run_until(d.all_in([job.id], JobState.SUCCEEDED, JobState.FAILED), what="job settled")
        final = store.queue.get(job.id)
        if max_attempts == 2:
            other = ({"gpu-0", "gpu-1"} - {victim.name}).pop()
            assert d.assignments == [(job.id, victim.name), (job.id, other)]  # retried on the other actor
            assert final.state is JobState.SUCCEEDED and final.attempts == 2 and Path(final.video_path).is_file()
            assert ledger(store, "alice") == [("grant", 100, None), ("spend", -2, job.id)]  # charged once
        else:
            assert d.assignments == [(job.id, victim.name)]
            assert final.state is JobState.FAILED and final.attempts == 1 and final.error == "生成过程出错"
            assert ledger(store, "alice") == [("grant", 100, None), ("spend", -2, job.id), ("refund", 2, job.id)]
        assert len(store.queue.jobs_of("alice")) == 1
        d.run_until(d.idle(victim.name), what="actor re-created")  # a fresh actor in the same slot
        assert victim.incarnation == 2
        more = store.queue.submit(spec("bob")).job
        d.run_until(d.all_in([more.id], JobState.SUCCEEDED), what="pool still works")
    finally:
        d.shutdown()


def test_heterogeneous_pool_routes_by_variant_model_and_resources(cluster, tmp_path: Path):
    store = make_store(tmp_path / "q.db")
    ws = synthetic_worker(tmp_path)
    actors = [gpu("small", variants=["384p"]), gpu("large", variants=["768p"])]
    image = tmp_path / "input.png"  # an image-to-video job: the image goes to the actor as bytes
    Image.new("RGB", (96, 64), (200, 80, 40)).save(image)
    jobs = [store.queue.submit(spec(u, resolution=r, image_path=str(image) if u == "bob" else None)).job
            for u, r in (("alice", "768p"), ("bob", "384p"), ("carol", "768p"), ("dave", "384p"))]
    d = drive(store, fast_executor(actors), ws)
    try:
        d.run_until(d.all_in([j.id for j in jobs], JobState.SUCCEEDED), what="all jobs done")
        ran_on = dict(d.assignments)
        assert {j.id: ran_on[j.id] for j in jobs} == {
            jobs[0].id: "large-0", jobs[1].id: "small-0", jobs[2].id: "large-0", jobs[3].id: "small-0"}
        assert d.slot("small-0").serves == ["384p"] and d.slot("large-0").serves == ["768p"]
        assert probe(Path(store.queue.get(jobs[1].id).video_path))["frames"] > 0  # the image job too
    finally:
        d.shutdown()

    # 768p is routed to pyramid_mmdit actors only: the synthetic pool serves 384p, the 768p job waits.
    # Two actors want the one "vram80" resource of the cluster: the second waits for it.
    store2 = make_store(tmp_path / "q2.db")
    ex = fast_executor([gpu("big", count=2, num_gpus=0, resources={"vram80": 1})], route_model={"768p": "pyramid_mmdit"})
    wide, narrow = (store2.queue.submit(spec("alice", resolution=r)).job for r in ("768p", "384p"))
    d2 = drive(store2, ex, ws)
    try:
        d2.run_until(d2.all_in([narrow.id], JobState.SUCCEEDED), what="384p job done")
        d2.run_for(1.0)
        assert store2.queue.get(wide.id).state is JobState.QUEUED
        assert sorted(s.state for s in d2.dispatcher.slots) == ["idle", "starting"]
        ready = next(s for s in d2.dispatcher.slots if s.state == "idle")
        assert ready.serves == ["384p"] and ready.info["model"] == "synthetic"
    finally:
        d2.shutdown()


def test_actor_that_cannot_load_its_model_is_shown_and_jobs_wait_uncharged_twice(cluster, tmp_path: Path):
    store = make_store(tmp_path / "q.db")
    ws = synthetic_worker(tmp_path, generator="pyramid_flow")
    job = store.queue.submit(spec("alice")).job
    d = drive(store, fast_executor([gpu("broken", checkpoint=tmp_path / "no-such-checkpoint")]), ws)
    try:
        d.run_until(lambda: d.slot("broken-0").incarnation >= 2, timeout=60, what="creation retried")
        slot = d.slot("broken-0")
        assert slot.state in ("dead", "starting") and slot.failures >= 1
        d.publish_now()
        row = next(a for a in PoolStore(store.queue.db, time.time).actors() if a.name == "broken-0")
        assert row.incarnation >= 2
        assert store.queue.get(job.id).state is JobState.QUEUED and store.queue.get(job.id).attempts == 0
        assert ledger(store, "alice") == [("grant", 100, None), ("spend", -1, job.id)]
        error = d.last_errors["broken-0"]
        assert error == f"CheckpointError: checkpoint folder missing: {tmp_path / 'no-such-checkpoint'}"
        line = format_actor(ActorStatus(name="broken-0", incarnation=1, state="dead", error=error), time.time())
        assert "已停止" in line and "原因：CheckpointError" in line
    finally:
        d.shutdown()


def test_tiny_pyramid_flow_model_runs_inside_an_actor(cluster, tmp_path: Path):
    store = make_store(tmp_path / "q.db")
    ws = synthetic_worker(tmp_path, generator="pyramid_flow")
    gen = GenerationSettings(device="cpu")  # checkpoint None: the tiny random-weight model
    first, second = (store.queue.submit(spec(u)).job for u in ("alice", "bob"))
    d = drive(store, fast_executor([gpu("flow")]), ws, gen)
    try:
        d.run_until(d.all_in([first.id, second.id], JobState.SUCCEEDED), timeout=150, what="tiny model jobs")
        slot = d.slot("flow-0")
        assert slot.info["model"] == "pyramid_flux" and slot.info["generator"] == "pyramid_flow"
        assert slot.incarnation == 1 and slot.jobs_done == 2  # loaded once, kept warm for the second job
        for job in (first, second):
            done = store.queue.get(job.id)
            info = probe(Path(done.video_path))
            assert (info["codec"], info["width"], info["height"]) == ("h264", 128, 64) and info["frames"] > 1
            assert "tiny random weights" in done.label
    finally:
        d.shutdown()


# ---------------------------------------------------------------------- the whole bot
def ray_settings(tmp_path: Path, address: str, *, max_attempts: int = 2, steps: int = 4, **executor: object):
    ex: dict[str, object] = {
        "kind": "ray", "address": address, "node_ip_address": NODE_IP, "tick_s": 0.05, "status_every_s": 0.2,
        "health_every_s": 0.5, "connect_timeout_s": 0.5, "reconnect_s": 0.3, "actor_restart_backoff_s": 0.2,
        "actors": [{"name": "gpu", "count": 1, "num_gpus": 1}]}
    ex.update(executor)
    return make_settings(
        tmp_path,
        worker={"synthetic_steps": steps, "synthetic_step_delay_s": 0.1, "synthetic_width": 64,
                "synthetic_height": 48, "heartbeat_s": 0.5, "lease_s": 10, "restart_backoff_s": 0.2,
                "restart_backoff_max_s": 1.0, "recover_every_s": 1.0},
        queue={"delivery_poll_s": 0.2, "max_attempts": max_attempts},
        executor=ex,
    )


async def until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


def videos_for(channel: LocalChannel, user: str) -> int:
    return sum(1 for v in channel.videos(ROOM) if user in v.mention_ids)


@async_test
async def test_bot_on_ray_delivers_and_admin_pool_command_shows_actors(cluster, tmp_path: Path):
    settings = ray_settings(tmp_path, cluster, steps=20, actors=[{"name": "gpu", "count": 2, "num_gpus": 1}])
    assert isinstance(build_executor(settings), RayExecutor)
    channel = LocalChannel()
    app = App(settings, channel, pipeline=None)
    await app.start()
    try:
        await channel.say("/视频 a red panda eating bamboo", **ALICE)
        await channel.say("/视频 a lighthouse at night", **BOB)
        assert "生成集群" not in channel.texts()[-1]  # all is well: no notice
        assert await channel.wait_for(lambda sent: sum(1 for s in sent if s.video) >= 2, timeout=90)
        assert videos_for(channel, "wxid_alice") == 1 and videos_for(channel, "wxid_bob") == 1
        await until(lambda: sum(a.jobs_done for a in app.executor.view().actors) == 2, 10, "pool status")
        await channel.say("/资源池", **BOSS)
        text = channel.texts(ADMIN)[-1]
        assert "Ray 集群" in text and "状态 正常" in text and "gpu-0" in text and "gpu-1" in text
        assert re.search(r"GPU \d", text) and "模型 synthetic（384p/768p）" in text and "已完成" in text and "平均" in text
        assert "节点 2 个" in text and "⚠️" not in text
        await channel.say("/pool", **ALICE)
        assert channel.texts(ROOM)[-1].endswith(ADMIN_ONLY_TEXT)

        # the dispatcher process itself dies mid-job (its actors die with it, the cluster stays): the
        # supervisor hands the job back at once (not after the lease), a new dispatcher finishes it
        await channel.say("/视频 a slow sunrise", **ALICE)
        job = app.queue.jobs_of("wxid_alice")[-1]
        await until(lambda: app.queue.get(job.id).progress > 0, 30, "job running")
        first_pid, first_owner = app.executor.supervisor.pid, app.queue.get(job.id).lease_owner
        os.kill(first_pid, signal.SIGKILL)
        await until(lambda: app.queue.get(job.id).lease_owner != first_owner, 5, "job handed back")  # lease: 10 s
        assert await channel.wait_for(lambda sent: sum(1 for s in sent if s.video) >= 3, timeout=90)
        done = app.queue.get(job.id)
        assert done.attempts == 2 and app.executor.supervisor.pid != first_pid
        assert [r.kind for r in reversed(app.quota.history("wxid_alice"))] == ["grant", "spend", "spend"]
    finally:
        await app.stop()
    assert "合成测试视频" in channel.videos(ROOM)[0].caption


@async_test
async def test_cluster_missing_at_start_then_lost_mid_job_bot_keeps_answering_and_jobs_resume(tmp_path: Path):
    head = HeadNode(free_port(), tmp_path)
    # max_attempts=1: losing the cluster must not use up the job's attempt (else the job would fail)
    settings = ray_settings(tmp_path, head.address, max_attempts=1, steps=30)
    channel = LocalChannel()
    app = App(settings, channel, pipeline=None)
    await app.start()
    try:
        executor = app.executor
        await until(lambda: "无法连接" in (executor.notice() or ""), 30, "unreachable notice")
        # the alert loop polls every 5 s and may miss an outage shorter than that: poll at the key moments too
        await app.alerts.check_once()
        await channel.say("/视频 a paper boat on a river", **ALICE)
        reply = channel.texts(ROOM)[-1]
        assert "第 1 位" in reply and "生成集群暂时无法连接" in reply and head.address in reply
        await channel.say("/队列", **ALICE)
        assert "生成集群暂时无法连接" in channel.texts(ROOM)[-1]

        await asyncio.to_thread(head.start)  # the cluster comes up: the waiting job runs
        first = app.queue.jobs_of("wxid_alice")[0]
        await until(lambda: app.queue.get(first.id).state is JobState.RUNNING, 60, "job 1 running")
        assert executor.notice() is None

        await asyncio.to_thread(head.kill)  # the head host goes away mid-job
        await until(lambda: "生成集群" in (executor.notice() or ""), 30, "lost notice")
        await app.alerts.check_once()
        await until(lambda: app.queue.get(first.id).state is JobState.QUEUED, 30, "job 1 back in the queue")
        back = app.queue.get(first.id)
        assert back.attempts == 0 and back.lease_owner is None  # no attempt used, nothing refunded
        await channel.say("/视频 a kite over the sea", **BOB)  # the bot still answers
        assert "已排队" in channel.texts(ROOM)[-1] and "生成集群连接中断" in channel.texts(ROOM)[-1]
        await channel.say("/资源池", **BOSS)
        assert "⚠️ 生成集群" in channel.texts(ADMIN)[-1]

        await asyncio.to_thread(head.start)  # back on the same port: both jobs run
        assert await channel.wait_for(lambda sent: sum(1 for s in sent if s.video) >= 2, timeout=120)
        await until(lambda: executor.notice() is None, 10, "notice cleared")
        await app.alerts.check_once()
        alerts = [t for t in channel.texts(ADMIN) if t.startswith("【管理员提醒】")]
        assert any("无法连接" in t for t in alerts) and any("中断" in t for t in alerts), alerts
        assert "已恢复" in alerts[-1] and "/资源池" in alerts[-1]
        assert [r.kind for r in reversed(app.quota.history("wxid_alice"))] == ["grant", "spend"]  # charged once
        assert [r.kind for r in reversed(app.quota.history("wxid_bob"))] == ["grant", "spend"]

        await asyncio.to_thread(head.kill)  # lost again while idle: noticed by the health checks
        await until(lambda: "生成集群" in (executor.notice() or ""), 30, "lost notice while idle")
        await channel.say("/额度", **ALICE)  # still answering
        assert "额度" in channel.texts(ROOM)[-1]
        began = time.monotonic()
    finally:
        await app.stop()
        await asyncio.to_thread(head.kill)
    assert time.monotonic() - began < 15  # stopping does not hang on the dead cluster
    assert videos_for(channel, "wxid_alice") == 1 and videos_for(channel, "wxid_bob") == 1
