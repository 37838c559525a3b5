"""Content safety: a normalised word-list check, an optional external moderation hook, and an
admin-visible refusal log.

Normalisation defeats the usual tricks: full-width letters (NFKC), zero-width/format characters,
accents, Cyrillic/Greek lookalikes, digit/symbol-for-letter swaps (n00d → nood, p0rn → porn),
letters split by spaces or punctuation ("n u d e", "n.u-d.e"), and Traditional characters (mapped to
Simplified with OpenCC `t2s` before matching Chinese terms, so 強姦/亂倫 meet a listed 强奸/乱伦). English terms match whole words (plus plural s/es) so
"class" never matches "ass"; Chinese terms match anywhere, ignoring spaces, punctuation and emoji
inserted between the characters. The user only ever sees the configured refusal message, never the
matched words; the matched words go to the log and the optional sink for admins.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from bot.prompts.hanzi import to_simplified
from bot.prompts.httpclient import HttpClient, HttpConnectionError, HttpTimeout
from bot.prompts.language import is_han

log = logging.getLogger("bot.prompts.safety")

# Lowercase Cyrillic and Greek letters that look like Latin ones (applied after casefold).
_HOMOGLYPHS = {
    # Cyrillic
    "а": "a", "в": "b", "с": "c", "ԁ": "d", "е": "e", "ё": "e", "һ": "h", "н": "h", "і": "i", "ї": "i",
    "ј": "j", "к": "k", "ӏ": "l", "м": "m", "п": "n", "о": "o", "р": "p", "ԛ": "q", "г": "r", "ѕ": "s",
    "т": "t", "ц": "u", "ѵ": "v", "ԝ": "w", "х": "x", "у": "y", "з": "3", "ь": "b",
    # Greek
    "α": "a", "β": "b", "ϲ": "c", "δ": "d", "ε": "e", "η": "n", "ι": "i", "κ": "k", "μ": "u", "ν": "v",
    "ο": "o", "ρ": "p", "τ": "t", "υ": "u", "χ": "x", "γ": "y", "ω": "w", "ϐ": "b", "ς": "s", "σ": "o",
    # Latin lookalikes outside ASCII
    "ı": "i", "ɑ": "a", "ɡ": "g", "ſ": "s", "ø": "o", "ł": "l", "đ": "d", "ß": "ss",
}  # fmt: skip
# Digits and letters folded onto one representative, so "n00de", "nOOde" and "nude" variants meet.
_FOLD = str.maketrans(
    {"0": "o", "1": "i", "l": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b", "9": "g"}
)
# Symbols used as letters: inside a word ("n@ked", "p|ss") or starting one ("$ex", "@ss").
_SYMBOL_LETTERS = {"@": "a", "$": "s", "!": "i", "|": "i", "€": "e", "¡": "i"}
_SYMBOL_IN_WORD = re.compile(r"(?<=[a-z0-9])[@$!|€¡](?=[a-z0-9])|(?<![a-z0-9])[@$€](?=[a-z0-9])")
_SINGLE_LETTER_RUN = re.compile(r"\b(?:[a-z0-9] ){2,}[a-z0-9]\b")
_HOMOGLYPH_TABLE = str.maketrans(_HOMOGLYPHS)


def _base_normalise(text: str) -> str:
    """NFKC, drop invisible/format characters and accents, casefold, lookalikes, Traditional → Simplified."""
    text = unicodedata.normalize("NFKC", text)
    text = "".join(
        ch for ch in unicodedata.normalize("NFD", text) if unicodedata.category(ch) not in ("Mn", "Cf")
    )
    text = unicodedata.normalize("NFC", text).casefold().translate(_HOMOGLYPH_TABLE)
    text = _SYMBOL_IN_WORD.sub(lambda m: _SYMBOL_LETTERS[m.group(0)], text)
    return traditional_to_simplified(text).translate(_FOLD)


@lru_cache(maxsize=1)
def _opencc() -> Any:
    """OpenCC's Traditional → Simplified converter (phrase tables, offline); None when not installed."""
    try:
        import opencc

        return opencc.OpenCC("t2s")
    except Exception:  # the word list still gets the hand table; say so loudly
        log.error("OpenCC is not available (pip install opencc): Traditional forms are matched with the small "
                  "built-in table only")
        return None


def traditional_to_simplified(text: str) -> str:
    """Every Traditional character OpenCC knows (強姦 → 强奸, 亂倫 → 乱伦), then the hand table of
    `bot.prompts.hanzi` for the few it leaves (妳 → 你)."""
    converter = _opencc()
    if converter is not None:
        text = converter.convert(text)
    return to_simplified(text)


def _is_word_char(ch: str) -> bool:
    return ch.isalnum() and not is_han(ch)


def _collapse_single_letters(text: str) -> str:
    return _SINGLE_LETTER_RUN.sub(lambda m: m.group(0).replace(" ", ""), text)


@dataclass(frozen=True, slots=True)
class NormalisedText:
    joined: str  # punctuation inside words removed ("n.u-de" → "nude"), spaces kept as word breaks
    split: str  # punctuation turned into word breaks ("nude,beach" → "nude beach")
    han: str  # Han characters and letters/digits only, everything else removed (for Chinese terms)


def normalise(text: str) -> NormalisedText:
    base = _base_normalise(text)
    joined_chars: list[str] = []
    split_chars: list[str] = []
    for ch in base:
        if _is_word_char(ch):
            joined_chars.append(ch)
            split_chars.append(ch)
        elif ch.isspace() or is_han(ch):
            joined_chars.append(" ")
            split_chars.append(" ")
        else:  # punctuation, symbols, emoji
            split_chars.append(" ")
    joined = _collapse_single_letters(" ".join("".join(joined_chars).split()))
    split = _collapse_single_letters(" ".join("".join(split_chars).split()))
    han = "".join(ch for ch in base if is_han(ch) or ch.isalnum())
    return NormalisedText(joined=joined, split=split, han=han)


class WordFilter:
    """Matches configured Chinese and English terms against normalised text."""

    def __init__(self, words_zh: Iterable[str], words_en: Iterable[str]) -> None:
        self._han_terms: list[tuple[str, str]] = []
        self._word_terms: list[tuple[str, re.Pattern[str]]] = []
        for term in [*words_zh, *words_en]:
            term = term.strip()
            if not term:
                continue
            norm = normalise(term)
            if any(is_han(ch) for ch in term):
                if norm.han:
                    self._han_terms.append((term, norm.han))
            elif norm.split:
                words = norm.split.split()
                pattern = r"\b" + r"\s*".join(re.escape(w) for w in words) + r"(?:e?s)?\b"
                self._word_terms.append((term, re.compile(pattern)))

    def __len__(self) -> int:
        return len(self._han_terms) + len(self._word_terms)

    def matches(self, text: str) -> tuple[str, ...]:
        """The configured terms found in `text` (empty when clean)."""
        if not text:
            return ()
        norm = normalise(text)
        found = [term for term, han in self._han_terms if han in norm.han]
        found += [term for term, rx in self._word_terms if rx.search(norm.joined) or rx.search(norm.split)]
        return tuple(dict.fromkeys(found))


def safe_refusal_message(configured: str, matched: Iterable[str], fallback: str) -> str:
    """The message shown to the user: the configured one unless it would echo a matched word."""
    lowered = configured.casefold()
    if any(term.casefold() in lowered for term in matched if term):
        return fallback
    return configured


# ---- external moderation -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModerationResult:
    flagged: bool
    categories: tuple[str, ...] = ()


class ModerationError(Exception):
    pass


class Moderator(Protocol):
    async def check(self, text: str) -> ModerationResult: ...


class HttpModerator:
    """POSTs `{"input": text}` and reads the OpenAI `/moderations` answer shape
    (`{"results": [{"flagged": bool, "categories": {name: bool}}]}`)."""

    def __init__(
        self,
        url: str,
        *,
        http_client: HttpClient,
        api_key: str | None = None,
        model: str | None = None,
        timeout_s: float = 5.0,
    ) -> None:
        self.url = url
        self._http = http_client
        self._api_key = api_key
        self.model = model
        self.timeout_s = timeout_s

    async def check(self, text: str) -> ModerationResult:
        payload: dict[str, Any] = {"input": text}
        if self.model:
            payload["model"] = self.model
        headers = {"Authorization": f"Bearer {self._api_key}"} if self._api_key else {}
        try:
            resp = await self._http.post_json(self.url, payload, headers=headers, timeout_s=self.timeout_s)
        except (HttpTimeout, HttpConnectionError) as exc:
            raise ModerationError(f"unreachable: {exc}") from exc
        if resp.status != 200:
            raise ModerationError(f"HTTP {resp.status}")
        try:
            result = json.loads(resp.body)["results"][0]
            flagged = result["flagged"]
            categories = result.get("categories") or {}
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise ModerationError(f"malformed answer: {exc!r}") from exc
        if not isinstance(flagged, bool) or not isinstance(categories, Mapping):
            raise ModerationError("malformed answer: wrong field types")
        return ModerationResult(flagged=flagged, categories=tuple(k for k, v in categories.items() if v))


# ---- refusal log ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RefusalRecord:
    user_id: str
    chat_id: str
    stage: str  # "original" | "translated" | "moderation" | "moderation_unavailable"
    matched: tuple[str, ...]  # words / moderation categories (admin eyes only)
    original: str
    translated: str | None
    at: float  # unix seconds
    extra: dict[str, str] = field(default_factory=dict)


RefusalSink = Callable[[RefusalRecord], Awaitable[None] | None]


class RefusalLog:
    """Logs every refusal (WARNING on `bot.prompts.safety`) and forwards it to an optional sink
    (e.g. the admin store). A failing sink is logged and never breaks the user's request."""

    def __init__(self, sink: RefusalSink | None = None) -> None:
        self.sink = sink

    async def record(self, rec: RefusalRecord) -> None:
        log.warning(
            "prompt refused user=%s chat=%s stage=%s matched=%s",
            rec.user_id,
            rec.chat_id,
            rec.stage,
            ",".join(rec.matched),
            extra={
                "user_id": rec.user_id,
                "chat_id": rec.chat_id,
                "stage": rec.stage,
                "matched": rec.matched,
            },
        )
        if self.sink is None:
            return
        try:
            outcome = self.sink(rec)
            if inspect.isawaitable(outcome):
                await outcome
        except Exception:  # noqa: BLE001 - the sink belongs to someone else; never fail the request
            log.exception("refusal sink failed user=%s chat=%s", rec.user_id, rec.chat_id)
