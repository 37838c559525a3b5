"""Who is an admin: decided by contact id from config, never by display name (anyone can rename)."""

from __future__ import annotations

from collections.abc import Iterable

from bot.messages import Message


class Permissions:
    def __init__(self, admin_ids: Iterable[str]) -> None:
        self._admins = frozenset(a.strip() for a in admin_ids if a.strip())

    def is_admin(self, user_id: str) -> bool:
        return user_id in self._admins

    def message_from_admin(self, message: Message) -> bool:
        """Only `sender_id` counts; `sender_name` is deliberately ignored."""
        return self.is_admin(message.sender_id)
