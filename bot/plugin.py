"""Plugin registry.

A plugin is ONE class in ONE module that declares, in one place: its name and description, the
settings section it reads, and its commands (canonical name, aliases, usage, help text, whether
admins only). Commands are methods marked with `@command(...)`; they receive the shared
`PluginContext` (store, queue, settings, channel, clock, ...) and the parsed `CommandCall` as
parameters, never through module globals.

    class HelloPlugin(Plugin):
        name = "hello"
        description = "打个招呼"

        @command("hello", aliases=("你好",), usage="/hello", help="打个招呼")
        async def hello(self, ctx: PluginContext, call: CommandCall) -> None:
            await ctx.reply(call.message, "你好！")
"""

from __future__ import annotations

import difflib
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from bot.channel import ChannelCapabilities, DeliveryDeferred
from bot.channels import ids
from bot.channels.hub import ChannelHub
from bot.executors.base import Executor
from bot.jobs.queue import JobQueue
from bot.messages import Message, OutgoingText
from bot.permissions import Permissions
from bot.store.quota import QuotaBook

if TYPE_CHECKING:  # only for type hints: the objects are passed in by the app
    from bot.prompts import PromptPipeline
    from bot.settings import Settings
    from generation.content_check import ContentChecker

log = logging.getLogger(__name__)

Handler = Callable[[Any, "PluginContext", "CommandCall"], Awaitable[None]]
# Whether a command names a user (`/加额度 @张三 5`): the dispatcher parses the target once and hands it
# to the handler as `call.target` / `call.rest`; "optional" parses it only for admins who gave arguments.
TargetRule = Literal["none", "required", "optional"]

_MENTION_TOKEN = re.compile(r"@[^\s\u2005\u2006]+")
TARGET_HELP = "请 @ 要操作的群成员，或者填写对方的微信 ID。"


class TargetError(ValueError):
    """The command needs a user and none was given; the message is the Chinese reply."""


def parse_target(message: Message, args: str, bot_ids: Collection[str]) -> tuple[str, tuple[str, ...]]:
    """(target user id, remaining argument tokens) of an admin command.

    The target is the first @-mention the channel resolved to an id (never a display name) or a typed
    id. A typed id without a channel prefix, sent from a namespaced channel (ClawBot, WeCom, QQ), is
    taken as an id of that same channel, so ids of two platforms never mix."""
    mentions = [m for m in message.mentions if m not in bot_ids]
    if mentions:
        return mentions[0], tuple(_MENTION_TOKEN.sub(" ", args).split())
    tokens = args.split()
    if not tokens or tokens[0].startswith("@"):
        raise TargetError(TARGET_HELP)
    target = tokens[0]
    channel, _ = ids.split(message.sender_id)
    if channel is not None and ids.split(target)[0] is None:
        target = ids.qualify(channel, target)
    return target, tuple(tokens[1:])


def normalize_command_word(word: str) -> str:
    """Full-width letters/digits and case do not matter: `／ＶＩＤＥＯ` == `/video`."""
    return unicodedata.normalize("NFKC", word).strip().lower()


@dataclass(frozen=True, slots=True)
class CommandSpec:
    name: str  # canonical, e.g. "video"
    aliases: tuple[str, ...]  # other accepted words, e.g. ("视频",)
    usage: str  # e.g. "/video [384p|768p] [5s|10s] [seed=N] 提示词"
    help: str  # one Chinese line for /help
    admin_only: bool = False
    # Kept for plugins written against it; every message is now de-duplicated durably by the dispatcher
    # (`Dispatcher._first_time`), and /视频 also inside JobQueue.submit's transaction.
    dedupe: bool = True
    method: str = ""  # attribute name of the handler on the plugin class
    target: TargetRule = "none"

    @property
    def words(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)


@dataclass(frozen=True, slots=True)
class CommandCall:
    message: Message
    command: str  # canonical name
    word: str  # as the user typed it (normalized)
    args: str  # text after the command word, stripped
    is_admin: bool = False
    target: str | None = None  # the user a `target` command names (parsed by the dispatcher)
    rest: tuple[str, ...] = ()  # argument tokens after the target


def command(
    name: str,
    *,
    aliases: Iterable[str] = (),
    usage: str,
    help: str,
    admin_only: bool = False,
    dedupe: bool = True,
    target: TargetRule = "none",
) -> Callable[[Handler], Handler]:
    """Mark a plugin method as the handler of a command."""

    def mark(fn: Handler) -> Handler:
        fn.__command_spec__ = CommandSpec(  # type: ignore[attr-defined]
            name=normalize_command_word(name),
            aliases=tuple(normalize_command_word(a) for a in aliases),
            usage=usage,
            help=help,
            admin_only=admin_only,
            dedupe=dedupe,
            method=fn.__name__,
            target=target,
        )
        return fn

    return mark


class Plugin:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    settings_section: ClassVar[str | None] = None  # attribute of Settings this plugin reads
    commands: ClassVar[tuple[CommandSpec, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        specs: list[CommandSpec] = []
        for attr in dir(cls):
            spec = getattr(getattr(cls, attr, None), "__command_spec__", None)
            if isinstance(spec, CommandSpec):
                specs.append(spec)
        cls.commands = tuple(sorted(specs, key=lambda s: s.name))

    def section(self, ctx: PluginContext) -> Any:
        """This plugin's own settings section (declared by `settings_section`)."""
        if self.settings_section is None:
            return None
        return getattr(ctx.settings, self.settings_section)

    async def on_message(self, ctx: PluginContext, message: Message) -> bool:
        """Non-command messages (e.g. images). Return True when consumed."""
        return False

    def usage_for(self, ctx: PluginContext, spec: CommandSpec) -> str:
        """The usage line /帮助 shows for `spec` (a plugin may narrow it to what the configuration allows)."""
        return spec.usage

    async def call(self, spec: CommandSpec, ctx: PluginContext, call: CommandCall) -> None:
        await getattr(self, spec.method)(ctx, call)


@dataclass
class PluginContext:
    """Everything a handler may use, passed in by the app (no globals)."""

    settings: Settings
    channel: ChannelHub  # sends go back through the channel a chat belongs to
    quota: QuotaBook
    queue: JobQueue
    clock: Callable[[], float]
    permissions: Permissions
    registry: PluginRegistry
    pipeline: PromptPipeline | None = None  # identity when None
    executor: Executor | None = None  # where jobs run; None in tests that run no worker
    image_check: ContentChecker | None = None  # NSFW check of input images before queuing; None: no check

    def capabilities(self, chat_id: str) -> ChannelCapabilities:
        """What the channel of `chat_id` allows (acks and /帮助 adapt to it)."""
        return self.channel.capabilities_for(chat_id)

    async def reply(self, message: Message, text: str, *, mention: bool = True) -> None:
        """Answer in the message's chat; in groups the sender is @-mentioned. The message is recorded as
        answered first, so a re-delivery after a crash mid-send is not answered again."""
        self.queue.mark_answered(message.message_id)
        try:
            await self._send_reply(message, text, mention)
        except DeliveryDeferred as exc:  # the platform takes no send now (ClawBot's reply rules)
            log.info("reply to message=%s held back by the channel: %s", message.message_id, exc,
                     extra={"message_id": message.message_id, "chat_id": message.chat_id})

    async def _send_reply(self, message: Message, text: str, mention: bool) -> None:
        mentions = (message.sender_id,) if (mention and message.is_group) else ()
        if mentions:
            text = f"@{message.sender_name} {text}"
        await self.channel.send_text(
            OutgoingText(chat_id=message.chat_id, text=text, mention_ids=mentions, reply_to=message.message_id)
        )


class PluginRegistry:
    """Instantiates plugin classes and maps every command word to its plugin and spec."""

    def __init__(self, plugin_classes: Iterable[type[Plugin]]) -> None:
        self.plugins: list[Plugin] = []
        self._words: dict[str, tuple[Plugin, CommandSpec]] = {}
        for cls in plugin_classes:
            if not cls.name:
                raise ValueError(f"plugin {cls.__name__} has no name")
            plugin = cls()
            self.plugins.append(plugin)
            for spec in cls.commands:
                for word in spec.words:
                    if word in self._words:
                        other = self._words[word][0].name
                        raise ValueError(f"command word /{word} declared by both {other} and {cls.name}")
                    self._words[word] = (plugin, spec)

    def check_settings(self, settings: Any) -> None:
        for plugin in self.plugins:
            section = plugin.settings_section
            if section is not None and not hasattr(settings, section):
                raise ValueError(f"plugin {plugin.name} needs settings section {section!r}")

    def resolve(self, word: str) -> tuple[Plugin, CommandSpec] | None:
        return self._words.get(normalize_command_word(word))

    def words(self) -> list[str]:
        return list(self._words)

    def visible_commands(self, is_admin: bool) -> list[CommandSpec]:
        specs = [spec for plugin in self.plugins for spec in plugin.commands]
        return [s for s in specs if is_admin or not s.admin_only]

    def plugin_of(self, spec: CommandSpec) -> Plugin:
        return self._words[spec.name][0]

    def suggest(self, word: str, is_admin: bool) -> str | None:
        """The command word nearest to a mistyped one (`视屏` → `视频`, `vidoe` → `video`), among the commands
        the sender may use; None when nothing is close. A Chinese word may be glued to its argument
        (`/视屏一只猫`), so non-ASCII candidates are also compared with the typed word's start."""
        word = normalize_command_word(word)
        allowed = {w for spec in self.visible_commands(is_admin) for w in spec.words}
        best: tuple[float, str] | None = None
        for candidate in sorted(allowed):
            typed = word if candidate.isascii() else word[: max(len(candidate), 1)]
            ratio = difflib.SequenceMatcher(None, typed, candidate).ratio()
            if ratio >= 0.5 and (best is None or ratio > best[0]):
                best = (ratio, candidate)
        return None if best is None else best[1]
