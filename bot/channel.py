"""The one interface every chat channel implements, and what a channel declares it can do.

The bot core only talks to a `Channel`; the python-wechaty adapter, the official ClawBot / WeCom / QQ
adapters, the local demo channel and the web playground are implementations of it. Several channels
run side by side behind `bot.channels.hub.ChannelHub`, which routes outgoing messages by the
`<channel>:` prefix of their chat id (see `bot.channels.ids`).

An adapter turns platform events into `Message`s (ids already namespaced) and sends what it is asked
to; it never builds the app, the queue or the store.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from bot.messages import Message, OutgoingText, OutgoingVideo

MessageHandler = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ChannelCapabilities:
    """What a platform allows; delivery, acks and /帮助 honour it.

    `reply_window_s` None means no window; `sends_per_inbound` None means unlimited. A channel that
    cannot send unprompted (`proactive` False) may park a finished video (`DeliveryDeferred`) until the
    user writes again; `deferred_hint` is then added to the ack so the user knows up front.
    """

    groups: bool = True
    mentions: bool = True
    proactive: bool = True
    reply_window_s: float | None = None
    sends_per_inbound: int | None = None
    max_inline_video_bytes: int | None = None
    quotes: bool = False
    deferred_hint: str = ""


DEFAULT_CAPABILITIES = ChannelCapabilities()


class DeliveryError(Exception):
    """Sending failed. `maybe_delivered` is True when the remote side may still have received it,
    in which case the caller must not retry blindly (no duplicate videos)."""

    def __init__(self, message: str, *, maybe_delivered: bool = False) -> None:
        super().__init__(message)
        self.maybe_delivered = maybe_delivered


class DeliveryDeferred(Exception):
    """The platform refused the send for now (no fresh reply context, window passed, send budget
    spent) but will accept it after the user's next message. The job is kept, not failed and not
    refunded; delivery retries it when that user writes again (`ChannelHub` wakes it)."""


class ImageFetchError(Exception):
    """The attached image could not be fetched from the channel."""


class ChannelStartError(Exception):
    """The channel cannot start (no credentials, bad secret, login needed). The message is one clear
    line for the operator (it may be bilingual) and never contains a secret."""


@runtime_checkable
class Channel(Protocol):
    name: str

    @property
    def bot_id(self) -> str:
        """Contact id of the bot itself (used for @-detection)."""
        ...

    async def start(self, on_message: MessageHandler) -> None:
        """Connect and begin delivering incoming messages to `on_message`. Returns once started.
        Raises `ChannelStartError` when it cannot start at all."""
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


def capabilities_of(channel: object) -> ChannelCapabilities:
    """A channel's declared capabilities (older channels that declare none get the defaults)."""
    caps = getattr(channel, "capabilities", None)
    return caps if isinstance(caps, ChannelCapabilities) else DEFAULT_CAPABILITIES
