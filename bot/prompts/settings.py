"""Typed settings for the prompt pipeline (the `prompts:` section of config.yaml).

Every field has a default so an empty section is valid. Secrets never live here: the translation
API key is read only from the environment variable whose *name* is configured (`api_key_env`).
"""

from __future__ import annotations

import json
import re
from functools import cache
from importlib import resources
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

TranslatorKind = Literal["marian", "openai", "none"]
FallbackKind = Literal["marian", "openai"]


@cache
def reference_constants() -> dict[str, str]:
    """The prompt suffix and default negative prompt of the reference pipeline, read from the
    vendored `generation/data/pipeline_constants.json` so there is a single source of truth."""
    raw = resources.files("generation").joinpath("data", "pipeline_constants.json").read_text("utf-8")
    data = json.loads(raw)
    return {
        "prompt_suffix": str(data["prompt_suffix_added_to_positive_prompt"]),
        "negative_prompt": str(data["default_negative_prompt"]),
    }


DEFAULT_TRANSLATE_SYSTEM_PROMPT = (
    "You translate short Chinese prompts for a text-to-video model into fluent English. "
    "The input may be Simplified or Traditional Chinese mixed with English words, emoji and punctuation. "
    "Keep English words, names and numbers as they are. Describe emoji in words if they matter. "
    "Reply with the English translation only: no quotes, no notes, no explanations."
)

DEFAULT_REFUSAL_MESSAGE = "抱歉，这个提示词包含不适合在群里生成的内容，请换一种描述后再试。本次不扣额度。"

# Small, deliberately conservative defaults; operators extend them in config.yaml.
DEFAULT_WORDS_ZH = [
    "色情",
    "裸体",
    "裸照",
    "淫秽",
    "儿童色情",
    "恋童",
    "血腥",
    "斩首",
    "虐杀",
    "恐怖袭击",
    "制作炸弹",
]
DEFAULT_WORDS_EN = [
    "porn",
    "nsfw",
    "nude",
    "naked",
    "gore",
    "beheading",
    "child abuse",
    "terrorist attack",
]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MarianSettings(_Section):
    """Local `Helsinki-NLP/opus-mt-zh-en`-layout folder, run on the CPU with transformers."""

    model_dir: str = "models/opus-mt-zh-en"
    max_new_tokens: int = Field(default=200, ge=4, le=1024)
    num_beams: int = Field(default=4, ge=1, le=8)
    timeout_s: float = Field(default=30.0, gt=0)


class OpenAISettings(_Section):
    """Any OpenAI-compatible chat-completions endpoint (DeepSeek, Qwen/DashScope, vLLM, Ollama...)."""

    base_url: str = "https://api.deepseek.com/v1"
    model: str = "deepseek-chat"
    api_key_env: str = "XIAOAI_TRANSLATE_API_KEY"
    timeout_s: float = Field(default=10.0, gt=0)
    retries: int = Field(default=1, ge=0, le=5)
    retry_backoff_s: float = Field(default=0.5, ge=0)
    temperature: float = Field(default=0.2, ge=0, le=2)
    max_tokens: int = Field(default=300, ge=16, le=4096)
    system_prompt: str = DEFAULT_TRANSLATE_SYSTEM_PROMPT


class EnhanceSettings(_Section):
    """Template enhancement into the short cinematic style the model was trained on.

    `template` may use `{prompt}`, `{camera}`, `{lighting}` and `{style}`; an aspect the prompt already
    describes (e.g. it names a camera move) is left out, and empty parts are dropped cleanly."""

    enabled: bool = True
    template: str = "{prompt}, {camera}, {lighting}, {style}"
    camera: str = "smooth cinematic camera movement"
    lighting: str = "soft natural lighting"
    style: str = "cinematic style, shot on 35mm film, vivid colors"
    max_words: int = Field(default=60, ge=1)  # longer prompts are already detailed: left as they are

    @field_validator("template")
    @classmethod
    def _template_fields(cls, template: str) -> str:
        fields = set(re.findall(r"{(\w*)}", template))
        unknown = fields - {"prompt", "camera", "lighting", "style"}
        if "prompt" not in fields or unknown:
            raise ValueError("template must contain {prompt} and may only use {camera}, {lighting}, {style}")
        return template


class ModerationSettings(_Section):
    """Optional external moderation endpoint (OpenAI `/moderations` response shape)."""

    url: str | None = None
    model: str | None = None
    api_key_env: str = "XIAOAI_MODERATION_API_KEY"
    timeout_s: float = Field(default=5.0, gt=0)
    fail_closed: bool = False  # refuse when the endpoint cannot be reached (default: allow and log)


class SafetySettings(_Section):
    enabled: bool = True
    words_zh: list[str] = Field(default_factory=lambda: list(DEFAULT_WORDS_ZH))
    words_en: list[str] = Field(default_factory=lambda: list(DEFAULT_WORDS_EN))
    refusal_message: str = DEFAULT_REFUSAL_MESSAGE
    moderation: ModerationSettings = Field(default_factory=ModerationSettings)

    @field_validator("words_zh", "words_en")
    @classmethod
    def _no_blank_words(cls, words: list[str]) -> list[str]:
        return [w for w in (w.strip() for w in words) if w]


class PromptSettings(_Section):
    translator: TranslatorKind = "marian"
    # Tried in order after `translator` fails; when all fail the original text is used with a warning.
    fallback: list[FallbackKind] = Field(default_factory=lambda: ["marian"])
    marian: MarianSettings = Field(default_factory=MarianSettings)
    openai: OpenAISettings = Field(default_factory=OpenAISettings)
    enhance: EnhanceSettings = Field(default_factory=EnhanceSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    # Passed on to the generator (which appends the suffix to the positive prompt, like the reference).
    negative_prompt: str = Field(default_factory=lambda: reference_constants()["negative_prompt"])
    prompt_suffix: str = Field(default_factory=lambda: reference_constants()["prompt_suffix"])

    def translator_chain(self) -> list[FallbackKind]:
        """Backends to try, in order, without duplicates (empty for `translator: none`)."""
        if self.translator == "none":
            return []
        chain: list[FallbackKind] = [self.translator]
        for kind in self.fallback:
            if kind not in chain:
                chain.append(kind)
        return chain
