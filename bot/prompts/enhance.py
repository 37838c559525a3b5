"""Prompt enhancement into the short cinematic description style Pyramid Flow was trained on
(subject and action from the user, then camera, lighting and style).

Deterministic and local: an aspect the prompt already talks about (a camera move, a light source, a
film style) is not added again, long prompts are left alone, and empty template parts disappear.
"""

from __future__ import annotations

import re

from bot.prompts.settings import EnhanceSettings

_ASPECT_KEYWORDS: dict[str, tuple[str, ...]] = {
    "camera": (
        "camera", "shot", "close-up", "closeup", "close up", "pan", "panning", "tracking", "dolly",
        "zoom", "aerial", "drone", "angle", "pov", "lens", "footage", "handheld", "timelapse", "time-lapse",
        "slow motion",
    ),
    "lighting": (
        "light", "lighting", "lit", "sunset", "sunrise", "golden hour", "neon", "glow", "glowing",
        "backlit", "shadow", "shadows", "moonlight", "sunlight", "candlelight", "night", "dusk", "dawn",
    ),
    "style": (
        "cinematic", "film", "35mm", "anime", "cartoon", "watercolor", "oil painting", "pixel art",
        "photorealistic", "realistic", "3d render", "style", "documentary", "vintage",
    ),
}  # fmt: skip
_PATTERNS = {
    aspect: re.compile(r"\b(?:" + "|".join(re.escape(k) for k in words) + r")\b", re.IGNORECASE)
    for aspect, words in _ASPECT_KEYWORDS.items()
}
_REPEATED_SEPARATORS = re.compile(r"\s*([,;:])(?:\s*[,;:])+")


def covered_aspects(prompt: str) -> set[str]:
    return {aspect for aspect, rx in _PATTERNS.items() if rx.search(prompt)}


class TemplateEnhancer:
    def __init__(self, settings: EnhanceSettings) -> None:
        self.settings = settings

    def enhance(self, prompt: str) -> str:
        text = " ".join(prompt.split()).strip().rstrip(".。!！,，;；")
        if not text or len(text.split()) > self.settings.max_words:
            return text
        covered = covered_aspects(text)
        parts = {
            "prompt": text[0].upper() + text[1:],
            "camera": "" if "camera" in covered else self.settings.camera,
            "lighting": "" if "lighting" in covered else self.settings.lighting,
            "style": "" if "style" in covered else self.settings.style,
        }
        filled = self.settings.template.format_map(parts)
        # Tidy the separators an empty part leaves behind: ", ," → ",", ": A dog" → "A dog".
        filled = _REPEATED_SEPARATORS.sub(r"\1", filled)
        filled = re.sub(r"\s*,\s*", ", ", filled)
        return " ".join(filled.split()).strip(" ,;:")
