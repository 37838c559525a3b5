"""Language detection for routing: does this prompt need translating before the English-only model?

Plain character-class counting (no extra dependency): Han characters → Chinese (Simplified or
Traditional, told apart with the table in `hanzi.py`), otherwise mostly Latin letters → English.
Emoji, digits, punctuation and whitespace are ignored.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Literal

from bot.prompts.hanzi import SIMPLIFIED_ONLY, TRADITIONAL_ONLY

LanguageCode = Literal["zh-Hans", "zh-Hant", "en", "other", "empty"]


@dataclass(frozen=True, slots=True)
class LanguageInfo:
    code: LanguageCode
    han: int  # Han characters
    latin: int  # Latin letters (ASCII and accented)
    other: int  # letters of other scripts (kana, hangul, Cyrillic...)
    traditional: int  # characters only used in Traditional Chinese
    simplified: int  # characters only used in Simplified Chinese

    @property
    def needs_translation(self) -> bool:
        return self.code in ("zh-Hans", "zh-Hant")

    @property
    def cjk_ratio(self) -> float:
        """Share of Han characters among letters, where a Han character weighs like a short word
        (3 Latin letters), so "一只 shiba inu" counts as mostly Chinese."""
        weighted = 3 * self.han
        total = weighted + self.latin + self.other
        return weighted / total if total else 0.0


def is_han(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF  # CJK Unified Ideographs
        or 0x3400 <= cp <= 0x4DBF  # Extension A
        or 0x20000 <= cp <= 0x2EBEF  # Extensions B-F
        or 0xF900 <= cp <= 0xFAFF  # Compatibility Ideographs
        or 0x3007 == cp  # 〇
    )


def _is_latin_letter(ch: str) -> bool:
    if ch.isascii():
        return ch.isalpha()
    return ch.isalpha() and "LATIN" in unicodedata.name(ch, "")


def detect_language(text: str) -> LanguageInfo:
    han = latin = other = trad = simp = 0
    for ch in unicodedata.normalize("NFKC", text):
        if is_han(ch):
            han += 1
            if ch in TRADITIONAL_ONLY:
                trad += 1
            elif ch in SIMPLIFIED_ONLY:
                simp += 1
        elif _is_latin_letter(ch):
            latin += 1
        elif ch.isalpha():
            other += 1
    code: LanguageCode
    if han:
        code = "zh-Hant" if trad > simp else "zh-Hans"
    elif latin and latin >= other:
        code = "en"
    elif other:
        code = "other"
    else:
        code = "empty"
    return LanguageInfo(code=code, han=han, latin=latin, other=other, traditional=trad, simplified=simp)
