"""The playground channel: a simulated WeChat group whose members type in a browser.

Incoming: `post()` turns what the page sent (who, text, optional image) into `bot.messages.Message`s
and hands them to the bot, exactly as the WeChat adapter does: an image is its own message (WeChat
images carry no caption) followed by the text; "@名字" tokens become mention ids (the bot's own name
sets `mentions_bot`).

Outgoing: every user message, bot reply and video becomes a `ChatEvent` with a sequence number, kept
in a bounded history (so a reloaded page sees the chat so far) and pushed to every subscriber (one
per open server-sent-events stream). Videos are referenced by job id (`/media/video/<job id>`),
never by file path.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import re
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from bot.channel import DeliveryError, ImageFetchError, MessageHandler
from bot.messages import ChatKind, ImageRef, Message, OutgoingText, OutgoingVideo
from bot.web.settings import PlaygroundSettings, PlaygroundUser

log = logging.getLogger(__name__)

_MENTION = re.compile(r"@([^\s\u2005\u2006@]+)")
SUBSCRIBER_QUEUE = 1000  # events buffered per slow subscriber before it is dropped


@dataclass(frozen=True, slots=True)
class ChatEvent:
    seq: int
    kind: str  # "user" (a member spoke), "bot" (a bot reply), "video" (a finished video)
    chat_id: str
    sender_id: str
    sender_name: str
    text: str = ""
    mention_ids: tuple[str, ...] = ()
    image_url: str | None = None
    quote_url: str | None = None  # the earlier upload this message quotes (`/视频 …` quoting a picture)
    video_url: str | None = None
    cover_url: str | None = None
    job_id: int | None = None
    ts: float = 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["mention_ids"] = list(self.mention_ids)
        return data


@dataclass
class _Upload:
    data: bytes
    mime: str


@dataclass
class PlaygroundChannel:
    settings: PlaygroundSettings = field(default_factory=PlaygroundSettings)
    bot_name: str = "小爱"
    bot_contact_id: str = "bot-xiaoai"
    clock: Callable[[], float] = time.time
    max_images: int = 32  # uploaded images kept in memory (the bot fetches them when paired)
    name: str = "playground"
    _handler: MessageHandler | None = None
    _connected: bool = False
    _seq: itertools.count = field(default_factory=lambda: itertools.count(1))
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    _history: deque[ChatEvent] = field(default_factory=deque)
    _images: OrderedDict[str, _Upload] = field(default_factory=OrderedDict)
    _subscribers: set[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._history = deque(maxlen=self.settings.history)

    # -- Channel protocol ---------------------------------------------------------------------
    @property
    def bot_id(self) -> str:
        return self.bot_contact_id

    @property
    def connected(self) -> bool:
        return self._connected

    async def start(self, on_message: MessageHandler) -> None:
        self._handler = on_message
        self._connected = True
        log.info("playground channel started", extra={"chat_id": self.settings.room_id})

    async def stop(self) -> None:
        self._connected = False
        self._handler = None
        for queue in list(self._subscribers):
            self._offer(queue, None)
        self._subscribers.clear()

    async def send_text(self, out: OutgoingText) -> None:
        if not self._connected:
            raise DeliveryError("playground channel is stopped")
        self._record("bot", out.chat_id, self.bot_contact_id, self.bot_name, text=out.text,
                     mention_ids=out.mention_ids)

    async def send_video(self, out: OutgoingVideo) -> None:
        if not self._connected:
            raise DeliveryError("playground channel is stopped")
        raw = out.meta.get("job_id", "")
        if not raw.isdigit():  # the page only links videos by job id
            raise DeliveryError(f"video without a job id: {out.meta!r}")
        job_id = int(raw)
        caption = out.caption
        if out.mention_ids and caption:
            names = " ".join(f"@{self.display_name(m)}" for m in out.mention_ids)
            caption = f"{names} {caption}"
        self._record("video", out.chat_id, self.bot_contact_id, self.bot_name, text=caption,
                     mention_ids=out.mention_ids, job_id=job_id, video_url=f"/media/video/{job_id}",
                     cover_url=f"/media/cover/{job_id}" if out.cover_path else None)

    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        upload = self._images.get(message.image.image_id) if message.image is not None else None
        if upload is None:
            raise ImageFetchError("no such image (the playground keeps only recent uploads)")
        if len(upload.data) > max_bytes:
            raise ValueError(f"image is {len(upload.data)} bytes, limit {max_bytes}")
        return upload.data

    # -- the page's side --------------------------------------------------------------------------
    def user(self, user_id: str) -> PlaygroundUser | None:
        return next((u for u in self.settings.users if u.id == user_id), None)

    def display_name(self, user_id: str) -> str:
        if user_id == self.bot_contact_id:
            return self.bot_name
        found = self.user(user_id)
        return found.name if found else user_id

    def _mentions(self, text: str) -> tuple[tuple[str, ...], bool]:
        by_name = {u.name: u.id for u in self.settings.users}
        ids: list[str] = []
        bot = False
        for name in _MENTION.findall(text):
            if name == self.bot_name:
                bot = True
                target = self.bot_contact_id
            else:
                target = by_name.get(name, "")
            if target and target not in ids:
                ids.append(target)
        return tuple(ids), bot

    def _message(self, who: PlaygroundUser, text: str, image: ImageRef | None) -> Message:
        mentions, mentions_bot = self._mentions(text)
        return Message(
            message_id=f"pg-{self._prefix}-{next(self._ids)}",
            chat_id=self.settings.room_id,
            kind=ChatKind.GROUP,
            sender_id=who.id,
            sender_name=who.name,
            text=text,
            mentions=mentions,
            mentions_bot=mentions_bot,
            image=image,
            timestamp=self.clock(),
        )

    def image_upload(self, image_id: str) -> tuple[bytes, str] | None:
        upload = self._images.get(image_id)
        return None if upload is None else (upload.data, upload.mime)

    async def post(self, user_id: str, text: str = "", image: bytes | None = None,
                   image_mime: str = "image/png", quote_image: str | None = None) -> list[Message]:
        """What a member typed (and/or the image they picked, already validated by the server):
        recorded, shown to every open page, then handled by the bot. Returns the messages made.
        `quote_image`: the id of an earlier upload the text quotes (a reply to a picture, as ClawBot and WeCom
        deliver it): the text message carries that image (`KeyError` when it is no longer kept)."""
        if self._handler is None:
            raise RuntimeError("PlaygroundChannel.start() was not called")
        who = self.user(user_id)
        if who is None:
            raise KeyError(user_id)
        quoted = None
        if quote_image is not None:
            upload = self._images.get(quote_image)
            if upload is None:
                raise KeyError(quote_image)
            quoted = ImageRef(image_id=quote_image, size_hint=len(upload.data))
        made: list[Message] = []
        if image is not None:
            image_id = f"img-{self._prefix}-{next(self._ids)}"
            self._images[image_id] = _Upload(image, image_mime)
            while len(self._images) > self.max_images:
                self._images.popitem(last=False)
            made.append(self._message(who, "", ImageRef(image_id=image_id, size_hint=len(image))))
        if text.strip():
            made.append(self._message(who, text.strip(), quoted))
        for message in made:
            url = f"/media/upload/{message.image.image_id}" if message.image else None
            quoting = message.text != "" and url is not None
            self._record("user", message.chat_id, who.id, who.name, text=message.text,
                         mention_ids=message.mentions, image_url=None if quoting else url,
                         quote_url=url if quoting else None)
            log.info("playground message %s from %s", message.message_id, who.id,
                     extra={"user_id": who.id, "message_id": message.message_id, "chat_id": message.chat_id})
            await self._handler(message)
        return made

    # -- events ---------------------------------------------------------------------------------
    def _record(self, kind: str, chat_id: str, sender_id: str, sender_name: str, **values: Any) -> ChatEvent:
        event = ChatEvent(seq=next(self._seq), kind=kind, chat_id=chat_id, sender_id=sender_id,
                          sender_name=sender_name, ts=self.clock(), **values)
        self._history.append(event)
        self.publish("chat", event.to_json())
        return event

    def history(self, since: int = 0) -> list[ChatEvent]:
        return [e for e in self._history if e.seq > since]

    def events(self) -> list[ChatEvent]:
        return list(self._history)

    def subscribe(self) -> asyncio.Queue[tuple[str, dict[str, Any]] | None]:
        queue: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue(maxsize=SUBSCRIBER_QUEUE)
        self._subscribers.add(queue)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[str, dict[str, Any]] | None]) -> None:
        self._subscribers.discard(queue)

    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        for queue in list(self._subscribers):
            self._offer(queue, (event_type, data))

    def _offer(self, queue: asyncio.Queue[tuple[str, dict[str, Any]] | None],
               item: tuple[str, dict[str, Any]] | None) -> None:
        try:
            queue.put_nowait(item)
        except asyncio.QueueFull:  # a stuck page: drop it; the browser reconnects with Last-Event-ID
            self._subscribers.discard(queue)
            log.warning("dropping a slow playground subscriber")
