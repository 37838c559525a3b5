"""QQ official bot (API v2): the `bot.channel.Channel` adapter for QQ groups and private chats.

Ids (all qualified with `qq:`, see `bot.channels.ids`):

* group chat: `qq:group:<group_openid>` — the `group:` marker keeps group ids and user openids apart
  (both are opaque hex strings on QQ, and an openid never contains a colon);
* group sender: `qq:<member_openid>`; private chat and its sender: `qq:<user_openid>` (chat_id ==
  sender_id). QQ gives every bot its own openids, and a member's `member_openid` in a group is not the
  same string as that person's `user_openid` in a private chat, so the core sees two users;
* message: `qq:<msg id>` (the id a passive reply quotes as `msg_id`);
* `ImageRef.image_id`: `<msg id>#<attachment index>`; the attachment URL stays in adapter memory.

In: the gateway (`gateway.py`) delivers `GROUP_AT_MESSAGE_CREATE` (the bot was @-mentioned: GROUP,
`mentions_bot=True`, the leading `<@…>`/`@name` and whitespace stripped) and `C2C_MESSAGE_CREATE` (private).
`GROUP_MESSAGE_CREATE` (all group messages, for bots that get them) is handled too, with `mentions_bot` only
when a leading mention was found. Events are de-duplicated by event id and message id, and handed to the
core one at a time from a queue so the gateway loop never waits on the core.

Out: `send_text` / `send_video` reply passively when they can: with the `msg_id` of the message being
answered (`reply_to`) while it is fresh (`passive_window_s`, `passive_replies_per_msg`), else with the
chat's latest fresh inbound message, else proactively (no msg_id). Each reply to one msg_id gets the next
`msg_seq`. A msg_id the platform calls dead is retired and the next choice is tried. A proactive send
that the platform refuses raises `DeliveryDeferred`: the core keeps the video and retries after the
user's next message, which brings a fresh msg_id. Videos: upload (`file_type: 2`, base64, or in parts
above `upload_chunked_above_bytes`) → `msg_type: 7` with the `file_info` → the caption as text.
`meta["job_id"]` keys a record (`state_dir/sent-<app_id>.json`, kept across restarts) so a retry never
posts the same video twice (after the video went out a retry sends only the caption; after everything
went out it sends nothing) and `was_sent(job_id)` can answer the core after a restart; a deferred video
is not uploaded again while its `file_info` is valid (memory only).

The AppSecret comes only from `XIAOAI_QQ_SECRET`; neither it nor any access token is logged.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
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
from bot.channels.ids import local_part, qualify, split
from bot.channels.qq.api import ANCHOR_DEAD, DUPLICATE_SEQ, PROACTIVE_REFUSED, QQApi, QQApiError
from bot.channels.qq.gateway import Connector, GatewayClient, GatewayState
from bot.channels.qq.settings import SECRET_ENV, QQSettings
from bot.channels.qq.state import ImageRefs, RecentIds, ReplyBook, VideoLedger
from bot.channels.qq.token import AccessTokenManager, TokenRefused, TokenUnavailable
from bot.messages import ChatKind, ImageRef, Message, OutgoingText, OutgoingVideo
from bot.tasks import cancel_and_wait

log = logging.getLogger(__name__)

CHANNEL = "qq"
GROUP_MARK = "group:"
DEFERRED_HINT = "如果视频没发出来，@我 发任意消息即可领取"
EVENT_GROUP_AT = "GROUP_AT_MESSAGE_CREATE"
EVENT_GROUP_ALL = "GROUP_MESSAGE_CREATE"
EVENT_C2C = "C2C_MESSAGE_CREATE"
FILE_TYPE_VIDEO = 2
MD5_10M_BYTES = 10002432  # md5_10m covers this many leading bytes (peers' code; not verified)
_LEADING_TAG = re.compile(r"^\s*<@!?[^>\s]*>\s*")
_IMAGE_EXT = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp")


@dataclass(frozen=True, slots=True)
class _Target:
    scope: str  # "groups" | "users"
    openid: str
    key: str  # the local part of the chat id: "group:<gid>" or "<user_openid>"


class _ProactiveRefused(Exception):
    """The platform refused a send without msg_id (proactive quota/permission)."""


def capabilities_for(settings: QQSettings) -> ChannelCapabilities:
    return ChannelCapabilities(
        groups=True,
        mentions=True,
        proactive=True,
        reply_window_s=settings.passive_window_s,
        sends_per_inbound=settings.passive_replies_per_msg,
        max_inline_video_bytes=None,  # sources disagree (30 MB / 100 MB); not enforced here
        quotes=False,
        deferred_hint=DEFERRED_HINT,
    )


def _parse_time(value: Any) -> float | None:
    if isinstance(value, int | float):
        return float(value) / (1000.0 if value > 10**11 else 1.0)
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    return None


def _absolute_url(url: str) -> str:
    if url.startswith("//"):
        return "https:" + url
    if "://" not in url:
        return "https://" + url
    return url


class QQChannel:
    """`bot.channel.Channel` for the QQ official bot API v2; see the module docstring."""

    name = CHANNEL

    def __init__(
        self,
        settings: QQSettings,
        *,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        http_factory: Callable[[], httpx.AsyncClient] | None = None,
        ws_connect: Connector | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        env = os.environ if environ is None else environ
        self._settings = settings
        self.__secret = (env.get(SECRET_ENV) or "").strip()
        self._clock = clock
        self._http_factory = http_factory
        self._ws_connect = ws_connect
        self._sleep = sleep
        self._rng = rng
        self.capabilities = capabilities_for(settings)
        self.on_alert: Callable[[str], Awaitable[None]] | None = None
        self._replies = ReplyBook(window_s=settings.passive_window_s, per_msg=settings.passive_replies_per_msg,
                                  margin_s=settings.passive_margin_s, clock=clock)  # fmt: skip
        self._recent = RecentIds(max_ids=settings.dedup_max_ids, ttl_s=settings.dedup_ttl_s, clock=clock)
        ledger_path = None
        if settings.state_dir is not None:
            safe_app = re.sub(r"[^A-Za-z0-9_-]", "_", settings.app_id.strip()) or "unset"
            ledger_path = Path(settings.state_dir) / f"sent-{safe_app}.json"
        self._ledger = VideoLedger(ledger_path, clock=clock)
        self._images = ImageRefs()
        self._http: httpx.AsyncClient | None = None
        self._tokens: AccessTokenManager | None = None
        self._api: QQApi | None = None
        self._gateway: GatewayClient | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[Message] | None = None
        self._on_message: MessageHandler | None = None
        self._bot_user: dict[str, Any] = {}
        self._alerted: set[str] = set()
        self.duplicates = 0  # inbound events dropped as duplicates (health checks, tests)

    @classmethod
    def from_settings(cls, settings: Any, environ: Mapping[str, str] | None = None, **kwargs: Any) -> QQChannel:
        """Build from the root settings (`settings.channels.qq`) or a `QQSettings`."""
        section = settings if isinstance(settings, QQSettings) else settings.channels.qq
        return cls(section, environ=environ, **kwargs)

    def __repr__(self) -> str:  # never show the secret
        return (f"QQChannel(app_id={self._settings.app_id!r}, secret={'set' if self.__secret else 'unset'}, "
                f"state={self.state.value})")  # fmt: skip

    # ------------------------------------------------------------------ Channel protocol
    @property
    def bot_id(self) -> str:
        return qualify(CHANNEL, str(self._bot_user.get("id") or self._settings.app_id))

    @property
    def connected(self) -> bool:
        return self._gateway is not None and self._gateway.connected.is_set()

    @property
    def state(self) -> GatewayState:
        return self._gateway.state if self._gateway is not None else GatewayState.IDLE

    @property
    def gateway(self) -> GatewayClient | None:
        return self._gateway

    @property
    def tokens(self) -> AccessTokenManager | None:
        return self._tokens

    async def wait_connected(self, timeout: float) -> bool:
        if self._gateway is None:
            return False
        try:
            await asyncio.wait_for(self._gateway.connected.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def start(self, on_message: MessageHandler) -> None:
        """Check the credentials (one token fetch), then run the gateway in the background."""
        if self._supervisor is not None and not self._supervisor.done():
            return
        settings = self._settings
        if not settings.app_id.strip():
            raise ChannelStartError(
                "QQ 机器人未配置 AppID：请设置 channels.qq.app_id（或 XIAOAI__CHANNELS__QQ__APP_ID）。"
                " / QQ bot: channels.qq.app_id is not set."
            )
        if not self.__secret:
            raise ChannelStartError(
                f"QQ 机器人缺少 AppSecret：请设置环境变量 {SECRET_ENV}。"
                f" / QQ bot: the AppSecret is missing; set the environment variable {SECRET_ENV}."
            )
        self._on_message = on_message
        http = self._http_factory() if self._http_factory is not None else httpx.AsyncClient()
        tokens = AccessTokenManager(http, token_url=settings.token_url, app_id=settings.app_id.strip(),
                                    secret=self.__secret, refresh_margin_s=settings.token_refresh_margin_s,
                                    timeout_s=settings.request_timeout_s, clock=self._clock)  # fmt: skip
        try:
            await tokens.get()
        except TokenRefused as exc:
            await http.aclose()
            raise ChannelStartError(
                f"QQ 机器人 AppID/AppSecret 被拒绝（{exc}），请核对 app_id 与 {SECRET_ENV}。"
                f" / QQ bot: the token endpoint refused the AppID/AppSecret ({exc})."
            ) from None
        except TokenUnavailable as exc:  # not fatal: the gateway loop keeps trying
            log.warning("qq token endpoint unreachable at start (%s); retrying in the background", exc,
                        extra={"channel": CHANNEL})  # fmt: skip
        self._http, self._tokens = http, tokens
        self._api = QQApi(http, tokens, base_url=settings.effective_api_base, app_id=settings.app_id.strip(),
                          retries=settings.send_retries, retry_initial_s=settings.send_retry_initial_s,
                          timeout_s=settings.request_timeout_s, sleep=self._sleep)  # fmt: skip
        extra: dict[str, Any] = {"connect": self._ws_connect} if self._ws_connect is not None else {}
        self._gateway = GatewayClient(self._api, tokens, settings, on_dispatch=self._on_dispatch,
                                      on_ready=self._on_ready, on_alert=self._alert, sleep=self._sleep,
                                      rng=self._rng, **extra)  # fmt: skip
        self._inbox = asyncio.Queue()
        self._worker = asyncio.create_task(self._handle_inbox(), name="qq-inbox")
        self._supervisor = asyncio.create_task(self._gateway.run(), name="qq-gateway")
        log.info("qq channel started (app_id %s, api %s)", settings.app_id, settings.effective_api_base,
                 extra={"channel": CHANNEL})  # fmt: skip

    async def stop(self) -> None:
        supervisor, self._supervisor = self._supervisor, None
        await cancel_and_wait(supervisor)
        if self._gateway is not None:
            await self._gateway.close()
        worker, self._worker = self._worker, None
        await cancel_and_wait(worker)
        http, self._http = self._http, None
        if http is not None:
            await http.aclose()
        log.info("qq channel stopped", extra={"channel": CHANNEL})

    # ------------------------------------------------------------------ operator alerts
    async def _alert(self, key: str, text: str) -> None:
        """Tell the operator once per problem (until the next READY); never raises."""
        if key in self._alerted:
            return
        self._alerted.add(key)
        log.error("qq channel needs the operator: %s", text, extra={"channel": CHANNEL})
        callback = self.on_alert
        if callback is None:
            return
        try:
            await callback(text)
        except Exception:
            log.exception("qq alert callback failed", extra={"channel": CHANNEL})

    # ------------------------------------------------------------------ inbound
    async def _on_ready(self, user: dict[str, Any]) -> None:
        self._bot_user = dict(user)
        self._alerted.clear()

    async def _on_dispatch(self, kind: str, data: Any, event_id: str | None) -> None:
        if kind not in (EVENT_GROUP_AT, EVENT_GROUP_ALL, EVENT_C2C):
            log.debug("qq event %s ignored", kind, extra={"channel": CHANNEL})
            return
        if not isinstance(data, dict) or not data.get("id"):
            log.warning("qq event %s without a message id ignored", kind, extra={"channel": CHANNEL})
            return
        msg_id = str(data["id"])
        if self._recent.seen_before(f"e:{event_id}" if event_id else None, f"m:{msg_id}"):
            self.duplicates += 1
            log.info("qq duplicate event %s (message %s) dropped", event_id, msg_id,
                     extra={"channel": CHANNEL, "message_id": qualify(CHANNEL, msg_id)})  # fmt: skip
            return
        converted = self._convert(kind, data, msg_id)
        if converted is None:
            return
        message, chat_key = converted
        self._replies.record_inbound(chat_key, msg_id)
        log.info("qq message in: %s from %s in %s", message.message_id, message.sender_id, message.chat_id,
                 extra={"message_id": message.message_id, "user_id": message.sender_id,
                        "chat_id": message.chat_id})  # fmt: skip
        if self._inbox is not None:
            self._inbox.put_nowait(message)

    async def _handle_inbox(self) -> None:
        """Hand messages to the core one at a time; an exception never ends the loop."""
        assert self._inbox is not None
        while True:
            message = await self._inbox.get()
            if self._on_message is None:
                continue
            try:
                await self._on_message(message)
            except Exception:
                log.exception("handling qq message %s failed", message.message_id,
                              extra={"message_id": message.message_id, "user_id": message.sender_id,
                                     "chat_id": message.chat_id})  # fmt: skip

    def _strip_mention(self, content: str) -> tuple[str, bool]:
        text, found = content, False
        while True:
            match = _LEADING_TAG.match(text)
            if match is None:
                break
            text, found = text[match.end():], True
        names = [n for n in (self._settings.bot_name, self._bot_user.get("username")) if n]
        for name in sorted(set(names), key=len, reverse=True):
            stripped = text.lstrip()
            if stripped.startswith("@" + name):
                text, found = stripped[len(name) + 1:], True
        return text.strip(), found

    def _convert(self, kind: str, data: dict[str, Any], msg_id: str) -> tuple[Message, str] | None:
        author = data.get("author") if isinstance(data.get("author"), dict) else {}
        content = str(data.get("content") or "")
        timestamp = _parse_time(data.get("timestamp")) or self._clock()
        image = self._image_ref(msg_id, data.get("attachments")) or self._quoted_image_ref(msg_id, data)
        if kind == EVENT_C2C:
            user = str(author.get("user_openid") or author.get("id") or "")
            if not user:
                return None
            sender = qualify(CHANNEL, user)
            message = Message(message_id=qualify(CHANNEL, msg_id), chat_id=sender, kind=ChatKind.PRIVATE,
                              sender_id=sender, sender_name=self._display_name(author, user),
                              text=content.strip(), image=image, timestamp=timestamp)  # fmt: skip
            return message, user
        group = str(data.get("group_openid") or data.get("group_id") or "")
        member = str(author.get("member_openid") or author.get("id") or "")
        if not group or not member:
            return None
        text, mentioned = self._strip_mention(content)
        key = GROUP_MARK + group
        message = Message(message_id=qualify(CHANNEL, msg_id), chat_id=qualify(CHANNEL, key), kind=ChatKind.GROUP,
                          sender_id=qualify(CHANNEL, member), sender_name=self._display_name(author, member),
                          text=text, mentions_bot=kind == EVENT_GROUP_AT or mentioned, image=image,
                          timestamp=timestamp)  # fmt: skip
        return message, key

    @staticmethod
    def _display_name(author: dict[str, Any], openid: str) -> str:
        name = author.get("username") or author.get("nickname")
        return str(name) if name else f"QQ用户{openid[-4:]}"

    def _image_ref(self, msg_id: str, attachments: Any) -> ImageRef | None:
        if not isinstance(attachments, list):
            return None
        for index, item in enumerate(attachments):
            if not isinstance(item, dict) or not item.get("url"):
                continue
            content_type = str(item.get("content_type") or "").lower()
            filename = str(item.get("filename") or "").lower()
            if not (content_type.startswith("image/") or filename.endswith(_IMAGE_EXT)):
                continue
            image_id = f"{msg_id}#{index}"
            self._images.add(image_id, _absolute_url(str(item["url"])))
            size = item.get("size")
            return ImageRef(image_id, size_hint=int(size) if isinstance(size, int | str) and str(size).isdigit()
                            else None)  # fmt: skip
        return None

    def _quoted_image_ref(self, msg_id: str, data: dict[str, Any], depth: int = 0) -> ImageRef | None:
        """The image of a quoted message (`/视频 …` sent as a reply to a photo makes image-to-video). Quote events
        (`message_type` 103) carry the quoted message in `msg_elements`, each with its own `attachments`
        (possibly nested); `message_reference` holds only an id, which no API resolves. Field names follow
        what other QQ bot projects read from live events: not verified against the real service here."""
        elements = data.get("msg_elements")
        if not isinstance(elements, list) or depth > 2:
            return None
        for index, element in enumerate(elements[:8]):
            if not isinstance(element, dict):
                continue
            key = f"{msg_id}#q{depth}.{index}"
            found = self._image_ref(key, element.get("attachments")) or self._quoted_image_ref(key, element, depth + 1)
            if found is not None:
                return found
        return None

    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        if message.image is None:
            raise ImageFetchError("message has no image")
        url = self._images.get(message.image.image_id)
        if url is None:
            raise ImageFetchError("图片引用已过期 (image reference unknown or expired)")
        if message.image.size_hint is not None and message.image.size_hint > max_bytes:
            raise ValueError(f"image is {message.image.size_hint} bytes, over the {max_bytes} byte limit")
        ids = {"message_id": message.message_id, "user_id": message.sender_id, "chat_id": message.chat_id}
        own = self._http is None
        http = self._http if self._http is not None else httpx.AsyncClient()
        try:
            # The attachment host is not the API: no Authorization header goes there.
            async with http.stream("GET", url, timeout=self._settings.image_fetch_timeout_s,
                                   follow_redirects=True) as response:  # fmt: skip
                if response.status_code != 200:
                    raise ImageFetchError(f"图片下载失败 (image fetch failed): HTTP {response.status_code}")
                declared = response.headers.get("content-length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise ValueError(f"image is {declared} bytes, over the {max_bytes} byte limit")
                data = bytearray()
                async for chunk in response.aiter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise ValueError(f"image is over the {max_bytes} byte limit")
        except httpx.HTTPError as exc:
            raise ImageFetchError(f"图片下载失败 (image fetch failed): {type(exc).__name__}") from None
        finally:
            if own:
                await http.aclose()
        log.info("qq image fetched: %s, %d bytes", message.message_id, len(data), extra={**ids, "bytes": len(data)})
        return bytes(data)

    # ------------------------------------------------------------------ outbound
    def _target(self, chat_id: str) -> _Target:
        try:
            local = local_part(CHANNEL, chat_id)
        except ValueError as exc:
            raise DeliveryError(str(exc), maybe_delivered=False) from None
        if local.startswith(GROUP_MARK):
            return _Target("groups", local[len(GROUP_MARK):], local)
        return _Target("users", local, local)

    @staticmethod
    def _reply_id(reply_to: str | None) -> str | None:
        if not reply_to:
            return None
        owner, platform_id = split(reply_to)
        return platform_id if owner == CHANNEL else None

    def _require_api(self) -> QQApi:
        if self._api is None:
            raise DeliveryError("QQ 渠道未启动 (qq channel not started)", maybe_delivered=False)
        return self._api

    async def _post(self, target: _Target, body: dict[str, Any], reply_to: str | None,
                    ids: dict[str, str], what: str) -> None:  # fmt: skip
        """Post one message, passively when a fresh msg_id is at hand. Raises DeliveryError, or
        _ProactiveRefused when only a proactive send was possible and the platform refused it."""
        api = self._require_api()
        for _ in range(self._settings.passive_replies_per_msg * 2 + 3):
            slot = self._replies.reserve(target.key, reply_to)
            payload = dict(body)
            if slot is not None:
                payload["msg_id"], payload["msg_seq"] = slot.msg_id, slot.msg_seq
            try:
                await api.post_message(target.scope, target.openid, payload, passive=slot is not None, ids=ids)
            except QQApiError as exc:
                if slot is not None and exc.code == DUPLICATE_SEQ:
                    if exc.attempts > 1:  # an earlier attempt of this very request got through
                        log.info("qq %s: accepted by an earlier attempt (msg_seq de-duplicated)", what, extra=ids)
                        return
                    continue  # that msg_seq was used before (e.g. before a restart): take the next one
                if slot is not None and exc.code in ANCHOR_DEAD:
                    log.warning("qq %s: msg_id %s refused (%s); trying the next reply context", what,
                                slot.msg_id, exc.code, extra=ids)  # fmt: skip
                    self._replies.retire(slot.msg_id)
                    continue
                if slot is None and exc.code in PROACTIVE_REFUSED:
                    raise _ProactiveRefused(str(exc)) from None
                if exc.status == 401:
                    await self._alert("unauthorized", "QQ 机器人接口鉴权失败（401），请检查 AppID/AppSecret。")
                raise DeliveryError(f"QQ {what} failed: {exc}", maybe_delivered=exc.maybe_delivered) from None
            except TokenRefused as exc:
                await self._alert("token", f"QQ 机器人的 AppSecret 被拒绝（{exc}）。请检查 {SECRET_ENV}。")
                raise DeliveryError(f"QQ {what} failed: access token refused", maybe_delivered=False) from None
            except TokenUnavailable as exc:
                raise DeliveryError(f"QQ {what} failed: {exc}", maybe_delivered=False) from None
            if slot is not None:
                log.info("qq %s sent to %s (reply to %s, seq %d)", what, target.key, slot.msg_id, slot.msg_seq,
                         extra=ids)  # fmt: skip
            else:
                log.info("qq %s sent to %s (proactive)", what, target.key, extra=ids)
            return
        raise DeliveryError(f"QQ {what} failed: no usable reply context", maybe_delivered=False)

    async def send_text(self, out: OutgoingText) -> None:
        target = self._target(out.chat_id)
        ids = {"chat_id": out.chat_id, "user_id": ",".join(out.mention_ids)}
        if not out.text.strip():
            return
        try:
            await self._post(target, {"msg_type": 0, "content": out.text}, self._reply_id(out.reply_to), ids, "text")
        except _ProactiveRefused as exc:
            log.warning("qq text to %s deferred: proactive send refused (%s)", out.chat_id, exc, extra=ids)
            raise DeliveryDeferred(f"QQ 拒绝了主动消息，等用户下一条消息后再发 ({exc})") from None

    async def send_video(self, out: OutgoingVideo) -> None:
        job_id = out.meta.get("job_id") or None
        ids = {"chat_id": out.chat_id, "user_id": ",".join(out.mention_ids), "job_id": job_id or ""}
        if self._ledger.done(job_id):
            log.info("qq video for job %s was already sent; nothing to do", job_id, extra=ids)
            return
        target = self._target(out.chat_id)
        reply_to = self._reply_id(out.reply_to)
        api = self._require_api()
        if not self._ledger.video_posted(job_id):
            source = Path(out.video_path)
            if not source.is_file():
                raise DeliveryError(f"video file missing: {source}", maybe_delivered=False)
            info = self._ledger.file_info(job_id, target.key)
            if info is None:
                info, ttl = await self._upload_video(api, target, source, ids)
                self._ledger.remember_file_info(job_id, target.key, info, ttl - min(60.0, ttl / 2))
            else:
                log.info("qq video for job %s: reusing the uploaded file", job_id, extra=ids)
            self._ledger.mark_posting(job_id)
            try:
                await self._post(target, {"msg_type": 7, "media": {"file_info": info}}, reply_to, ids, "video")
            except _ProactiveRefused as exc:
                self._ledger.clear_posting(job_id)
                log.warning("qq video for job %s deferred until the next message in %s: %s", job_id,
                            out.chat_id, exc, extra=ids)  # fmt: skip
                raise DeliveryDeferred(f"QQ 拒绝了主动消息，视频等用户下一条消息后再发 ({exc})") from None
            except DeliveryError as exc:
                if exc.maybe_delivered:
                    self._ledger.mark_video_posted(job_id)
                else:  # certainly not out; the next attempt uploads afresh (the file_info may be the problem)
                    self._ledger.clear_posting(job_id)
                    self._ledger.forget_file_info(job_id, target.key)
                raise
            self._ledger.mark_video_posted(job_id)
        else:
            log.info("qq video for job %s already posted; sending only the caption", job_id, extra=ids)
        if out.caption.strip():
            try:
                await self._post(target, {"msg_type": 0, "content": out.caption}, reply_to, ids, "caption")
            except (DeliveryError, _ProactiveRefused) as exc:  # the video is out: never resend it for a caption
                log.error("qq caption after the video could not be sent: %s", exc, extra=ids)
        self._ledger.mark_done(job_id)

    async def was_sent(self, job_id: str) -> bool | None:
        """Whether this job's video was posted (kept across restarts in `state_dir`): True once posted,
        None when a post was started but its outcome never recorded, False when none was started."""
        return self._ledger.was_sent(job_id)

    async def _upload_video(self, api: QQApi, target: _Target, source: Path,
                            ids: dict[str, str]) -> tuple[str, float]:  # fmt: skip
        """Upload the MP4 for `target`; returns (file_info, ttl seconds). DeliveryError on failure."""
        size = source.stat().st_size
        name = source.stem + ".mp4"
        chunked = size > self._settings.upload_chunked_above_bytes
        try:
            raw = await asyncio.to_thread(source.read_bytes)
            if chunked:
                data = await self._upload_in_parts(api, target, raw, name, ids)
            else:
                body = {"file_type": FILE_TYPE_VIDEO, "file_data": base64.b64encode(raw).decode("ascii"),
                        "srv_send_msg": False}  # fmt: skip
                data = await api.upload_file(target.scope, target.openid, body, ids=ids,
                                             timeout_s=self._settings.upload_timeout_s)  # fmt: skip
        except QQApiError as exc:
            log.error("qq video upload failed: %s", exc, extra=ids)
            raise DeliveryError(f"QQ 视频上传失败 (upload failed): {exc}", maybe_delivered=False) from None
        except (TokenRefused, TokenUnavailable) as exc:
            raise DeliveryError(f"QQ 视频上传失败 (upload failed): {type(exc).__name__}", maybe_delivered=False) from None
        except OSError as exc:
            raise DeliveryError(f"video file unreadable: {exc}", maybe_delivered=False) from None
        info = data.get("file_info")
        if not isinstance(info, str) or not info:
            raise DeliveryError("QQ 视频上传失败: no file_info in the answer", maybe_delivered=False)
        try:
            ttl = float(data.get("ttl") or 0)
        except (TypeError, ValueError):
            ttl = 0.0
        log.info("qq video uploaded (%s, %d bytes) for %s", "in parts" if chunked else "inline", size, target.key,
                 extra={**ids, "bytes": size})  # fmt: skip
        return info, ttl

    async def _upload_in_parts(self, api: QQApi, target: _Target, raw: bytes, name: str,
                               ids: dict[str, str]) -> dict[str, Any]:  # fmt: skip
        """upload_prepare → PUT each part to its presigned URL → upload_part_finish → /files merge.
        Part offsets follow the order of `parts` (servers number them from 0 or from 1)."""
        size = len(raw)
        prepared = await api.upload_prepare(target.scope, target.openid, {
            "file_type": FILE_TYPE_VIDEO, "file_name": name, "file_size": str(size),
            "md5": hashlib.md5(raw).hexdigest(), "sha1": hashlib.sha1(raw).hexdigest(),
            "md5_10m": hashlib.md5(raw[:MD5_10M_BYTES]).hexdigest(),
        }, ids=ids)  # fmt: skip
        upload_id = prepared.get("upload_id")
        parts = prepared.get("parts")
        if not upload_id or not isinstance(parts, list) or not parts:
            raise QQApiError("upload prepare: no upload_id/parts in the answer")
        try:
            block = int(prepared.get("block_size") or 0)
        except (TypeError, ValueError):
            block = 0
        offset = 0
        for part in parts:
            try:
                length = int(part.get("block_size") or block)
            except (TypeError, ValueError):
                length = block
            chunk = raw[offset:offset + length] if length > 0 else b""
            if not chunk or not part.get("presigned_url"):
                raise QQApiError("upload prepare: parts do not describe the file")
            await api.put_part(str(part["presigned_url"]), chunk, timeout_s=self._settings.upload_timeout_s, ids=ids)
            await api.upload_part_finish(target.scope, target.openid, {
                "upload_id": upload_id, "part_index": part.get("index"), "block_size": str(len(chunk)),
                "md5": hashlib.md5(chunk).hexdigest(),
            }, ids=ids)  # fmt: skip
            offset += len(chunk)
        if offset != size:
            raise QQApiError(f"upload prepare: parts cover {offset} of {size} bytes")
        return await api.upload_file(target.scope, target.openid, {
            "file_type": FILE_TYPE_VIDEO, "upload_id": upload_id, "file_name": name, "srv_send_msg": False,
        }, ids=ids, timeout_s=self._settings.upload_timeout_s)  # fmt: skip
