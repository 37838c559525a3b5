"""Flood control: a sliding window per user and per chat.

When a user (or a whole chat) goes over the limit the bot answers politely ONCE, then stays silent
until the window has room again, so a flood never turns into a flood of replies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Verdict(StrEnum):
    ALLOW = "allow"
    WARN = "warn"  # first refusal in this episode: tell the user once
    DROP = "drop"  # already told: ignore silently


USER_LIMIT_TEXT = "你发得太快啦，请稍等一会儿再试～"
CHAT_LIMIT_TEXT = "本群消息太多啦，小爱忙不过来，请稍后再试～"


@dataclass
class _Window:
    hits: deque[float]
    warned: bool = False


class FloodControl:
    def __init__(
        self,
        *,
        user_max: int,
        chat_max: int,
        window_s: float,
        clock: Callable[[], float],
    ) -> None:
        self._user_max = user_max
        self._chat_max = chat_max
        self._window_s = window_s
        self._clock = clock
        self._users: dict[str, _Window] = {}
        self._chats: dict[str, _Window] = {}

    def _check(self, table: dict[str, _Window], key: str, limit: int, now: float) -> Verdict:
        win = table.setdefault(key, _Window(deque()))
        while win.hits and win.hits[0] <= now - self._window_s:
            win.hits.popleft()
        if len(win.hits) < limit:
            win.warned = False
            return Verdict.ALLOW
        if win.warned:
            return Verdict.DROP
        win.warned = True
        return Verdict.WARN

    def check(self, user_id: str, chat_id: str) -> tuple[Verdict, str]:
        """Count one command from `user_id` in `chat_id`. Returns the verdict and, for WARN, the text."""
        now = self._clock()
        user_verdict = self._check(self._users, user_id, self._user_max, now)
        if user_verdict is not Verdict.ALLOW:
            return user_verdict, USER_LIMIT_TEXT
        chat_verdict = self._check(self._chats, chat_id, self._chat_max, now)
        if chat_verdict is not Verdict.ALLOW:
            return chat_verdict, CHAT_LIMIT_TEXT
        self._users[user_id].hits.append(now)
        self._chats[chat_id].hits.append(now)
        return Verdict.ALLOW, ""
