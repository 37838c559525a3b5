"""Translators (Chinese → English) behind one interface; see `base.Translator`."""

from bot.prompts.translate.base import (
    TranslationError,
    TranslationResult,
    Translator,
    translate_with_fallback,
)

__all__ = ["TranslationError", "TranslationResult", "Translator", "translate_with_fallback"]
