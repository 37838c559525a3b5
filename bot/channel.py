"""The one interface every chat channel implements.

The bot core only talks to a `Channel`; the python-wechaty adapter, the local demo channel and the
web playground are implementations of it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol, runtime_checkable

from bot.messages import Message, OutgoingText, OutgoingVideo

MessageHandler = Callable[[Message], Awaitable[None]]


class DeliveryError(Exception):
    """Sending failed. `maybe_delivered` is True when the remote side may still have received it,
    in which case the caller must not retry blindly (no duplicate videos)."""

    def __init__(self, message: str, *, maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class ImageFetchError(Exception):
    """The attached image could not be fetched from the channel."""


@runtime_checkable
class Channel(Protocol):
    name: str

    @property
    def bot_id(self) -> str:
        """Contact id of the bot itself (used for @-detection)."""
        ...

    async def start(self, on_message: MessageHandler) -> None:
        """Connect and begin delivering incoming messages to `on_message`. Returns once started."""
        ...

    async def stop(self) -> None: ...

    @property
    def connected(self) -> bool: ...

    async def send_text(self, out: OutgoingText) -> None: ...

    async def send_video(self, out: OutgoingVideo) -> None: ...

    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        """Return the raw bytes of `message.image`; raise ImageFetchError (or ValueError when the image
        exceeds `max_bytes`)."""
        ...
