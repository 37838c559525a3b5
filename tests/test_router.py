"""Command routing: aliases, full-width slash, @-stripping, group trigger rules, allow-list, private chat."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.channels.local import LocalChannel
from bot.core import build_dispatcher
from bot.dispatcher import ADMIN_ONLY_TEXT, ERROR_TEXT
from bot.plugin import CommandCall, Plugin, PluginContext, PluginRegistry, command
from bot.ratelimit import USER_LIMIT_TEXT
from bot.router import RouteKind, Router
from plugins import default_plugins
from tests.chat_harness import async_test, make_harness, make_settings

BOT = "bot-xiaoai"


def make_router(**overrides: object) -> Router:
    kwargs: dict[str, object] = dict(
        registry=PluginRegistry(default_plugins()),
        bot_name="小爱",
        bot_id=BOT,
        group_allowlist=[],
        allow_private=True,
        require_mention_in_groups=False,
    )
    kwargs.update(overrides)
    return Router(**kwargs)  # type: ignore[arg-type]


CHANNEL = LocalChannel(bot_contact_id=BOT)


def msg(text: str, **kwargs: object):
    return CHANNEL.make_message(text, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("/video a cat", "video"),
        ("/视频 一只猫", "video"),
        ("/quota", "quota"),
        ("/额度", "quota"),
        ("/cancel", "cancel"),
        ("/取消", "cancel"),
        ("/queue", "queue"),
        ("/队列", "queue"),
        ("/help", "help"),
        ("/帮助", "help"),
        ("/VIDEO a cat", "video"),
        ("／视频 一只猫", "video"),
        ("／ｈｅｌｐ", "help"),
        ("  /help  ", "help"),
    ],
)
def test_aliases_and_full_width(text: str, name: str) -> None:
    route = make_router().route(msg(text))
    assert route.kind is RouteKind.COMMAND
    assert route.spec is not None and route.spec.name == name


def test_arguments_are_kept_and_chinese_alias_may_be_glued() -> None:
    router = make_router()
    route = router.route(msg("/video 768p 10s seed=7 a cat"))
    assert route.args == "768p 10s seed=7 a cat"
    glued = router.route(msg("/视频一只柴犬在雪地里奔跑"))
    assert glued.spec is not None and glued.spec.name == "video"
    assert glued.args == "一只柴犬在雪地里奔跑"
    multiline = router.route(msg("/视频\n一只猫"))
    assert multiline.args == "一只猫"


def test_mention_of_the_bot_is_stripped() -> None:
    router = make_router()
    route = router.route(msg("@小爱\u2005/视频 一只猫", mentions=(BOT,), mentions_bot=True))
    assert route.kind is RouteKind.COMMAND and route.args == "一只猫"
    # the channel marked the bot as mentioned under another group nickname
    route = router.route(msg("@小爱同学 /额度", mentions=(BOT,), mentions_bot=True))
    assert route.kind is RouteKind.COMMAND and route.spec is not None and route.spec.name == "quota"
    # "@小爱" written by hand but the name matches: still stripped
    route = router.route(msg("@小爱 /帮助"))
    assert route.kind is RouteKind.COMMAND


def test_mention_of_someone_else_is_not_a_command_prefix() -> None:
    route = make_router().route(msg("@张三 /视频 一只猫", mentions=("wxid_zhang",)))
    assert route.kind is RouteKind.PASSIVE


def test_require_mention_in_groups() -> None:
    router = make_router(require_mention_in_groups=True)
    assert router.route(msg("/视频 一只猫")).kind is RouteKind.IGNORE
    with_mention = router.route(msg("@小爱\u2005/视频 一只猫", mentions=(BOT,), mentions_bot=True))
    assert with_mention.kind is RouteKind.COMMAND
    # private chats never need a mention
    assert router.route(msg("/视频 一只猫", group=False)).kind is RouteKind.COMMAND


def test_group_allow_list_and_private_switch() -> None:
    router = make_router(group_allowlist=["room-ok"])
    assert router.route(msg("/help", chat_id="room-ok")).kind is RouteKind.COMMAND
    assert router.route(msg("/help", chat_id="room-other")).kind is RouteKind.IGNORE
    assert router.route(msg("/help", group=False)).kind is RouteKind.COMMAND
    closed = make_router(allow_private=False)
    assert closed.route(msg("/help", group=False)).kind is RouteKind.IGNORE
    assert closed.route(msg("/help")).kind is RouteKind.COMMAND


def test_unknown_commands_and_chatter() -> None:
    router = make_router()
    assert router.route(msg("/draw a cat")).kind is RouteKind.IGNORE  # other bots' commands in groups
    assert router.route(msg("/draw a cat", group=False)).kind is RouteKind.HINT
    assert router.route(msg("@小爱 /draw", mentions=(BOT,), mentions_bot=True)).kind is RouteKind.HINT
    assert router.route(msg("@小爱", mentions=(BOT,), mentions_bot=True)).kind is RouteKind.HINT
    assert router.route(msg("今天天气不错")).kind is RouteKind.PASSIVE
    assert router.route(msg("", image=b"\x89PNG")).kind is RouteKind.PASSIVE
    assert router.route(msg("/", group=False)).kind is RouteKind.PASSIVE
    assert router.route(msg("/help", sender_id=BOT)).kind is RouteKind.IGNORE


def test_registry_rejects_duplicate_words_and_hides_admin_commands() -> None:
    class A(Plugin):
        name = "a"

        @command("x", aliases=("叉",), usage="/x", help="x")
        async def x(self, ctx: PluginContext, call: CommandCall) -> None: ...

    class B(Plugin):
        name = "b"

        @command("y", aliases=("叉",), usage="/y", help="y", admin_only=True)
        async def y(self, ctx: PluginContext, call: CommandCall) -> None: ...

    with pytest.raises(ValueError, match="叉"):
        PluginRegistry([A, B])
    registry = PluginRegistry(default_plugins())
    user_words = {s.name for s in registry.visible_commands(is_admin=False)}
    admin_words = {s.name for s in registry.visible_commands(is_admin=True)}
    assert {"video", "quota", "cancel", "queue", "help"} <= user_words
    assert "setquota" not in user_words and "setquota" in admin_words


# --- dispatcher: the real router + plugins + queue on a real SQLite file ---------------------------



class Boom(Plugin):
    name = "boom"

    @command("boom", usage="/boom", help="raises")
    async def boom(self, ctx: PluginContext, call: CommandCall) -> None:
        raise RuntimeError("handler bug")


@async_test
async def test_handler_exception_is_answered_and_the_loop_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    h = await make_harness(make_settings(tmp_path))
    h.dispatcher = build_dispatcher(
        h.settings, channel=h.channel, quota=h.quota, queue=h.queue, clock=h.clock, plugins=[*default_plugins(), Boom]
    )
    await h.channel.start(h.dispatcher.handle)
    with caplog.at_level("ERROR"):
        await h.say("/boom", sender_id="wxid_x", sender_name="X", message_id="m-boom")
    assert h.last_text().endswith(ERROR_TEXT)
    record = next(r for r in caplog.records if "handler failed" in r.getMessage())
    assert record.user_id == "wxid_x" and record.message_id == "m-boom"  # type: ignore[attr-defined]
    await h.say("/帮助", sender_id="wxid_x", sender_name="X")
    assert "可用命令" in h.last_text()


@async_test
async def test_flood_control_replies_once_then_stays_silent(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path, bot={"flood_user_max": 3, "flood_window_s": 60}))
    for _ in range(6):
        await h.say("/额度", sender_id="wxid_f", sender_name="F")
    texts = h.channel.texts()
    assert len(texts) == 4 and texts[3].endswith(USER_LIMIT_TEXT)
    await h.say("/额度", sender_id="wxid_other", sender_name="O")  # others are not affected
    assert "剩余额度" in h.last_text()
    h.clock.advance(61)
    await h.say("/额度", sender_id="wxid_f", sender_name="F")
    assert "剩余额度" in h.last_text()


@async_test
async def test_redelivered_command_is_answered_once(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    message = h.channel.make_message("/帮助", sender_id="wxid_r", sender_name="R")
    await h.channel.inject(message)
    await h.channel.inject(message)
    assert len(h.channel.texts()) == 1


@async_test
async def test_private_chat_and_hint_through_dispatcher(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.channel.say("/额度", group=False, sender_id="wxid_p", sender_name="P")
    sent = h.channel.sent[-1].text
    assert sent is not None and sent.chat_id == "wxid_p" and sent.mention_ids == () and "剩余额度" in sent.text
    await h.channel.say("/画画", group=False, sender_id="wxid_p", sender_name="P")
    assert "/帮助" in h.last_text()
    await h.channel.say("/setquota wxid_p 9", group=False, sender_id="wxid_p", sender_name="P")
    assert h.last_text() == ADMIN_ONLY_TEXT
