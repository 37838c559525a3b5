"""Word-list safety: normalisation against evasion tricks, no false positives on ordinary words,
refusal message that never echoes, refusal log + sink, external moderation endpoint."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bot.prompts.devtools import ChatCompletionsServer, Reply
from bot.prompts.httpclient import HttpxClient
from bot.prompts.safety import (
    HttpModerator,
    ModerationError,
    RefusalLog,
    RefusalRecord,
    WordFilter,
    normalise,
    safe_refusal_message,
)
from bot.prompts.settings import DEFAULT_REFUSAL_MESSAGE, SafetySettings

FILTER = WordFilter(["色情", "儿童色情", "裸体", "恐怖袭击"], ["nude", "porn", "gore", "terrorist attack"])


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("a nude woman on the beach", "nude"),
        ("ＮＵＤＥ", "nude"),  # full-width
        ("n u d e", "nude"),  # spacing
        ("n\tu  d e", "nude"),  # tabs and double spaces
        ("n.u.d.e", "nude"),  # punctuation between letters
        ("nu-de", "nude"),
        ("nu\u200bde", "nude"),  # zero-width space
        ("nu\u2060d\ufeffe", "nude"),  # word joiner / BOM
        ("nud\u0435", "nude"),  # Cyrillic е
        ("\u0440orn", "porn"),  # Cyrillic р
        ("g\u03bfre", "gore"),  # Greek ο
        ("NÜDE", "nude"),  # accents
        ("p0rn", "porn"),  # digit for letter
        ("nud3", "nude"),
        ("g0r3", "gore"),
        ("nude,beach", "nude"),  # glued to the next word by punctuation
        ("nudes", "nude"),  # plural
        ("TERRORIST   attack", "terrorist attack"),
        ("terroristattack", "terrorist attack"),
        ("色 情", "色情"),
        ("色😀情", "色情"),
        ("色.情-片", "色情"),
        ("色\u200b情", "色情"),
        ("兒童色情", "儿童色情"),  # Traditional → Simplified
        ("裸體", "裸体"),
        ("恐怖襲擊", "恐怖袭击"),
        ("一只猫和 p o r n", "porn"),  # English term inside a Chinese prompt
    ],
)
def test_evasion_tricks_are_caught(text: str, term: str) -> None:
    assert term in FILTER.matches(text)


@pytest.mark.parametrize(
    "text",
    [
        "a classic car in the snow",
        "big ore deposits in a mine",  # "bigore" only exists if spaces were dropped
        "a gorilla eating bananas",
        "popcorn at the cinema",
        "red flowers, 红色的花",
        "一只柴犬在雪地里奔跑",
        "",
    ],
)
def test_ordinary_prompts_pass(text: str) -> None:
    assert FILTER.matches(text) == ()


def test_normalise_forms() -> None:
    norm = normalise("Ｎ.u-d\u200be, 色 情 BEACH")
    assert norm.joined.startswith("nude")
    assert "beach" in norm.split
    assert norm.han.startswith("nude") and "色情" in norm.han


def test_default_lists_catch_both_languages() -> None:
    s = SafetySettings()
    f = WordFilter(s.words_zh, s.words_en)
    assert f.matches("一段色情视频") and f.matches("some N.S.F.W content")
    assert f.matches("a shiba inu running in the snow") == ()


def test_refusal_message_never_echoes_the_matched_words() -> None:
    matched = FILTER.matches("nude 色情")
    assert matched
    for term in matched:
        assert term not in DEFAULT_REFUSAL_MESSAGE
    # an operator message that happens to contain a matched word is replaced by the neutral default
    assert (
        safe_refusal_message("不能生成 nude 内容", matched, DEFAULT_REFUSAL_MESSAGE)
        == DEFAULT_REFUSAL_MESSAGE
    )
    assert safe_refusal_message("换个说法吧", matched, DEFAULT_REFUSAL_MESSAGE) == "换个说法吧"


def _record(user: str = "u1") -> RefusalRecord:
    return RefusalRecord(
        user_id=user,
        chat_id="room1",
        stage="original",
        matched=("nude",),
        original="nude",
        translated=None,
        at=1.0,
    )


def test_refusal_log_logs_and_calls_sync_and_async_sinks(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[RefusalRecord] = []

    async def async_sink(rec: RefusalRecord) -> None:
        seen.append(rec)

    with caplog.at_level(logging.WARNING, logger="bot.prompts.safety"):
        asyncio.run(RefusalLog(seen.append).record(_record("sync")))
        asyncio.run(RefusalLog(async_sink).record(_record("async")))
    assert [r.user_id for r in seen] == ["sync", "async"]
    logged = [r for r in caplog.records if r.name == "bot.prompts.safety"]
    assert len(logged) == 2
    assert logged[0].user_id == "sync" and logged[0].chat_id == "room1"  # type: ignore[attr-defined]
    assert "matched=nude" in logged[0].getMessage()


def test_failing_sink_does_not_break_the_request(caplog: pytest.LogCaptureFixture) -> None:
    def broken(rec: RefusalRecord) -> None:
        raise RuntimeError("db locked")

    with caplog.at_level(logging.ERROR, logger="bot.prompts.safety"):
        asyncio.run(RefusalLog(broken).record(_record()))
    assert any("refusal sink failed" in r.getMessage() for r in caplog.records)


def test_http_moderator_against_local_endpoint() -> None:
    flagged = {"results": [{"flagged": True, "categories": {"violence": True, "sexual": False}}]}
    clean = {"results": [{"flagged": False, "categories": {"violence": False}}]}

    async def run(server: ChatCompletionsServer) -> None:
        mod = HttpModerator(
            server.base_url + "/moderations", http_client=HttpxClient(), api_key="k", timeout_s=0.5
        )
        server.push(Reply(kind="json", body=flagged), Reply(kind="json", body=clean))
        first = await mod.check("x")
        assert first.flagged and first.categories == ("violence",)
        assert not (await mod.check("y")).flagged
        for bad in (
            Reply(kind="status", status=503),
            Reply(kind="malformed"),
            Reply(kind="json", body={"results": []}),
            Reply(kind="json", body={"results": [{"flagged": "yes"}]}),
            Reply(delay_s=1.5),
        ):
            server.push(bad)
            with pytest.raises(ModerationError):
                await mod.check("z")

    with ChatCompletionsServer() as server:
        asyncio.run(run(server))
        assert server.requests[0].body == {"input": "x"}
        assert server.requests[0].headers["Authorization"] == "Bearer k"
