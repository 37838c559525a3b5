"""The GB 45438 `AIGC` metadata label survives every ffmpeg step (the first encode, the WeChat remux and
size-budget re-encode, the WeCom re-encode) and is in the bytes each channel actually sends: the loopback fakes
of ClawBot, WeCom and QQ and the wechaty puppet server record what arrived; the local channel sends the path."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from bot.channels.local import LocalChannel
from bot.channels.wechaty import media as wechat_media
from bot.channels.wecom import media as wecom_media
from bot.messages import OutgoingVideo
from generation.finisher import VideoFinisher
from generation.labels import AIGC_KEY, LabelSettings, mp4_metadata_items, read_aigc
from tests.chat_harness import async_test
from tests.fakes.clawbot_fake import ClawbotFake
from tests.fakes.qq_fake import QQFake
from tests.fakes.wecom_fake import WecomFake
from tests.wechaty_helpers import ROOM as WX_ROOM
from tests.wechaty_helpers import clean_env

_ = clean_env  # fixture import
PRODUCER = "001191110000MA0000000X1XV01"


def labelled_mp4(path: Path, *, noise: bool = False, size: tuple[int, int] = (160, 96), count: int = 12,
                 produce_id: str = "xv-42-c0ffee00") -> tuple[Path, dict[str, str]]:
    """A video as the worker writes it (label in the picture, AIGC metadata); noise makes it large."""
    w, h = size
    rng = np.random.default_rng(3)
    if noise:
        frames = rng.integers(0, 255, (count, h, w, 3), dtype=np.uint8)
    else:
        ramp = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
        frames = np.stack([np.broadcast_to(np.roll(ramp, 4 * i, axis=1), (h, w, 3)) for i in range(count)]).copy()
    done = VideoFinisher(LabelSettings(producer_code=PRODUCER)).finish(frames, path, path.with_suffix(".jpg"),
                                                                         fps=12, produce_id=produce_id)
    label = read_aigc(done.video_path)
    assert label is not None and label["ProduceID"] == produce_id and label["ContentProducer"] == PRODUCER
    return done.video_path, label


def assert_labelled(data: Path | bytes, expected: dict[str, str]) -> None:
    assert read_aigc(data) == expected
    assert [k for k, _ in mp4_metadata_items(data)].count(AIGC_KEY) == 1  # exactly one carrier


# ------------------------------------------------------------------------------------------------ ffmpeg steps
def test_wechat_prepare_video_keeps_the_label_on_every_path(tmp_path: Path) -> None:
    src, expected = labelled_mp4(tmp_path / "job" / "v.mp4")
    ready = wechat_media.prepare_video(src, tmp_path / "wechat", budget_bytes=20 * 1024 * 1024)
    assert ready.path == src and ready.attempts == 0  # already fit: sent as written
    # moov at the end: the `-c copy` faststart remux
    tail = tmp_path / "tail.mp4"
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-i", str(src), "-c", "copy",
                    "-map_metadata", "0", "-movflags", "use_metadata_tags", str(tail)], check=True)
    assert not wechat_media.moov_before_mdat(tail)
    assert_labelled(tail, expected)
    remuxed = wechat_media.prepare_video(tail, tmp_path / "wechat", budget_bytes=20 * 1024 * 1024)
    assert not remuxed.reencoded and remuxed.attempts == 1 and wechat_media.moov_before_mdat(remuxed.path)
    assert_labelled(remuxed.path, expected)
    # over the byte budget: the CRF search / downscale re-encode
    big, big_expected = labelled_mp4(tmp_path / "big" / "v.mp4", noise=True, size=(320, 192), count=24)
    assert big.stat().st_size > 100 * 1024
    fitted = wechat_media.prepare_video(big, tmp_path / "wechat2", budget_bytes=64 * 1024, preset="ultrafast")
    assert fitted.reencoded and fitted.path != big
    assert_labelled(fitted.path, big_expected)


def test_wecom_fit_video_keeps_the_label(tmp_path: Path) -> None:
    big, expected = labelled_mp4(tmp_path / "v.mp4", noise=True, size=(320, 192), count=24)
    fitted = wecom_media.fit_video(big, tmp_path / "out", budget_bytes=big.stat().st_size // 2)
    assert fitted.path is not None and fitted.size < big.stat().st_size
    assert_labelled(fitted.path, expected)


# ------------------------------------------------------------------------------------------------ channels
@async_test
async def test_local_channel_sends_the_labelled_file(tmp_path: Path) -> None:
    video, expected = labelled_mp4(tmp_path / "v.mp4")
    local = LocalChannel()

    async def ignore(_message: object) -> None:
        return None

    await local.start(ignore)
    await local.send_video(OutgoingVideo("room@chatroom", str(video), caption="【AI生成】好了"))
    [sent] = local.videos()
    assert_labelled(Path(sent.video_path), expected)
    await local.stop()


@async_test
async def test_clawbot_upload_carries_the_label(tmp_path: Path) -> None:
    from bot.channels.clawbot.adapter import ClawbotChannel
    from bot.channels.clawbot.settings import ClawbotSettings

    video, expected = labelled_mp4(tmp_path / "v.mp4")
    user = "o9cq-alice@im.wechat"
    async with ClawbotFake() as fake:
        fake.write_credentials(tmp_path / "cb")
        channel = ClawbotChannel(ClawbotSettings(**fake.settings_values(tmp_path / "cb")))
        inbox: list[object] = []

        async def on_message(message: object) -> None:
            inbox.append(message)

        await channel.start(on_message)
        try:
            assert await channel.wait_connected(5)
            fake.push_text(user, "/视频 一只猫")
            for _ in range(250):
                if inbox:
                    break
                await asyncio.sleep(0.02)
            msg = inbox[0]
            await channel.send_video(OutgoingVideo(msg.chat_id, str(video), caption="【AI生成】好了",  # type: ignore[attr-defined]
                                                   meta={"job_id": "j1"}, reply_to=msg.message_id))  # type: ignore[attr-defined]
            [sent] = fake.videos(user)
            [upload] = [u for u in fake.uploads.values() if u.sha256 == sent.sha256]
            assert_labelled(upload.plaintext, expected)  # the decrypted bytes the CDN received
        finally:
            await channel.stop()


@pytest.mark.parametrize("reencode", [False, True])
def test_wecom_upload_carries_the_label(tmp_path: Path, reencode: bool) -> None:
    from tests.test_wecom_channel import BOB, BOT, SECRET, run, started

    video, expected = labelled_mp4(tmp_path / "v.mp4", noise=reencode, size=(320, 192) if reencode else (160, 96),
                                   count=24 if reencode else 12)
    size = video.stat().st_size

    async def scenario() -> None:
        async with WecomFake(bot_id=BOT, secret=SECRET) as fake:
            limit = size // 2 if reencode else 10 * 1024 * 1024
            channel = await started(fake, max_inline_video_bytes=limit, video_budget_bytes=limit,
                                    chunk_bytes=64 * 1024)
            await channel.send_video(OutgoingVideo(f"wecom:{BOB}", str(video), meta={"job_id": "j1"}))
            [media] = fake.media.values()
            assert media.type == "video" and (media.size < size if reencode else media.data == video.read_bytes())
            assert_labelled(media.data, expected)
            await channel.stop()

    run(scenario, timeout=120)


def test_qq_upload_carries_the_label(tmp_path: Path) -> None:
    from tests.test_qq_channel import APP_ID, GROUP, GROUP_CHAT, MEMBER, SECRET, eventually, run, running

    video, expected = labelled_mp4(tmp_path / "v.mp4")

    async def scenario() -> None:
        async with QQFake(app_id=APP_ID, secret=SECRET) as fake, running(fake) as (channel, inbox):
            request = await fake.push_group_at(GROUP, MEMBER, " /视频 一只猫")
            await eventually(lambda: len(inbox) == 1)
            await channel.send_video(OutgoingVideo(GROUP_CHAT, str(video), caption="【AI生成】好了",
                                                   meta={"job_id": "17"}, reply_to=f"qq:{request}"))
            [upload] = fake.uploads
            assert upload.file_type == 2
            assert_labelled(upload.data, expected)

    run(scenario)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("reencode", [False, True])
def test_wechaty_send_carries_the_label(tmp_path: Path, reencode: bool) -> None:
    from tests.test_wechaty_channel import _connected, _server
    from tests.wechaty_helpers import run

    video, expected = labelled_mp4(tmp_path / "job" / "v.mp4", noise=reencode,
                                   size=(320, 192) if reencode else (160, 96), count=24 if reencode else 12)

    async def scenario() -> None:
        server = await _server()
        overrides = {"video_budget_bytes": 64 * 1024} if reencode else {}
        channel = await _connected(tmp_path, server, [], **overrides)
        try:
            await channel.send_video(OutgoingVideo(WX_ROOM, str(video), caption="【AI生成】好了"))
            [sent] = server.sent_files
            assert (sent.data != video.read_bytes()) is reencode
            assert_labelled(sent.data, expected)
        finally:
            await channel.stop()
            await server.stop()

    run(scenario)
