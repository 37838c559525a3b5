"""The prompt pipeline inside the real chat flow (dispatcher, video plugin, QuotaBook and JobQueue on
SQLite, LocalChannel): the English prompt is stored with the job and echoed in the ack; refusals
charge nothing; `-raw` goes through untouched."""

from __future__ import annotations

from pathlib import Path

from bot.prompts import PromptPipeline, PromptSettings
from bot.prompts.devtools import ChatCompletionsServer, Reply
from bot.prompts.safety import RefusalRecord
from tests.chat_harness import async_test, make_harness, make_settings

ALICE = {"sender_id": "wxid_alice", "sender_name": "Alice"}


def _pipeline(server: ChatCompletionsServer, sink: list[RefusalRecord]) -> PromptPipeline:
    settings = PromptSettings.model_validate(
        {
            "translator": "openai",
            "fallback": [],
            "openai": {"base_url": server.base_url, "timeout_s": 0.5, "retries": 0},
            "enhance": {"camera": "slow dolly shot", "lighting": "", "style": ""},
        }
    )
    return PromptPipeline.from_settings(settings, environ={}, refusal_sink=sink.append)


def _spends(h) -> list[int]:
    return [r.delta for r in h.ledger("wxid_alice") if r.kind == "spend"]


@async_test
async def test_translated_prompt_is_stored_and_echoed(tmp_path: Path) -> None:
    sink: list[RefusalRecord] = []
    with ChatCompletionsServer() as server:
        server.push(Reply(content="A shiba inu running in the snow"))
        h = await make_harness(make_settings(tmp_path), pipeline=_pipeline(server, sink))
        await h.say("/video 一只柴犬在雪地里奔跑", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert job.prompt == "一只柴犬在雪地里奔跑"
    assert job.final_prompt == "A shiba inu running in the snow, slow dolly shot"
    assert "A shiba inu running in the snow, slow dolly shot" in h.last_text()
    assert _spends(h) == [-job.cost]


@async_test
async def test_fallback_warning_reaches_the_user(tmp_path: Path) -> None:
    with ChatCompletionsServer() as server:
        server.set_default(Reply(kind="malformed"))
        h = await make_harness(make_settings(tmp_path), pipeline=_pipeline(server, []))
        await h.say("/video 一只柴犬在雪地里奔跑", **ALICE)
    [job] = h.jobs("wxid_alice")
    assert "在线翻译服务返回了无法识别的结果" in h.last_text()
    assert job.final_prompt.startswith("一只柴犬在雪地里奔跑")  # untranslated, but still queued


@async_test
async def test_refused_prompt_charges_nothing_and_is_logged(tmp_path: Path) -> None:
    sink: list[RefusalRecord] = []
    with ChatCompletionsServer() as server:
        h = await make_harness(make_settings(tmp_path), pipeline=_pipeline(server, sink))
        await h.say("/video 一段 色.情 视频", **ALICE)
        assert server.requests == []
    assert h.jobs("wxid_alice") == [] and _spends(h) == []
    reply = h.last_text()
    assert reply.endswith(PromptSettings().safety.refusal_message) and "色情" not in reply
    assert [(r.user_id, r.stage) for r in sink] == [("wxid_alice", "original")]


@async_test
async def test_raw_prompt_is_untouched(tmp_path: Path) -> None:
    with ChatCompletionsServer() as server:
        h = await make_harness(make_settings(tmp_path), pipeline=_pipeline(server, []))
        await h.say("/video -raw 一只柴犬 in the snow", **ALICE)
        assert server.requests == []
    [job] = h.jobs("wxid_alice")
    assert job.final_prompt == job.prompt == "一只柴犬 in the snow"
