"""Saying which translator is really active (one line at start-up), and never calling untranslated text
English in the acknowledgement."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from bot.prompts import PromptPipeline, PromptSettings
from bot.prompts.devtools import ChatCompletionsServer, Reply
from bot.prompts.status import active_translator, translator_status


def _settings(tmp_path: Path, *, marian: bool, **values: Any) -> PromptSettings:
    folder = tmp_path / ("opus-mt-zh-en" if marian else "not-downloaded")
    if marian:
        folder.mkdir(exist_ok=True)
        (folder / "config.json").write_text("{}", encoding="utf-8")
    return PromptSettings.model_validate({"marian": {"model_dir": str(folder)}, **values})


def test_the_out_of_the_box_default_says_chinese_goes_untranslated_and_how_to_fix_it(tmp_path: Path) -> None:
    settings = _settings(tmp_path, marian=False)  # the default: marian, its folder not downloaded
    assert active_translator(settings) is None
    line = translator_status(settings)
    assert line.startswith("翻译 / translator: 无 / none")
    assert str(tmp_path / "not-downloaded") in line and "xiaoai models fetch --translator" in line
    assert "\n" not in line


def test_each_configuration_is_named(tmp_path: Path) -> None:
    assert translator_status(_settings(tmp_path, marian=True)).startswith("翻译 / translator: 本地 MarianMT")
    assert "关闭" in translator_status(_settings(tmp_path, marian=True, translator="none"))
    online = _settings(tmp_path, marian=False, translator="openai", openai={"model": "qwen-plus"})
    assert active_translator(online) == "openai"
    line = translator_status(online)
    assert "qwen-plus" in line and "xiaoai models fetch --translator" in line  # its fallback is missing
    with_fallback = translator_status(_settings(tmp_path, marian=True, translator="openai"))
    assert "falls back to local MarianMT" in with_fallback
    no_fallback = translator_status(_settings(tmp_path, marian=False, translator="openai", fallback=[]))
    assert "models fetch" not in no_fallback


def test_the_line_is_logged_when_the_pipeline_is_built(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="bot.prompts"):
        PromptPipeline.from_settings(_settings(tmp_path, marian=False)).close()
    assert any(r.getMessage().startswith("翻译 / translator: 无 / none") for r in caplog.records)


def _prepare(pipe: PromptPipeline, text: str) -> Any:
    return asyncio.run(pipe.prepare(text, user_id="u1", chat_id="g1"))


def test_untranslated_prompts_are_not_labelled_english(tmp_path: Path) -> None:
    # every translator failed (the default, out of the box: no MarianMT folder)
    pipe = PromptPipeline.from_settings(_settings(tmp_path, marian=False))
    prepared = _prepare(pipe, "一只柴犬在雪地里奔跑")
    assert prepared.translator == "raw" and prepared.changed  # enhanced, still Chinese
    echo = prepared.echo_text()
    assert "模型提示词（英文）" not in echo and f"模型提示词（未翻译）：{prepared.final_prompt}" in echo
    # translation switched off
    off = _prepare(PromptPipeline.from_settings(_settings(tmp_path, marian=False, translator="none")), "一只猫在睡觉")
    assert "模型提示词（英文）" not in off.echo_text() and "未翻译" in off.echo_text()
    # a language we do not translate
    other = _prepare(pipe, "ねこがはしる")
    assert other.language == "other" and "模型提示词（英文）" not in other.echo_text()
    # written in English: English it is
    english = _prepare(pipe, "a cat sleeping on a sofa")
    assert english.translator == "none" and "模型提示词（英文）" in english.echo_text()
    pipe.close()


def test_an_online_translation_is_labelled_english_and_a_failed_one_is_not(tmp_path: Path) -> None:
    with ChatCompletionsServer() as server:
        settings = _settings(tmp_path, marian=False, translator="openai", fallback=[],
                             openai={"base_url": server.base_url, "timeout_s": 0.5, "retries": 0})
        pipe = PromptPipeline.from_settings(settings, environ={})
        server.push(Reply(content="A cat sleeping"))
        assert "模型提示词（英文）：A cat sleeping" in _prepare(pipe, "一只猫在睡觉").echo_text()
        server.push(Reply(kind="malformed"))
        failed = _prepare(pipe, "一只猫在睡觉").echo_text()
        assert "模型提示词（英文）" not in failed and "模型提示词（未翻译）" in failed
