"""`xiaoai login clawbot`: the QR login of the iLink bot API (channels-2026.md §1.3).

Draws the QR code in the terminal (segno) with its URL, polls its status and, once the scanner confirms
on their phone, saves `{bot_token, baseurl, ilink_bot_id, ilink_user_id}` to
`<state_dir>/credentials.json` (mode 600). A running bot that paused for an expired session notices
the new file and resumes by itself. Network problems end with one line and a non-zero exit code,
never a traceback; the bot token is never printed.
"""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx
import segno

from bot.channels.clawbot.api import IlinkApi, IlinkError, IlinkTransportError
from bot.channels.clawbot.settings import ClawbotSettings
from bot.channels.clawbot.state import ClawbotState, Credentials

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILED = 1
MAX_NETWORK_FAILURES = 3


def render_qr(url: str) -> str:
    """The QR code of `url` as terminal text (half-height blocks)."""
    buffer = io.StringIO()
    segno.make(url, error="m").terminal(out=buffer, compact=True)
    return buffer.getvalue()


class _LoginFailed(Exception):
    """Ends the login with this one line (exit code 1)."""


class _Login:
    def __init__(self, settings: ClawbotSettings, out: Callable[[str], None], ask: Callable[[str], str],
                 http: httpx.AsyncClient) -> None:  # fmt: skip
        self.settings = settings
        self.out = out
        self.ask = ask
        self.api = IlinkApi(http, settings, base_url=settings.base_url)
        self.state = ClawbotState(settings.state_dir)
        self.existing = self.state.load_credentials()
        self.qrcode = ""
        self.qr_count = 0

    async def _new_qr(self) -> None:
        local_tokens = [self.existing.bot_token] if self.existing else []
        try:
            data = await self.api.get_bot_qrcode(local_tokens)
        except (IlinkTransportError, IlinkError) as exc:
            raise _LoginFailed(f"无法获取登录二维码 / Cannot get a login QR code: {exc}") from None
        qrcode = str(data.get("qrcode") or "")
        url = str(data.get("qrcode_img_content") or "")
        if not qrcode or not url:
            raise _LoginFailed("服务器没有返回二维码 / The server returned no QR code")
        self.qrcode = qrcode
        self.qr_count += 1
        self.out(render_qr(url))
        self.out(f"请用微信扫描上方二维码 / Scan the QR code above with WeChat ({self.qr_count}/"
                 f"{self.settings.max_qr_refreshes + 1})")
        self.out(f"二维码显示不全时，用微信打开此链接 / If the code does not render, open this link in WeChat: {url}")

    def _ask_code(self, again: bool) -> str:
        prompt = ("验证码不对，请重新输入手机上显示的数字 / Wrong code, enter the number shown on your phone: "
                  if again else "请输入手机微信上显示的数字 / Enter the number shown in WeChat on your phone: ")
        try:
            code = self.ask(prompt)
        except (EOFError, KeyboardInterrupt):
            raise _LoginFailed("未输入验证码，登录取消 / No verification code entered, login cancelled") from None
        code = "".join(ch for ch in (code or "") if not ch.isspace())
        if not code:
            raise _LoginFailed("未输入验证码，登录取消 / No verification code entered, login cancelled")
        return code

    def _save(self, data: dict[str, Any]) -> int:
        token = data.get("bot_token")
        if not isinstance(token, str) or not token.strip():
            raise _LoginFailed("服务器确认了登录但没有返回凭据 / Login confirmed but no credentials were returned")
        creds = Credentials(bot_token=token.strip(), baseurl=str(data.get("baseurl") or self.settings.base_url),
                            ilink_bot_id=str(data.get("ilink_bot_id") or ""),
                            ilink_user_id=str(data.get("ilink_user_id") or ""), saved_at=time.time())  # fmt: skip
        try:
            self.state.save_credentials(creds)
        except OSError as exc:
            raise _LoginFailed(f"无法保存凭据 / Cannot save the credentials to {self.state.credentials_path}: "
                               f"{type(exc).__name__}") from None
        self.out(f"登录成功 / Logged in: 机器人 / bot {creds.ilink_bot_id or '?'}，扫码人 / scanned by "
                 f"{creds.ilink_user_id or '?'}")
        self.out(f"凭据已保存（仅本用户可读）/ Credentials saved (mode 600): {self.state.credentials_path}")
        self.out("正在运行的机器人会自动使用新的登录 / A running bot picks up the new login by itself.")
        return EXIT_OK

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.login_timeout_s
        self.out("微信 ClawBot 登录 / WeChat ClawBot login")
        await self._new_qr()
        poll_base = self.settings.base_url
        verify_code: str | None = None
        scanned = False
        failures = 0
        interval = self.settings.login_poll_interval_s
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _LoginFailed(f"登录超时（{self.settings.login_timeout_s:.0f} 秒）/ Login timed out, run it again")
            try:
                data = await self.api.get_qrcode_status(
                    self.qrcode, base_url=poll_base, verify_code=verify_code,
                    timeout=min(self.settings.login_poll_timeout_s, max(remaining, 0.1)))  # fmt: skip
            except IlinkTransportError as exc:
                if exc.timeout or (exc.status is not None and exc.status >= 500):
                    data = {"status": "wait"}  # the long poll ended without news
                else:
                    failures += 1
                    if failures >= MAX_NETWORK_FAILURES:
                        raise _LoginFailed(f"网络错误，登录失败 / Network error, login failed: {exc}") from None
                    await asyncio.sleep(interval)
                    continue
            failures = 0
            sent_code, verify_code = verify_code, None
            status = str(data.get("status") or "wait")
            if status == "wait":
                pass
            elif status == "scaned":
                if not scanned:
                    self.out("已扫码，请在手机上确认登录 / Scanned: confirm the login on your phone")
                    scanned = True
            elif status == "need_verifycode":
                verify_code = self._ask_code(again=sent_code is not None)
                continue
            elif status == "verify_code_blocked":
                raise _LoginFailed("验证码错误次数过多，已被锁定，请稍后重试 / Too many wrong codes: verification "
                                   "is blocked, try again later")
            elif status == "expired":
                if self.qr_count > self.settings.max_qr_refreshes:
                    raise _LoginFailed("二维码多次过期，登录取消 / The QR code expired too many times, login cancelled")
                self.out("二维码已过期，正在刷新 / QR code expired, here is a new one")
                scanned = False
                poll_base = self.settings.base_url
                await self._new_qr()
                continue
            elif status == "scaned_but_redirect":
                host = str(data.get("redirect_host") or "").strip().strip("/")
                if host and "/" not in host:
                    poll_base = f"{self.settings.redirect_scheme}://{host}"
                    log.info("QR status polling moved to %s", poll_base)
                if not scanned:
                    self.out("已扫码，请在手机上确认登录 / Scanned: confirm the login on your phone")
                    scanned = True
                continue
            elif status == "binded_redirect":
                if self.existing is not None:
                    self.out("这个微信已经绑定了本机器人，保留现有登录 / This WeChat is already bound to this bot: "
                             "keeping the existing credentials")
                    return EXIT_OK
                raise _LoginFailed("这个微信已绑定本机器人，但本机没有保存的凭据：请在微信里解除绑定后重试 / Already "
                                   "bound, but no credentials are saved here: unbind in WeChat and try again")
            elif status == "confirmed":
                return self._save(data)
            else:
                log.info("unknown QR status %r; treating it as wait", status[:40])
            await asyncio.sleep(interval)


async def login(settings: ClawbotSettings, *, out: Callable[[str], None], ask: Callable[[str], str],
                http: httpx.AsyncClient | None = None) -> int:  # fmt: skip
    """Run the QR login; 0 when credentials were saved (or an existing binding kept), else 1.

    `out` prints one line (or the QR block), `ask` asks the operator a question and returns the answer
    (used for the verification number some logins show on the phone).
    """
    client = http or httpx.AsyncClient()
    try:
        return await _Login(settings, out, ask, client).run()
    except _LoginFailed as exc:
        out(str(exc))
        return EXIT_FAILED
    except httpx.HTTPError as exc:  # anything the API wrapper did not classify
        out(f"网络错误，登录失败 / Network error, login failed: {type(exc).__name__}")
        return EXIT_FAILED
    finally:
        if http is None:
            await client.aclose()
