"""The README's prompt section stays true: every YAML example loads through the root settings loader."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from bot.settings import settings_from_mapping

README = Path(__file__).resolve().parents[1] / "README.md"


def test_prompt_section_examples_are_valid_settings() -> None:
    text = README.read_text("utf-8")
    start = text.index("## 提示词")
    end = text.index("\n## ", start + 1)
    section = text[start:end]
    for title in ("1. 本地 MarianMT", "2. OpenAI 兼容接口", "3. 不翻译"):
        assert title in section
    blocks = re.findall(r"```yaml\n(.*?)```", section, re.S)
    kinds = [settings_from_mapping(yaml.safe_load(b), "README").prompts.translator for b in blocks]
    assert kinds[:3] == ["marian", "openai", "none"]
    assert len(blocks) == 4
