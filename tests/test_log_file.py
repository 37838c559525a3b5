"""Log files (`--log-file`, generation.logs.setup_logging(file=…)): the same escaped, redacted lines as
stderr, rotated by size in the process that set it up; child processes append and follow the rotation."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.cli import main
from generation.logs import (
    FILE_ENV,
    FORMAT_ENV,
    LEVEL_ENV,
    register_secret,
    setup_child_logging,
    setup_logging,
)

SECRET = "sk-file-secret-0123456789"


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    env = {k: os.environ.get(k) for k in (FILE_ENV, FORMAT_ENV, LEVEL_ENV)}
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if getattr(handler, "_xiaoai_file", False):
            handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_file_gets_the_same_escaped_redacted_lines_and_rotates(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "xiaoai.log"
    stderr = io.StringIO()
    register_secret(SECRET)
    setup_logging("INFO", "text", stream=stderr, file=path, max_bytes=2000, backups=2)
    log = logging.getLogger("bot.test")
    log.info("user said %s\nFAKE 2026 ERROR forged line, key=%s", "hi", SECRET,
             extra={"job_id": 7, "user_id": "wxid_a"})
    text = path.read_text(encoding="utf-8")
    assert text == stderr.getvalue()  # the very same line in both places
    assert "\\nFAKE" in text and len(text.strip().splitlines()) == 1  # escaped: no forged second line
    assert SECRET not in text and "***" in text
    assert "job=7 user=wxid_a" in text
    assert os.environ[FILE_ENV] == str(path)
    for i in range(200):
        log.warning("line %d %s", i, "x" * 40)
    rotated = sorted(p.name for p in path.parent.iterdir())
    assert rotated == ["xiaoai.log", "xiaoai.log.1", "xiaoai.log.2"]  # backups=2: older ones dropped
    assert all(p.stat().st_size <= 2200 for p in path.parent.iterdir())


def test_json_lines_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "xiaoai.jsonl"
    setup_logging("INFO", "json", stream=io.StringIO(), file=path)
    logging.getLogger("bot.test").info("queued %s", "\u202egnp.exe", extra={"job_id": 3})
    record = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    assert record["job"] == "3" and record["logger"] == "bot.test" and "\u202e" in record["message"]
    assert "\\u202e" in path.read_text(encoding="utf-8")  # escaped on disk


def test_a_child_appends_and_follows_the_rotation(tmp_path: Path) -> None:
    path = tmp_path / "xiaoai.log"
    setup_logging("INFO", "text", stream=io.StringIO(), file=path)  # the parent: exports the path
    setup_child_logging("worker 42")  # what the worker process does
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.FileHandler)]
    assert len(handlers) == 1 and isinstance(handlers[0], logging.handlers.WatchedFileHandler)
    log = logging.getLogger("bot.worker")
    log.info("before rotation")
    os.replace(path, f"{path}.1")  # the parent rotated
    log.info("after rotation")
    assert "before rotation" in Path(f"{path}.1").read_text(encoding="utf-8")
    current = path.read_text(encoding="utf-8")
    assert "after rotation" in current and "[worker 42]" in current


def test_cli_log_file_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "cli.log"
    monkeypatch.chdir(tmp_path)
    assert main(["--log-file", str(path), "--log-max-bytes", "4096", "--log-backups", "3", "--log-level", "INFO",
                 "config"]) == 0
    files = [h for h in logging.getLogger().handlers if isinstance(h, logging.handlers.RotatingFileHandler)]
    assert len(files) == 1 and files[0].baseFilename == str(path)
    assert (files[0].maxBytes, files[0].backupCount) == (4096, 3)
    logging.getLogger("xiaoai").info("hello file")
    assert "hello file" in path.read_text(encoding="utf-8")
