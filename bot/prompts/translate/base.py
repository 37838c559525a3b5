"""The translator interface and the fallback chain.

A translator turns one (Chinese) prompt into English or raises `TranslationError` with a reason.
`translate_with_fallback` walks the configured chain and, when every backend failed, returns the
original text with a user-facing Chinese warning.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

log = logging.getLogger("bot.prompts.translate")

FailureReason = Literal["timeout", "http", "malformed", "unavailable", "auth", "empty"]


class TranslationError(Exception):
    def __init__(self, reason: FailureReason, detail: str = "", *, status: int | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason: FailureReason = reason
        self.detail = detail
        self.status = status


class Translator(Protocol):
    name: str  # "marian" | "openai" (used in logs, notes and PreparedPrompt.translator)

    async def translate(self, text: str) -> str: ...


@dataclass(frozen=True, slots=True)
class Failure:
    backend: str
    reason: FailureReason
    detail: str = ""


@dataclass(slots=True)
class TranslationResult:
    text: str
    backend: str  # name of the translator that answered, or "raw" when all failed / none configured
    notes: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)


BACKEND_LABELS = {"openai": "在线翻译服务", "marian": "本地翻译模型"}
RAW_NOTE = "已直接使用原文（视频模型只理解英文，效果可能不理想）"


def _reason_text(error: TranslationError) -> str:
    match error.reason:
        case "timeout":
            return "超时"
        case "http":
            return f"出错（HTTP {error.status}）" if error.status else "出错"
        case "malformed":
            return "返回了无法识别的结果"
        case "unavailable":
            return "不可用"
        case "auth":
            return "鉴权失败（请管理员检查 API Key）"
        case "empty":
            return "返回了空结果"
    return "出错"


async def translate_with_fallback(
    chain: Sequence[Translator], text: str, *, log_context: str = ""
) -> TranslationResult:
    """Try each translator in order; on total failure return the text untouched, with a warning."""
    notes: list[str] = []
    failures: list[Failure] = []
    for index, translator in enumerate(chain):
        try:
            english = await translator.translate(text)
        except TranslationError as exc:
            failures.append(Failure(translator.name, exc.reason, exc.detail))
            label = BACKEND_LABELS.get(translator.name, translator.name)
            following = chain[index + 1].name if index + 1 < len(chain) else None
            then = f"已改用{BACKEND_LABELS.get(following, following)}" if following else RAW_NOTE
            notes.append(f"{label}{_reason_text(exc)}，{then}")
            log.warning(
                "translation failed %s backend=%s reason=%s detail=%s",
                log_context,
                translator.name,
                exc.reason,
                exc.detail,
                extra={"backend": translator.name, "reason": exc.reason},
            )
            continue
        return TranslationResult(text=english, backend=translator.name, notes=notes, failures=failures)
    if not chain:
        notes.append(f"未配置翻译服务，{RAW_NOTE}")
    return TranslationResult(text=text, backend="raw", notes=notes, failures=failures)
