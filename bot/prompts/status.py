"""Which translator a bot will really use, said once at start-up (log, and the demo/playground banner).

The configured chain (`prompts.translator` + `prompts.fallback`) is only a wish: the default local
MarianMT model is a folder that must be downloaded first (`xiaoai models fetch --translator`). This
reads the settings and the disk (never the network) and says, in one bilingual line, what Chinese
prompts will go through, so nobody learns it from untranslated videos.
"""

from __future__ import annotations

from pathlib import Path

from bot.prompts.settings import PromptSettings

FETCH_HINT = "xiaoai models fetch --translator"


def marian_ready(model_dir: str | Path) -> bool:
    """The MarianMT folder has what the translator loads first (its config)."""
    return (Path(model_dir) / "config.json").is_file()


def active_translator(settings: PromptSettings) -> str | None:
    """The first backend of the chain that can run: "marian" (its folder is there) or "openai" (an
    endpoint, assumed reachable); None when Chinese prompts will go to the model untranslated."""
    for kind in settings.translator_chain():
        if kind == "openai" or marian_ready(settings.marian.model_dir):
            return kind
    return None


def translator_status(settings: PromptSettings) -> str:
    """One line: the translator Chinese prompts go through, or that they go untranslated and how to fix it."""
    chain = settings.translator_chain()
    marian_dir = settings.marian.model_dir
    if not chain:
        return ("翻译 / translator: 关闭（prompts.translator: none），中文提示词原样发给模型 / off: Chinese prompts "
                "go to the model untranslated")
    active = active_translator(settings)
    missing = f"本地模型目录 {marian_dir} 不存在，运行 {FETCH_HINT} 下载 / {marian_dir} missing: run `{FETCH_HINT}`"
    if active is None:
        return (f"翻译 / translator: 无 / none — 本地模型目录 {marian_dir} 不存在，中文提示词将原样发给模型；"
                f"运行 {FETCH_HINT} 下载 / the MarianMT folder is missing, Chinese prompts go untranslated: "
                f"run `{FETCH_HINT}`")
    if active == "marian":
        return f"翻译 / translator: 本地 MarianMT（{marian_dir}）/ local MarianMT"
    o = settings.openai
    line = f"翻译 / translator: 在线接口 / OpenAI-compatible API {o.model} @ {o.base_url}"
    if "marian" in chain:
        rest = "失败时改用本地 MarianMT / falls back to local MarianMT" if marian_ready(marian_dir) else missing
        line += f"；{rest}"
    return line
