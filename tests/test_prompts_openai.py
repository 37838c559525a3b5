"""The OpenAI-compatible chat-completions translator against a real local HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pytest

from bot.prompts import PromptPipeline, PromptSettings
from bot.prompts.devtools import ChatCompletionsServer, Reply
from bot.prompts.httpclient import HttpxClient
from bot.prompts.translate.base import TranslationError
from bot.prompts.translate.openai_compat import (
    OpenAICompatTranslator,
    chat_completions_url,
    parse_chat_answer,
)


@pytest.fixture
def server() -> Iterator[ChatCompletionsServer]:
    with ChatCompletionsServer() as srv:
        yield srv


def _translator(base_url: str, **kw: object) -> OpenAICompatTranslator:
    opts: dict[str, object] = {
        "base_url": base_url,
        "model": "qwen-mt",
        "api_key": "sk-test",
        "http_client": HttpxClient(),
        "timeout_s": 0.5,
        "retries": 1,
        "retry_backoff_s": 0.01,
        "system_prompt": "translate",
    }
    opts.update(kw)
    return OpenAICompatTranslator(**opts)  # type: ignore[arg-type]


def _settings(base_url: str, **openai: object) -> PromptSettings:
    section = {
        "base_url": base_url,
        "model": "deepseek-chat",
        "timeout_s": 0.5,
        "retries": 1,
        "retry_backoff_s": 0.01,
    }
    section.update(openai)
    return PromptSettings.model_validate(
        {"translator": "openai", "fallback": [], "openai": section, "enhance": {"enabled": False}}
    )


def test_translates_and_sends_the_protocol(server: ChatCompletionsServer) -> None:
    server.push(Reply(content="A shiba inu running in the snow"))
    english = asyncio.run(_translator(server.base_url).translate("一只柴犬在雪地里奔跑"))
    assert english == "A shiba inu running in the snow"
    (req,) = server.requests
    assert req.path == "/v1/chat/completions"
    assert req.headers["Authorization"] == "Bearer sk-test"
    assert req.body is not None and req.body["model"] == "qwen-mt" and req.body["stream"] is False
    assert req.body["messages"][0] == {"role": "system", "content": "translate"}
    assert req.body["messages"][1] == {"role": "user", "content": "一只柴犬在雪地里奔跑"}


def test_key_comes_only_from_the_named_environment_variable(server: ChatCompletionsServer) -> None:
    settings = _settings(server.base_url, api_key_env="MY_LLM_KEY")
    pipe = PromptPipeline.from_settings(
        settings, environ={"MY_LLM_KEY": "sk-from-env", "XIAOAI_TRANSLATE_API_KEY": "no"}
    )
    prepared = asyncio.run(pipe.prepare("一只柴犬在雪地里奔跑", user_id="u1", chat_id="g1"))
    assert prepared.translator == "openai"
    assert prepared.final_prompt == "translated: 10 chars"  # the server's default answer
    assert server.requests[-1].headers["Authorization"] == "Bearer sk-from-env"
    # no key configured → no Authorization header at all (local vLLM / Ollama need none)
    asyncio.run(PromptPipeline.from_settings(settings, environ={}).prepare("一只猫"))
    assert "Authorization" not in server.requests[-1].headers


def test_retries_a_500_then_succeeds(server: ChatCompletionsServer) -> None:
    server.push(Reply(kind="status", status=500), Reply(content="a cat"))
    assert asyncio.run(_translator(server.base_url).translate("一只猫")) == "a cat"
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(kind="status", status=500), "http"),
        (Reply(kind="status", status=429), "http"),
        (Reply(kind="malformed"), "malformed"),
        (Reply(kind="missing"), "malformed"),
        (Reply(kind="empty"), "empty"),
        (Reply(delay_s=1.0, content="too late"), "timeout"),
    ],
)
def test_transient_failures_are_retried_then_reported(
    server: ChatCompletionsServer, reply: Reply, reason: str
) -> None:
    server.set_default(reply)
    started = time.perf_counter()
    with pytest.raises(TranslationError) as err:
        asyncio.run(_translator(server.base_url, retries=2).translate("一只猫"))
    assert err.value.reason == reason
    assert len(server.requests) == 3  # 1 try + 2 retries
    if reason == "timeout":
        assert time.perf_counter() - started < 3 * 0.5 + 1.0  # the per-attempt timeout is honoured


@pytest.mark.parametrize(("status", "reason"), [(401, "auth"), (403, "auth"), (400, "http"), (404, "http")])
def test_client_errors_are_not_retried(server: ChatCompletionsServer, status: int, reason: str) -> None:
    server.set_default(Reply(kind="status", status=status))
    with pytest.raises(TranslationError) as err:
        asyncio.run(_translator(server.base_url, retries=3).translate("一只猫"))
    assert err.value.reason == reason and err.value.status == status
    assert len(server.requests) == 1


def test_unreachable_endpoint() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TranslationError) as err:
        asyncio.run(_translator(f"http://127.0.0.1:{port}/v1", retries=0).translate("一只猫"))
    assert err.value.reason == "unavailable"


def test_answer_cleaning() -> None:
    def answer(content: str) -> bytes:
        return json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()

    assert parse_chat_answer(answer('"A cat on a roof."')) == "A cat on a roof."
    assert parse_chat_answer(answer("<think>用户想要…</think>\n\nTranslation: a dog")) == "a dog"
    assert parse_chat_answer(answer("  a\n  red   kite ")) == "a red kite"
    with pytest.raises(TranslationError):
        parse_chat_answer(b'{"choices":[{"message":{"content":null}}]}')
    with pytest.raises(TranslationError):
        parse_chat_answer(b"<html>bad gateway</html>")
    assert (
        chat_completions_url("https://api.deepseek.com/v1/") == "https://api.deepseek.com/v1/chat/completions"
    )
    assert chat_completions_url("http://h/v1/chat/completions") == "http://h/v1/chat/completions"


def test_a_declining_model_is_not_asked_again(server: ChatCompletionsServer) -> None:
    server.set_default(Reply(content="I'm sorry, I can't assist with that request."))
    with pytest.raises(TranslationError) as err:
        asyncio.run(_translator(server.base_url, retries=3).translate("一只猫"))
    assert err.value.reason == "malformed" and len(server.requests) == 1


def test_failures_fall_back_to_raw_with_a_warning(server: ChatCompletionsServer) -> None:
    server.set_default(Reply(kind="status", status=500))
    pipe = PromptPipeline.from_settings(_settings(server.base_url, retries=0), environ={})
    prepared = asyncio.run(pipe.prepare("一只柴犬在雪地里奔跑"))
    assert not prepared.refused
    assert prepared.translator == "raw"
    assert prepared.final_prompt == "一只柴犬在雪地里奔跑"
    assert prepared.notes == [
        "在线翻译服务出错（HTTP 500），已直接使用原文（视频模型只理解英文，效果可能不理想）"
    ]
    assert "⚠️ 在线翻译服务出错" in prepared.echo_text()


def test_slow_server_does_not_block_the_event_loop(server: ChatCompletionsServer) -> None:
    server.push(Reply(delay_s=0.3, content="a slow cat"))

    async def run() -> tuple[str, int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        english = await _translator(server.base_url).translate("一只猫")
        task.cancel()
        return english, ticks

    english, ticks = asyncio.run(run())
    assert english == "a slow cat"
    assert ticks >= 10  # the loop kept running while the request was in flight
