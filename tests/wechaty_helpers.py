"""Shared helpers for the WeChat channel tests (fake puppet server, TS puppet server, e2e)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from bot.channels.wechaty.adapter import WechatyChannel
from bot.channels.wechaty.settings import PuppetConnection, WechatySettings
from tests._async_media import eventually, make_mp4, run  # noqa: F401  (re-exported)

TOKEN = "insecure_xiaoai_test_token"
ROOM = "r-1@chatroom"
ALICE = "u-alice"
BOB = "u-bob"
BOT = "bot-self"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No stray TOKEN/ENDPOINT, no network for transformers, one wechaty cache dir per session."""
    for name in ("TOKEN", "token", "ENDPOINT", "endpoint", "WECHATY_PUPPET_SERVICE_ENDPOINT",
                 "WECHATY_PUPPET_SERVICE_TOKEN"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if "CACHE_DIR" not in os.environ:
        os.environ["CACHE_DIR"] = str(tmp_path_factory.getbasetemp() / "wechaty-cache")


def fast_settings(tmp: Path, **overrides: Any) -> WechatySettings:
    values: dict[str, Any] = {
        "cache_dir": tmp / "wechaty-cache",
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.4,
        "connect_timeout_s": 1.0,
        "send_retry_initial_s": 0.01,
        "rpc_timeout_s": 30.0,
    }
    values.update(overrides)
    return WechatySettings(**values)


def make_channel(tmp: Path, port: int, *, host: str = "127.0.0.1", token: str | None = TOKEN,
                 **overrides: Any) -> WechatyChannel:  # fmt: skip
    return WechatyChannel(fast_settings(tmp, **overrides), PuppetConnection(host, port, token), bot_names=("小爱",))


