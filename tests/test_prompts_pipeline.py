"""PromptPipeline end to end (no MT model here; see test_prompts_marian.py): raw flag, routing,
enhancement, refusals at every stage, moderation hook, echo text."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from bot.prompts import PreparedPrompt, PromptPipeline, PromptSettings
from bot.prompts.devtools import ChatCompletionsServer, Reply
from bot.prompts.enhance import TemplateEnhancer
from bot.prompts.pipeline import MODERATION_UNAVAILABLE_MESSAGE, OTHER_LANGUAGE_NOTE
from bot.prompts.safety import RefusalRecord
from bot.prompts.settings import EnhanceSettings


@pytest.fixture
def server() -> Iterator[ChatCompletionsServer]:
    with ChatCompletionsServer() as srv:
        yield srv


def _pipe(
    server: ChatCompletionsServer, sink: list[RefusalRecord] | None = None, **section: Any
) -> PromptPipeline:
    base: dict[str, Any] = {
        "translator": "openai",
        "fallback": [],
        "openai": {"base_url": server.base_url, "timeout_s": 0.5, "retries": 0},
    }
    base.update(section)
    return PromptPipeline.from_settings(
        PromptSettings.model_validate(base),
        environ={},
        refusal_sink=None if sink is None else sink.append,
        clock=lambda: 1234.5,
    )


def _prepare(pipe: PromptPipeline, text: str, **kw: Any) -> PreparedPrompt:
    return asyncio.run(pipe.prepare(text, user_id="wxid_u1", chat_id="room@chatroom", **kw))


def test_chinese_prompt_is_translated_enhanced_and_echoed(server: ChatCompletionsServer) -> None:
    server.push(Reply(content="A shiba inu running in the snow."))
    prepared = _prepare(_pipe(server), "一只柴犬在雪地里奔跑🐕")
    assert not prepared.refused and prepared.refusal_message is None
    assert prepared.language == "zh-Hans" and prepared.translator == "openai"
    assert prepared.original == "一只柴犬在雪地里奔跑🐕"
    assert prepared.final_prompt == (
        "A shiba inu running in the snow, smooth cinematic camera movement, soft natural lighting, "
        "cinematic style, shot on 35mm film, vivid colors"
    )
    assert prepared.negative_prompt == PromptSettings().negative_prompt
    assert prepared.echo_text().splitlines() == [
        f"模型提示词（英文）：{prepared.final_prompt}",
        "不满意可用 /video -raw 英文提示词 原样提交。",
    ]


def test_traditional_and_mixed_prompts_go_to_the_translator(server: ChatCompletionsServer) -> None:
    pipe = _pipe(server, enhance={"enabled": False})
    assert _prepare(pipe, "一隻柴犬在雪地裡奔跑").language == "zh-Hant"
    assert _prepare(pipe, "一只 shiba inu 在 snow 里").translator == "openai"
    sent = [r.body["messages"][1]["content"] for r in server.requests if r.body]
    assert sent == ["一隻柴犬在雪地裡奔跑", "一只 shiba inu 在 snow 里"]


def test_raw_flag_sends_the_prompt_untouched(server: ChatCompletionsServer) -> None:
    prepared = _prepare(_pipe(server), "  一只柴犬, hyper quality  ", raw=True)
    assert prepared.final_prompt == "一只柴犬, hyper quality"  # only surrounding whitespace trimmed
    assert prepared.translator == "raw" and prepared.notes == []
    assert server.requests == []  # no translation call
    assert prepared.echo_text() == ""  # nothing to echo: the model gets what the user wrote


def test_raw_flag_does_not_bypass_safety(server: ChatCompletionsServer) -> None:
    sink: list[RefusalRecord] = []
    prepared = _prepare(_pipe(server, sink), "ｐ０ｒｎ video", raw=True)
    assert prepared.refused and prepared.final_prompt == ""
    assert sink[0].stage == "original" and sink[0].matched == ("porn",)


def test_english_prompt_is_not_translated(server: ChatCompletionsServer) -> None:
    prepared = _prepare(_pipe(server), "a shiba inu running in the snow, aerial shot")
    assert prepared.language == "en" and prepared.translator == "none"
    assert server.requests == []
    assert prepared.final_prompt.startswith(
        "A shiba inu running in the snow, aerial shot, soft natural lighting"
    )
    assert "camera movement" not in prepared.final_prompt  # the prompt already chose a camera


def test_enhancement_off_and_no_change_means_no_echo(server: ChatCompletionsServer) -> None:
    prepared = _prepare(_pipe(server, enhance={"enabled": False}), "a cat on a roof")
    assert prepared.final_prompt == "a cat on a roof"
    assert not prepared.changed and prepared.echo_text() == ""


def test_model_suffix_typed_by_the_user_is_not_doubled(server: ChatCompletionsServer) -> None:
    prepared = _prepare(_pipe(server, enhance={"enabled": False}), "a cat, hyper quality, Ultra HD, 8K")
    assert prepared.final_prompt == "a cat"  # the generator appends the suffix itself
    only_suffix = _prepare(_pipe(server, enhance={"enabled": False}), "hyper quality, Ultra HD, 8K")
    assert only_suffix.final_prompt == "hyper quality, Ultra HD, 8K"  # never emptied


def test_other_languages_are_kept_with_a_note(server: ChatCompletionsServer) -> None:
    prepared = _prepare(_pipe(server, enhance={"enabled": False}), "Собака бежит по снегу")
    assert prepared.language == "other" and prepared.final_prompt == "Собака бежит по снегу"
    assert prepared.notes == [OTHER_LANGUAGE_NOTE] and server.requests == []


def test_refused_original_is_not_translated_and_message_does_not_echo(server: ChatCompletionsServer) -> None:
    sink: list[RefusalRecord] = []
    prepared = _prepare(_pipe(server, sink), "一段色 情视频")
    assert prepared.refused
    assert prepared.final_prompt == ""
    assert (
        prepared.refusal_message
        and "色情" not in prepared.refusal_message
        and "色" not in prepared.refusal_message
    )
    assert prepared.echo_text() == ""
    assert server.requests == []  # never sent to a third party
    (rec,) = sink
    assert (rec.user_id, rec.chat_id, rec.stage, rec.matched, rec.at) == (
        "wxid_u1",
        "room@chatroom",
        "original",
        ("色情",),
        1234.5,
    )


def test_translated_text_is_checked_too(server: ChatCompletionsServer) -> None:
    sink: list[RefusalRecord] = []
    server.push(Reply(content="a NUDE figure in the rain"))
    prepared = _prepare(_pipe(server, sink), "雨中的人")  # harmless in Chinese, flagged once in English
    assert prepared.refused and "nude" not in (prepared.refusal_message or "").lower()
    assert sink[0].stage == "translated" and sink[0].translated == "a NUDE figure in the rain"


def test_custom_refusal_message(server: ChatCompletionsServer) -> None:
    pipe = _pipe(server, safety={"words_en": ["kite"], "refusal_message": "这个不行哦"})
    assert _prepare(pipe, "a red k1te").refusal_message == "这个不行哦"
    # safety switched off: nothing refused
    assert not _prepare(_pipe(server, safety={"enabled": False}), "nude").refused


def test_translator_none_keeps_chinese_with_a_warning(server: ChatCompletionsServer) -> None:
    prepared = _prepare(_pipe(server, translator="none", enhance={"enabled": False}), "一只猫")
    assert prepared.final_prompt == "一只猫" and prepared.translator == "raw"
    assert prepared.notes == ["未配置翻译服务，已直接使用原文（视频模型只理解英文，效果可能不理想）"]
    assert prepared.echo_text() == "⚠️ " + prepared.notes[0]


def test_empty_prompt() -> None:
    pipe = PromptPipeline.from_settings(PromptSettings(translator="none"))
    prepared = asyncio.run(pipe.prepare("   "))
    assert prepared.final_prompt == "" and not prepared.refused and prepared.language == "empty"


def _moderated(
    server: ChatCompletionsServer, sink: list[RefusalRecord], *, fail_closed: bool
) -> PromptPipeline:
    return _pipe(
        server,
        sink,
        enhance={"enabled": False},
        safety={
            "moderation": {
                "url": server.base_url + "/moderations",
                "timeout_s": 0.5,
                "fail_closed": fail_closed,
            }
        },
    )


def test_moderation_endpoint_flags(server: ChatCompletionsServer) -> None:
    sink: list[RefusalRecord] = []
    server.push(Reply(kind="json", body={"results": [{"flagged": True, "categories": {"violence": True}}]}))
    prepared = _prepare(_moderated(server, sink, fail_closed=False), "a cat fight")
    assert prepared.refused and "violence" not in (prepared.refusal_message or "")
    assert sink[0].stage == "moderation" and sink[0].matched == ("violence",)
    assert server.requests[0].path == "/v1/moderations" and server.requests[0].body == {
        "input": "a cat fight"
    }


def test_moderation_clean_and_unavailable(server: ChatCompletionsServer) -> None:
    sink: list[RefusalRecord] = []
    server.push(Reply(kind="json", body={"results": [{"flagged": False, "categories": {}}]}))
    assert not _prepare(_moderated(server, sink, fail_closed=False), "a cat").refused
    server.set_default(Reply(kind="status", status=502))
    assert not _prepare(_moderated(server, sink, fail_closed=False), "a cat").refused  # fail open
    closed = _prepare(_moderated(server, sink, fail_closed=True), "a cat")
    assert closed.refused and closed.refusal_message == MODERATION_UNAVAILABLE_MESSAGE
    assert [r.stage for r in sink] == ["moderation_unavailable"]


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("a dog.", "A dog, CAM, LIGHT, STYLE"),
        ("a dog at sunset, close-up", "A dog at sunset, close-up, STYLE"),
        ("anime style dog", "Anime style dog, CAM, LIGHT"),
        ("word " * 7, "word word word word word word word"),  # longer than max_words: left alone
    ],
)
def test_template_enhancer(prompt: str, expected: str) -> None:
    enhancer = TemplateEnhancer(EnhanceSettings(camera="CAM", lighting="LIGHT", style="STYLE", max_words=6))
    assert enhancer.enhance(prompt) == expected
    custom = TemplateEnhancer(EnhanceSettings(template="{style}: {prompt}", style="", max_words=60))
    assert custom.enhance("a dog") == "A dog"
