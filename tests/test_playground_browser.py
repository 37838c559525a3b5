"""The playground and the dashboard end to end in headless Chromium (Debian's, driven by Playwright):
the real `xiaoai playground` process (router, plugins, SQLite quotas + queue, worker process with the
synthetic generator, delivery loop) behind the real page. Writes docs/playground.png and docs/dashboard.png."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._contrast_support import assert_page_readable, assert_toast_readable
from tests._web_support import (
    ADMIN_ID,
    REPO,
    TOKEN,
    USERS,
    Playground,
    beach_png,
    playground_process,
    require_chromium,
)

DOCS = REPO / "docs"
NAMES = {u["name"]: u["id"] for u in USERS}
VIDEO_TIMEOUT_MS = 90_000
MAX_UPLOAD = 256 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Playground]:
    require_chromium()
    # each job runs ~2.4 s so the pages can be seen showing queue position and progress
    slow = {"synthetic_steps": 6, "synthetic_step_delay_s": 0.4}
    with playground_process(tmp_path_factory.mktemp("playground"), quota={"daily": 1}, worker=slow,
                            playground={"max_upload_bytes": MAX_UPLOAD}) as pg:
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
    """Type and send `text`, and wait until the page's POST has answered (the send button is enabled again)."""
    page.fill("#text", text)
    page.click("#send")
    page.wait_for_function("() => !document.getElementById('send').disabled")


def bot_reply(page: Any, name: str, contains: str, timeout_ms: int = 20_000) -> str:
    """The newest bot reply that @-mentions `name` and contains `contains`."""
    locator = page.locator(".msg[data-kind='bot'] .text", has_text=f"@{name}").filter(has_text=contains).last
    locator.wait_for(timeout=timeout_ms)
    return locator.inner_text()


def new_bot_reply(page: Any, name: str, contains: str, before: int, timeout_ms: int = 20_000) -> str:
    """A bot reply to `name` holding `contains` that arrived after `before` such replies were on the page."""
    locator = page.locator(".msg[data-kind='bot'] .text", has_text=f"@{name}").filter(has_text=contains)
    locator.nth(before).wait_for(timeout=timeout_ms)
    return locator.nth(before).inner_text()


def assert_at_bottom(page: Any, timeout_ms: int = 5_000) -> None:
    """The chat shows its newest message (after images and videos finished loading)."""
    page.wait_for_function(
        """() => { const b = document.getElementById("messages");
                   return b.scrollHeight > b.clientHeight && b.scrollHeight - b.scrollTop - b.clientHeight < 4; }""",
        timeout=timeout_ms,
    )


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
    assert_page_readable(page, "playground: job waiting/running")
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
    assert_at_bottom(page)  # the page keeps the newest message in view by itself
    assert_page_readable(page, "playground: image-to-video delivered")
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
    assert "这个视频需要 1 点，你当前剩余 0 点" in refusal
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
        assert f"管理后台 把 小美（{NAMES['小美']}） 的额度设为" in bot_reply(page, "管理员", "最近的管理操作")
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


# ------------------------------------------------------------------- every state readable, bad input handled
def test_rejected_images_are_dropped_and_every_toast_is_readable(page: Any, server: Playground) -> None:
    act_as(page, "管理员")
    assert_page_readable(page, "playground: chat")
    # too large: refused in the page before anything is sent
    huge = b"\x89PNG\r\n\x1a\n" + bytes(MAX_UPLOAD + 1024)
    page.set_input_files("#image-input", files=[{"name": "huge.png", "mimeType": "image/png", "buffer": huge}])
    assert "图片太大了" in assert_toast_readable(page, "error")
    assert page.locator("#preview").get_attribute("class").split().count("hidden") == 1
    # not a picture: the server refuses it; the toast says why and that the picture was removed
    junk = b"not a picture at all " * 200
    page.set_input_files("#image-input", files=[{"name": "notes.png", "mimeType": "image/png", "buffer": junk}])
    page.wait_for_selector("#preview:not(.hidden)")
    images = page.locator(".msg[data-kind='user'] img.chat-image").count()
    before = page.locator(".msg[data-kind='bot'] .text", has_text="@管理员").filter(has_text="剩余额度").count()
    say(page, "/额度")
    toast = assert_toast_readable(page, "error", "不是一张能打开的图片")
    assert "已移除这张图片" in toast
    page.wait_for_selector("#preview.hidden", state="attached")
    assert page.input_value("#text") == "/额度"  # the text is kept for the next try
    # the next message goes through without the refused picture
    page.click("#send")
    new_bot_reply(page, "管理员", "剩余额度", before)
    assert page.locator(".msg[data-kind='user'] img.chat-image").count() == images
    # the server cannot be reached: a readable error toast
    page.route("**/api/send", lambda route: route.abort())
    say(page, "/帮助")
    assert "发送失败" in assert_toast_readable(page, "error")
    page.unroute("**/api/send")
    # the icon the page links to is served
    assert page.evaluate("fetch(document.querySelector('link[rel=icon]').href).then(r => r.status)") == 200


def test_page_that_cannot_load_says_so_readably(browser: Any, server: Playground) -> None:
    context = browser.new_context(viewport={"width": 820, "height": 980}, locale="zh-CN")
    try:
        page = context.new_page()
        page.route("**/api/config", lambda route: route.abort())
        page.goto(server.base + "/")
        assert "页面加载失败" in assert_toast_readable(page, "error")
    finally:
        context.close()


def test_chat_follows_new_messages_unless_scrolled_up(page: Any, server: Playground) -> None:
    act_as(page, "小红")
    for _ in range(3):  # enough text to scroll
        before = page.locator(".msg[data-kind='bot'] .text", has_text="@小红").filter(has_text="可用命令").count()
        say(page, "/帮助")
        new_bot_reply(page, "小红", "可用命令", before)
    assert_at_bottom(page)
    # reading older messages: a new message from someone else does not pull the reader down
    page.locator("#messages").evaluate("box => { box.scrollTop = 0; box.dispatchEvent(new Event('scroll')); }")
    page.wait_for_timeout(200)
    other = page.context.new_page()
    try:
        other.goto(server.base + "/")
        other.wait_for_selector("body[data-ready='1']")
        other.select_option("#user-select", NAMES["小刚"])
        other.fill("#text", "大家好")
        other.click("#send")
        page.locator(".msg[data-kind='user']", has_text="大家好").last.wait_for()
        page.wait_for_timeout(300)
        assert page.locator("#messages").evaluate("box => box.scrollTop") < 50
    finally:
        other.close()
    # sending something yourself brings you back to the end
    say(page, "/队列")
    assert_at_bottom(page)


def test_dashboard_states_are_readable_and_forms_are_validated(browser: Any, server: Playground) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    try:
        page = context.new_page()
        page.goto(f"{server.base}/dashboard")
        assert_page_readable(page, "dashboard: login")
        page.goto(f"{server.base}/dashboard?token=not-the-token")
        assert_page_readable(page, "dashboard: wrong token")
        page.goto(f"{server.base}/dashboard?token={TOKEN}")
        page.wait_for_selector("body[data-ready='1']")
        assert_page_readable(page, "dashboard")
        worker = page.locator("#worker").inner_text()
        assert "CPU" in worker and "GPU" not in worker, worker  # the synthetic generator runs on the CPU

        user = NAMES["小刚"]
        api = f"{server.base}/api/dashboard"

        def ledger_rows() -> int:
            return len(context.request.get(f"{api}/ledger/{user}").json()["rows"])

        rows = ledger_rows()
        page.select_option("#quota-user", user)
        # 设为 with an empty amount: refused in the page, nothing is sent, nothing changes
        page.fill("#quota-value", "")
        page.click("#btn-set")
        assert "请填写数量" in assert_toast_readable(page, "error")
        assert page.get_attribute("#quota-value", "aria-invalid") == "true"
        page.fill("#quota-value", "0")
        page.click("#btn-add")
        assert "不会有变化" in assert_toast_readable(page, "error")
        # the server refuses the same (a client that skips the page's checks)
        for body, error in (
            ({"op": "set", "value": ""}, "请填写数量"),
            ({"op": "set"}, "请填写数量"),
            ({"op": "set", "value": None}, "请填写数量"),
            ({"op": "set", "value": "1.5"}, "整数"),
            ({"op": "add", "value": "abc"}, "整数"),
            ({"op": "set", "value": 10_000_000}, "太大"),
            ({"op": "add", "value": 0}, "不会有变化"),
            ({"op": "set", "value": 3, "reason": "x" * 201}, "原因太长"),
        ):
            response = context.request.post(f"{api}/quota", data={"user_id": user, **body})
            assert response.status == 400 and error in response.json()["error"], (body, response.text())
        unknown = context.request.post(f"{api}/quota", data={"user_id": "wxid_nobody", "op": "set", "value": 3})
        assert unknown.status == 404
        no_flag = context.request.post(f"{api}/ban", data={"user_id": user})
        assert no_flag.status == 400  # a ban request must say banned: true
        assert ledger_rows() == rows
        # a valid change: the success toast is readable too
        page.fill("#quota-value", "3")
        page.click("#btn-add")
        assert "调整 +3 点" in assert_toast_readable(page, "ok")
        assert ledger_rows() == rows + 1
        # the server's refusal shown as a toast
        page.select_option("#quota-user", ADMIN_ID)
        page.click("#btn-ban")
        assert "不能封禁管理员" in assert_toast_readable(page, "error")
        # a banned user's row (red) is readable too
        page.select_option("#quota-user", user)
        page.click("#btn-ban")
        assert "已暂停" in assert_toast_readable(page, "ok")
        page.locator(f"#users tr.banned[data-user='{user}']").wait_for()
        page.evaluate("document.getElementById('toast').classList.add('hidden')")
        assert_page_readable(page, "dashboard: a banned user")
        page.click("#btn-unban")
        page.locator(f"#users tr[data-user='{user}']:not(.banned)").wait_for()
        page.click("#btn-ledger")
        page.locator("#ledger:not(.hidden)").wait_for()
        page.evaluate("document.getElementById('toast').classList.add('hidden')")
        assert_page_readable(page, "dashboard: ledger open")
        assert page.evaluate("fetch('/favicon.ico').then(r => r.status)") == 200
    finally:
        context.close()


def test_quote_button_sends_the_picture_with_the_text(page: Any, server: Playground) -> None:
    """Quote to animate in the page: 引用 under a picture, then the text goes out carrying that picture."""
    act_as(page, "小美")
    page.set_input_files("#image-input", files=[{"name": "beach.png", "mimeType": "image/png", "buffer": beach_png()}])
    page.wait_for_selector("#preview:not(.hidden)")
    buttons = page.locator(".msg.mine[data-kind='user'] .quote-btn")
    before = buttons.count()
    page.click("#send")  # the picture alone
    page.wait_for_function(  # its own message is on the page (earlier tests' pictures may be there too)
        "n => document.querySelectorAll(\".msg.mine[data-kind='user'] .quote-btn\").length > n", arg=before)
    buttons.last.click()
    page.wait_for_selector("#quote:not(.hidden)")
    assert page.input_value("#text") == "/视频 "
    say(page, "/风格")  # answered without charging; the message still carries the quoted picture
    assert "可选风格" in bot_reply(page, "小美", "可选风格")
    page.locator(".msg.mine[data-kind='user']", has_text="/风格").locator(".quote img").wait_for()
    page.wait_for_selector("#quote.hidden", state="attached")


def test_text_typed_while_a_message_is_sending_is_kept(page: Any, server: Playground) -> None:
    """The box is emptied only if it still holds what was sent: the next message typed meanwhile stays."""
    act_as(page, "小明")
    page.evaluate("""() => { const box = document.getElementById("text");
                             box.value = "/队列"; document.getElementById("send").click();
                             box.value = "/额度"; }""")  # typed before the first POST has answered
    bot_reply(page, "小明", "当前队列")
    page.wait_for_function("() => !document.getElementById('send').disabled")
    assert page.input_value("#text") == "/额度"
