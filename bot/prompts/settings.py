"""Typed settings for the prompt pipeline (the `prompts:` section of config.yaml).

Every field has a default so an empty section is valid. Secrets never live here: the translation
API key is read only from the environment variable whose *name* is configured (`api_key_env`).
"""

from __future__ import annotations

import json
import re
import unicodedata
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


class StylePreset(_Section):
    """One `风格=名字` preset: `text` is appended to the English prompt (write the word "style" in it, so the
    enhancer adds no style of its own), `negative` to the negative prompt; `aliases` are other accepted names
    (e.g. the English `style=anime`)."""

    text: str = Field(min_length=1)
    negative: str = ""
    aliases: list[str] = Field(default_factory=list)


DEFAULT_STYLES: dict[str, dict[str, object]] = {
    "电影": {"text": "cinematic film style, dramatic lighting, film grain",
             "negative": "cartoon, anime, illustration", "aliases": ["cinematic", "film"]},
    "动漫": {"text": "anime style, cel shading, vibrant colors, clean line art",
             "negative": "photorealistic, photo", "aliases": ["anime"]},
    "水墨": {"text": "traditional Chinese ink wash painting style, black ink on rice paper, soft brush strokes",
             "negative": "saturated colors, photorealistic", "aliases": ["ink"]},
    "油画": {"text": "oil painting style, visible impasto brush strokes, rich warm colors",
             "negative": "photorealistic, photo", "aliases": ["oil"]},
    "像素": {"text": "pixel art style, retro 16-bit video game, crisp pixels",
             "negative": "blurry, smooth gradients, photorealistic", "aliases": ["pixel"]},
    "赛博朋克": {"text": "cyberpunk style, neon lights, rainy futuristic city at night, glowing signs",
               "negative": "daylight, rural", "aliases": ["cyberpunk"]},
}


def _default_styles() -> dict[str, StylePreset]:
    return {name: StylePreset.model_validate(value) for name, value in DEFAULT_STYLES.items()}


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
    # `/视频 不要=模糊,变形`: translated and checked like the prompt, then added to `negative_prompt`
    max_negative_chars: int = Field(default=200, ge=1, le=2000)
    # `/视频 风格=动漫`: name → preset (shown by /风格); operators may edit, add or remove presets
    styles: dict[str, StylePreset] = Field(default_factory=_default_styles)

    def find_style(self, name: str) -> tuple[str, StylePreset] | None:
        """The preset called `name` (or one of its aliases; case and full-width forms do not matter)."""
        wanted = unicodedata.normalize("NFKC", name).strip().casefold()
        for key, preset in self.styles.items():
            names = [key, *preset.aliases]
            if any(unicodedata.normalize("NFKC", n).strip().casefold() == wanted for n in names):
                return key, preset
        return None

    def translator_chain(self) -> list[FallbackKind]:
        """Backends to try, in order, without duplicates (empty for `translator: none`)."""
        if self.translator == "none":
            return []
        chain: list[FallbackKind] = [self.translator]
        for kind in self.fallback:
            if kind not in chain:
                chain.append(kind)
        return chain
