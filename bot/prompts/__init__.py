"""Prompt pipeline: language detection, translation to English, enhancement and content safety."""

from bot.prompts.pipeline import PreparedPrompt, PromptPipeline
from bot.prompts.settings import PromptSettings

__all__ = ["PreparedPrompt", "PromptPipeline", "PromptSettings"]
