"""End to end: the whole bot (`bot.app.App`: real SQLite queue, worker process with the synthetic
generator, delivery loop, plugins) on the WeChat channel, driven through the in-process puppet
server by the real `wechaty.Wechaty` client."""

from __future__ import annotations

import asyncio
import hashlib
import io
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from bot.app import App
from bot.channels.wechaty.adapter import WechatyChannel
from bot.jobs.models import JobSpec, JobState
from bot.serve import serve as serve_wechat
from bot.settings import Settings
from tests.puppet_server import FakePuppetServer
from tests.wechaty_helpers import (
    ALICE,
    BOB,
    BOT,
    ROOM,
    TOKEN,
    clean_env,
    eventually,
    make_channel,
    make_mp4,
    run,
)

pytestmark = pytest.mark.usefixtures("clean_env")
_ = clean_env


def _settings(tmp: Path, **worker: Any) -> Settings:
    worker_values = {
        "generator": "synthetic",
        "output_dir": str(tmp / "videos"),
        "poll_s": 0.05,
        "synthetic_steps": 4,
        "synthetic_step_delay_s": 0.02,
        "synthetic_width": 160,
        "synthetic_height": 96,
        **worker,
    }
    return Settings.model_validate(
        {
            "bot": {"data_dir": str(tmp / "data"), "flood_user_max": 50},
            "storage": {"db_path": str(tmp / "xiaoai.db")},
            "worker": worker_values,
            "queue": {"delivery_poll_s": 0.1, "delivery_backoff_s": 0.1},
            "wechaty": {"cache_dir": str(tmp / "wechaty"), "reconnect_initial_s": 0.05, "reconnect_max_s": 0.4},
        }
    )


async def _server(port: int = 0) -> FakePuppetServer:
    server = await FakePuppetServer(port=port, max_message_bytes=4 * 1024 * 1024).start()
    server.add_contact(ALICE, "Alice")
    server.add_contact(BOB, "Bob")
    server.add_room(ROOM, "视频测试群", [BOT, ALICE, BOB])
    server.login()
    return server


def _channel(tmp: Path, port: int) -> WechatyChannel:
    return make_channel(tmp, port, send_retry_initial_s=0.05)


def _png(seed: int = 3) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(96, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_e2e_video_image_to_video_and_duplicate_event(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    image = _png()

    async def scenario() -> None:
        server = await _server()
        channel = _channel(tmp_path, server.port)
        app = App(settings, channel)
        await app.start()
        try:
            assert await channel.wait_connected(10)
            # 1. /video in a room, with the bot @-mentioned, delivered twice by the puppet.
            server.say("e2e-m1", ALICE, "@小爱\u2005/video a cat", room_id=ROOM, mention_ids=(BOT,))
            server.message_event("e2e-m1")
            await server.wait_for(lambda: len(server.sent_texts) >= 1)
            ack = server.sent_texts[0]
            assert ack.conversation_id == ROOM and ack.mention_ids == (ALICE,)
            assert ack.text.startswith("@Alice") and "收到！文生视频任务" in ack.text and "第 1 位" in ack.text
            await server.wait_for(lambda: len(server.sent_files) >= 1, timeout=60)
            jobs = app.queue.jobs_of(ALICE)  # type: ignore[union-attr]
            assert len(jobs) == 1  # the duplicate event made no second job
            await eventually(lambda: app.queue.get(jobs[0].id).state is JobState.DELIVERED, timeout=10)  # type: ignore[union-attr]
            job = app.queue.get(jobs[0].id)  # type: ignore[union-attr]
            video = server.sent_files[0]
            assert video.conversation_id == ROOM and video.sha256 == _sha(job.video_path)  # intact
            await server.wait_for(lambda: len(server.sent_texts) >= 2)
            caption = server.sent_texts[1]
            assert caption.mention_ids == (ALICE,) and caption.text.startswith("@Alice")
            assert "你的视频生成好了" in caption.text
            assert "a cat" in caption.text

            # 2. An image, then /video from the same user: an image-to-video job with that image.
            server.send_image("e2e-img", BOB, image, name="beach.png", room_id=ROOM)
            server.say("e2e-m2", BOB, "/video the waves roll", room_id=ROOM)
            await server.wait_for(lambda: any("图生视频" in t.text for t in server.sent_texts), timeout=20)
            bob_jobs = app.queue.jobs_of(BOB)  # type: ignore[union-attr]
            assert len(bob_jobs) == 1 and bob_jobs[0].image_path
            with Image.open(bob_jobs[0].image_path) as stored, Image.open(io.BytesIO(image)) as sent:
                assert np.array_equal(np.asarray(stored.convert("RGB")), np.asarray(sent.convert("RGB")))
            await server.wait_for(lambda: len(server.sent_files) >= 2, timeout=60)
            assert server.sent_files[1].sha256 == _sha(app.queue.get(bob_jobs[0].id).video_path)  # type: ignore[union-attr]
            assert server.unimplemented == [] and server.authorities() == {TOKEN}
        finally:
            await app.stop()
            await server.stop()

    run(scenario, timeout=180)


def test_e2e_puppet_restart_mid_job_delivers_once_after_reconnect(tmp_path: Path) -> None:
    settings = _settings(tmp_path, synthetic_steps=20, synthetic_step_delay_s=0.1)  # ~2 s of "generation"

    async def scenario() -> None:
        server = await _server()
        channel = _channel(tmp_path, server.port)
        app = App(settings, channel)
        await app.start()
        try:
            assert await channel.wait_connected(10)
            server.say("e2e-r1", ALICE, "/video a slow cat", room_id=ROOM)
            await server.wait_for(lambda: len(server.sent_texts) >= 1)
            job_id = app.queue.jobs_of(ALICE)[0].id  # type: ignore[union-attr]
            await server.stop()  # the gateway dies while the job is being generated
            await eventually(lambda: not channel.connected, what="disconnect")
            await eventually(lambda: app.queue.get(job_id).state is JobState.SUCCEEDED, timeout=60,  # type: ignore[union-attr]
                             what="job finished while offline")  # fmt: skip
            await asyncio.sleep(0.5)
            assert server.sent_files == []  # nothing can go out while disconnected
            await server.start()  # same port
            assert await channel.wait_connected(10)
            await server.wait_for(lambda: len(server.sent_files) >= 1, timeout=30)
            await eventually(lambda: app.queue.get(job_id).state is JobState.DELIVERED, timeout=10)  # type: ignore[union-attr]
            await asyncio.sleep(1.0)  # several delivery polls later: still exactly one video
            assert len(server.sent_files) == 1
            assert server.sent_files[0].sha256 == _sha(app.queue.get(job_id).video_path)  # type: ignore[union-attr]
        finally:
            await app.stop()
            await server.stop()

    run(scenario, timeout=180)


def test_e2e_unreachable_at_startup_queue_keeps_running_then_delivers(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    async def scenario() -> None:
        probe = await FakePuppetServer().start()
        port = probe.port
        await probe.stop()
        channel = _channel(tmp_path, port)
        app = App(settings, channel)
        await app.start()  # does not raise, does not stop the loop
        try:
            await asyncio.sleep(0.3)
            assert not channel.connected and channel.last_error and "无法连接" in channel.last_error
            # The queue and the worker process keep going while WeChat is unreachable.
            outcome = app.queue.submit(JobSpec(  # type: ignore[union-attr]
                message_id="offline-1", user_id=ALICE, user_name="Alice", chat_id=ROOM, chat_kind="group",
                group_id=ROOM, prompt="a queued cat", final_prompt="a queued cat", resolution="384p",
                duration_s=5, seed=1, image_path=None, cost=1,
            ))  # fmt: skip
            assert outcome.status == "queued" and outcome.job is not None
            job_id = outcome.job.id
            await eventually(lambda: app.queue.get(job_id).state is JobState.SUCCEEDED, timeout=60)  # type: ignore[union-attr]
            server = await _server(port)  # the gateway comes up
            assert await channel.wait_connected(10)
            await server.wait_for(lambda: len(server.sent_files) == 1, timeout=30)
            assert server.sent_files[0].sha256 == _sha(app.queue.get(job_id).video_path)  # type: ignore[union-attr]
            await server.stop()
        finally:
            await app.stop()

    run(scenario, timeout=180)


def test_e2e_six_mib_video_through_the_delivery_loop(tmp_path: Path) -> None:
    """A 6 MiB result goes out through the Upload stream (the fake caps messages at 4 MiB)."""
    settings = _settings(tmp_path)
    big = make_mp4(tmp_path / "videos" / "big" / "big.mp4", seconds=4, size="640x360", bitrate="12M",
                   noise=True, fps=24)  # fmt: skip

    async def scenario() -> None:
        server = await _server()
        channel = _channel(tmp_path, server.port)
        app = App(settings, channel, run_worker=False)  # we play the worker: claim + complete
        await app.start()
        try:
            assert await channel.wait_connected(10)
            server.say("e2e-big", ALICE, "/video a big cat", room_id=ROOM)
            await server.wait_for(lambda: len(server.sent_texts) >= 1)
            queue = app.queue
            assert queue is not None
            job = queue.claim("test-worker", 60)
            assert job is not None
            assert queue.complete(job.id, "test-worker", str(big), None, 1.0, "test")
            await server.wait_for(lambda: len(server.sent_files) == 1, timeout=60)
            sent = server.sent_files[0]
            assert sent.via_uuid and sent.sha256 == _sha(big) and len(sent.data) > 5.5 * 1024 * 1024
            await server.wait_for(lambda: len(server.sent_texts) >= 2)
            assert server.sent_texts[1].mention_ids == (ALICE,)
        finally:
            await app.stop()
            await server.stop()

    run(scenario, timeout=120)


def test_xiaoai_run_without_endpoint_explains_and_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from bot.cli import main

    config = tmp_path / "config.yaml"
    config.write_text("bot:\n  name: 小爱\n", encoding="utf-8")
    code = main(["--config", str(config), "run"])
    err = capsys.readouterr().err
    assert code != 0
    assert "WECHATY_PUPPET_SERVICE_ENDPOINT" in err and "未配置微信网关地址" in err


def test_serve_wechat_runs_until_stopped(tmp_path: Path) -> None:
    settings = _settings(tmp_path)

    async def scenario() -> int:
        server = await _server()
        stop = asyncio.Event()
        env = {"WECHATY_PUPPET_SERVICE_ENDPOINT": server.endpoint, "WECHATY_PUPPET_SERVICE_TOKEN": TOKEN}
        task = asyncio.create_task(serve_wechat(settings, env, stop=stop))
        await server.wait_for(lambda: server.event_streams == 1, timeout=30)
        server.say("serve-1", ALICE, "/help", room_id=ROOM)
        await server.wait_for(lambda: len(server.sent_texts) >= 1, timeout=20)
        assert "/video" in server.sent_texts[0].text or "/视频" in server.sent_texts[0].text
        stop.set()
        code = await task
        await server.stop()
        return code

    assert run(scenario, timeout=120) == 0
    assert sys.exc_info() == (None, None, None)
