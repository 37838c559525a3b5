"""Local MarianMT backend: a tiny random model in the opus-mt-zh-en layout with a SentencePiece
tokenizer trained offline here, saved to a tmp folder and loaded through the production code path.
Its English is gibberish; these tests check the plumbing (model called, output decoded, stored, echoed)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from bot.prompts import PromptPipeline, PromptSettings  # noqa: E402
from bot.prompts.devtools import ChatCompletionsServer, Reply, build_tiny_marian  # noqa: E402
from bot.prompts.language import detect_language  # noqa: E402
from bot.prompts.safety import RefusalRecord  # noqa: E402
from bot.prompts.translate.base import TranslationError  # noqa: E402
from bot.prompts.translate.marian import MarianTranslator, source_sentences  # noqa: E402

torch.set_num_threads(1)
pytestmark = pytest.mark.filterwarnings("ignore:Recommended. pip install sacremoses")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_marian(tmp_path_factory.mktemp("opus-mt-zh-en"))


def _settings(model_dir: Path | str, **section: Any) -> PromptSettings:
    base: dict[str, Any] = {
        "translator": "marian",
        "fallback": [],
        "marian": {"model_dir": str(model_dir), "max_new_tokens": 8, "num_beams": 1},
    }
    base.update(section)
    return PromptSettings.model_validate(base)


def _reference_translation(model_dir: Path, sentences: list[str]) -> str:
    """Decode with transformers directly, independent of MarianTranslator."""
    from transformers import MarianMTModel, MarianTokenizer

    tok = MarianTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = MarianMTModel.from_pretrained(str(model_dir), local_files_only=True).eval()
    batch = tok(sentences, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**batch, max_new_tokens=8, num_beams=1, do_sample=False)
    return " ".join(s.strip() for s in tok.batch_decode(out, skip_special_tokens=True) if s.strip())


def test_folder_has_the_opus_mt_layout(model_dir: Path) -> None:
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "source.spm", "target.spm", "vocab.json", "tokenizer_config.json"} <= names
    assert any(n.endswith(".safetensors") for n in names)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "marian" and config["d_model"] == 16


def test_pipeline_translates_with_the_local_model(model_dir: Path) -> None:
    pipe = PromptPipeline.from_settings(_settings(model_dir, enhance={"enabled": False}))
    text = "一只柴犬在雪地里奔跑！🐕 阳光明媚。"
    prepared = asyncio.run(pipe.prepare(text, user_id="u1", chat_id="g1"))
    assert prepared.translator == "marian" and not prepared.notes
    assert prepared.final_prompt  # decoded, non-empty
    assert detect_language(prepared.final_prompt).code == "en"  # Latin output, no Han left
    # exactly what the model itself produces for the cleaned, sentence-split input
    assert source_sentences(text) == ["一只柴犬在雪地里奔跑!", "阳光明媚。"]  # NFKC, emoji dropped
    assert prepared.final_prompt == _reference_translation(model_dir, source_sentences(text))
    assert f"模型提示词（英文）：{prepared.final_prompt}" in prepared.echo_text()
    # stable between calls (greedy decoding, model kept loaded)
    assert asyncio.run(pipe.prepare(text)).final_prompt == prepared.final_prompt


def test_traditional_mixed_and_enhanced(model_dir: Path) -> None:
    pipe = PromptPipeline.from_settings(_settings(model_dir))
    for text in ("一隻柴犬在雪地裡奔跑", "一只 shiba inu 在 snow 里 running 😄～"):
        prepared = asyncio.run(pipe.prepare(text))
        assert prepared.translator == "marian"
        assert prepared.final_prompt.endswith("cinematic style, shot on 35mm film, vivid colors")
        assert prepared.final_prompt != text


def test_model_runs_on_a_worker_thread_and_the_loop_stays_free(model_dir: Path) -> None:
    translator = MarianTranslator(model_dir, max_new_tokens=120, num_beams=4)
    threads: list[str] = []
    original = translator._translate_sync

    def spy(sentences: list[str]) -> str:
        threads.append(threading.current_thread().name)
        return original(sentences)

    translator._translate_sync = spy  # type: ignore[method-assign]

    async def run() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        task = asyncio.create_task(ticker())
        english = await translator.translate("宇航员在月球上漫步，镜头缓缓推进。" * 3)
        task.cancel()
        return english, ticks

    english, ticks = asyncio.run(run())
    assert english and threads and threads[0].startswith("marian") and threads[0] != "MainThread"
    assert ticks > 5
    assert translator.loaded
    assert next(translator._model.parameters()).device.type == "cpu"
    translator.close()


def test_missing_model_folder_falls_back_to_raw(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pipe = PromptPipeline.from_settings(_settings(tmp_path / "nowhere", enhance={"enabled": False}))
    with caplog.at_level(logging.ERROR, logger="bot.prompts.translate.marian"):
        first = asyncio.run(pipe.prepare("一只猫"))
        second = asyncio.run(pipe.prepare("一只狗"))
    assert first.final_prompt == "一只猫" and first.translator == "raw"
    assert first.notes == ["本地翻译模型不可用，已直接使用原文（视频模型只理解英文，效果可能不理想）"]
    assert second.translator == "raw"
    assert (
        len([r for r in caplog.records if "folder missing" in r.getMessage()]) == 1
    )  # not re-tried per prompt


def test_marian_timeout_is_reported(model_dir: Path) -> None:
    translator = MarianTranslator(model_dir, max_new_tokens=400, num_beams=8, timeout_s=0.001)
    with pytest.raises(TranslationError) as err:
        asyncio.run(translator.translate("宇航员在月球上漫步" * 20))
    assert err.value.reason == "timeout"
    translator.close()


@pytest.mark.parametrize(
    ("reply", "note"),
    [
        (Reply(delay_s=1.0), "在线翻译服务超时，已改用本地翻译模型"),
        (Reply(kind="status", status=500), "在线翻译服务出错（HTTP 500），已改用本地翻译模型"),
        (Reply(kind="malformed"), "在线翻译服务返回了无法识别的结果，已改用本地翻译模型"),
        (Reply(kind="missing"), "在线翻译服务返回了无法识别的结果，已改用本地翻译模型"),
    ],
)
def test_openai_failures_fall_back_to_marian(model_dir: Path, reply: Reply, note: str) -> None:
    with ChatCompletionsServer() as server:
        server.set_default(reply)
        settings = _settings(
            model_dir,
            translator="openai",
            fallback=["marian"],
            openai={"base_url": server.base_url, "timeout_s": 0.3, "retries": 1, "retry_backoff_s": 0.01},
        )
        prepared = asyncio.run(
            PromptPipeline.from_settings(settings, environ={}).prepare("一只柴犬在雪地里奔跑")
        )
        assert len(server.requests) == 2  # one retry before giving up
    assert prepared.translator == "marian" and prepared.final_prompt
    assert prepared.notes == [note]
    assert "⚠️ " + note in prepared.echo_text()


def test_safety_applies_to_the_machine_translation(model_dir: Path) -> None:
    text = "一条金色的龙在云中飞翔"
    english = asyncio.run(PromptPipeline.from_settings(_settings(model_dir)).prepare(text)).final_prompt
    banned = english.split(",")[0].split()[0]  # a word only the translation contains
    sink: list[RefusalRecord] = []
    pipe = PromptPipeline.from_settings(
        _settings(model_dir, safety={"words_en": [banned], "words_zh": []}), refusal_sink=sink.append
    )
    prepared = asyncio.run(pipe.prepare(text, user_id="u9", chat_id="g9"))
    assert prepared.refused and prepared.final_prompt == ""
    assert banned.lower() not in (prepared.refusal_message or "").lower()
    assert sink[0].stage == "translated" and sink[0].matched == (banned,) and sink[0].user_id == "u9"


def test_warm_up_loads_before_the_first_prompt(model_dir: Path) -> None:
    pipe = PromptPipeline.from_settings(_settings(model_dir))
    (translator,) = pipe.translators
    assert isinstance(translator, MarianTranslator) and not translator.loaded
    asyncio.run(pipe.warm_up())
    assert translator.loaded
    pipe.close()


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Any attempt to reach a non-loopback host fails the test."""
    import socket

    real_connect = socket.socket.connect

    def guarded(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in ("127.0.0.1", "localhost", "::1"):
            raise AssertionError(f"network access to {host}")
        return real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", guarded)
    yield
