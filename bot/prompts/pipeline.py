"""The prompt pipeline between `/video` and the job queue.

detect language → word-list check on the original → translate (fallback chain) → word-list check on
the English text → enhance → optional external moderation → `PreparedPrompt`.
`raw=True` skips translation and enhancement (the text goes to the model untouched) but never skips
safety. Nothing here charges quota: the caller must not charge when `refused` is True.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bot.prompts.enhance import TemplateEnhancer
from bot.prompts.httpclient import HttpClient, HttpxClient
from bot.prompts.language import detect_language
from bot.prompts.safety import (
    HttpModerator,
    ModerationError,
    Moderator,
    RefusalLog,
    RefusalRecord,
    RefusalSink,
    WordFilter,
    safe_refusal_message,
)
from bot.prompts.settings import DEFAULT_REFUSAL_MESSAGE, PromptSettings
from bot.prompts.status import translator_status
from bot.prompts.translate.base import Translator, translate_with_fallback
from bot.prompts.translate.marian import MarianTranslator
from bot.prompts.translate.openai_compat import OpenAICompatTranslator

log = logging.getLogger("bot.prompts")

OTHER_LANGUAGE_NOTE = "只支持把中文翻译成英文，这段提示词已原样使用（视频模型只理解英文）"
MODERATION_UNAVAILABLE_MESSAGE = "内容审核服务暂时不可用，请稍后再试。本次不扣额度。"


@dataclass(slots=True)
class PreparedPrompt:
    final_prompt: str  # what goes to the model and into the job ("" when refused)
    original: str
    language: str  # "zh-Hans" | "zh-Hant" | "en" | "other" | "empty"
    refused: bool = False
    refusal_message: str | None = None  # user-facing, never contains the offending words
    notes: list[str] = field(default_factory=list)  # user-facing warnings, e.g. a translator fallback
    translator: str = (
        "none"  # "marian" | "openai" | "raw" (all failed / none configured) | "none" (not needed)
    )
    negative_prompt: str = ""  # the configured default negative prompt, for the generation request
    elapsed_s: float = 0.0

    @property
    def changed(self) -> bool:
        return not self.refused and self.final_prompt != self.original

    @property
    def english(self) -> bool:
        """The final prompt is English: translated by a backend, or written in English. Untranslated
        Chinese (every translator failed or none is configured) and other languages are not."""
        return self.translator in ("marian", "openai") or (self.translator == "none" and self.language == "en")

    def echo_text(self) -> str:
        """Lines for the submit acknowledgement: the English prompt the model will see (so the user can
        check and correct it) and any warnings. Empty when there is nothing to show."""
        if self.refused:
            return ""
        lines: list[str] = []
        if self.changed:
            label = "模型提示词（英文）" if self.english else "模型提示词（未翻译）"
            lines.append(f"{label}：{self.final_prompt}")
        lines += [f"⚠️ {note}" for note in self.notes]
        if self.changed:
            lines.append("不满意可用 /video -raw 英文提示词 原样提交。")
        return "\n".join(lines)


class PromptPipeline:
    def __init__(
        self,
        settings: PromptSettings,
        *,
        translators: Sequence[Translator] = (),
        enhancer: TemplateEnhancer | None = None,
        word_filter: WordFilter | None = None,
        moderator: Moderator | None = None,
        refusal_log: RefusalLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._own_http: HttpxClient | None = None
        self.translators = list(translators)
        self.enhancer = enhancer
        self.word_filter = word_filter
        self.moderator = moderator
        self.refusal_log = refusal_log or RefusalLog()
        self.clock = clock

    @classmethod
    def from_settings(
        cls,
        settings: PromptSettings,
        *,
        http_client: HttpClient | None = None,
        clock: Callable[[], float] | None = None,
        environ: Mapping[str, str] | None = None,
        refusal_sink: RefusalSink | None = None,
        moderator: Moderator | None = None,
    ) -> PromptPipeline:
        env = os.environ if environ is None else environ
        log.info("%s", translator_status(settings))  # which translator Chinese prompts really go through
        http = http_client or HttpxClient()
        translators: list[Translator] = []
        for kind in settings.translator_chain():
            if kind == "marian":
                m = settings.marian
                translators.append(
                    MarianTranslator(
                        m.model_dir,
                        max_new_tokens=m.max_new_tokens,
                        num_beams=m.num_beams,
                        timeout_s=m.timeout_s,
                    )
                )
            else:
                o = settings.openai
                api_key = env.get(o.api_key_env) or None
                if api_key is None:
                    log.warning("no API key in $%s; calling %s without one", o.api_key_env, o.base_url)
                translators.append(
                    OpenAICompatTranslator(
                        base_url=o.base_url,
                        model=o.model,
                        api_key=api_key,
                        http_client=http,
                        timeout_s=o.timeout_s,
                        retries=o.retries,
                        retry_backoff_s=o.retry_backoff_s,
                        temperature=o.temperature,
                        max_tokens=o.max_tokens,
                        system_prompt=o.system_prompt,
                    )
                )
        safety = settings.safety
        word_filter = WordFilter(safety.words_zh, safety.words_en) if safety.enabled else None
        if moderator is None and safety.enabled and safety.moderation.url:
            mod = safety.moderation
            moderator = HttpModerator(
                mod.url,
                http_client=http,
                api_key=env.get(mod.api_key_env) or None,
                model=mod.model,
                timeout_s=mod.timeout_s,
            )
        pipeline = cls(
            settings,
            translators=translators,
            enhancer=TemplateEnhancer(settings.enhance) if settings.enhance.enabled else None,
            word_filter=word_filter,
            moderator=moderator,
            refusal_log=RefusalLog(refusal_sink),
            clock=clock or time.time,
        )
        pipeline._own_http = http if http_client is None else None
        return pipeline

    async def aclose(self) -> None:
        """Close the HTTP connection pool `from_settings` made (an injected client is its owner's)."""
        if self._own_http is not None:
            await self._own_http.aclose()

    async def warm_up(self) -> None:
        """Load local models ahead of the first prompt (call once at start-up; failures are logged)."""
        for translator in self.translators:
            if isinstance(translator, MarianTranslator):
                try:
                    await translator.warm_up()
                except Exception:  # noqa: BLE001 - reported again, per request, through the fallback notes
                    log.warning("marian warm-up failed; requests will fall back", exc_info=True)

    async def _refuse(
        self,
        base: PreparedPrompt,
        *,
        stage: str,
        matched: tuple[str, ...],
        translated: str | None,
        user_id: str,
        chat_id: str,
        message: str | None = None,
    ) -> PreparedPrompt:
        await self.refusal_log.record(
            RefusalRecord(
                user_id=user_id,
                chat_id=chat_id,
                stage=stage,
                matched=matched,
                original=base.original,
                translated=translated,
                at=self.clock(),
            )
        )
        configured = message or self.settings.safety.refusal_message
        base.refused = True
        base.final_prompt = ""
        base.refusal_message = safe_refusal_message(configured, matched, DEFAULT_REFUSAL_MESSAGE)
        return base

    def _strip_suffix(self, prompt: str) -> str:
        """The generator appends the model's prompt suffix itself; drop a copy the user or an LLM added."""
        core = self.settings.prompt_suffix.strip(" ,")
        if core and prompt.rstrip(" .").casefold().endswith(core.casefold()):
            return prompt.rstrip(" .")[: -len(core)].rstrip(" ,")
        return prompt

    async def prepare(
        self, text: str, *, raw: bool = False, user_id: str = "", chat_id: str = "", style: str = "",
        enhance: bool = True,
    ) -> PreparedPrompt:
        """`style`: a preset's English text (`风格=…`), appended before enhancement so the enhancer adds no
        style of its own. `enhance=False` translates and checks only (a negative prompt)."""
        started = time.perf_counter()
        original = text.strip()
        lang = detect_language(original)
        result = PreparedPrompt(
            final_prompt="",
            original=original,
            language=lang.code,
            negative_prompt=self.settings.negative_prompt,
        )
        ctx = f"user={user_id} chat={chat_id}"
        if not original:
            return result
        if self.word_filter is not None and (matched := self.word_filter.matches(original)):
            return await self._refuse(
                result, stage="original", matched=matched, translated=None, user_id=user_id, chat_id=chat_id
            )

        translated: str | None = None
        if raw:
            final = f"{original.rstrip(' ,.')}, {style}" if style else original
            result.translator = "raw"
        else:
            english = original
            if lang.needs_translation:
                outcome = await translate_with_fallback(self.translators, original, log_context=ctx)
                result.notes.extend(outcome.notes)
                result.translator = outcome.backend
                english = outcome.text
                if outcome.backend != "raw":
                    translated = english
                    if self.word_filter is not None and (matched := self.word_filter.matches(english)):
                        return await self._refuse(
                            result,
                            stage="translated",
                            matched=matched,
                            translated=english,
                            user_id=user_id,
                            chat_id=chat_id,
                        )
            elif lang.code == "other":
                result.notes.append(OTHER_LANGUAGE_NOTE)
            if not enhance:
                final = english
            else:
                english = self._strip_suffix(english) or english
                if style:
                    english = f"{english.rstrip(' ,.。')}, {style}"
                final = self.enhancer.enhance(english) if self.enhancer is not None else english

        if self.moderator is not None:
            try:
                verdict = await self.moderator.check(final)
            except ModerationError as exc:
                log.warning(
                    "moderation unavailable %s: %s", ctx, exc, extra={"user_id": user_id, "chat_id": chat_id}
                )
                if self.settings.safety.moderation.fail_closed:
                    return await self._refuse(
                        result,
                        stage="moderation_unavailable",
                        matched=(),
                        translated=translated,
                        user_id=user_id,
                        chat_id=chat_id,
                        message=MODERATION_UNAVAILABLE_MESSAGE,
                    )
            else:
                if verdict.flagged:
                    return await self._refuse(
                        result,
                        stage="moderation",
                        matched=verdict.categories,
                        translated=translated,
                        user_id=user_id,
                        chat_id=chat_id,
                    )

        result.final_prompt = final
        result.elapsed_s = time.perf_counter() - started
        log.info(
            "prompt prepared %s lang=%s translator=%s raw=%s ms=%.1f",
            ctx,
            lang.code,
            result.translator,
            raw,
            result.elapsed_s * 1000,
            extra={"user_id": user_id, "chat_id": chat_id, "translator": result.translator},
        )
        return result

    async def prepare_negative(self, text: str, *, user_id: str = "", chat_id: str = "") -> PreparedPrompt:
        """A user's negative prompt (`不要=模糊,变形`): the same safety checks and translation as a prompt, no
        enhancement. The caller must not charge when `refused` is True."""
        return await self.prepare(text, user_id=user_id, chat_id=chat_id, enhance=False)

    def close(self) -> None:
        for translator in self.translators:
            if isinstance(translator, MarianTranslator):
                translator.close()
