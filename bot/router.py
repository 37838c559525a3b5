"""Command parsing and trigger rules: decides what an incoming message is.

Rules (in order):
1. Groups outside `bot.group_allowlist` (when the list is not empty) are ignored entirely; private
   chats are ignored when `bot.allow_private` is false. Messages from the bot itself are ignored.
2. A leading "@<bot name>" (or any leading @-mentions when the channel says the bot was mentioned)
   is stripped, then a leading full-width slash `／` becomes `/`.
3. Text starting with `/` followed by a known command word or alias is a command. Full-width letters
   and case do not matter. A Chinese alias may be glued to its argument (`/视频一只猫`).
4. In groups with `bot.require_mention_in_groups`, a command also needs the bot to be @-mentioned;
   without the mention it is ignored (other bots in the group may use slash commands too).
5. An unknown `/word` gets a short hint in private chats or when the bot was @-mentioned, naming the
   nearest command when one is close (`/视屏` → `/视频`, `hint_text`); it is ignored otherwise. A bare @-mention of the bot without a command gets the same hint.
6. Everything else (images, chatter) is "passive": plugins may look at it (the video plugin
   remembers images for image-to-video).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection
from dataclasses import dataclass
from enum import StrEnum

from bot.messages import Message
from bot.plugin import CommandSpec, Plugin, PluginRegistry, normalize_command_word

FULLWIDTH_SLASH = "／"
_MENTION_SEP = " \t\u2005\u2006\u00a0"  # WeChat puts U+2005 after "@name"
_LEADING_MENTION = re.compile(rf"^@[^{_MENTION_SEP}]+[{_MENTION_SEP}]*")


class RouteKind(StrEnum):
    IGNORE = "ignore"
    COMMAND = "command"
    HINT = "hint"  # reply a short "unknown command, try /帮助"
    PASSIVE = "passive"


HINT_TEXT = "我没听懂这个命令～发送 /帮助 查看可用命令。"


def hint_text(route: Route, registry: PluginRegistry, is_admin: bool) -> str:
    """The reply to an unknown command: the nearest command the sender may use, as a ready-to-send
    example (`/视屏 一只猫` → `/视频 一只猫`), else the general hint."""
    near = registry.suggest(route.word, is_admin) if route.word else None
    if near is None:
        return HINT_TEXT
    glued = route.word[len(near):] if not near.isascii() and len(route.word) > len(near) else ""
    rest = " ".join(p for p in (glued, route.args) if p)
    example = f"/{near} {rest}" if rest else f"/{near}"
    return f"没有 /{route.word} 这个命令，你是想发 {example} 吗？发送 /帮助 查看全部命令。"


@dataclass(frozen=True, slots=True)
class Route:
    kind: RouteKind
    plugin: Plugin | None = None
    spec: CommandSpec | None = None
    word: str = ""
    args: str = ""
    reason: str = ""


class Router:
    def __init__(
        self,
        *,
        registry: PluginRegistry,
        bot_name: str,
        bot_id: str | Callable[[], str | Collection[str]],
        group_allowlist: list[str],
        allow_private: bool,
        require_mention_in_groups: bool,
    ) -> None:
        self._registry = registry
        self._bot_name = bot_name
        # a callable: a channel may learn its own contact id only after login; with several channels it
        # returns every channel's own id
        self._bot_id: Callable[[], str | Collection[str]] = bot_id if callable(bot_id) else (lambda: bot_id)
        self._allow = frozenset(group_allowlist)
        self._allow_private = allow_private
        self._require_mention = require_mention_in_groups
        # Non-ASCII aliases may be written glued to their argument; longest first.
        self._glued = sorted((w for w in registry.words() if not w.isascii()), key=len, reverse=True)

    def strip_mentions(self, message: Message) -> str:
        text = message.text.strip()
        own = f"@{self._bot_name}"
        while text.startswith("@"):
            if text.startswith(own) and (len(text) == len(own) or text[len(own)] in _MENTION_SEP):
                text = text[len(own) :].lstrip(_MENTION_SEP)
                continue
            if not message.mentions_bot:
                break
            stripped = _LEADING_MENTION.sub("", text, count=1)
            if stripped == text:
                break
            text = stripped
        return text.strip()

    def _split_command(self, text: str) -> tuple[str, str] | None:
        if text.startswith(FULLWIDTH_SLASH):
            text = "/" + text[1:]
        if not text.startswith("/") or len(text) < 2:
            return None
        body = text[1:]
        parts = body.split(maxsplit=1)
        word = normalize_command_word(parts[0])
        args = parts[1].strip() if len(parts) > 1 else ""
        if self._registry.resolve(word) is not None:
            return word, args
        for alias in self._glued:
            if word.startswith(alias):
                return alias, f"{parts[0][len(alias):]} {args}".strip()
        return word, args

    def route(self, message: Message) -> Route:
        own = self._bot_id()
        if message.sender_id == own or (not isinstance(own, str) and message.sender_id in own):
            return Route(RouteKind.IGNORE, reason="own message")
        if message.is_group:
            if self._allow and message.chat_id not in self._allow:
                return Route(RouteKind.IGNORE, reason="group not in allow-list")
        elif not self._allow_private:
            return Route(RouteKind.IGNORE, reason="private chat disabled")

        addressed = message.mentions_bot or not message.is_group
        text = self.strip_mentions(message)
        split = self._split_command(text)
        if split is None:
            if message.is_group and message.mentions_bot and not message.image and not text:
                return Route(RouteKind.HINT, reason="bare mention")
            return Route(RouteKind.PASSIVE)
        word, args = split
        if message.is_group and self._require_mention and not message.mentions_bot:
            return Route(RouteKind.IGNORE, reason="mention required in groups")
        found = self._registry.resolve(word)
        if found is None:
            if addressed:
                return Route(RouteKind.HINT, word=word, args=args, reason="unknown command")
            return Route(RouteKind.IGNORE, word=word, reason="unknown command, not addressed")
        plugin, spec = found
        return Route(RouteKind.COMMAND, plugin=plugin, spec=spec, word=word, args=args)
