"""WeChat video preparation (real ffmpeg encodes on tiny clips) and the `wechaty` settings section."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.channels.wechaty import media as wechat_media
from bot.channels.wechaty.settings import WechatySettings
from tests.wechaty_helpers import make_mp4


def test_ready_video_within_budget_is_sent_unchanged(tmp_path: Path) -> None:
    src = make_mp4(tmp_path / "a.mp4", seconds=0.5)
    prepared = wechat_media.prepare_video(src, tmp_path / "out", budget_bytes=10**7)
    assert prepared.path == src and not prepared.reencoded and prepared.fits and prepared.attempts == 0


def test_moov_at_end_is_remuxed_without_reencoding(tmp_path: Path) -> None:
    src = make_mp4(tmp_path / "b.mp4", seconds=0.5, faststart=False)
    assert not wechat_media.moov_before_mdat(src)
    prepared = wechat_media.prepare_video(src, tmp_path / "out", budget_bytes=10**7)
    assert not prepared.reencoded and prepared.fits and wechat_media.moov_before_mdat(prepared.path)
    info = wechat_media.probe(prepared.path)
    assert (info.codec, info.pix_fmt) == ("h264", "yuv420p")


def test_wrong_pixel_format_is_reencoded_at_best_quality(tmp_path: Path) -> None:
    src = make_mp4(tmp_path / "c.mp4", seconds=0.5, pix_fmt="yuv444p")
    assert wechat_media.probe(src).pix_fmt == "yuv444p"
    prepared = wechat_media.prepare_video(src, tmp_path / "out", budget_bytes=10**7, crf_min=18)
    assert prepared.reencoded and prepared.crf == 18 and prepared.attempts == 1
    info = wechat_media.probe(prepared.path)
    assert (info.codec, info.pix_fmt, info.faststart) == ("h264", "yuv420p", True)


def test_over_budget_picks_the_lowest_crf_that_fits(tmp_path: Path) -> None:
    src = make_mp4(tmp_path / "d.mp4", seconds=1.0, size="256x144", bitrate="3M", noise=True, fps=12)
    budget = src.stat().st_size // 4
    prepared = wechat_media.prepare_video(src, tmp_path / "out", budget_bytes=budget, crf_min=18, crf_max=40,
                                          preset="veryfast")  # fmt: skip
    assert prepared.fits and prepared.reencoded and prepared.size <= budget
    assert prepared.path.stat().st_size == prepared.size
    assert prepared.crf is not None and 18 < prepared.crf <= 40
    info = wechat_media.probe(prepared.path)
    assert (info.codec, info.pix_fmt, info.faststart, info.height) == ("h264", "yuv420p", True, 144)
    # One step better quality would not have fit: the choice is the least lossy that fits.
    one_better = wechat_media._encode(src, tmp_path / "check.mp4", crf=prepared.crf - 1, height=None,
                                      has_audio=False, preset="veryfast")  # fmt: skip
    assert one_better > budget
    assert not list((tmp_path / "out").glob("*.try*.mp4"))  # trial encodes cleaned up


def test_impossible_budget_scales_down_then_reports_not_fitting(tmp_path: Path) -> None:
    src = make_mp4(tmp_path / "e.mp4", seconds=0.5, size="256x144", noise=True)
    prepared = wechat_media.prepare_video(src, tmp_path / "out", budget_bytes=1000, crf_min=30, crf_max=51,
                                          min_height=96, preset="ultrafast")  # fmt: skip
    assert not prepared.fits and prepared.height < 144 and prepared.height >= 96
    assert prepared.path.is_file()


def test_cover_is_a_small_jpeg(tmp_path: Path) -> None:
    src = make_mp4(tmp_path / "f.mp4", seconds=0.5, size="640x360")
    cover = wechat_media.make_cover(src, tmp_path / "cover.jpg", max_width=320, max_bytes=64 * 1024)
    assert cover is not None and cover.read_bytes()[:2] == b"\xff\xd8"
    from PIL import Image

    with Image.open(cover) as image:
        assert image.size == (320, 180)


def test_settings_token_only_from_its_own_variable() -> None:
    section = WechatySettings()
    assert section.connection({"TOKEN": "t", "ENDPOINT": "1.2.3.4:5", "token": "t", "endpoint": "1.2.3.4:5"}) is None
    conn = section.connection({"WECHATY_PUPPET_SERVICE_ENDPOINT": "127.0.0.1:8788", "TOKEN": "generic",
                               "WECHATY_PUPPET_SERVICE_TOKEN": "insecure_abc"})  # fmt: skip
    assert conn is not None and (conn.host, conn.port, conn.token) == ("127.0.0.1", 8788, "insecure_abc")
    assert "insecure_abc" not in repr(conn)
    configured = WechatySettings(endpoint="gateway:9001")
    conn = configured.connection({"WECHATY_PUPPET_SERVICE_ENDPOINT": "other:1"})
    assert conn is not None and conn.endpoint == "gateway:9001" and conn.token is None


def test_settings_validation() -> None:
    with pytest.raises(ValidationError):
        WechatySettings(token="secret")  # type: ignore[call-arg]  # never from config
    with pytest.raises(ValidationError):
        WechatySettings(endpoint="no-port")
    with pytest.raises(ValidationError):
        WechatySettings(crf_min=30, crf_max=20)
    assert WechatySettings.model_validate({}).upload_threshold_bytes == 3 * 1024 * 1024
