"""PromptSettings: defaults, strictness, reference constants."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.prompts.settings import PromptSettings

ROOT = Path(__file__).resolve().parents[1]


def test_empty_section_is_valid_with_documented_defaults() -> None:
    s = PromptSettings.model_validate({})
    assert s.translator == "marian"
    assert s.translator_chain() == ["marian"]
    assert s.openai.api_key_env == "XIAOAI_TRANSLATE_API_KEY"
    assert s.safety.enabled and s.safety.words_zh and s.safety.words_en
    assert s.enhance.enabled


def test_negative_prompt_and_suffix_mirror_reference_constants() -> None:
    constants = json.loads((ROOT / "generation/data/pipeline_constants.json").read_text("utf-8"))
    s = PromptSettings()
    assert (
        s.prompt_suffix
        == constants["prompt_suffix_added_to_positive_prompt"]
        == ", hyper quality, Ultra HD, 8K"
    )
    assert s.negative_prompt == constants["default_negative_prompt"]
    assert PromptSettings(negative_prompt="blurry").negative_prompt == "blurry"


@pytest.mark.parametrize(
    "section",
    [
        {"translator": "google"},
        {"unknown_key": 1},
        {"openai": {"api_key": "sk-secret"}},  # keys never come from config, only from the environment
        {"openai": {"timeout_s": 0}},
        {"fallback": ["raw"]},
        {"enhance": {"template": "{camera}, {lighting}"}},  # must contain {prompt}
        {"enhance": {"template": "{prompt}, {mood}"}},
        {"safety": {"moderation": {"bogus": True}}},
    ],
)
def test_bad_values_are_rejected(section: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        PromptSettings.model_validate(section)


def test_translator_chain_order_and_dedupe() -> None:
    assert PromptSettings(translator="openai", fallback=["marian"]).translator_chain() == ["openai", "marian"]
    assert PromptSettings(translator="openai", fallback=["openai", "marian"]).translator_chain() == [
        "openai",
        "marian",
    ]
    assert PromptSettings(translator="openai", fallback=[]).translator_chain() == ["openai"]
    assert PromptSettings(translator="none", fallback=["marian"]).translator_chain() == []


def test_blank_words_are_dropped() -> None:
    s = PromptSettings.model_validate({"safety": {"words_en": ["  ", "gore "], "words_zh": [""]}})
    assert s.safety.words_en == ["gore"]
    assert s.safety.words_zh == []
