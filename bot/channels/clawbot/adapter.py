"""WeChat ClawBot (iLink bot API): the `bot.channel.Channel` adapter (channels-2026.md §1).

Private chats only. What the platform imposes, and what this adapter does about it:

* Receiving is a long poll (`getupdates`) with an opaque cursor. The cursor is saved after each batch
  has been handed to `on_message`, and handled message ids are saved as they go, so a crash re-delivers
  at most the last batch and a protocol replay is dropped. uint64 ids stay exact (ints → str).
* Every send needs the user's latest `context_token`, at most `max_sends_per_inbound` sends per inbound
  message and within `reply_window_s`. The adapter keeps those tokens and counters on disk and raises
  `DeliveryDeferred` itself (no server call) when a send would break a rule; a server `ret=-2` is
  also `DeliveryDeferred`. The core retries after the user's next message, which brings a new token.
* Videos are encrypted (AES-128-ECB), uploaded to the CDN and sent as a video item, then the caption
  as its own text. Per `job_id` the adapter records what went out, so a retry sends only what is missing
  and never the same video twice.
* `ret/errcode -14` (session expired) pauses the channel and alerts the operator; the adapter resumes by
  itself when `xiaoai login clawbot` writes a new credentials file.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.channel import (
    ChannelCapabilities,
    ChannelStartError,
    DeliveryDeferred,
    DeliveryError,
    ImageFetchError,
    MessageHandler,
)
from bot.channels.clawbot import cdn, crypto
from bot.channels.clawbot.api import (
    RET_OK,
    RET_SESSION_EXPIRED,
    RET_STALE_CONTEXT,
    IlinkApi,
    IlinkError,
    IlinkTransportError,
    result_code,
)
from bot.channels.clawbot.settings import ClawbotSettings
from bot.channels.clawbot.state import ClawbotState, Credentials
from bot.channels.ids import local_part, qualify
from bot.messages import ChatKind, ImageRef, Message, OutgoingText, OutgoingVideo
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL_NAME = "clawbot"
NOT_LOGGED_IN = ("微信 ClawBot 未登录：请先运行 xiaoai login clawbot / "
                 "ClawBot is not logged in: run `xiaoai login clawbot`")  # fmt: skip
SESSION_REFUSED = ("微信 ClawBot 登录已失效：请运行 xiaoai login clawbot 重新扫码 / "
                   "ClawBot session expired: run `xiaoai login clawbot` and scan again")  # fmt: skip
ALERT_SESSION_EXPIRED = ("微信 ClawBot 登录已过期，请管理员运行 xiaoai login clawbot 重新扫码；"
                         "排队中的视频不会丢失，重新登录后自动恢复。")  # fmt: skip
ALERT_RESUMED = "微信 ClawBot 已重新登录，恢复收发消息。"
DEFERRED_HINT = "生成好会发给你；如果没收到，回复任意消息即可领取"

MSG_TYPE_USER = 1
MSG_TYPE_BOT = 2
MSG_STATE_FINISH = 2
ITEM_TEXT = 1
ITEM_IMAGE = 2
ITEM_VIDEO = 5
MEDIA_TYPE_VIDEO = 2
MAX_IMAGE_SOURCES = 1000
JSON_SAFE_INT = 2**53

HttpFactory = Callable[[], httpx.AsyncClient]


@dataclass(frozen=True, slots=True)
class _ImageSource:
    """Where an inbound image lives on the CDN and how to decrypt it (kept in memory only)."""

    media: dict[str, Any] = field(repr=False)
    key: bytes | None = field(repr=False)
    user_id: str = ""


def id_text(value: Any) -> str | None:
    """A platform id as exact text: ints (any size) and digit strings as-is; never via float."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        value = value.strip()
        return value or None
    if isinstance(value, float) and value.is_integer() and abs(value) < JSON_SAFE_INT:
        return str(int(value))
    return None


def chunk_text(text: str, limit: int) -> list[str]:
    """Split `text` into pieces of at most `limit` characters, preferring line breaks."""
    text = text.strip()
    chunks: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        if cut < limit // 2:
            cut = limit
        chunks.append(text[:cut].rstrip())
        text = text[cut:].lstrip("\n")
    if text:
        chunks.append(text)
    return chunks


def text_item(text: str) -> dict[str, Any]:
    return {"type": ITEM_TEXT, "text_item": {"text": text}}


class ClawbotChannel:
    """`bot.channel.Channel` over the iLink bot API; see the module docstring."""

    name = CHANNEL_NAME

    def __init__(self, settings: ClawbotSettings, *, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time, http_factory: HttpFactory | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:  # fmt: skip
        self._settings = settings
        self._environ = environ  # unused: the token comes from the credentials file, not the environment
        self._clock = clock
        self._sleep = sleep
        self._http_factory = http_factory or (lambda: httpx.AsyncClient())
        self._state = ClawbotState(settings.state_dir, max_seen=settings.dedupe_max_ids,
                                   seen_ttl_s=settings.dedupe_ttl_s)  # fmt: skip
        self.capabilities = ChannelCapabilities(
            groups=False, mentions=False, proactive=False, reply_window_s=settings.reply_window_s,
            sends_per_inbound=settings.max_sends_per_inbound, quotes=True, deferred_hint=DEFERRED_HINT)  # fmt: skip
        self.on_alert: Callable[[str], Awaitable[None]] | None = None
        self._http: httpx.AsyncClient | None = None
        self._api: IlinkApi | None = None
        self._creds: Credentials | None = None
        self._creds_sig: tuple[int, int, int] | None = None
        self._on_message: MessageHandler | None = None
        self._poller: asyncio.Task[None] | None = None
        self._running = False
        self._paused = False
        self._connected = False
        self._connected_event = asyncio.Event()
        self._failures = 0
        self._send_lock = asyncio.Lock()
        self._last_send = 0.0  # monotonic
        self._images: OrderedDict[str, _ImageSource] = OrderedDict()
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"ClawbotChannel(bot_id={self.bot_id!r}, connected={self.connected}, paused={self._paused})"

    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str] | None = None, **kwargs: Any) -> ClawbotChannel:
        """Build from the root `Settings` (its `channels.clawbot`) or a `ClawbotSettings`."""
        section = settings if isinstance(settings, ClawbotSettings) else settings.channels.clawbot
        return cls(section, environ=environ, **kwargs)

    # ------------------------------------------------------------------ Channel protocol: state
    @property
    def bot_id(self) -> str:
        return qualify(self.name, self._creds.ilink_bot_id) if self._creds and self._creds.ilink_bot_id else ""

    @property
    def connected(self) -> bool:
        return self._running and self._connected and not self._paused

    @property
    def paused(self) -> bool:
        """True while the session has expired and we wait for `xiaoai login clawbot`."""
        return self._paused

    async def wait_connected(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._connected_event.wait(), timeout)
        except TimeoutError:
            return False
        return self.connected

    def _set_connected(self, value: bool) -> None:
        self._connected = value
        if value and not self._paused:
            self._connected_event.set()
        else:
            self._connected_event.clear()

    # ------------------------------------------------------------------ start / stop
    def _apply_credentials(self, creds: Credentials, signature: tuple[int, int, int] | None) -> None:
        previous = self._creds
        self._creds, self._creds_sig = creds, signature
        base = creds.baseurl or self._settings.base_url
        if self._api is not None:
            self._api.set_token(creds.bot_token, base)
        if previous is None or previous.ilink_bot_id != creds.ilink_bot_id:
            self._state.load(creds.ilink_bot_id)
            self._images.clear()

    async def start(self, on_message: MessageHandler) -> None:
        if self._running:
            return
        signature = self._state.credentials_signature()
        creds = self._state.load_credentials()
        if creds is None:
            raise ChannelStartError(NOT_LOGGED_IN)
        self._on_message = on_message
        self._http = self._http_factory()
        self._api = IlinkApi(self._http, self._settings, base_url=creds.baseurl or self._settings.base_url)
        self._creds = None
        self._apply_credentials(creds, signature)
        try:
            await self._api.notifystart()
        except IlinkError as exc:
            if exc.session_expired:
                await self._close_http()
                raise ChannelStartError(SESSION_REFUSED) from None
            log.warning("notifystart refused (%s); polling anyway", exc)
        except IlinkTransportError as exc:
            log.warning("notifystart failed (%s); polling anyway", exc)
        self._running = True
        self._paused = False
        self._set_connected(True)
        self._poller = asyncio.create_task(self._poll_loop(), name="clawbot-poll")
        log.info("clawbot channel started as %s", creds.ilink_bot_id or "?")

    async def stop(self) -> None:
        if not self._running:
            return
        self._running = False
        await cancel_and_wait(self._poller)
        self._poller = None
        if self._api is not None and not self._paused:
            try:
                await self._api.notifystop(timeout=3.0)
            except (IlinkError, IlinkTransportError) as exc:
                log.info("notifystop failed: %s", exc)
        self._set_connected(False)
        await self._close_http()
        log.info("clawbot channel stopped")

    async def _close_http(self) -> None:
        if self._http is not None:
            await self._http.aclose()
        self._http = None

    # ------------------------------------------------------------------ alerts and session expiry
    async def _alert(self, text: str) -> None:
        callback = self.on_alert
        if callback is None:
            return
        try:
            await asyncio.wait_for(callback(text), 30.0)
        except Exception:  # an alert must never break the channel
            log.warning("on_alert callback failed", exc_info=True)

    async def _pause(self, where: str) -> None:
        if self._paused:
            return
        self._paused = True
        self._set_connected(False)
        self.last_error = f"session expired ({where})"
        log.warning("clawbot session expired (%s): paused until `xiaoai login clawbot` writes new credentials", where)
        await self._alert(ALERT_SESSION_EXPIRED)

    async def _wait_for_new_login(self) -> None:
        """While paused: watch the credentials file; resume once it holds a login we have not tried."""
        while self._running:
            signature = self._state.credentials_signature()
            if signature is not None and signature != self._creds_sig:
                creds = self._state.load_credentials()
                self._creds_sig = signature
                if creds is not None:
                    self._apply_credentials(creds, signature)
                    assert self._api is not None
                    try:
                        await self._api.notifystart()
                    except IlinkError as exc:
                        if exc.session_expired:
                            log.warning("new clawbot credentials were refused as well; still paused")
                            continue
                        log.warning("notifystart refused (%s); polling anyway", exc)
                    except IlinkTransportError as exc:
                        log.warning("notifystart failed (%s); polling anyway", exc)
                    self._paused = False
                    self._failures = 0
                    self._set_connected(True)
                    self.last_error = None
                    log.info("clawbot credentials changed: resumed as %s", creds.ilink_bot_id or "?")
                    await self._alert(ALERT_RESUMED)
                    return
            await self._sleep(self._settings.credentials_watch_s)

    # ------------------------------------------------------------------ receiving
    def _failure_delay(self) -> float:
        s = self._settings
        if self._failures >= s.poll_failures_before_backoff:
            base = s.poll_backoff_s
        else:
            base = min(s.poll_retry_s * (2 ** (self._failures - 1)), s.poll_backoff_s)
        return base * random.uniform(0.8, 1.2)

    async def _poll_loop(self) -> None:
        timeout = self._settings.poll_timeout_s
        while self._running:
            if self._paused:
                await self._wait_for_new_login()
                continue
            assert self._api is not None
            failure: str | None = None
            expired = False
            try:
                data = await self._api.getupdates(self._state.cursor, timeout=timeout)
            except IlinkTransportError as exc:
                if exc.timeout and exc.maybe_sent:
                    continue  # the long poll ended on our side without news: poll again, same cursor
                failure = str(exc)
            except IlinkError as exc:
                expired, failure = exc.session_expired, str(exc)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # never let the receive loop die
                log.exception("unexpected error while polling")
                failure = type(exc).__name__
            if expired:
                await self._pause("getupdates")
                continue
            if failure is not None:
                await self._poll_failed(failure)
                continue
            self._failures = 0
            self.last_error = None
            self._set_connected(True)
            suggested = data.get("longpolling_timeout_ms")
            if isinstance(suggested, int) and not isinstance(suggested, bool) and suggested > 0:
                timeout = max(self._settings.poll_timeout_s, suggested / 1000.0 + 1.0)
            try:
                await self._handle_batch(data)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not process a batch of updates")

    async def _poll_failed(self, reason: str) -> None:
        self._failures += 1
        self.last_error = reason
        if self._failures >= self._settings.poll_failures_before_backoff:
            self._set_connected(False)
        delay = self._failure_delay()
        log.warning("getupdates failed (%d in a row): %s; retrying in %.1fs", self._failures, reason, delay)
        await self._sleep(delay)

    async def _handle_batch(self, data: dict[str, Any]) -> None:
        msgs = data.get("msgs") or []
        if isinstance(msgs, list):
            self._adopt_latest_contexts(msgs)
            for raw in msgs:
                if not self._running or self._paused:
                    return  # cursor not advanced: the rest comes again
                await self._handle_raw(raw)
        cursor = data.get("get_updates_buf", data.get("sync_buf"))
        if isinstance(cursor, str) and cursor and cursor != self._state.cursor:
            self._state.cursor = cursor
            self._state.save_sync()

    def _adopt_latest_contexts(self, msgs: list[Any]) -> None:
        """Before answering any message of a batch, take each user's newest context token from it: a send
        needs the latest token, so the ack of a photo followed at once by `/视频` must not use the
        photo's (by then stale) token."""
        now = self._clock()
        for raw in msgs:
            if not isinstance(raw, dict) or raw.get("message_type") != MSG_TYPE_USER or raw.get("group_id"):
                continue
            user, token = str(raw.get("from_user_id") or ""), raw.get("context_token")
            platform_id = id_text(raw.get("message_id")) or id_text(raw.get("client_id"))
            if user and isinstance(token, str) and token and platform_id and not self._state.is_seen(platform_id):
                self._state.set_context(user, token, now, platform_id)

    async def _handle_raw(self, raw: Any) -> None:
        if not isinstance(raw, dict) or raw.get("message_type") != MSG_TYPE_USER:
            return
        platform_id = id_text(raw.get("message_id")) or id_text(raw.get("client_id"))
        if platform_id is None:
            seq = id_text(raw.get("seq"))
            platform_id = f"seq-{seq}" if seq else f"anon-{secrets.token_hex(8)}"
        user = str(raw.get("from_user_id") or "")
        extra = {"chat_id": qualify(self.name, user), "user_id": qualify(self.name, user),
                 "message_id": qualify(self.name, platform_id)}  # fmt: skip
        if self._state.is_seen(platform_id):
            log.debug("duplicate inbound message dropped", extra=extra)
            return
        now = self._clock()
        if not user or raw.get("group_id"):
            log.info("ignoring a message that is not a private chat", extra=extra)
            self._state.mark_seen(platform_id, now)
            self._state.save_sync()
            return
        token = raw.get("context_token")
        if isinstance(token, str) and token:
            self._state.set_context(user, token, now, platform_id)
        message = self._to_message(raw, platform_id, user, now)
        if self._on_message is not None:
            try:
                await self._on_message(message)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("message handler failed", extra=extra)
        self._state.mark_seen(platform_id, self._clock())
        self._state.save_sync()

    def _register_image(self, image_id: str, image_item: Any, user: str) -> ImageRef | None:
        if not isinstance(image_item, dict):
            return None
        media = image_item.get("media")
        if not isinstance(media, dict) or not (media.get("encrypt_query_param") or media.get("full_url")):
            return None
        key: bytes | None = None
        for candidate in (image_item.get("aeskey"), media.get("aes_key")):
            if isinstance(candidate, str) and candidate:
                try:
                    key = crypto.parse_aes_key(candidate)
                    break
                except crypto.CryptoError:
                    continue
        self._images[image_id] = _ImageSource(media=dict(media), key=key, user_id=user)
        while len(self._images) > MAX_IMAGE_SOURCES:
            self._images.popitem(last=False)
        size = image_item.get("hd_size") or image_item.get("mid_size")
        size_hint = size if isinstance(size, int) and not isinstance(size, bool) and size > 0 else None
        return ImageRef(image_id=image_id, size_hint=size_hint)

    def _to_message(self, raw: dict[str, Any], platform_id: str, user: str, now: float) -> Message:
        texts: list[str] = []
        image: ImageRef | None = None
        quoted: ImageRef | None = None
        items = raw.get("item_list") if isinstance(raw.get("item_list"), list) else []
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind == ITEM_TEXT:
                text_part = (item.get("text_item") or {}).get("text")
                if isinstance(text_part, str):
                    texts.append(text_part)
            elif kind == ITEM_IMAGE and image is None:
                image = self._register_image(f"{platform_id}/{index}", item.get("image_item"), user)
            ref = item.get("ref_msg")
            if quoted is None and isinstance(ref, dict):
                ref_item = ref.get("message_item")
                if isinstance(ref_item, dict) and ref_item.get("type") == ITEM_IMAGE:
                    quoted = self._register_image(f"{platform_id}/q{index}", ref_item.get("image_item"), user)
        created = raw.get("create_time_ms")
        timestamp = created / 1000.0 if isinstance(created, int) and not isinstance(created, bool) and created else now
        qualified_user = qualify(self.name, user)
        return Message(message_id=qualify(self.name, platform_id), chat_id=qualified_user, kind=ChatKind.PRIVATE,
                       sender_id=qualified_user, sender_name=user.split("@", 1)[0],
                       text="\n".join(t.strip() for t in texts if t.strip()), image=image or quoted,
                       timestamp=timestamp)  # fmt: skip

    # ------------------------------------------------------------------ images
    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        ref = message.image
        if ref is None:
            raise ImageFetchError("message has no image")
        source = self._images.get(ref.image_id)
        if source is None:
            raise ImageFetchError("图片已过期，请重新发送 / image no longer available, send it again")
        if self._http is None:
            raise ImageFetchError("clawbot channel is not running")
        try:
            url = cdn.download_url(self._settings.cdn_base_url, source.media)
        except cdn.CdnError as exc:
            raise ImageFetchError(str(exc)) from None
        limit = max_bytes + crypto.BLOCK if source.key else max_bytes
        data = b""
        for attempt in range(1, 3):
            try:
                data = await cdn.download(self._http, url, max_bytes=limit, timeout_s=self._settings.http_timeout_s)
                break
            except cdn.TooLarge as exc:
                raise ValueError(f"image bigger than {max_bytes} bytes") from exc
            except cdn.CdnError as exc:
                if not exc.retryable or attempt == 2:
                    raise ImageFetchError(f"cannot download image: {exc}") from None
                await self._sleep(self._settings.send_retry_initial_s)
        if source.key is not None:
            try:
                data = crypto.decrypt(data, source.key)
            except crypto.CryptoError as exc:
                raise ImageFetchError(f"cannot decrypt image: {exc}") from None
        if len(data) > max_bytes:
            raise ValueError(f"image bigger than {max_bytes} bytes")
        return data

    # ------------------------------------------------------------------ sending: rules
    def _user_of(self, chat_id: str) -> str:
        try:
            return local_part(self.name, chat_id)
        except ValueError as exc:
            raise DeliveryError(str(exc)) from None

    def _check_budget(self, user: str, need: int) -> None:
        """DeliveryDeferred (no server call) unless `need` more sends fit the user's reply context."""
        if self._paused:
            raise DeliveryDeferred("微信 ClawBot 登录已过期，等待重新登录 / session expired, waiting for a new login")
        if not self._running or self._api is None:
            raise DeliveryError("clawbot channel is not running")
        ctx = self._state.context(user)
        if ctx is None:
            raise DeliveryDeferred("no reply context for this user yet: waiting for their next message")
        if ctx.stale:
            raise DeliveryDeferred("the user's reply context was refused: waiting for their next message")
        if self._clock() - ctx.received_at > self._settings.reply_window_s:
            raise DeliveryDeferred("the reply window has passed: waiting for the user's next message")
        if ctx.sends + need > self._settings.max_sends_per_inbound:
            raise DeliveryDeferred(f"send budget of this inbound message spent ({ctx.sends}+{need} > "
                                   f"{self._settings.max_sends_per_inbound}): waiting for the user's next message")

    async def _pace(self) -> None:
        wait = self._last_send + self._settings.send_interval_s - time.monotonic()
        if wait > 0:
            await self._sleep(wait)

    async def _send_item(self, user: str, item: dict[str, Any], extra: dict[str, str]) -> None:
        """One sendmessage with one item; counts it against the user's context.

        Raises DeliveryDeferred (ret −2, session expired), DeliveryError (maybe_delivered when the
        request may have reached the server)."""
        ctx = self._state.context(user)
        assert ctx is not None and self._api is not None
        msg = {"from_user_id": "", "to_user_id": user, "client_id": f"xiaoai-{secrets.token_hex(12)}",
               "message_type": MSG_TYPE_BOT, "message_state": MSG_STATE_FINISH, "context_token": ctx.token,
               "item_list": [item]}  # fmt: skip
        delay = self._settings.send_retry_initial_s
        attempt = 0
        while True:
            attempt += 1
            await self._pace()
            try:
                data = await self._api.sendmessage(msg)
            except IlinkTransportError as exc:
                self._last_send = time.monotonic()
                if exc.retryable and attempt <= self._settings.send_retries:
                    log.warning("sendmessage failed (%s); retry %d in %.1fs", exc, attempt, delay, extra=extra)
                    await self._sleep(delay)
                    delay *= 2
                    continue
                if exc.maybe_sent:
                    self._state.record_send(user)
                raise DeliveryError(f"sendmessage: {exc}", maybe_delivered=exc.maybe_sent) from None
            self._last_send = time.monotonic()
            ret, errcode = result_code(data)
            if ret == RET_OK:
                self._state.record_send(user)
                return
            if RET_SESSION_EXPIRED in (ret, errcode):
                await self._pause("sendmessage")
                raise DeliveryDeferred("微信 ClawBot 登录已过期 / session expired")
            if ret == RET_STALE_CONTEXT:
                self._state.mark_stale(user)
                log.info("sendmessage ret=-2: reply context refused; deferred until the user writes", extra=extra)
                raise DeliveryDeferred("reply context refused (ret -2): waiting for the user's next message")
            log.warning("sendmessage refused: ret=%s errcode=%s", ret, errcode, extra=extra)
            raise DeliveryError(f"sendmessage refused: ret={ret} errcode={errcode}")

    # ------------------------------------------------------------------ sending: texts
    async def send_text(self, out: OutgoingText) -> None:
        user = self._user_of(out.chat_id)
        chunks = chunk_text(out.text, self._settings.text_chunk_chars)
        if not chunks:
            return
        extra = {"chat_id": out.chat_id, "user_id": out.chat_id, "message_id": out.reply_to or "", "job_id": ""}
        async with self._send_lock:
            self._check_budget(user, len(chunks))
            for index, chunk in enumerate(chunks):
                try:
                    await self._send_item(user, text_item(chunk), extra)
                except DeliveryError as exc:
                    if index:  # part of the text is already out: never resend blindly
                        raise DeliveryError(str(exc), maybe_delivered=True) from None
                    raise

    # ------------------------------------------------------------------ sending: videos
    async def _upload_video(self, user: str, path: Path, extra: dict[str, str]) -> dict[str, Any]:
        """Encrypt and upload the MP4; the video item to send. DeliveryError when it cannot be done."""
        assert self._api is not None and self._http is not None
        try:
            plain = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            raise DeliveryError(f"cannot read the video file: {type(exc).__name__}") from None
        key = crypto.new_key()
        cipher = await asyncio.to_thread(crypto.encrypt, plain, key)
        filekey = secrets.token_hex(16)
        request = {"filekey": filekey, "media_type": MEDIA_TYPE_VIDEO, "to_user_id": user, "rawsize": len(plain),
                   "rawfilemd5": crypto.md5_hex(plain), "filesize": len(cipher), "no_need_thumb": True,
                   "aeskey": key.hex()}  # fmt: skip
        delay = self._settings.send_retry_initial_s
        attempt = 0
        response: dict[str, Any] | None = None
        while response is None:
            attempt += 1
            refusal: IlinkError | None = None
            try:
                response = await self._api.getuploadurl(request)
            except IlinkTransportError as exc:
                if exc.status is not None and exc.status < 500 or attempt > self._settings.send_retries:
                    raise DeliveryError(f"getuploadurl: {exc}") from None
                log.warning("getuploadurl failed (%s); retry %d in %.1fs", exc, attempt, delay, extra=extra)
            except IlinkError as exc:
                refusal = exc
            if refusal is not None:
                if refusal.session_expired:
                    await self._pause("getuploadurl")
                    raise DeliveryDeferred("微信 ClawBot 登录已过期 / session expired")
                raise DeliveryError(f"getuploadurl refused: ret={refusal.ret} errcode={refusal.errcode}")
            if response is None:
                await self._sleep(delay)
                delay *= 2
        try:
            url = cdn.upload_url(self._settings.cdn_base_url, response, filekey)
            param = await cdn.upload(self._http, url, cipher, attempts=self._settings.upload_retries,
                                     initial_backoff_s=self._settings.upload_retry_initial_s,
                                     timeout_s=self._settings.upload_timeout_s, sleep=self._sleep)  # fmt: skip
        except cdn.CdnError as exc:
            raise DeliveryError(str(exc)) from None
        log.info("video uploaded (%d bytes)", len(plain), extra=extra)
        media = {"encrypt_query_param": param, "aes_key": crypto.media_aes_key(key), "encrypt_type": 1}
        return {"type": ITEM_VIDEO, "video_item": {"media": media, "video_size": len(cipher)}}

    def _video_plan(self, job_id: str, captions: list[str]) -> tuple[bool, int]:
        """(video still to send, index of the first caption chunk still to send) from the sent record."""
        record = self._state.sent_record(job_id) if job_id else {}
        pending = record.get("video") not in ("sent", "maybe")
        return pending, min(int(record.get("caption_chunks") or 0), len(captions))

    async def was_sent(self, job_id: str) -> bool | None:
        """Did this job's video go out? True when the server accepted it, False when its send never
        began, None when a send began but its outcome was never recorded (a crash, a lost answer)."""
        video = self._state.sent_record(job_id).get("video")
        if video == "sent":
            return True
        return None if video in ("sending", "maybe") else False

    async def send_video(self, out: OutgoingVideo) -> None:
        """Video item first, then the caption as text; per `job_id` only what has not gone out yet.

        The upload runs outside the send lock (it may take a while) so acks to other users are not held
        up; the budget is checked before it (no wasted upload) and again before sending."""
        user = self._user_of(out.chat_id)
        job_id = out.meta.get("job_id", "")
        extra = {"chat_id": out.chat_id, "user_id": out.chat_id, "message_id": out.reply_to or "", "job_id": job_id}
        captions = chunk_text(out.caption, self._settings.text_chunk_chars)
        video_pending, first_caption = self._video_plan(job_id, captions)
        need = int(video_pending) + len(captions) - first_caption
        if need == 0:
            log.info("video of this job was already delivered; nothing to send", extra=extra)
            return
        self._check_budget(user, need)
        item = await self._upload_video(user, Path(out.video_path), extra) if video_pending else None
        async with self._send_lock:
            video_pending, first_caption = self._video_plan(job_id, captions)  # a concurrent retry may have sent it
            need = int(video_pending) + len(captions) - first_caption
            if need == 0:
                return
            self._check_budget(user, need)
            if video_pending:
                assert item is not None
                if job_id:  # intent first: a crash from here on leaves "sending" (outcome unknown)
                    self._state.update_sent(job_id, self._clock(), video="sending")
                try:
                    await self._send_item(user, item, extra)
                except DeliveryError as exc:
                    if job_id:
                        self._state.update_sent(job_id, self._clock(), video="maybe" if exc.maybe_delivered else None)
                    raise
                except DeliveryDeferred:
                    if job_id:  # refused before delivery: nothing went out
                        self._state.update_sent(job_id, self._clock(), video=None)
                    raise
                if job_id:
                    self._state.update_sent(job_id, self._clock(), video="sent")
                log.info("video sent", extra=extra)
            for index in range(first_caption, len(captions)):
                try:
                    await self._send_item(user, text_item(captions[index]), extra)
                except DeliveryError as exc:
                    if exc.maybe_delivered:  # the video is out and the caption may be: call it delivered
                        log.warning("caption may not have arrived (%s); the video did", exc, extra=extra)
                        if job_id:
                            self._state.update_sent(job_id, self._clock(), caption_chunks=len(captions))
                        return
                    raise
                if job_id:
                    self._state.update_sent(job_id, self._clock(), caption_chunks=index + 1)
