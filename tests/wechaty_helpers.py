"""Shared helpers for the WeChat channel tests (fake puppet server, TS puppet server, e2e)."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import imageio_ffmpeg
import pytest

from bot.channels.wechaty.adapter import WechatyChannel
from bot.channels.wechaty.settings import PuppetConnection, WechatySettings

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


def run(coro_factory: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Each test runs its own event loop (wechaty keeps loop-bound state)."""

    async def guarded() -> Any:
        return await asyncio.wait_for(coro_factory(), timeout)

    return asyncio.run(guarded())


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def make_mp4(path: Path, *, seconds: float = 1.0, size: str = "160x96", bitrate: str | None = None,
             pix_fmt: str = "yuv420p", faststart: bool = True, noise: bool = False, fps: int = 12) -> Path:  # fmt: skip
    """A real H.264 MP4 made with the bundled ffmpeg (noise makes it incompressible, hence large)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = f"testsrc2=size={size}:rate={fps}:duration={seconds}"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source]
    if noise:
        cmd += ["-vf", "noise=alls=100:allf=t"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt]
    if bitrate:
        cmd += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    else:
        cmd += ["-crf", "23"]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    cmd += [str(path)]
    subprocess.run(cmd, check=True)
    return path
