"""Language detection used to route prompts to translation."""

from __future__ import annotations

import pytest

from bot.prompts.hanzi import SIMPLIFIED_ONLY, TRAD_TO_SIMP, to_simplified
from bot.prompts.language import detect_language


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("一只柴犬在雪地里奔跑", "zh-Hans"),
        ("一隻柴犬在雪地裡奔跑", "zh-Hant"),
        ("龍在雲裡飛，鏡頭緩緩推進", "zh-Hant"),
        ("一只 shiba inu 在雪地里 running", "zh-Hans"),  # mixed with English words
        ("🐕🐕 一只柴犬！！在雪地里～奔跑😄", "zh-Hans"),  # emoji and full-width punctuation
        ("a shiba inu running in the snow", "en"),
        ("ａ ｓｈｉｂａ ｉｎｕ", "en"),  # full-width Latin
        ("café au lait, crème brûlée", "en"),
        ("Собака бежит по снегу", "other"),
        ("🐕🐕!!! 123", "empty"),
        ("", "empty"),
    ],
)
def test_detect_language(text: str, code: str) -> None:
    info = detect_language(text)
    assert info.code == code
    assert info.needs_translation == code.startswith("zh")


def test_mixed_prompt_counts_and_ratio() -> None:
    info = detect_language("一只 shiba inu 在雪地里 running 🐕")
    assert info.han == 6
    assert info.latin == len("shibainurunning")
    assert 0.5 < info.cjk_ratio < 1.0
    assert detect_language("a red 福 lantern").needs_translation  # any Chinese goes through translation
    assert detect_language("plain english").cjk_ratio == 0.0


def test_traditional_table_is_consistent() -> None:
    assert not set(TRAD_TO_SIMP) & set(TRAD_TO_SIMP.values())  # no character is both sides
    assert all(len(k) == 1 and len(v) == 1 and k != v for k, v in TRAD_TO_SIMP.items())
    assert not set(TRAD_TO_SIMP) & SIMPLIFIED_ONLY
    assert to_simplified("一隻柴犬在雪地裡奔跑，鏡頭緩緩推進") == "一只柴犬在雪地里奔跑，镜头缓缓推进"
    assert to_simplified("abc 123 😀") == "abc 123 😀"
