"""Import shim for python-wechaty 0.10.7 on Python 3.11+ (the only place that imports `wechaty`).

python-wechaty 0.10.7 is the last release and does not import on modern Pythons as published
(see `/work/shared/research/wechaty.md` §1). `load_wechaty()` repairs, before the first import:

* `PuppetOptions` is an unhashable dataclass used as a dataclass default → ValueError on 3.11+.
  We give it an identity hash; callers must then always pass their own `PuppetOptions(...)`,
  because the default instance would otherwise be shared by every `WechatyOptions`.
* Python 3.13 removed `telnetlib`, which wechaty uses only to probe a TCP port: we register a
  minimal replacement module when it is missing.
* `CACHE_DIR` is read at import time (the plugin scheduler's job-store path); we point it at our
  own folder before importing.
* The puppet-service client reads the generic `TOKEN` / `ENDPOINT` / `token` / `endpoint`
  environment variables (and logs the token when both an option and a variable are set). We
  neutralise that lookup: the adapter always passes endpoint and token explicitly.

* `from urllib3 import get_host` (removed in urllib3 2): we put back the 1.26 function (three lines
  over `urllib3.util.parse_url`) when it is missing.
* `from pyee import AsyncIOEventEmitter` (moved to `pyee.asyncio` in pyee 12): we re-export the class
  at the top level when it is missing.

So the current urllib3 2.x and pyee 13 work and nothing needs pinning to the old releases.
Nothing outside `bot/channels/` imports wechaty.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import socket
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_loaded: WechatyModules | None = None

GENERIC_ENV_NAMES = ("TOKEN", "token", "ENDPOINT", "endpoint")


@dataclass(frozen=True)
class WechatyModules:
    """The handful of wechaty objects the adapter needs, imported once."""

    Wechaty: Any
    WechatyOptions: Any
    PuppetOptions: Any
    FileBox: Any
    MessageType: Any
    ImageType: Any
    Contact: Any
    Room: Any
    Tag: Any
    SingleIdContainer: Any
    puppet_stub_module: Any
    grpc_puppet: Any


class _Telnet:
    """Stand-in for `telnetlib.Telnet` (removed in 3.13): wechaty only uses `open()` as a port probe."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None

    def open(self, host: str, port: int = 0, timeout: float = 3.0) -> None:
        self.close()
        self._sock = socket.create_connection((host, port), timeout)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __del__(self) -> None:
        self.close()


_TOKEN_MARK = re.compile(r"token(\[adopted\])?<", re.IGNORECASE)


def _drop_token_lines(record: logging.LogRecord) -> bool:
    """python-wechaty prints the token inside `token<…>`; redacting up to the first `>` leaks the tail of
    a token that contains `>`, so such lines are dropped whole (the endpoint is logged by us anyway)."""
    return not _TOKEN_MARK.search(record.getMessage())


def _install_telnetlib_stub() -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import telnetlib  # noqa: F401
    except ModuleNotFoundError:
        module = types.ModuleType("telnetlib")
        module.Telnet = _Telnet  # type: ignore[attr-defined]
        sys.modules["telnetlib"] = module


def _urllib3_get_host(url: str) -> tuple[str, str | None, int | None]:
    """urllib3 1.26's `get_host`: (scheme, host, port), the scheme defaulting to "http"."""
    from urllib3.util import parse_url

    parsed = parse_url(url)
    return parsed.scheme or "http", parsed.hostname, parsed.port


def _install_import_shims() -> None:
    """`urllib3.get_host` (gone in urllib3 2) and `pyee.AsyncIOEventEmitter` (pyee.asyncio since
    pyee 12), both imported by name by python-wechaty 0.10.7; a no-op on the old releases."""
    import pyee
    import urllib3

    if not hasattr(urllib3, "get_host"):
        urllib3.get_host = _urllib3_get_host  # type: ignore[attr-defined]
    if not hasattr(pyee, "AsyncIOEventEmitter"):
        from pyee.asyncio import AsyncIOEventEmitter

        pyee.AsyncIOEventEmitter = AsyncIOEventEmitter  # type: ignore[attr-defined]


def load_wechaty(cache_dir: Path | str | None = None) -> WechatyModules:
    """Import python-wechaty with the fixes applied; idempotent.

    `cache_dir` only matters for the first call in a process (wechaty reads it at import time).
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        os.environ["CACHE_DIR"] = str(cache_dir)
    elif "CACHE_DIR" not in os.environ:
        os.environ["CACHE_DIR"] = str(Path("var/wechaty").absolute())

    # wechaty logs every event at INFO through its own handlers; keep it to warnings by default.
    os.environ.setdefault("WECHATY_LOG", "warn")
    _install_telnetlib_stub()
    _install_import_shims()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from wechaty_puppet.schemas import puppet as puppet_schema

        if puppet_schema.PuppetOptions.__hash__ is None:
            puppet_schema.PuppetOptions.__hash__ = object.__hash__  # type: ignore[method-assign]

        wechaty = importlib.import_module("wechaty")
        service_puppet = importlib.import_module("wechaty_puppet_service.puppet")
        grpc_puppet = importlib.import_module("wechaty_grpc.wechaty.puppet")
        grpc_stub = importlib.import_module("wechaty_grpc.wechaty")
        async_helper = importlib.import_module("wechaty.utils.async_helper")
        wechaty_puppet = importlib.import_module("wechaty_puppet")

    # Never take the endpoint/token from the generic variables (nor log them): we pass both.
    service_puppet.get_token = lambda: None
    service_puppet.get_endpoint = lambda: None
    # PuppetService logs "there are endpoint<…> and token<…>" at WARNING: keep the token out of logs.
    logging.getLogger("PuppetService").addFilter(_drop_token_lines)
    for handler in logging.getLogger("PuppetService").handlers:
        handler.addFilter(_drop_token_lines)
    # hpack logs every HTTP/2 header at DEBUG, `:authority` (= the token) included.
    logging.getLogger("hpack").setLevel(logging.INFO)

    _loaded = WechatyModules(
        Wechaty=wechaty.Wechaty,
        WechatyOptions=wechaty.WechatyOptions,
        PuppetOptions=wechaty_puppet.PuppetOptions,
        FileBox=wechaty_puppet.FileBox,
        MessageType=wechaty_puppet.MessageType,
        ImageType=wechaty_puppet.ImageType,
        Contact=wechaty.Contact,
        Room=wechaty.Room,
        Tag=importlib.import_module("wechaty.user.tag").Tag,
        SingleIdContainer=async_helper.SingleIdContainer,
        puppet_stub_module=grpc_stub,
        grpc_puppet=grpc_puppet,
    )
    return _loaded


def reset_wechaty_globals(*, forget_message_ids: bool = False) -> None:
    """Clear wechaty's process-wide caches.

    `Contact`/`Room`/`Tag` pools keep objects bound to the puppet that loaded them; after a
    reconnect (a new puppet) those stale objects would talk to a closed channel. The message-id
    set drops any id seen before; it is kept by default (it is a useful duplicate filter) and only
    cleared in tests.
    """
    mods = load_wechaty()
    mods.Contact._pool.clear()
    mods.Room._pool.clear()
    mods.Tag._pool.clear()
    if forget_message_ids:
        mods.SingleIdContainer._instance = None
