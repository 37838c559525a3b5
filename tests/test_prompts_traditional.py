"""Traditional forms of listed words are refused: the word list is matched after OpenCC `t2s`, so an operator who
lists 强奸/迷奸/色诱/乱伦/淫荡 also catches 強姦/迷姦/色誘/亂倫/淫蕩 (which the small hand table missed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.prompts import PromptPipeline
from bot.prompts.hanzi import to_simplified
from bot.prompts.safety import WordFilter, traditional_to_simplified
from bot.prompts.settings import DEFAULT_REFUSAL_MESSAGE, PromptSettings
from tests.chat_harness import async_test, make_harness, make_settings

OPERATOR_WORDS = ["强奸", "迷奸", "色诱", "乱伦", "淫荡"]
FILTER = WordFilter(OPERATOR_WORDS, [])


@pytest.mark.parametrize(("text", "term"), [
    ("一段強姦的畫面", "强奸"),
    ("迷姦", "迷奸"),
    ("色誘 鏡頭", "色诱"),
    ("亂倫的故事", "乱伦"),
    ("淫蕩", "淫荡"),
    ("強 姦", "强奸"),  # spaced
    ("亂😀倫", "乱伦"),  # emoji between the characters
    ("淫盪", "淫荡"),  # variant form
])
def test_traditional_forms_of_listed_words_are_caught(text: str, term: str) -> None:
    assert FILTER.matches(text) == (term,)


def test_opencc_does_what_the_hand_table_did_not() -> None:
    assert to_simplified("強姦亂倫") != "强奸乱伦"  # the hand table alone let these through
    assert traditional_to_simplified("強姦 亂倫 淫蕩 色誘 迷姦") == "强奸 乱伦 淫荡 色诱 迷奸"
    assert traditional_to_simplified("妳好，一隻貓") == "你好，一只猫"  # the hand table still covers 妳
    for harmless in ("一隻貓在陽光下奔跑", "強壯的馬", "誘人的美食", "倫敦的街道"):
        assert FILTER.matches(harmless) == ()


@async_test
async def test_traditional_prompt_is_refused_in_the_chat_and_not_charged(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    pipeline = PromptPipeline.from_settings(PromptSettings(translator="none", safety={"words_zh": OPERATOR_WORDS}))
    h = await make_harness(settings, pipeline=pipeline)
    await h.say("/视频 一段強姦的畫面", sender_id="wxid_bob", sender_name="Bob")
    assert h.last_text().endswith(DEFAULT_REFUSAL_MESSAGE) and "強姦" not in h.last_text()
    await h.say("/视频 亂倫", sender_id="wxid_bob", sender_name="Bob")
    assert h.last_text().endswith(DEFAULT_REFUSAL_MESSAGE)
    assert h.jobs("wxid_bob") == [] and "spend" not in [r.kind for r in h.ledger("wxid_bob")]
    await h.say("/视频 一隻貓在陽光下奔跑", sender_id="wxid_bob", sender_name="Bob")
    assert len(h.jobs("wxid_bob")) == 1
