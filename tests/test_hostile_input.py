"""Hostile names and prompts: no forged log lines, no control characters echoed into chats, no secret
in any log at any level, no HTTP 500 from an oversized id.

The log tests install the project's one logging setup (`generation.logs.setup_logging`) on a string
stream and drive the real dispatcher with a real SQLite file (tests.chat_harness).
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bot.textsafe import clean, clean_name
from generation.logs import SECRET_ENV_VARS, escape, register_secret, setup_logging
from tests.chat_harness import ROOM, async_test, make_harness, make_settings

FORGED = "evil\nCRITICAL bot.app: FORGED-LOG-LINE\r\x1b[31mRED\x07\x00\u202eesrever"
LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


@contextmanager
def captured(fmt: str = "text", level: str = "DEBUG", environ: dict[str, str] | None = None) -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    setup_logging(level, fmt, stream=stream, environ=environ or {}, export=False)  # type: ignore[arg-type]
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


@async_test
async def test_a_display_name_cannot_forge_log_lines(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    with captured("text") as out:
        await h.channel.say(f"/视频 {FORGED}", sender_id="wxid_evil\nCRITICAL x", sender_name=FORGED, chat_id=ROOM)
        await h.channel.say("/额度", sender_id="wxid_evil", sender_name=FORGED, chat_id=ROOM)
        logging.getLogger("bot.test").warning("prompt %s", FORGED, extra={"user_id": FORGED, "job_id": 7})
    text = out.getvalue()
    assert "FORGED-LOG-LINE" in text  # it was logged ...
    for line in text.splitlines():  # ... but every line is a real record or an indented continuation
        assert LINE.match(line) or line.startswith("    | "), line
    assert not any(ch in text for ch in "\x1b\x07\x00\r\u202e")
    assert "job=7" in text and "user=evil\\nCRITICAL" in text  # the ids the call site passed are printed


def test_json_logs_are_one_object_per_line_with_the_ids() -> None:
    with captured("json") as out:
        logging.getLogger("bot.test").info("prompt %s", FORGED, extra={"chat_id": "room\n1", "message_id": "m1"})
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["message"] == f"prompt {FORGED}" and record["chat"] == "room\n1" and record["msg"] == "m1"
    assert "\u202e" not in lines[0] and "\x1b" not in lines[0]  # escaped in the JSON text


def test_escape_covers_bidi_and_controls() -> None:
    assert escape("a\nb\u202ec\x1b") == "a\\nb\\u202ec\\x1b"
    assert escape("小爱 ok") == "小爱 ok"


@async_test
async def test_control_characters_are_not_echoed_into_the_chat(tmp_path: Path) -> None:
    h = await make_harness(make_settings(tmp_path))
    await h.channel.say(f"/视频 a cat {FORGED}", sender_id="wxid_evil", sender_name=FORGED, chat_id=ROOM)
    await h.channel.say("/帮助", sender_id="wxid_evil", sender_name="Bob\u202e\x07", chat_id=ROOM)
    sent = [s.text.text for s in h.channel.sent if s.text]
    assert sent, "the bot answered"
    joined = "\n".join(sent)
    assert "FORGED-LOG-LINE" in joined  # the prompt is echoed in the ack ...
    assert not any(ch in joined for ch in "\x1b\x07\x00\r\u202e")  # ... without its control characters
    assert "@evil CRITICAL bot.app: FORGED-LOG-LINE" in joined  # a name is one line in an @-mention
    assert clean("a\u202eb\r\nc\x00") == "ab\nc" and clean_name("x\ny\u2066") == "x y"
    assert clean("👩\u200d💻") == "👩\u200d💻"  # emoji sequences keep their joiner


def test_no_configured_secret_reaches_any_log_at_any_level() -> None:
    secrets = {name: f"s3cr3t-{i}-value>with>angles" for i, name in enumerate(SECRET_ENV_VARS)}
    runtime = "access-token-issued-at-runtime-123456"
    with captured("text", "DEBUG", environ=secrets) as out:
        register_secret(runtime)
        log = logging.getLogger("bot.test")
        for value in [*secrets.values(), runtime]:
            log.debug("header Authorization: Bearer %s", value)
            log.info("url https://example.invalid/?token=" + value)
            log.warning("id", extra={"user_id": value})
            try:
                raise RuntimeError(f"refused {value}")
            except RuntimeError:
                log.exception("call failed")
    text = out.getvalue()
    assert "***" in text
    for value in [*secrets.values(), runtime]:
        assert value not in text
        assert value.split(">")[-1] not in text  # not even the tail after a '>'


def test_wechaty_token_lines_are_dropped_even_with_angle_brackets() -> None:
    """python-wechaty's own redaction stops at the first '>' of the token: we drop such lines whole."""
    from bot.channels.wechaty.compat import load_wechaty

    load_wechaty()
    token = "insecure_abc>1c67TAIL"
    with captured("text", "DEBUG") as out:
        puppet_log = logging.getLogger("PuppetService")
        stream = io.StringIO()
        own = logging.StreamHandler(stream)  # the library attaches handlers of its own, like this one
        for f in puppet_log.handlers[:1]:
            for flt in f.filters:
                own.addFilter(flt)
        puppet_log.addHandler(own)
        try:
            puppet_log.warning(f"there are endpoint<127.0.0.1:8788> and token<{token}>, token will be ignored")
        finally:
            puppet_log.removeHandler(own)
    assert "1c67TAIL" not in out.getvalue() and "1c67TAIL" not in stream.getvalue()


def test_an_oversized_job_id_is_not_found(tmp_path: Path) -> None:
    from bot.jobs.queue import JobQueue
    from bot.store.db import open_db
    from bot.store.quota import QuotaBook

    settings = make_settings(tmp_path)
    db = open_db(settings.storage.db_path)
    try:
        queue = JobQueue(db, QuotaBook(db, settings.quota), settings.queue)
        assert queue.get(10**22) is None and queue.get(-1) is None and queue.get(0) is None
    finally:
        db.conn.close()


def test_media_urls_with_a_23_digit_id_answer_404(tmp_path: Path) -> None:
    from tests.test_playground_web import web_app

    with web_app(tmp_path) as web:
        for path in ("/media/video/12345678901234567890123", "/media/cover/12345678901234567890123"):
            assert web.client.get(path).status_code == 404
