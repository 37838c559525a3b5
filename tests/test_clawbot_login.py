"""`xiaoai login clawbot` (`bot.channels.clawbot.login.login`) against the loopback iLink fake."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bot.channels.clawbot.login import login, render_qr
from bot.channels.clawbot.settings import ClawbotSettings
from tests.fakes.clawbot_fake import SCANNER_ID, ClawbotFake


def run(factory: Callable[[], Awaitable[Any]], timeout: float = 30.0) -> Any:
    async def guarded() -> Any:
        return await asyncio.wait_for(factory(), timeout)

    return asyncio.run(guarded())


class Asker:
    """Answers the verification-code prompts from a list, remembering the prompts."""

    def __init__(self, *answers: str) -> None:
        self.answers = list(answers)
        self.prompts: list[str] = []

    def __call__(self, prompt: str) -> str:
        self.prompts.append(prompt)
        if not self.answers:
            raise EOFError
        return self.answers.pop(0)


async def do_login(fake: ClawbotFake, state: Path, asker: Asker | None = None,
                   **overrides: Any) -> tuple[int, list[str]]:  # fmt: skip
    lines: list[str] = []
    settings = ClawbotSettings(**fake.settings_values(state, **overrides))
    code = await login(settings, out=lines.append, ask=asker or Asker())
    return code, lines


def saved(state: Path) -> dict[str, Any]:
    path = state / "credentials.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    return json.loads(path.read_text())


def test_confirmed_login_saves_credentials_mode_600(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake() as fake:
            fake.script_qr("wait", "wait", "scaned", "confirmed")
            code, lines = await do_login(fake, state)
            assert code == 0, lines
            creds = saved(state)
            assert creds["bot_token"] in fake.tokens
            assert (creds["baseurl"], creds["ilink_bot_id"], creds["ilink_user_id"]) == (
                fake.base_url, fake.bot_id, SCANNER_ID)
            assert set(creds) >= {"bot_token", "baseurl", "ilink_bot_id", "ilink_user_id"}
            text = "\n".join(lines)
            qr_url = next(line for line in lines if "liteapp.weixin.qq.com" in line).split(": ", 1)[1]
            assert render_qr(qr_url) in lines  # a real QR block of that very URL
            assert "▀" in render_qr(qr_url) or "▄" in render_qr(qr_url)
            assert "已扫码" in text and "登录成功" in text and "Logged in" in text
            assert creds["bot_token"] not in text
            assert fake.qr_requests == [{"method": "POST", "local_tokens": 0}]
            # logging in again offers the previous token (local_token_list)
            fake.script_qr("confirmed")
            code, _ = await do_login(fake, state)
            assert code == 0 and fake.qr_requests[-1]["local_tokens"] == 1
            assert saved(state)["bot_token"] != creds["bot_token"]
            assert fake.violations == []

    run(scenario)


def test_need_verifycode_asks_and_resends(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake() as fake:
            fake.script_qr("scaned", "need_verifycode", "confirmed")
            asker = Asker("1111", f" {fake.verify_code} ")
            code, lines = await do_login(fake, state, asker)
            assert code == 0, lines
            assert len(asker.prompts) == 2 and "验证码不对" in asker.prompts[1]
            assert saved(state)["bot_token"] in fake.tokens

            # three wrong codes: blocked, clear failure, nothing saved
            blocked = tmp_path / "blocked"
            fake.script_qr("need_verifycode", "confirmed")
            code, lines = await do_login(fake, blocked, Asker("1", "2", "3", "4"))
            assert code == 1 and "锁定" in lines[-1] and "blocked" in lines[-1]
            assert not (blocked / "credentials.json").exists()
            # no answer (EOF) cancels cleanly
            fake.script_qr("need_verifycode")
            code, lines = await do_login(fake, blocked, Asker())
            assert code == 1 and "cancelled" in lines[-1]
            assert fake.violations == []

    run(scenario)


def test_expired_qr_is_refreshed_then_gives_up(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake() as fake:
            fake.script_qr("wait", "expired")
            fake.script_qr("scaned", "confirmed")
            code, lines = await do_login(fake, state)
            assert code == 0, lines
            assert len(fake.qrs) == 2 and sum("liteapp.weixin.qq.com" in line for line in lines) == 2
            assert any("已过期" in line for line in lines)

            other = tmp_path / "other"
            for _ in range(3):
                fake.script_qr("expired")
            code, lines = await do_login(fake, other, max_qr_refreshes=1)
            assert code == 1 and "expired too many times" in lines[-1]
            assert len(fake.qrs) == 4 and not (other / "credentials.json").exists()

    run(scenario)


def test_redirect_moves_polling_to_the_other_host(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake() as fake:
            fake.script_qr("wait", "scaned_but_redirect", "wait", "confirmed")
            code, lines = await do_login(fake, state)
            assert code == 0, lines
            qr = next(iter(fake.qrs.values()))
            statuses = [status for _, status in qr.polls]
            assert statuses[-1] == "confirmed" and "scaned_but_redirect" in statuses
            after = qr.polls[statuses.index("scaned_but_redirect") + 1 :]
            assert after and all(port == fake.redirect_port for port, _ in after)
            assert saved(state)["baseurl"] == fake.base_url

    run(scenario)


def test_binded_redirect_keeps_existing_credentials(tmp_path: Path) -> None:
    state = tmp_path / "clawbot"

    async def scenario() -> None:
        async with ClawbotFake() as fake:
            creds = fake.write_credentials(state)
            before = (state / "credentials.json").read_bytes()
            fake.script_qr("scaned", "binded_redirect")
            code, lines = await do_login(fake, state)
            assert code == 0 and "保留现有登录" in lines[-1]
            assert (state / "credentials.json").read_bytes() == before
            assert saved(state)["bot_token"] == creds["bot_token"]
            fake.script_qr("binded_redirect")
            code, lines = await do_login(fake, tmp_path / "empty")
            assert code == 1 and "no credentials" in lines[-1]

    run(scenario)


def test_network_error_is_one_line_and_nonzero(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def scenario() -> tuple[int, list[str]]:
        lines: list[str] = []
        settings = ClawbotSettings(base_url=f"http://127.0.0.1:{port}", state_dir=tmp_path / "s",
                                   login_poll_interval_s=0.01)  # fmt: skip
        return await login(settings, out=lines.append, ask=Asker()), lines

    code, lines = run(scenario)
    assert code == 1 and len(lines) == 2  # the title, then one line saying what went wrong
    assert lines[1].startswith("无法获取登录二维码 / Cannot get a login QR code") and "\n" not in lines[1]

    async def dies_mid_login() -> tuple[int, list[str]]:
        fake = await ClawbotFake().start()
        fake.script_qr("wait")
        settings = ClawbotSettings(**fake.settings_values(tmp_path / "s2"))
        lines: list[str] = []
        task = asyncio.create_task(login(settings, out=lines.append, ask=Asker()))
        while not fake.calls["get_qrcode_status"]:
            await asyncio.sleep(0.01)
        await fake.stop()
        return await task, lines

    code, lines = run(dies_mid_login)
    assert code == 1 and lines[-1].startswith("网络错误，登录失败 / Network error, login failed")
