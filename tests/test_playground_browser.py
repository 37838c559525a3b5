"""The playground and the dashboard end to end in headless Chromium (Debian's, driven by Playwright):
the real `xiaoai playground` process (router, plugins, SQLite quotas + queue, worker process with the
synthetic generator, delivery loop) behind the real page. Writes docs/playground.png and docs/dashboard.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._web_support import REPO, TOKEN, USERS, Playground, beach_png, playground_process, require_chromium

DOCS = REPO / "docs"
NAMES = {u["name"]: u["id"] for u in USERS}
VIDEO_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Playground]:
    require_chromium()
    # each job runs ~2.4 s so the pages can be seen showing queue position and progress
    slow = {"synthetic_steps": 6, "synthetic_step_delay_s": 0.4}
    with playground_process(tmp_path_factory.mktemp("playground"), quota={"daily": 1}, worker=slow) as pg:
        yield pg


@pytest.fixture(scope="module")
def browser(server: Playground) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    from tests._web_support import CHROMIUM_ARGS

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any, server: Playground) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 820, "height": 980}, locale="zh-CN")
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server.base + "/")
    page.wait_for_selector("body[data-ready='1']")
    try:
        yield page
    finally:
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def act_as(page: Any, name: str) -> None:
    page.select_option("#user-select", NAMES[name])


def say(page: Any, text: str) -> None:
    page.fill("#text", text)
    page.click("#send")


def bot_reply(page: Any, name: str, contains: str, timeout_ms: int = 20_000) -> str:
    """The newest bot reply that @-mentions `name` and contains `contains`."""
    locator = page.locator(".msg[data-kind='bot'] .text", has_text=f"@{name}").filter(has_text=contains).last
    locator.wait_for(timeout=timeout_ms)
    return locator.inner_text()


def job_id_of(ack: str) -> int:
    match = re.search(r"任务 #(\d+)", ack)
    assert match, ack
    return int(match.group(1))


def assert_video_plays(page: Any, job_id: int) -> None:
    selector = f"video[data-job='{job_id}']"
    page.wait_for_selector(selector, timeout=VIDEO_TIMEOUT_MS)
    page.eval_on_selector(selector, "v => { v.muted = true; const p = v.play(); if (p) p.catch(() => {}); }")
    page.wait_for_function(
        """sel => { const v = document.querySelector(sel);
                   return v && !v.error && v.readyState >= 2 && (v.currentTime > 0.1 || v.ended); }""",
        arg=selector, timeout=30_000,
    )
    info = page.eval_on_selector(selector, "v => ({w: v.videoWidth, h: v.videoHeight, d: v.duration, e: v.error})")
    assert info["e"] is None and info["w"] > 0 and info["h"] > 0 and info["d"] > 0, info


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, path


def test_text_to_video_plays_inline(page: Any, server: Playground) -> None:
    act_as(page, "小明")
    say(page, "/视频 a shiba inu running in the snow")
    ack = bot_reply(page, "小明", "收到！文生视频任务")
    assert "第 1 位" in ack or "排队" in ack
    job_id = job_id_of(ack)
    # the user's own message is on the right, like WeChat
    assert page.locator(".msg.mine[data-kind='user']", has_text="a shiba inu").count() == 1
    # queue position / progress is shown live above the input while it waits and runs
    status = page.locator(f"#jobs .job[data-job='{job_id}'] .job-status")
    status.wait_for(timeout=10_000)
    assert re.search(r"排队第 \d+ 位|生成中 \d+%", status.inner_text()), status.inner_text()
    assert_video_plays(page, job_id)
    caption = page.locator(f".msg[data-kind='video']:has(video[data-job='{job_id}']) .text").inner_text()
    assert "你的视频生成好了" in caption and "a shiba inu running in the snow" in caption


def test_image_then_video_is_image_to_video(page: Any, server: Playground) -> None:
    act_as(page, "小红")
    page.set_input_files("#image-input", files=[{"name": "beach.png", "mimeType": "image/png", "buffer": beach_png()}])
    page.wait_for_selector("#preview:not(.hidden)")
    say(page, "/视频 the waves roll gently towards the beach")
    ack = bot_reply(page, "小红", "图生视频任务")
    job_id = job_id_of(ack)
    # the picture was posted into the chat as its own message, then the command
    image = page.locator(".msg.mine[data-kind='user'] img.chat-image").last
    image.wait_for()
    assert page.evaluate("img => img.naturalWidth", image.element_handle()) == 320
    # progress / queue position is shown while it runs (it may be quick: accept having seen it or the video)
    assert_video_plays(page, job_id)
    page.locator("#messages").evaluate("box => box.scrollTop = box.scrollHeight")
    page.wait_for_timeout(300)
    DOCS.mkdir(exist_ok=True)
    page.screenshot(path=str(DOCS / "playground.png"))
    assert_png(DOCS / "playground.png")


def test_quota_exhausted_message(page: Any, server: Playground) -> None:
    act_as(page, "小刚")
    say(page, "/视频 a red kite over the hills")
    job_id = job_id_of(bot_reply(page, "小刚", "收到！"))
    say(page, "/视频 a second one, please")
    refusal = bot_reply(page, "小刚", "额度不足")
    assert "这个视频需要 1 点，您当前剩余 0 点" in refusal
    assert_video_plays(page, job_id)  # the first one still arrives


def test_admin_adjusts_quota_on_dashboard_then_request_succeeds(browser: Any, page: Any, server: Playground) -> None:
    admin = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    try:
        dash = admin.new_page()
        dash.goto(f"{server.base}/dashboard?token={TOKEN}")
        assert dash.url.endswith("/dashboard")  # the token left the address bar for a session cookie
        dash.wait_for_selector("body[data-ready='1']")

        def set_quota(user: str, value: int) -> None:
            dash.select_option("#quota-user", NAMES[user])
            dash.fill("#quota-value", str(value))
            dash.click("#btn-set")
            dash.locator("#toast", has_text=f"设为 {value} 点").wait_for()
            dash.locator(f"#users tr[data-user='{NAMES[user]}'] td.balance", has_text=re.compile(f"^{value}$")).wait_for()

        set_quota("小美", 0)
        act_as(page, "小美")
        say(page, "/视频 a paper boat on a rainy street")
        assert "剩余 0 点" in bot_reply(page, "小美", "额度不足")

        set_quota("小美", 2)
        say(page, "/视频 a paper boat on a rainy street")
        ack = bot_reply(page, "小美", "收到！")
        assert "剩余 1 点" in ack
        job_id = job_id_of(ack)
        # the dashboard shows it live: running with its progress, in the recent list, then delivered
        running = dash.locator(f"#running .running-job[data-job='{job_id}'] .job-status")
        running.wait_for(timeout=15_000)
        assert re.search(r"生成中 \d+%", running.inner_text())
        dash.locator(f"#recent tr[data-job='{job_id}']").wait_for()
        dash.evaluate("document.getElementById('toast').classList.add('hidden')")
        DOCS.mkdir(exist_ok=True)
        dash.screenshot(path=str(DOCS / "dashboard.png"), full_page=True)
        assert_png(DOCS / "dashboard.png")
        assert_video_plays(page, job_id)
        dash.locator(f"#recent tr[data-job='{job_id}'] td.state", has_text="已发送").wait_for(timeout=30_000)
        assert dash.locator(f"#recent tr[data-job='{job_id}'] a[href='/media/video/{job_id}']").count() == 1
        # audited like the chat command, with the dashboard as the actor
        audit = dash.locator("#audit").inner_text()
        assert "设置额度" in audit and "dashboard" in audit and NAMES["小美"] in audit
        dash.click("#btn-ledger")
        ledger = dash.locator("#ledger")
        ledger.wait_for()
        assert "调整" in ledger.inner_text() and "消耗" in ledger.inner_text()
        # the admin's chat command sees the same audit
        act_as(page, "管理员")
        say(page, "/审计")
        assert "dashboard set " + NAMES["小美"] in bot_reply(page, "管理员", "最近的管理操作")
        dash.locator("#daily svg rect").first.wait_for()
    finally:
        admin.close()


def test_dashboard_without_token_is_refused(browser: Any, server: Playground) -> None:
    context = browser.new_context()
    try:
        page = context.new_page()
        response = page.goto(f"{server.base}/dashboard")
        assert response is not None and response.status == 401
        assert page.locator("#login-form").count() == 1
        assert page.locator("#quota-form").count() == 0  # none of the dashboard is shown
        assert context.request.get(f"{server.base}/api/dashboard/state").status == 401
        assert context.request.post(f"{server.base}/api/dashboard/quota", data={"user_id": "x", "op": "reset"}).status == 401
        wrong = page.goto(f"{server.base}/dashboard?token=not-the-token")
        assert wrong is not None and wrong.status == 403
        # the login form with the right token opens it
        page.fill("#login-form input[name=token]", TOKEN)
        page.click("#login-form button")
        page.wait_for_selector("body[data-ready='1']")
        assert page.locator("#quota-form").count() == 1
    finally:
        context.close()
