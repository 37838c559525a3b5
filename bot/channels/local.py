"""An in-process channel: messages are injected by code, replies are recorded.

Used by `xiaoai demo`, the benchmarks and the end-to-end tests; it implements `bot.channel.Channel`
exactly like the WeChat adapter, so the real router, plugins, queue and delivery run unchanged.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.channel import DeliveryError, ImageFetchError, MessageHandler
from bot.messages import ChatKind, ImageRef, Message, OutgoingText, OutgoingVideo


@dataclass(frozen=True, slots=True)
class Sent:
    """One thing the bot sent, in order."""

    at: float
    text: OutgoingText | None = None
    video: OutgoingVideo | None = None

    @property
    def chat_id(self) -> str:
        item = self.text or self.video
        assert item is not None
        return item.chat_id


@dataclass
class LocalChannel:
    name: str = "local"
    bot_contact_id: str = "bot-xiaoai"
    clock: Callable[[], float] = time.time
    sent: list[Sent] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)
    _handler: MessageHandler | None = None
    _connected: bool = False
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    _id_prefix: str = field(default_factory=lambda: uuid.uuid4().hex[:8])  # ids unique across channels
    _changed: asyncio.Event | None = None

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
        self._changed = asyncio.Event()

    async def stop(self) -> None:
        self._connected = False
        self._handler = None

    async def send_text(self, out: OutgoingText) -> None:
        if not self._connected:
            raise DeliveryError("local channel is disconnected")
        self._record(Sent(at=self.clock(), text=out))

    async def send_video(self, out: OutgoingVideo) -> None:
        if not self._connected:
            raise DeliveryError("local channel is disconnected")
        self._record(Sent(at=self.clock(), video=out))

    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        if message.image is None or message.image.image_id not in self.images:
            raise ImageFetchError("no such image")
        data = self.images[message.image.image_id]
        if len(data) > max_bytes:
            raise ValueError(f"image is {len(data)} bytes, limit {max_bytes}")
        return data

    # -- test/demo side -------------------------------------------------------------------------
    def set_connected(self, value: bool) -> None:
        """Simulate a disconnect/reconnect."""
        self._connected = value

    def _record(self, item: Sent) -> None:
        self.sent.append(item)
        if self._changed is not None:
            self._changed.set()

    def make_message(
        self,
        text: str = "",
        *,
        sender_id: str = "wxid_alice",
        sender_name: str = "Alice",
        chat_id: str | None = None,
        group: bool = True,
        mentions: tuple[str, ...] = (),
        mentions_bot: bool = False,
        image: bytes | None = None,
        message_id: str | None = None,
    ) -> Message:
        mid = message_id or f"local-{self._id_prefix}-{next(self._ids)}"
        ref = None
        if image is not None:
            ref = ImageRef(image_id=f"img-{mid}", size_hint=len(image))
            self.images[ref.image_id] = image
        return Message(
            message_id=mid,
            chat_id=chat_id or ("room-demo" if group else sender_id),
            kind=ChatKind.GROUP if group else ChatKind.PRIVATE,
            sender_id=sender_id,
            sender_name=sender_name,
            text=text,
            mentions=mentions,
            mentions_bot=mentions_bot,
            image=ref,
            timestamp=self.clock(),
        )

    async def inject(self, message: Message) -> None:
        """Deliver `message` to the bot as if it came from the chat; returns when handled."""
        if self._handler is None:
            raise RuntimeError("LocalChannel.start() was not called")
        await self._handler(message)

    async def say(self, text: str = "", **kwargs: object) -> Message:
        message = self.make_message(text, **kwargs)  # type: ignore[arg-type]
        await self.inject(message)
        return message

    def texts(self, chat_id: str | None = None) -> list[str]:
        return [s.text.text for s in self.sent if s.text and (chat_id is None or s.chat_id == chat_id)]

    def videos(self, chat_id: str | None = None) -> list[OutgoingVideo]:
        return [s.video for s in self.sent if s.video and (chat_id is None or s.chat_id == chat_id)]

    async def wait_for(self, predicate: Callable[[list[Sent]], bool], timeout: float) -> bool:
        """Wait until `predicate(self.sent)` holds (True) or `timeout` seconds pass (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate(self.sent):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            assert self._changed is not None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), timeout=min(remaining, 0.5))
            except TimeoutError:
                pass
        return True
