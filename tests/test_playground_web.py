"""The playground web app without a browser (Starlette's TestClient): the real dispatcher, plugins,
QuotaBook and JobQueue on a tmp SQLite file behind `create_app`, no worker. Dashboard token refusal,
admin actions through the chat commands' code (ledger + audit), upload limits and type checks, no path
traversal in media links, the event stream, settings."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from bot.core import build_dispatcher
from bot.jobs.models import JobSpec, JobState
from bot.jobs.queue import JobQueue
from bot.settings import Settings, SettingsError, settings_from_mapping
from bot.store.db import open_db
from bot.store.quota import QuotaBook
from bot.web.channel import PlaygroundChannel
from bot.web.dashboard import COOKIE, DASHBOARD_ACTOR
from bot.web.runner import PlaygroundError, dashboard_token, playground_settings
from bot.web.server import LOOPBACK_HOSTS, WebDeps, create_app
from bot.web.settings import PlaygroundSettings
from plugins import default_plugins
from plugins.video import BANNED_TEXT
from tests._web_support import ADMIN_ID, TOKEN, fast_config

MING = "wxid_play_xiaoming"
HONG = "wxid_play_xiaohong"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Web:
    client: TestClient
    deps: WebDeps
    settings: Settings

    @property
    def channel(self) -> PlaygroundChannel:
        return self.deps.channel

    @property
    def quota(self) -> QuotaBook:
        return self.deps.quota

    @property
    def queue(self) -> JobQueue:
        return self.deps.queue

    def say(self, user_id: str, text: str = "", image: tuple[str, bytes, str] | None = None) -> Any:
        files = {"image": image} if image is not None else None
        return self.client.post("/api/send", data={"user_id": user_id, "text": text}, files=files)

    def bot_texts(self) -> list[str]:
        return [e.text for e in self.channel.events() if e.kind == "bot"]


@contextmanager
def web_app(tmp_path: Path, token: str | None = TOKEN, **sections: dict[str, Any]) -> Iterator[Web]:
    settings = playground_settings(Settings.model_validate(fast_config(tmp_path, **sections)), None)
    db = open_db(settings.storage.db_path)
    quota = QuotaBook(db, settings.quota)
    queue = JobQueue(db, quota, settings.queue)
    channel = PlaygroundChannel(settings=settings.playground, bot_name=settings.bot.name)
    dispatcher = build_dispatcher(settings, channel=channel, quota=quota, queue=queue, clock=time.time,
                                  plugins=default_plugins())
    asyncio.run(channel.start(dispatcher.handle))
    deps = WebDeps(settings=settings, channel=channel, quota=quota, queue=queue, status_poll_s=0.05)
    try:
        app = create_app(deps, dashboard_token=token, allowed_hosts=LOOPBACK_HOSTS)
        with TestClient(app, base_url="http://127.0.0.1:8765") as client:
            yield Web(client, deps, settings)
    finally:
        db.conn.close()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    with web_app(tmp_path) as app:
        yield app


def png(size: tuple[int, int] = (96, 64)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 80, 40)).save(buf, format="PNG")
    return buf.getvalue()


def noise_png(size: tuple[int, int]) -> bytes:
    pixels = np.random.default_rng(1).integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------ dashboard access
DASH_GETS = ["/dashboard", "/api/dashboard/state", "/api/dashboard/events", f"/api/dashboard/ledger/{MING}"]
DASH_POSTS = {
    "/api/dashboard/quota": {"user_id": MING, "op": "set", "value": 50},
    "/api/dashboard/ban": {"user_id": MING, "banned": True},
    "/api/dashboard/cancel": {"job_id": 1},
}


def test_dashboard_refuses_requests_without_the_token(web: Web) -> None:
    for path in DASH_GETS:
        assert web.client.get(path).status_code == 401, path
        assert web.client.get(path, headers={"Authorization": "Bearer wrong-token"}).status_code == 403, path
    for path, body in DASH_POSTS.items():
        assert web.client.post(path, json=body).status_code == 401, path
        assert web.client.post(path, json=body, headers={"Authorization": "Bearer nope"}).status_code == 403, path
    web.client.cookies.set(COOKIE, "forged")
    assert web.client.get("/api/dashboard/state").status_code == 403
    web.client.cookies.clear()
    assert web.client.get("/dashboard?token=wrong").status_code == 403
    assert web.client.post("/dashboard/login", data={"token": "wrong"}).status_code == 403
    # nothing was changed by the refused requests
    assert web.quota.audit_log() == [] and not web.quota.is_banned(MING) and web.quota.balance(MING) == 0
    # the login page gives nothing of the dashboard away
    page = web.client.get("/dashboard")
    assert "login-form" in page.text and "quota-form" not in page.text


def test_token_link_and_login_form_set_a_session_cookie(web: Web) -> None:
    response = web.client.get(f"/dashboard?token={TOKEN}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    cookie = response.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    assert TOKEN not in cookie  # an HMAC of the token, not the token
    page = web.client.get("/dashboard")
    assert page.status_code == 200 and "quota-form" in page.text
    assert web.client.get("/api/dashboard/state").status_code == 200
    web.client.cookies.clear()
    response = web.client.post("/dashboard/login", data={"token": TOKEN}, follow_redirects=False)
    assert response.status_code == 303 and COOKIE in response.headers["set-cookie"]


def test_dashboard_is_refused_when_no_token_is_configured(tmp_path: Path) -> None:
    with web_app(tmp_path, token=None) as web:
        assert web.client.get("/dashboard").status_code == 403
        assert web.client.get("/api/dashboard/state", headers=BEARER).status_code == 403
        assert web.client.get("/").status_code == 200  # the playground itself still works


def test_state_changes_need_json_and_same_origin(web: Web) -> None:
    body = {"user_id": MING, "op": "set", "value": 9}
    cross = web.client.post("/api/dashboard/quota", json=body, headers={**BEARER, "Origin": "http://evil.example"})
    assert cross.status_code == 403
    form = web.client.post("/api/dashboard/quota", data={"user_id": MING, "op": "set", "value": "9"}, headers=BEARER)
    assert form.status_code == 415
    same = web.client.post("/api/dashboard/quota", json=body, headers={**BEARER, "Origin": "http://127.0.0.1:8765"})
    assert same.status_code == 200 and web.quota.balance(MING) == 9


# ------------------------------------------------------------------------------ dashboard actions
def test_quota_actions_write_the_same_ledger_and_audit_as_the_chat_commands(web: Web) -> None:
    # the chat command first (the playground's admin member, @-mention resolved to the contact id)
    assert web.say(ADMIN_ID, "/设置额度 @小明 7 活动奖励").status_code == 200
    assert web.quota.balance(MING) == 7
    chat_audit = web.quota.audit_log(1)[0]
    assert (chat_audit.actor_id, chat_audit.action, chat_audit.target_id) == (ADMIN_ID, "set", MING)

    post = lambda body: web.client.post("/api/dashboard/quota", json=body, headers=BEARER)  # noqa: E731
    response = post({"user_id": MING, "op": "set", "value": 5, "reason": "dashboard test"})
    assert response.status_code == 200 and response.json()["balance"] == 5
    dash_audit = web.quota.audit_log(1)[0]
    assert (dash_audit.actor_id, dash_audit.action, dash_audit.target_id) == (DASHBOARD_ACTOR, "set", MING)
    assert dash_audit.detail == {"before": 7, "after": 5, "reason": "dashboard test"}
    assert post({"user_id": MING, "op": "add", "value": -2}).json()["balance"] == 3
    assert post({"user_id": MING, "op": "reset"}).json()["balance"] == web.settings.quota.daily
    assert post({"user_id": MING, "op": "set", "value": -1}).status_code == 400
    assert post({"user_id": MING, "op": "set", "value": "lots"}).status_code == 400
    assert post({"user_id": MING, "op": "explode"}).status_code == 400
    assert post({"user_id": "has space", "op": "reset"}).status_code == 400
    rows = web.quota.history(MING, limit=10)
    assert [r.kind for r in reversed(rows)] == ["grant", "adjust", "adjust", "adjust", "adjust"]
    assert [r.actor_id for r in rows[:3]] == [DASHBOARD_ACTOR] * 3
    assert [a.action for a in web.quota.audit_log(4)] == ["reset", "add", "set", "set"]
    ledger = web.client.get(f"/api/dashboard/ledger/{MING}", headers=BEARER).json()
    assert ledger["balance"] == web.settings.quota.daily and len(ledger["rows"]) == 5
    # the admin's /审计 in the chat lists the dashboard's actions too
    web.say(ADMIN_ID, "/审计")
    assert f"管理后台 把 {MING} 的额度恢复为每日额度" in web.bot_texts()[-1]  # the audit in Chinese


def test_ban_from_dashboard_refuses_admins_and_blocks_video(web: Web) -> None:
    ban = lambda body: web.client.post("/api/dashboard/ban", json=body, headers=BEARER)  # noqa: E731
    refused = ban({"user_id": ADMIN_ID, "banned": True})
    assert refused.status_code == 400 and "不能封禁管理员" in refused.json()["error"]
    assert ban({"user_id": HONG, "banned": True, "reason": "spam"}).status_code == 200
    assert web.quota.is_banned(HONG)
    assert web.quota.audit_log(1)[0].action == "ban" and web.quota.audit_log(1)[0].actor_id == DASHBOARD_ACTOR
    web.say(HONG, "/视频 a cat")
    assert BANNED_TEXT in web.bot_texts()[-1] and web.queue.jobs_of(HONG) == []
    assert ban({"user_id": HONG, "banned": False}).status_code == 200 and not web.quota.is_banned(HONG)
    web.say(HONG, "/视频 a cat")
    assert "收到！" in web.bot_texts()[-1]


def test_cancel_from_dashboard_by_job_id_refunds_and_audits(web: Web) -> None:
    web.say(MING, "/视频 first cat")
    web.say(MING, "/视频 second cat")
    first, second = web.queue.jobs_of(MING)
    assert web.quota.balance(MING) == web.settings.quota.daily - 2
    cancel = lambda job_id: web.client.post("/api/dashboard/cancel", json={"job_id": job_id}, headers=BEARER)  # noqa: E731
    assert cancel(999).status_code == 404
    response = cancel(second.id)
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert web.queue.get(second.id).state is JobState.CANCELLED
    assert web.quota.balance(MING) == web.settings.quota.daily - 1  # refunded, with a refund row
    assert web.quota.history(MING, limit=1)[0].kind == "refund"
    audit = web.quota.audit_log(1)[0]
    assert (audit.actor_id, audit.action, audit.detail["job_id"]) == (DASHBOARD_ACTOR, "cancel", second.id)
    assert f"管理员取消了您的任务 #{second.id}" in web.bot_texts()[-1]
    assert cancel(second.id).status_code == 409  # already over
    assert cancel(first.id).status_code == 200  # any pending job, not only the latest
    assert cancel(first.id).status_code == 409


def test_dashboard_state_shows_queue_users_worker_and_daily_counts(web: Web) -> None:
    web.say(MING, "/视频 a queued cat")
    state = web.client.get("/api/dashboard/state", headers=BEARER).json()
    assert [j["prompt"] for j in state["waiting"]] == ["a queued cat"]
    assert state["waiting"][0]["position"] == 1 and state["waiting"][0]["cancellable"] is True
    assert state["recent"][0]["state"] == "queued" and state["recent"][0]["video_url"] is None
    users = {u["user_id"]: u for u in state["users"]}
    assert users[MING]["balance"] == web.settings.quota.daily - 1 and users[MING]["name"] == "小明"
    assert users[ADMIN_ID]["admin"] is True and users[ADMIN_ID]["seen"] is False
    assert len(state["daily"]) == 14 and state["daily"][-1]["pending"] == 1
    assert state["worker"]["generator"] == "synthetic" and state["worker"]["executor"] is None


# ------------------------------------------------------------------------------ uploads
def _chunks(body: bytes, size: int = 16_384) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i:i + size]


def test_upload_too_large_is_refused_before_the_bot_sees_it(tmp_path: Path) -> None:
    with web_app(tmp_path, playground={"max_upload_bytes": 20_000}) as web:
        big = noise_png((200, 200))
        assert len(big) > 20_000
        response = web.say(MING, "", ("big.png", big, "image/png"))
        assert response.status_code == 413, response.text
        assert "太大" in response.json()["error"]
        middling = noise_png((120, 120))  # over the limit, under the form's allowance for headers
        assert 20_000 < len(middling) < 20_000 + 64 * 1024
        response = web.say(MING, "", ("middling.png", middling, "image/png"))
        assert response.status_code == 413, response.text
        # a lying client: no Content-Length (chunked), same answer
        boundary = "xiaoaiboundary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"user_id\"\r\n\r\n{MING}\r\n"
                f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n"
                "Content-Type: image/png\r\n\r\n").encode() + noise_png((400, 400)) + f"\r\n--{boundary}--\r\n".encode()

        response = web.client.post("/api/send", content=_chunks(body),
                                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert response.status_code == 413, response.text
        assert web.channel.events() == [] and web.queue.jobs_of(MING) == []
        ok = web.say(MING, "", ("small.png", png(), "image/png"))
        assert ok.status_code == 200


def test_upload_type_is_checked_with_the_bots_image_validation(web: Web) -> None:
    response = web.say(MING, "", ("notes.txt", b"hello", "text/plain"))
    assert response.status_code == 415 and "只能上传图片" in response.json()["error"]
    response = web.say(MING, "", ("fake.png", b"\x89PNG but not really" * 50, "image/png"))
    assert response.status_code == 415 and "不是一张能打开的图片" in response.json()["error"]
    response = web.say(MING, "", ("tiny.png", png((8, 8)), "image/png"))
    assert response.status_code == 415 and "太小" in response.json()["error"]
    assert web.channel.events() == []
    assert web.say("wxid_nobody", "/帮助").status_code == 400
    assert web.say(MING, "   ").status_code == 400
    assert web.client.post("/api/send", json={"user_id": MING, "text": "/帮助"}).status_code == 415


def test_image_then_video_pairs_through_the_channel(web: Web) -> None:
    data = png((120, 80))
    response = web.say(MING, "/视频 the sea moves", ("sea.png", data, "image/png"))
    assert response.status_code == 200 and len(response.json()["message_ids"]) == 2
    user_events = [e for e in web.channel.events() if e.kind == "user"]
    assert user_events[0].image_url and user_events[1].text == "/视频 the sea moves"
    served = web.client.get(user_events[0].image_url)
    assert served.status_code == 200 and served.headers["content-type"] == "image/png" and served.content == data
    assert "图生视频任务" in web.bot_texts()[-1]
    job = web.queue.jobs_of(MING)[0]
    assert job.image_path and Path(job.image_path).is_file()


# ------------------------------------------------------------------------------ media links
def _finished_job(web: Web, video_path: str, message_id: str) -> int:
    web.quota.ensure_user(MING)
    outcome = web.queue.submit(JobSpec(
        message_id=message_id, user_id=MING, user_name="小明", chat_id=web.channel.settings.room_id,
        chat_kind="group", group_id=web.channel.settings.room_id, prompt="p", final_prompt="p", resolution="384p",
        duration_s=5, seed=1, image_path=None, cost=1))
    assert outcome.job is not None
    claimed = web.queue.claim("w1", 60)
    assert claimed is not None and claimed.id == outcome.job.id
    assert web.queue.complete(claimed.id, "w1", video_path, None, 1.0, "test")
    return claimed.id


def test_videos_are_served_by_job_id_only_inside_the_output_dir(web: Web, tmp_path: Path) -> None:
    out_dir = Path(web.settings.worker.output_dir)
    (out_dir / "7").mkdir(parents=True)
    inside = out_dir / "7" / "video.mp4"
    inside.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(5000))
    good = _finished_job(web, str(inside), "m-good")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"secret")
    bad = _finished_job(web, str(outside), "m-bad")
    sneaky = _finished_job(web, str(out_dir / ".." / "secret.mp4"), "m-sneaky")

    response = web.client.get(f"/media/video/{good}")
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert response.content == inside.read_bytes()
    ranged = web.client.get(f"/media/video/{good}", headers={"Range": "bytes=0-99"})
    assert ranged.status_code == 206 and len(ranged.content) == 100
    assert web.client.get(f"/media/video/{bad}").status_code == 404
    assert web.client.get(f"/media/video/{sneaky}").status_code == 404
    assert web.client.get(f"/media/cover/{good}").status_code == 404  # no cover recorded
    for path in [
        "/media/video/999", "/media/video/..%2F..%2Fetc%2Fpasswd", "/media/video/%2e%2e%2fsecret.mp4",
        "/media/video/-1", f"/media/video/{good}/../../../etc/passwd", "/media/upload/..%2F..%2Fetc%2Fpasswd",
        "/media/upload/img-zzzz", "/static/..%2Fserver.py", "/static/%2e%2e/server.py", "/static/../settings.py",
    ]:
        response = web.client.get(path)
        assert response.status_code == 404, (path, response.status_code)
        assert b"secret" not in response.content and b"root:" not in response.content


def test_other_sites_cannot_post_into_the_playground(web: Web) -> None:
    response = web.client.post("/api/send", data={"user_id": ADMIN_ID, "text": "/设置额度 @小明 99"},
                               headers={"Origin": "http://evil.example"})
    assert response.status_code == 403 and web.channel.events() == [] and web.quota.audit_log() == []
    # DNS rebinding: a foreign Host header is refused when bound to loopback
    assert web.client.get("/api/config", headers={"Host": "evil.example:8765"}).status_code == 400
    assert web.client.get("/api/config", headers={"Host": "localhost:8765"}).status_code == 200


def test_security_headers_and_page(web: Web) -> None:
    page = web.client.get("/")
    assert page.status_code == 200 and "composer" in page.text
    assert page.headers["x-content-type-options"] == "nosniff"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert web.client.get("/static/playground.js").status_code == 200
    config = web.client.get("/api/config").json()
    assert [u["admin"] for u in config["users"]].count(True) == 1


# ------------------------------------------------------------------------------ events
def test_event_stream_replays_history_then_jobs(web: Web) -> None:
    web.say(MING, "/帮助")
    with web.client.stream("GET", "/api/events") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events: list[tuple[str, dict[str, Any]]] = []
        kind = None
        for line in response.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind:
                events.append((kind, json.loads(line[6:])))
                if kind == "jobs":
                    break
    chat = [data for kind, data in events if kind == "chat"]
    assert chat[0]["kind"] == "user" and chat[0]["text"] == "/帮助"
    assert chat[1]["kind"] == "bot" and chat[1]["mention_ids"] == [MING]
    with web.client.stream("GET", "/api/events", headers={"Last-Event-ID": str(chat[0]["seq"])}) as response:
        for line in response.iter_lines():
            if line.startswith("data: "):
                assert json.loads(line[6:])["seq"] == chat[1]["seq"]  # only what came after
                break


# ------------------------------------------------------------------------------ settings
def test_playground_settings_and_secrets() -> None:
    base = Settings.model_validate({"bot": {"admins": ["wxid_real_admin"], "group_allowlist": ["r1@chatroom"]}})
    settings = playground_settings(base, Path("/tmp/x"), synthetic=True, port=0)
    assert settings.bot.admins == ["wxid_real_admin", "wxid_play_admin"]
    assert settings.playground.room_id in settings.bot.group_allowlist
    assert settings.worker.generator == "synthetic" and settings.playground.port == 0
    assert str(settings.storage.db_path) == "/tmp/x/xiaoai.db"
    assert PlaygroundSettings().host == "127.0.0.1"
    with pytest.raises(SettingsError, match="playground.hots"):
        settings_from_mapping({"playground": {"hots": "0.0.0.0"}})
    with pytest.raises(SettingsError, match="secrets"):
        settings_from_mapping({"playground": {"token": "abc"}})
    with pytest.raises(SettingsError, match="unique"):
        settings_from_mapping({"playground": {"users": [{"id": "a", "name": "x"}, {"id": "a", "name": "y"}]}})
    assert dashboard_token({"XIAOAI_DASHBOARD_TOKEN": "long-enough-token"}) == ("long-enough-token", False)
    token, generated = dashboard_token({})
    assert generated and len(token) >= 24
    with pytest.raises(PlaygroundError, match="too short"):
        dashboard_token({"XIAOAI_DASHBOARD_TOKEN": "abc"})


# ------------------------------------------------------------------------------ the first hour of a new user
def test_favicon_is_served_and_every_page_links_it(web: Web) -> None:
    icon = web.client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in icon.content
    assert web.client.get("/static/favicon.svg").status_code == 200
    pages = [web.client.get("/"), web.client.get("/dashboard"), web.client.get("/dashboard", headers=BEARER)]
    for page in pages:
        assert 'rel="icon" href="/static/favicon.svg"' in page.text, page.text[:300]


def test_image_refusals_say_the_image_was_the_problem(web: Web) -> None:
    """The page drops a refused picture (it would otherwise ride along with, and block, every later message)."""
    for upload in (("notes.txt", b"hello", "text/plain"), ("fake.png", b"\x89PNG but not really" * 50, "image/png"),
                   ("tiny.png", png((8, 8)), "image/png")):
        response = web.say(MING, "/帮助", upload)
        assert response.status_code == 415 and response.json()["field"] == "image", response.text
    assert "field" not in web.say(MING, "   ").json()  # not about the picture: nothing to drop
    assert web.say(MING, "/帮助").status_code == 200


def test_dashboard_forms_are_validated_on_the_server(web: Web) -> None:
    post = lambda path, body: web.client.post(path, json=body, headers=BEARER)  # noqa: E731
    web.say(MING, "/额度")
    balance, rows, audit = web.quota.balance(MING), len(web.quota.history(MING, limit=100)), web.quota.audit_log()
    refused = [
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": ""}, "请填写数量"),  # the 设为 bug
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": "  "}, "请填写数量"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "set"}, "请填写数量"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "add", "value": None}, "请填写数量"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": "1.5"}, "整数"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": 1.5}, "整数"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": True}, "整数"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": 10_000_000}, "太大"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "add", "value": 0}, "不会有变化"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": 3, "reason": "x" * 201}, "原因太长"),
        ("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": 3, "reason": 7}, "原因需要是文字"),
        ("/api/dashboard/quota", {"user_id": "", "op": "reset"}, "请先选择用户"),
        ("/api/dashboard/ban", {"user_id": MING}, "banned"),  # a body without the flag bans nobody
        ("/api/dashboard/ban", {"user_id": MING, "banned": "yes"}, "banned"),
        ("/api/dashboard/ban", {"user_id": MING, "banned": True, "reason": "x" * 201}, "原因太长"),
        ("/api/dashboard/cancel", {"job_id": 0}, "job_id"),
        ("/api/dashboard/cancel", {"job_id": "one"}, "job_id"),
    ]
    for path, body, error in refused:
        response = post(path, body)
        assert response.status_code == 400 and error in response.json()["error"], (path, body, response.text)
    for path, body in (("/api/dashboard/quota", {"user_id": "wxid_nobody", "op": "set", "value": 3}),
                       ("/api/dashboard/ban", {"user_id": "wxid_nobody", "banned": True})):
        response = post(path, body)
        assert response.status_code == 404 and "没有这个用户" in response.json()["error"]
    assert web.quota.balance(MING) == balance and len(web.quota.history(MING, limit=100)) == rows
    assert web.quota.audit_log() == audit and not web.quota.is_banned(MING)
    assert web.quota.balance("wxid_nobody") is None or web.quota.history("wxid_nobody") == []
    # an empty login form is told what to type
    login = web.client.post("/dashboard/login", data={"token": "  "})
    assert login.status_code == 400 and "请输入管理令牌" in login.text
    # valid requests still work; the playground member who has not spoken yet counts as known
    assert post("/api/dashboard/quota", {"user_id": MING, "op": "set", "value": "4"}).json()["balance"] == 4
    assert post("/api/dashboard/quota", {"user_id": HONG, "op": "add", "value": -1}).status_code == 200


def test_cpu_runs_are_not_labelled_gpu(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from bot.executors.base import PoolView
    from bot.executors.status import ActorStatus
    from bot.web import dashboard

    def device(generator: str, name: str) -> tuple[str, str]:
        return dashboard.generation_device(Settings.model_validate(
            {"worker": {"generator": generator}, "generation": {"device": name}}))

    assert device("synthetic", "cuda")[0] == "cpu"
    assert device("pyramid_flow", "cpu") == ("cpu", "CPU")
    assert device("pyramid_flow", "cuda:1") == ("cuda", "GPU（cuda:1）")
    assert device("pyramid_flow", "auto")[0] == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(dashboard, "_cuda_present", lambda: False)
    assert device("pyramid_flow", "auto") == ("cpu", "CPU")
    monkeypatch.setattr(dashboard, "_cuda_present", lambda: True)
    assert device("pyramid_flow", "auto") == ("cuda", "GPU（cuda）")
    monkeypatch.setattr(dashboard, "_cuda_present", lambda: False)

    class LocalExecutor:  # what bot.executors.local reports: the configured device string as "gpu"
        def view(self) -> PoolView:
            return PoolView(kind="local", cluster=None, process_alive=True,
                            actors=[ActorStatus(name="gpu-worker", incarnation=0, state="idle", gpu="auto")])

    web.deps.executor = LocalExecutor()
    worker = web.client.get("/api/dashboard/state", headers=BEARER).json()["worker"]
    assert worker["device_kind"] == "cpu" and "GPU" not in worker["device_label"]
    assert [a["device_label"] for a in worker["actors"]] == [worker["device_label"]]
    page = web.client.get("/dashboard", headers=BEARER).text
    assert "生成进程 / GPU" not in page
