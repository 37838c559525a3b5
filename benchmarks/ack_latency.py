"""Submit-to-ack latency on the local channel.

Runs the real chat core (router, dispatcher, plugins, prompt pipeline with the translator off,
QuotaBook + JobQueue on a fresh SQLite file in WAL mode) on `LocalChannel` and measures, per
message, the time from handing it to the bot until the acknowledgement has been sent. No worker
runs, so the queue grows as in a busy group. Not a unit test: run it by hand.

    .venv/bin/python -m benchmarks.ack_latency --requests 300 --users 30
"""

from __future__ import annotations

import argparse
import asyncio
import io
import statistics
import tempfile
import time
from pathlib import Path

from PIL import Image

from bot.app import App, build_pipeline
from bot.channels.local import LocalChannel
from bot.settings import Settings


def image_bytes() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (640, 384), (90, 140, 200)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def summary(name: str, samples: list[float]) -> str:
    ms = sorted(s * 1000 for s in samples)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return (
        f"{name:<28} n={len(ms):4d}  median {statistics.median(ms):7.2f} ms  "
        f"p95 {p95:7.2f} ms  max {ms[-1]:7.2f} ms"
    )


async def measure(requests: int, users: int, root: Path) -> list[str]:
    settings = Settings.model_validate(
        {
            "storage": {"db_path": str(root / "bench.db")},
            "bot": {"data_dir": str(root / "data"), "flood_user_max": 10_000, "flood_chat_max": 10_000},
            "quota": {"daily": 10_000},
            "queue": {"max_pending_per_user": 10_000},
            "prompts": {"translator": "none", "fallback": []},
        }
    )
    channel = LocalChannel()
    app = App(settings, channel, pipeline=build_pipeline(settings), run_worker=False)
    await app.start()
    t2v: list[float] = []
    i2v: list[float] = []
    quota: list[float] = []
    picture = image_bytes()
    try:
        for i in range(requests):
            who = {"sender_id": f"wxid_user{i % users}", "sender_name": f"用户{i % users}", "chat_id": "bench-room"}
            before = len(channel.sent)
            start = time.perf_counter()
            await channel.say(f"/视频 a shiba inu running in the snow number {i}", **who)
            t2v.append(time.perf_counter() - start)
            assert len(channel.sent) == before + 1 and "已排队" in channel.texts()[-1], channel.texts()[-1]

            if i % 5 == 0:
                await channel.say(image=picture, **who)
                start = time.perf_counter()
                await channel.say("/视频 the sea moves", **who)
                i2v.append(time.perf_counter() - start)
                assert "图生视频" in channel.texts()[-1]

            start = time.perf_counter()
            await channel.say("/额度", **who)
            quota.append(time.perf_counter() - start)
        assert app.queue is not None
        queued = len(app.queue.snapshot())
    finally:
        await app.stop()
    return [
        summary("/视频 (text-to-video) ack", t2v),
        summary("image + /视频 ack", i2v),
        summary("/额度 reply", quota),
        f"queue length at the end: {queued} jobs",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--users", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        lines = asyncio.run(measure(args.requests, args.users, Path(tmp)))
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
