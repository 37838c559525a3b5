"""Helpers every channel test uses: run a coroutine in its own event loop with a deadline, wait for a
condition, and make a real H.264 MP4 with the bundled ffmpeg."""

from __future__ import annotations

import asyncio
import hashlib
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import imageio_ffmpeg


def run(coro_factory: Callable[[], Awaitable[Any]], timeout: float = 60.0) -> Any:
    """Each test runs its own event loop (the adapters and wechaty keep loop-bound state)."""

    async def guarded() -> Any:
        return await asyncio.wait_for(coro_factory(), timeout)

    return asyncio.run(guarded())


async def eventually(predicate: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def make_mp4(path: Path, *, seconds: float = 1.0, size: str = "160x96", bitrate: str | None = None,
             pix_fmt: str = "yuv420p", faststart: bool = True, noise: bool = False, fps: int = 12,
             crf: int = 23) -> Path:  # fmt: skip
    """A real H.264 MP4 made with the bundled ffmpeg (noise, with a low `crf`, makes it incompressible)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    source = f"testsrc2=size={size}:rate={fps}:duration={seconds}"
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", source]
    if noise:
        cmd += ["-vf", "noise=alls=100:allf=t"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", pix_fmt]
    if bitrate:
        cmd += ["-b:v", bitrate, "-maxrate", bitrate, "-bufsize", bitrate]
    else:
        cmd += ["-crf", str(crf)]
    if faststart:
        cmd += ["-movflags", "+faststart"]
    cmd += [str(path)]
    subprocess.run(cmd, check=True)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
