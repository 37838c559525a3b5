"""Several channels in one bot: `ChannelHub` starts each enabled channel on its own and routes every
outgoing message back through the channel its chat id belongs to.

Routing: a chat id `<channel>:<id>` (see `bot.channels.ids`) goes to the channel of that name; a bare
id goes to the one channel that uses bare ids (wechaty, the local demo channel or the playground).

Supervision: a channel that cannot start (`ChannelStartError`, or any error) is reported and left
down while the others run; `start` fails only when no channel could start. Each adapter reconnects on
its own, so one channel's outage never stops another or the queue.

The hub is itself a `Channel`, so the dispatcher, plugins and delivery loop talk to one object. It is
also where control and bidi-override characters are removed from every outgoing text and caption
(`bot.textsafe`; incoming text and names are cleaned by the dispatcher).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Iterable

from bot.channel import (
    Channel,
    ChannelCapabilities,
    ChannelStartError,
    DeliveryError,
    ImageFetchError,
    MessageHandler,
    capabilities_of,
)
from bot.channels import ids
from bot.messages import Message, OutgoingText, OutgoingVideo
from bot.textsafe import clean

log = logging.getLogger(__name__)

InboundHook = Callable[[Message], Awaitable[None]]
AlertSink = Callable[[str, str], Awaitable[None]]  # (text, name of the channel that raised it)


class ChannelHub:
    name = "hub"

    def __init__(self, channels: Iterable[Channel], *, start_timeout_s: float = 60.0) -> None:
        self.channels: list[Channel] = list(channels)
        if not self.channels:
            raise ValueError("ChannelHub needs at least one channel")
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"two channels share a name: {names}")
        bare = [c for c in self.channels if c.name not in ids.NAMESPACED]
        if len(bare) > 1:
            raise ValueError(f"only one channel may use bare ids, got {[c.name for c in bare]}")
        self._bare: Channel | None = bare[0] if bare else None
        self._by_name = {c.name: c for c in self.channels}
        self._start_timeout_s = start_timeout_s
        self.started: list[Channel] = []
        self.failures: dict[str, str] = {}  # channel name -> why it could not start
        self.on_inbound: InboundHook | None = None  # called before the handler (wakes parked deliveries)
        self.on_alert: AlertSink | None = None
        self.last_event: dict[str, float] = {}  # channel name -> wall time of its latest inbound message

    # ------------------------------------------------------------------ routing
    def channel_for(self, chat_id: str) -> Channel | None:
        owner, _ = ids.split(chat_id)
        return self._bare if owner is None else self._by_name.get(owner)

    def is_connected(self, chat_id: str) -> bool:
        channel = self.channel_for(chat_id)
        return channel is not None and channel.name not in self.failures and channel.connected

    def capabilities_for(self, chat_id: str) -> ChannelCapabilities:
        channel = self.channel_for(chat_id)
        return capabilities_of(channel)

    @property
    def capabilities(self) -> ChannelCapabilities:
        return capabilities_of(self._bare or self.channels[0])

    @property
    def bot_id(self) -> str:
        return (self._bare or self.channels[0]).bot_id

    @property
    def bot_ids(self) -> frozenset[str]:
        found: set[str] = set()
        for channel in self.channels:
            try:
                if channel.bot_id:
                    found.add(channel.bot_id)
            except Exception:  # a channel that has not logged in yet may not know its id
                continue
        return frozenset(found)

    @property
    def connected(self) -> bool:
        return any(c.connected for c in self.channels if c.name not in self.failures)

    # ------------------------------------------------------------------ lifecycle
    async def start(self, on_message: MessageHandler) -> None:
        for channel in self.channels:
            if hasattr(channel, "on_alert"):
                channel.on_alert = self._alert_from(channel.name)  # type: ignore[attr-defined]
            try:
                await asyncio.wait_for(channel.start(self._inbound(on_message, channel.name)), self._start_timeout_s)
            except ChannelStartError as exc:
                self.failures[channel.name] = str(exc)
                log.error("channel %s cannot start: %s", channel.name, exc)
                continue
            except Exception as exc:  # one channel's bug must not stop the others
                self.failures[channel.name] = f"{type(exc).__name__}: {exc}"
                log.error("channel %s failed to start", channel.name, exc_info=True)
                continue
            self.started.append(channel)
            log.info("channel %s started", channel.name)
        if not self.started:
            raise ChannelStartError("\n".join(f"{name}: {why}" for name, why in self.failures.items()))

    async def stop(self) -> None:
        for channel in reversed(self.started):
            try:
                await channel.stop()
            except Exception:
                log.exception("error while stopping channel %s", channel.name)
        self.started = []

    def _inbound(self, on_message: MessageHandler, name: str = "") -> MessageHandler:
        async def handle(message: Message) -> None:
            self.last_event[name] = time.time()
            if self.on_inbound is not None:
                try:
                    await self.on_inbound(message)
                except Exception:
                    log.exception("inbound hook failed message=%s", message.message_id,
                                  extra={"message_id": message.message_id, "chat_id": message.chat_id})
            await on_message(message)

        return handle

    def _alert_from(self, name: str) -> Callable[[str], Awaitable[None]]:
        async def alert(text: str) -> None:
            log.warning("channel %s asks the operator: %s", name, text)
            if self.on_alert is not None:
                try:
                    await self.on_alert(text, name)
                except Exception:
                    log.exception("could not pass on the alert of channel %s", name)

        return alert

    # ------------------------------------------------------------------ sending
    def _route(self, chat_id: str) -> Channel:
        channel = self.channel_for(chat_id)
        if channel is None or channel.name in self.failures:
            raise DeliveryError(f"no running channel for chat {chat_id!r}")
        return channel

    async def send_text(self, out: OutgoingText) -> None:
        await self._route(out.chat_id).send_text(dataclasses.replace(out, text=clean(out.text)))

    async def send_video(self, out: OutgoingVideo) -> None:
        await self._route(out.chat_id).send_video(dataclasses.replace(out, caption=clean(out.caption)))

    async def was_sent(self, chat_id: str, job_id: str) -> bool | None:
        """Did the channel of `chat_id` send this job's video? None when it keeps no record (ask nobody
        twice: the caller tells the user instead of resending)."""
        channel = self.channel_for(chat_id)
        probe = getattr(channel, "was_sent", None)
        if probe is None:
            return None
        try:
            return await probe(job_id)
        except Exception:
            log.exception("channel %s could not say whether job %s was sent", getattr(channel, "name", "?"), job_id)
            return None

    async def fetch_image(self, message: Message, *, max_bytes: int) -> bytes:
        channel = self.channel_for(message.chat_id)
        if channel is None:
            raise ImageFetchError(f"no channel for chat {message.chat_id!r}")
        return await channel.fetch_image(message, max_bytes=max_bytes)


def as_hub(channel: Channel | ChannelHub | Iterable[Channel]) -> ChannelHub:
    """A hub over `channel` (returned as is when it already is one)."""
    if isinstance(channel, ChannelHub):
        return channel
    if isinstance(channel, Channel):
        return ChannelHub([channel])
    return ChannelHub(channel)
