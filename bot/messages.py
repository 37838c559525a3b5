"""The channel-agnostic message model.

Every channel (WeChat, the local demo channel, the web playground) converts its own events into
these plain dataclasses; nothing channel-specific travels past the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ChatKind(StrEnum):
    GROUP = "group"
    PRIVATE = "private"


@dataclass(frozen=True, slots=True)
class ImageRef:
    """An image attached to a message; the bytes are fetched lazily through the channel."""

    image_id: str
    size_hint: int | None = None  # bytes, when the channel knows it up front


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    chat_id: str  # room id for groups, the contact id for private chats
    kind: ChatKind
    sender_id: str
    sender_name: str
    text: str = ""
    mentions: tuple[str, ...] = ()  # contact ids mentioned in the message
    mentions_bot: bool = False  # the channel decided the bot itself was @-mentioned
    image: ImageRef | None = None
    timestamp: float = 0.0  # unix seconds

    @property
    def is_group(self) -> bool:
        return self.kind is ChatKind.GROUP


@dataclass(frozen=True, slots=True)
class OutgoingText:
    chat_id: str
    text: str
    mention_ids: tuple[str, ...] = ()
    reply_to: str | None = None  # message_id this answers (passive replies: QQ msg_id, WeCom req_id)


@dataclass(frozen=True, slots=True)
class OutgoingVideo:
    chat_id: str
    video_path: str
    cover_path: str | None = None
    caption: str = ""  # sent as a separate text (with mentions) in groups
    mention_ids: tuple[str, ...] = ()
    meta: dict[str, str] = field(default_factory=dict)  # job_id, label: adapters key idempotency on job_id
    reply_to: str | None = None  # message_id of the request this video answers
