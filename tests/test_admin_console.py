"""The admin console of `xiaoai run` (bot.web.admin): the dashboard on a ChannelHub and the real database,
`/healthz` (no token) and `/metrics` (Prometheus text, behind the dashboard token), served by uvicorn in the
bot's own event loop."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from bot.app import App
from bot.channels.local import LocalChannel
from bot.jobs.models import JobState
from bot.web.admin import AdminConsole, AdminError, console_token, health_report
from bot.web.settings import AdminSettings
from tests.chat_harness import ROOM, async_test, make_settings

TOKEN = "console-test-token-123"
USER = {"sender_id": "wxid_alice", "sender_name": "Alice", "chat_id": ROOM}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _settings(tmp_path: Path) -> Any:
    return make_settings(
        tmp_path,
        worker={"synthetic_steps": 3, "synthetic_step_delay_s": 0.02, "poll_s": 0.1, "synthetic_width": 64,
                "synthetic_height": 48},
        queue={"delivery_poll_s": 0.2},
    )


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def _until(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached")


@async_test
async def test_console_serves_health_metrics_and_the_dashboard_on_the_hub(tmp_path: Path) -> None:
    channel = LocalChannel()
    app = App(_settings(tmp_path), channel, pipeline=None)
    await app.start()
    console = AdminConsole(app, AdminSettings(port=0), TOKEN)
    base = await console.start()
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            async def healthy() -> bool:
                return (await client.get("/healthz")).status_code == 200

            await _until(healthy)  # the worker process is up
            body = (await client.get("/healthz")).json()
            assert body["ok"] and body["failing"] == [] and body["channels"]["connected"] == ["local"]
            assert body["worker"]["process_alive"] is True and body["database"]["ok"] is True

            # /metrics: the token (or refused), valid exposition text
            assert (await client.get("/metrics")).status_code == 401
            assert (await client.get("/metrics", headers={"Authorization": "Bearer wrong-token"})).status_code == 403
            await channel.say("/视频 a shiba inu running in the snow", **USER)
            await channel.say("/视频 a second video to cancel", **USER)
            first = app.queue.jobs_of("wxid_alice")[0]

            async def delivered() -> bool:
                job = app.queue.get(first.id)
                return job is not None and job.state is JobState.DELIVERED

            await _until(delivered)
            second = app.queue.jobs_of("wxid_alice")[1]
            if app.queue.get(second.id).state is JobState.QUEUED:
                assert (await client.post("/api/dashboard/cancel", json={"job_id": second.id, "reason": "test"},
                                          headers=AUTH)).status_code == 200
            else:  # already generating: cancel from the chat, the worker stops at its next step
                await channel.say("/取消", **USER)

            async def settled() -> bool:
                job = app.queue.get(second.id)
                return job is not None and job.state in (JobState.CANCELLED, JobState.DELIVERED)

            await _until(settled)
            response = await client.get("/metrics", headers=AUTH)
            assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
            samples = _samples(response.text)
            assert _value(samples, "xiaoai_channel_connected", channel="local") == 1.0
            assert _value(samples, "xiaoai_worker_alive") == 1.0
            assert _value(samples, "xiaoai_queue_jobs", state="queued") == 0.0
            assert _value(samples, "xiaoai_jobs_finished_total", state="delivered") >= 1.0
            # made in the worker process, counted from the database
            assert _value(samples, "xiaoai_generation_seconds_count", model="synthetic", resolution="384p") >= 1.0
            assert _value(samples, "xiaoai_generation_seconds_bucket", model="synthetic", resolution="384p",
                          le="+Inf") >= 1.0
            assert _value(samples, "xiaoai_delivery_attempts_total", channel="local") >= 1.0
            assert _value(samples, "xiaoai_delivery_failures_total", channel="local") == 0.0
            if app.queue.get(second.id).state is JobState.CANCELLED:
                assert _value(samples, "xiaoai_refunds_total", reason="cancelled") == 1.0
                assert _value(samples, "xiaoai_jobs_finished_total", state="cancelled") == 1.0
            assert _value(samples, "xiaoai_channel_last_event_timestamp_seconds", channel="local") > 0
            assert _value(samples, "xiaoai_scrape_errors_total") == 0.0
            # one registry per app: nothing goes to prometheus_client's global default registry
            assert not [m for m in REGISTRY.collect() if m.name.startswith("xiaoai")]

            # the dashboard works on the hub: channel status, users without playground members, actions
            assert (await client.get("/api/dashboard/state")).status_code == 401
            state = (await client.get("/api/dashboard/state", headers=AUTH)).json()
            assert state["channels"] == [{
                "name": "local", "connected": True, "started": True, "failure": None, "paused": False,
                "login_needed": False, "last_error": None,
                "last_event": state["channels"][0]["last_event"]}]
            assert state["channels"][0]["last_event"] is not None
            assert "wxid_alice" in {u["user_id"] for u in state["users"]}
            assert state["worker"]["process_alive"] is True
            done = (await client.post("/api/dashboard/quota", json={"user_id": "wxid_alice", "op": "add",
                                                                    "value": 2, "reason": "thanks"},
                                      headers=AUTH))
            assert done.status_code == 200 and done.json()["ok"]
            assert app.quota.audit_log(5)[0].action in ("add", "adjust")
            audit = (await client.get("/api/dashboard/state", headers=AUTH)).json()["audit"]
            assert "加了 2 点" in audit[0]["text"] and "{" not in audit[0]["text"]  # words, not a dict
            # the effective settings, read-only: secrets are said to be set, never shown
            assert (await client.get("/api/dashboard/settings")).status_code == 401
            shown = (await client.get("/api/dashboard/settings", headers=AUTH)).json()
            assert shown["settings"]["quota"]["daily"] == app.settings.quota.daily
            assert shown["secrets"]["XIAOAI_DASHBOARD_TOKEN"] in (True, False)
            assert TOKEN not in json.dumps(shown)
            page = await client.get("/dashboard", headers=AUTH)
            assert page.status_code == 200 and "<html" in page.text.lower()
            video = await client.get(f"/media/video/{first.id}")
            assert video.status_code == 401
            video = await client.get(f"/media/video/{first.id}", headers=AUTH)
            assert video.status_code == 200 and video.headers["content-type"] == "video/mp4"
            assert (await client.get("/")).status_code == 307
            # bound to loopback: another Host header is refused (DNS rebinding)
            assert (await client.get("/healthz", headers={"Host": "evil.example"})).status_code == 400

            # the worker stops: /healthz says so
            app.executor.stop()
            response = await client.get("/healthz")
            assert response.status_code == 503 and response.json()["failing"] == ["worker"]
    finally:
        await console.stop()
        await app.stop()


def test_health_report_names_every_failing_part() -> None:
    class BrokenQueue:
        def counts(self) -> dict[str, int]:
            raise RuntimeError("database is locked")

    down = SimpleNamespace(name="clawbot", connected=False)
    failed = SimpleNamespace(name="qq", connected=True)
    app = SimpleNamespace(queue=BrokenQueue(), executor=None,
                          hub=SimpleNamespace(channels=[down, failed], failures={"qq": "bad secret"}))
    report = health_report(app)
    assert report["ok"] is False and report["failing"] == ["database", "worker", "channels"]
    assert "database is locked" in report["database"]["error"]
    assert report["channels"]["not_connected"] == ["clawbot", "qq"]

    view = SimpleNamespace(process_alive=True, kind="local", down="生成器无法加载")
    app.executor = SimpleNamespace(view=lambda: view)
    app.queue = SimpleNamespace(counts=lambda: {"queued": 2})
    down.connected = True
    report = health_report(app)
    assert report["failing"] == ["worker"] and report["worker"]["error"] == "生成器无法加载"
    view.down = None
    assert health_report(app)["ok"] is True


@async_test
async def test_a_port_in_use_is_reported(tmp_path: Path) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        app = SimpleNamespace(settings=_settings(tmp_path), quota=None, queue=None, hub=None, executor=None,
                              delivery=None)
        console = AdminConsole(app, AdminSettings(port=busy.getsockname()[1]), TOKEN)
        with pytest.raises(AdminError, match="admin"):
            await console.start()
    finally:
        busy.close()


def test_console_token_is_the_playgrounds() -> None:
    token, generated = console_token({})
    assert generated and len(token) >= 20
    assert console_token({"XIAOAI_DASHBOARD_TOKEN": TOKEN}) == (TOKEN, False)
    with pytest.raises(AdminError, match="short"):
        console_token({"XIAOAI_DASHBOARD_TOKEN": "short"})


def test_admin_settings_from_the_environment(tmp_path: Path) -> None:
    from bot.settings import load_settings

    config = tmp_path / "config.yaml"
    config.write_text("", encoding="utf-8")
    defaults = load_settings(config, environ={}).admin
    assert (defaults.host, defaults.port, defaults.enabled) == ("127.0.0.1", 8766, True)
    assert load_settings(config, environ={"XIAOAI__ADMIN__PORT": "9100"}).admin.port == 9100
    assert load_settings(config, environ={"XIAOAI__ADMIN__ENABLED": "false"}).admin.enabled is False


def test_metrics_from_the_database_never_go_back_after_retention(tmp_path: Path) -> None:
    from bot.web.metrics import build_registry, render
    from tests._jobs_support import Clock, make_store, spec

    clock = Clock(1_760_000_000.0)
    store = make_store(tmp_path / "xiaoai.db", clock)
    q = store.queue
    for n, outcome in enumerate(("ok", "ok", "oom", "crash", "cancel")):
        job = q.submit(spec(user=f"u{n}", message_id=f"m{n}"), with_place=False).job
        if outcome == "cancel":
            q.cancel(job.id)
            continue
        assert q.claim("w", 60) is not None
        clock.tick(40.0 * (n + 1))
        if outcome == "ok":
            q.complete(job.id, "w", "v.mp4", None, 40.0 * (n + 1), "")
            q.mark_delivered(job.id)
        else:
            from bot.worker import CRASH_ERROR, OOM_ERROR

            q.fail(job.id, "w", OOM_ERROR if outcome == "oom" else CRASH_ERROR, retryable=False)
            q.mark_notified(job.id)
    app = SimpleNamespace(queue=q, quota=store.quota, executor=None, delivery=None,
                          hub=SimpleNamespace(channels=[], failures={}, last_event={}))
    registry = build_registry(app)

    def job_samples() -> dict:
        return {k: v for k, v in _samples(render(registry).decode()).items()
                if k[0].startswith(("xiaoai_jobs_", "xiaoai_generation_", "xiaoai_refund"))}

    before = job_samples()
    assert _value(before, "xiaoai_jobs_finished_total", state="delivered") == 2.0
    assert _value(before, "xiaoai_jobs_failed_total", reason="oom") == 1.0
    assert _value(before, "xiaoai_jobs_failed_total", reason="crash") == 1.0
    assert _value(before, "xiaoai_refunds_total", reason="cancelled") == 1.0
    assert _value(before, "xiaoai_generation_seconds_bucket", model="unknown", resolution="384p", le="60.0") == 1.0
    assert _value(before, "xiaoai_generation_seconds_bucket", model="unknown", resolution="384p", le="120.0") == 2.0
    assert _value(before, "xiaoai_generation_seconds_sum", model="unknown", resolution="384p") == 40.0 + 80.0
    clock.tick(10 * 86400.0)
    assert q.prune_finished(clock.t) == 5  # every row is gone …
    assert q.counts() == {}
    assert job_samples() == before  # … and every counter stays where it was
