"""The one logging setup of every process of the project: the bot, the worker child, the Ray driver
and actors, and the command lines (`xiaoai …`, `python -m generation.…`).

It lives in the lowest layer (the model library) so that both sides can use it; it imports nothing but
the standard library and python-json-logger.

* Text (default): `time LEVEL logger: message  job=… user=… chat=… msg=…`. The ids are the ones call
  sites already pass in `extra=` (`job_id`, `user_id`, `chat_id`, `message_id`).
* JSON (`--log-format json`): one object per line with the same fields, for log shippers.
* Escaping: user-supplied text reaches logs through messages and ids. Line breaks, other control
  characters (ANSI escapes, BEL, NUL) and bidi overrides are written as visible escapes (`\\n`,
  `\\x1b`, `\\u202e`), so no input can forge a log line or recolour a terminal. Traceback lines keep
  their line breaks but every continuation line is indented under its record.
* Files (`--log-file PATH`): besides stderr, the same lines go to PATH, rotated at `max_bytes` with `backups`
  old files kept (`logging.handlers.RotatingFileHandler`, in the process that called `setup_logging`). Child
  processes append to the same path (`WatchedFileHandler`: they follow the rotation, never rotate themselves).
  Every handler gets the same formatter (escaping) and the redaction filter.
* Secrets: every value registered with `register_secret` (and the configured secret environment
  variables) is replaced by `***` in every record, at every level, before any handler sees it.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
# The parent's choice, exported for child processes (the worker, the Ray dispatcher, Ray actors).
LEVEL_ENV = "XIAOAI_LOG_LEVEL"
FORMAT_ENV = "XIAOAI_LOG_FORMAT"
FILE_ENV = "XIAOAI_LOG_FILE"
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
DEFAULT_BACKUPS = 5

ID_FIELDS: tuple[tuple[str, str], ...] = (
    ("job_id", "job"),
    ("user_id", "user"),
    ("chat_id", "chat"),
    ("message_id", "msg"),
)
# Environment variables that hold secrets; their values are redacted from every log record.
SECRET_ENV_VARS: tuple[str, ...] = (
    "WECHATY_PUPPET_SERVICE_TOKEN",
    "XIAOAI_DASHBOARD_TOKEN",
    "XIAOAI_WECOM_SECRET",
    "XIAOAI_QQ_SECRET",
    "XIAOAI_TRANSLATE_API_KEY",
    "XIAOAI_MODERATION_API_KEY",
    "HF_TOKEN",
)
_MIN_SECRET_LEN = 6  # shorter values would redact ordinary words

# C0/C1 controls, DEL, bidi embeddings/overrides/isolates, line/paragraph separators, BOM/zero-widths
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2066-\u2069\ufeff]")


def escape(text: str) -> str:
    """`text` with every control/bidi character written as a visible escape."""

    def one(m: re.Match[str]) -> str:
        ch = m.group(0)
        if ch == "\n":
            return "\\n"
        if ch == "\r":
            return "\\r"
        if ch == "\t":
            return "\\t"
        code = ord(ch)
        return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"

    return _UNSAFE.sub(one, text)


class SecretRedactor(logging.Filter):
    """Replaces registered secret values in a record's message, args and ids (`***`)."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._secrets: tuple[str, ...] = ()

    def add(self, value: str | None) -> None:
        if not value or len(value) < _MIN_SECRET_LEN:
            return
        with self._lock:
            if value not in self._secrets:
                # longest first, so a secret that contains another is replaced whole
                self._secrets = tuple(sorted((*self._secrets, value), key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: leave it to the formatter's own error path
            return True
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        for name, _ in ID_FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self.redact(text) != text:
                record.exc_text = self.redact(text)
                record.exc_info = None
        return True


_REDACTOR = SecretRedactor()


def register_secret(value: str | None) -> None:
    """Never log `value` (a token issued at runtime, e.g. an access token). Safe from any thread."""
    _REDACTOR.add(value)


def register_secret_env(environ: Mapping[str, str] | None = None, names: Iterable[str] = SECRET_ENV_VARS) -> None:
    env = os.environ if environ is None else environ
    for name in names:
        register_secret(env.get(name))


def _ids(record: logging.LogRecord) -> list[tuple[str, str]]:
    out = []
    for attr, short in ID_FIELDS:
        value = getattr(record, attr, None)
        if value is not None and value != "":
            out.append((short, escape(str(value))))
    return out


class TextFormatter(logging.Formatter):
    def __init__(self, tag: str = "") -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s" + (f"[{tag}]" if tag else "") + ": %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args, record.exc_info, record.exc_text, record.stack_info
        try:
            record.msg, record.args = escape(record.getMessage()), None
            record.exc_info = record.exc_text = record.stack_info = None
            line = super().format(record)
        finally:
            record.msg, record.args, record.exc_info, record.exc_text, record.stack_info = saved
        ids = _ids(record)
        if ids:
            line += "  " + " ".join(f"{k}={v}" for k, v in ids)
        extra = ""
        if record.exc_info:
            extra = record.exc_text or self.formatException(record.exc_info)
        elif record.exc_text:
            extra = record.exc_text
        if record.stack_info:
            extra = (extra + "\n" if extra else "") + self.formatStack(record.stack_info)
        if extra:
            lines = [escape(part) for part in extra.splitlines()]
            line += "\n" + "\n".join("    | " + part for part in lines)
        return line


def _json_formatter(tag: str) -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    class _Json(JsonFormatter):
        def add_fields(self, log_record: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
            super().add_fields(log_record, record, message_dict)
            log_record["level"] = record.levelname
            log_record["logger"] = record.name
            if tag:
                log_record["process"] = tag
            for attr, short in ID_FIELDS:
                value = log_record.pop(attr, None)
                if value is not None and value != "":
                    log_record[short] = str(value)

    # json.dumps escapes control characters and (ensure_ascii) bidi overrides: nothing to add here
    return _Json("%(asctime)s %(message)s", json_ensure_ascii=True)


def setup_logging(
    level: str | int = "INFO",
    fmt: LogFormat = "text",
    *,
    stream: TextIO | None = None,
    tag: str = "",
    environ: Mapping[str, str] | None = None,
    export: bool = True,
    file: str | os.PathLike[str] | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    backups: int = DEFAULT_BACKUPS,
    rotate: bool = True,
) -> None:
    """Configure the root logger of this process (replacing any handler set before). `tag` names the
    process in every line (e.g. `worker`, `actor gpu-0`). With `file`, lines also go to that file, rotated
    at `max_bytes` keeping `backups` old files (`rotate=False`: appended only, following another process's
    rotation; what child processes do)."""
    numeric = level if isinstance(level, int) else getattr(logging, str(level).upper(), logging.INFO)
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]
    if file is not None:
        path = os.fspath(file)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        if rotate:
            handlers.append(logging.handlers.RotatingFileHandler(path, maxBytes=max(0, int(max_bytes)),
                                                                 backupCount=max(0, int(backups)), encoding="utf-8"))
        else:
            handlers.append(logging.handlers.WatchedFileHandler(path, encoding="utf-8"))
        handlers[-1]._xiaoai_file = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if getattr(old, "_xiaoai_file", False):
            old.close()  # the log file of an earlier call (handlers made by others are left open)
    for handler in handlers:  # every handler: the escaping formatter and the redaction filter
        handler.setFormatter(_json_formatter(tag) if fmt == "json" else TextFormatter(tag))
        handler.addFilter(_REDACTOR)
        root.addHandler(handler)
    root.setLevel(numeric)
    register_secret_env(environ)
    if export:  # children spawned from here configure themselves the same way (`setup_child_logging`)
        os.environ[LEVEL_ENV] = logging.getLevelName(numeric)
        os.environ[FORMAT_ENV] = fmt
        if file is not None:
            os.environ[FILE_ENV] = os.path.abspath(os.fspath(file))
        else:
            os.environ.pop(FILE_ENV, None)
    # chatty libraries: their DEBUG lines carry request headers (tokens) and add nothing for operators
    for noisy in ("hpack", "httpcore", "httpx", "websockets", "urllib3", "asyncio", "filelock", "PIL"):
        logging.getLogger(noisy).setLevel(max(numeric, logging.WARNING))


def redactor() -> SecretRedactor:
    """The process's redaction filter (for handlers made elsewhere, e.g. test captures)."""
    return _REDACTOR


def setup_child_logging(tag: str) -> None:
    """In a child process: the parent's level and format (from the environment it exported), this
    process's tag. INFO/text when the parent set nothing."""
    fmt = os.environ.get(FORMAT_ENV, "text")
    setup_logging(os.environ.get(LEVEL_ENV, "INFO"), "json" if fmt == "json" else "text", tag=tag, export=False,
                  file=os.environ.get(FILE_ENV) or None, rotate=False)
