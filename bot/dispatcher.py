"""Turns one incoming message into at most one handler call, safely.

Order: route → de-duplication by message id (durable: a re-delivered message that was answered is
dropped, see `_first_time`) → flood control → admin check → the command's @user
target parsed once (`CommandSpec.target`) → handler. Any
exception in a handler is logged with the user/message ids and answered with a short Chinese
apology; it never propagates into the channel's receive loop.
"""

from __future__ import annotations

import dataclasses
import logging

from bot.channel import DeliveryError
from bot.messages import Message
from bot.plugin import CommandCall, PluginContext, TargetError, parse_target
from bot.ratelimit import FloodControl, Verdict
from bot.router import RouteKind, Router, hint_text
from bot.textsafe import clean, clean_name

log = logging.getLogger(__name__)

ERROR_TEXT = "抱歉，小爱刚才出了点问题，请稍后再试。"
ADMIN_ONLY_TEXT = "这个命令只有管理员可以使用。"


class Dispatcher:
    def __init__(self, *, ctx: PluginContext, router: Router, flood: FloodControl) -> None:
        self._ctx = ctx
        self._router = router
        self._flood = flood

    async def handle(self, message: Message) -> None:
        # names and prompts are repeated in replies: no control or bidi-override characters from here on
        message = dataclasses.replace(message, text=clean(message.text), sender_name=clean_name(message.sender_name))
        ids = {"user_id": message.sender_id, "chat_id": message.chat_id, "message_id": message.message_id}
        try:
            await self._handle(message, ids)
        except DeliveryError as exc:  # the reply could not be sent: an apology would fail the same way
            log.warning("reply failed user=%s message=%s: %s", message.sender_id, message.message_id, exc,
                        extra=ids)
        except Exception:
            log.exception(
                "handler failed user=%s message=%s", message.sender_id, message.message_id, extra=ids
            )
            try:
                await self._ctx.reply(message, ERROR_TEXT)
            except Exception:
                log.exception("could not send the error reply message=%s", message.message_id, extra=ids)

    def _first_time(self, message: Message, ids: dict[str, str]) -> bool:
        """False for a message already answered (a gateway re-delivers recent messages after a reconnect
        or restart). The record is durable (`JobQueue.mark_received` / `mark_answered`); a message that
        was taken but not answered before a crash is handled again."""
        state = self._ctx.queue.seen_state(message.message_id)
        if state is None:
            self._ctx.queue.mark_received(message.message_id)
            return True
        if state in self._ctx.queue.REPLAYABLE:
            log.info("message=%s taken before a restart but not answered; handling it again",
                     message.message_id, extra=ids)
            return True
        log.info("message=%s already handled (%s); re-delivery dropped", message.message_id, state, extra=ids)
        return False

    async def _handle(self, message: Message, ids: dict[str, str]) -> None:
        route = self._router.route(message)
        if route.kind is RouteKind.IGNORE:
            log.debug("ignored (%s) message=%s", route.reason, message.message_id, extra=ids)
            return
        if not self._first_time(message, ids):
            return
        if route.kind is RouteKind.PASSIVE:
            for plugin in self._ctx.registry.plugins:
                if await plugin.on_message(self._ctx, message):
                    return
            return
        verdict, text = self._flood.check(message.sender_id, message.chat_id)
        if verdict is Verdict.WARN:
            log.info("flood limit user=%s chat=%s", message.sender_id, message.chat_id, extra=ids)
            await self._ctx.reply(message, text)
            return
        if verdict is Verdict.DROP:
            return
        if route.kind is RouteKind.HINT:
            is_admin = self._ctx.permissions.message_from_admin(message)
            await self._ctx.reply(message, hint_text(route, self._ctx.registry, is_admin))
            return
        assert route.plugin is not None and route.spec is not None
        spec = route.spec
        is_admin = self._ctx.permissions.message_from_admin(message)
        if spec.admin_only and not is_admin:
            log.warning(
                "admin command /%s refused for user=%s (%s)",
                spec.name,
                message.sender_id,
                message.sender_name,
                extra=ids,
            )
            await self._ctx.reply(message, ADMIN_ONLY_TEXT)
            return
        target: str | None = None
        rest: tuple[str, ...] = ()
        if spec.target == "required" or (spec.target == "optional" and is_admin and route.args.strip()):
            try:
                target, rest = parse_target(message, route.args, self._ctx.channel.bot_ids)
            except TargetError as err:
                await self._ctx.reply(message, str(err))
                return
        call = CommandCall(message=message, command=spec.name, word=route.word, args=route.args, is_admin=is_admin,
                           target=target, rest=rest)
        log.info("command /%s user=%s message=%s", spec.name, message.sender_id, message.message_id, extra=ids)
        await route.plugin.call(spec, self._ctx, call)
