"""Test harness for the chat core: the real dispatcher, plugins, QuotaBook and JobQueue on a real
SQLite file in a tmp dir, driven through the real LocalChannel. Only the clock is controlled."""

from __future__ import annotations

import asyncio
import functools
import io
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from bot.channels.local import LocalChannel
from bot.core import build_dispatcher
from bot.dispatcher import Dispatcher
from bot.jobs.queue import JobQueue
from bot.settings import Settings
from bot.store.db import open_db
from bot.store.quota import LedgerRow, QuotaBook
from plugins import default_plugins

ADMIN = "wxid_admin"
ROOM = "room-1@chatroom"


class Clock:
    def __init__(self, start: float = 1_767_225_600.0) -> None:  # 2026-01-01 08:00 Asia/Shanghai
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    settings: Settings
    channel: LocalChannel
    dispatcher: Dispatcher
    quota: QuotaBook
    queue: JobQueue
    clock: Clock
    db: Any

    async def say(self, text: str = "", **kwargs: Any):
        kwargs.setdefault("chat_id", ROOM)
        return await self.channel.say(text, **kwargs)

    def last_text(self) -> str:
        texts = self.channel.texts()
        assert texts, "the bot sent nothing"
        return texts[-1]

    def ledger(self, user_id: str) -> list[LedgerRow]:
        return list(reversed(self.quota.history(user_id, limit=1000)))

    def jobs(self, user_id: str) -> list[Any]:
        return self.queue.jobs_of(user_id)


def make_settings(tmp_path: Path, **sections: dict[str, Any]) -> Settings:
    data: dict[str, Any] = {
        # image_caption_wait_s 0: an image answering an empty /视频 makes its job at once (tests of the wait set it)
        "bot": {"admins": [ADMIN], "data_dir": str(tmp_path / "data"), "flood_user_max": 50, "image_caption_wait_s": 0},
        "storage": {"db_path": str(tmp_path / "xiaoai.db")},
        "worker": {"output_dir": str(tmp_path / "videos"), "generator": "synthetic"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return Settings.model_validate(data)


async def make_harness(settings: Settings, *, pipeline: Any | None = None, clock: Clock | None = None) -> Harness:
    clock = clock or Clock()
    db = open_db(settings.storage.db_path)
    quota = QuotaBook(db, settings.quota, clock)
    queue = JobQueue(db, quota, settings.queue, clock)
    channel = LocalChannel(clock=clock)
    dispatcher = build_dispatcher(
        settings,
        channel=channel,
        quota=quota,
        queue=queue,
        clock=clock,
        plugins=default_plugins(),
        pipeline=pipeline,
    )
    await channel.start(dispatcher.handle)
    return Harness(settings, channel, dispatcher, quota, queue, clock, db)


def png_bytes(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 80, 40), fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format=fmt)
    return buf.getvalue()


def async_test(fn: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test body with asyncio.run (no pytest plugin needed)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(fn(*args, **kwargs))

    return wrapper
