"""AI-generated content labels: the GB 45438 `AIGC` metadata (exact value, pure-Python reader, every encode), the
「AI生成」 label burnt into the first and last frames at 640×384 and 1280×768, the settings section, the font
search that fails loudly, (the 【AI生成】 caption is checked on delivered jobs in tests/test_content_check.py)."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pytest

from bot.settings import SettingsError, settings_from_mapping
from generation import labels as labels_mod
from generation.api import GenerationRequest
from generation.finisher import VideoFinisher
from generation.labels import (
    FALLBACK_PRODUCER,
    LabelFontError,
    LabelOverlay,
    LabelSettings,
    aigc_value,
    find_font,
    mp4_metadata_items,
    new_produce_id,
    read_aigc,
    report_label_settings,
)
from generation.synthetic import SyntheticGenerator
from generation.video_io import write_mp4

PRODUCER = "001191110000MA0000000X1XV01"


def _decode(path: Path) -> np.ndarray:
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    reader.close()
    return np.stack(frames)


# ------------------------------------------------------------------------------------------------ metadata
def test_aigc_value_is_the_exact_annex_e_json() -> None:
    value = aigc_value(PRODUCER, "xv-12-0a1b2c3d")
    assert value == ('{"Label":"1","ContentProducer":"001191110000MA0000000X1XV01","ProduceID":"xv-12-0a1b2c3d",'
                     '"ReservedCode1":"","ContentPropagator":"001191110000MA0000000X1XV01",'
                     '"PropagateID":"xv-12-0a1b2c3d","ReservedCode2":""}')
    assert list(json.loads(value)) == ["Label", "ContentProducer", "ProduceID", "ReservedCode1",
                                       "ContentPropagator", "PropagateID", "ReservedCode2"]
    assert all(0x21 <= ord(c) <= 0x7E for c in value)
    for bad in ("has space", 'quo"te', "back\\slash", "中文", ""):
        with pytest.raises(ValueError):
            aigc_value(bad, "xv-1")
    ids = {new_produce_id(7) for _ in range(50)}
    assert len(ids) == 50 and all(i.startswith("xv-7-") for i in ids)


def test_metadata_written_once_and_read_back_by_the_box_reader_and_by_ffmpeg(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (6, 48, 64, 3), dtype=np.uint8)
    value = aigc_value(PRODUCER, "xv-1-deadbeef")
    path = write_mp4(frames, tmp_path / "v.mp4", fps=6, metadata={"AIGC": value})
    items = mp4_metadata_items(path)
    assert [v for k, v in items if k == "AIGC"] == [value]  # exactly one carrier
    assert read_aigc(path) == json.loads(value) == read_aigc(path.read_bytes())
    assert path.read_bytes().count(b"AIGC") == 1
    # an independent reader: ffmpeg's own listing of the container tags
    out = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True,
                         text=True).stderr
    assert f"AIGC            : {value}" in out
    plain = write_mp4(frames, tmp_path / "plain.mp4", fps=6)
    assert read_aigc(plain) is None and read_aigc(b"not an mp4") is None


def test_generators_write_the_label_with_the_request_produce_id(tmp_path: Path) -> None:
    gen = SyntheticGenerator(steps=1, step_delay_s=0, fps=4, width=64, height=48)
    gen.finisher = VideoFinisher(LabelSettings(producer_code=PRODUCER))
    res = gen.generate(GenerationRequest(prompt="a fox", produce_id="xv-99-00ff00ff"), tmp_path)
    label = read_aigc(res.video_path)
    assert label is not None and label["ContentProducer"] == PRODUCER == label["ContentPropagator"]
    assert label["ProduceID"] == "xv-99-00ff00ff" == label["PropagateID"] and label["Label"] == "1"
    default = SyntheticGenerator(steps=1, step_delay_s=0, fps=4, width=64, height=48)  # no settings given
    res = default.generate(GenerationRequest(prompt="a fox"), tmp_path / "d")
    label = read_aigc(res.video_path)
    assert label is not None and label["ContentProducer"] == FALLBACK_PRODUCER and label["ProduceID"].startswith("xv-")


# ------------------------------------------------------------------------------------------------ pixels
@pytest.mark.parametrize("size", [(640, 384), (1280, 768)])
def test_label_pixels_in_first_and_last_frames(tmp_path: Path, size: tuple[int, int]) -> None:
    width, height = size
    gen = SyntheticGenerator(steps=1, step_delay_s=0, fps=4, width=width, height=height)
    request = GenerationRequest(prompt="a lighthouse at dusk", seed=4)
    labelled = gen.generate(request, tmp_path / "on")
    gen.finisher = VideoFinisher(LabelSettings(visible=False))
    plain = gen.generate(request, tmp_path / "off")
    a, b = _decode(labelled.video_path), _decode(plain.video_path)
    assert a.shape == b.shape and a.shape[0] == 20
    label = LabelOverlay().render(width, height)
    short = min(width, height)
    assert label.ink_height >= 0.05 * short and label.ink_height == pytest.approx(0.075 * short, abs=2)
    h, w = label.rgba.shape[:2]
    x, y = label.x, label.y
    assert x + w <= width and y + h <= height and x > width // 2 and y > height // 2  # bottom-right
    inside = np.zeros((height, width), bool)
    inside[y:y + h, x:x + w] = True
    text = np.zeros((height, width), bool)
    text[y:y + h, x:x + w] = label.rgba[..., 3] == 255  # the glyphs' solid white core
    for i in (0, -1):
        diff = np.abs(a[i].astype(int) - b[i].astype(int)).mean(-1)
        assert diff[inside].mean() > 25, "no label in the picture"
        assert diff[~inside].mean() < 3, "the rest of the picture changed"
        assert a[i][text].mean() > 200 and text.sum() > 0.01 * h * w  # white text, legible size
    cover = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(labelled.cover_path).convert("RGB"))
    assert np.abs(cover.astype(int) - a[0].astype(int))[inside].mean() < 12  # the cover is the labelled frame 0


def test_position_size_and_wording_are_configurable() -> None:
    s = LabelSettings(position="top-left", text_height=0.1, margin=0.05, text="人工智能生成")
    label = LabelOverlay(s).render(640, 384)
    assert (label.x, label.y) == (19, 19) and label.ink_height >= 38  # margin: 5 % of the shorter side
    frames = np.zeros((2, 384, 640, 3), np.uint8)
    LabelOverlay(s).apply(frames)
    assert frames[:, :100, :300].max() == 255 and frames[:, 200:, 400:].max() == 0
    with pytest.raises(SettingsError, match="labels.text_height"):
        settings_from_mapping({"labels": {"text_height": 0.04}})
    with pytest.raises(SettingsError, match="labels.text"):
        settings_from_mapping({"labels": {"text": "视频"}})  # must say AI + 生成/合成
    with pytest.raises(SettingsError, match="labels.producer_code"):
        settings_from_mapping({"labels": {"producer_code": "小爱 视频"}})
    settings = settings_from_mapping({"labels": {"producer_code": PRODUCER, "position": "bottom-left"}})
    assert settings.labels.producer() == PRODUCER and settings.labels.position == "bottom-left"


def test_visible_false_is_an_explicit_setting_named_at_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    off = LabelSettings(visible=False)
    with caplog.at_level(logging.WARNING):
        report_label_settings(off)
    assert any(r.levelno == logging.WARNING and "labels.visible: false" in r.getMessage() for r in caplog.records)
    assert any("labels.producer_code" in r.getMessage() for r in caplog.records)
    frames = np.full((3, 48, 64, 3), 90, np.uint8)
    done = VideoFinisher(off).finish(frames.copy(), tmp_path / "v.mp4", tmp_path / "c.jpg", fps=3)
    assert read_aigc(done.video_path) is not None  # the metadata label stays
    assert np.abs(_decode(done.video_path)[0].astype(int) - 90).max() < 6  # no box drawn


def test_missing_font_fails_loudly_naming_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(LabelFontError, match="labels.font_path") as err:
        LabelOverlay(LabelSettings(font_path=tmp_path / "none.ttc")).font()
    assert "\n" not in str(err.value)
    find_font.cache_clear()
    monkeypatch.setattr(labels_mod, "FONT_CANDIDATES", ())
    monkeypatch.setattr(labels_mod, "_fc_match", lambda: None)
    try:
        # no CJK font on the machine: the default label draws with the bundled subset ...
        VideoFinisher().check_ready()
        assert find_font(None, LabelSettings().text)[0] == str(labels_mod.BUNDLED_FONT)
        # ... a wording beyond its glyphs fails loudly, naming what to install
        custom = LabelSettings(text="本视频由AI生成")
        with pytest.raises(LabelFontError, match="apt-get install fonts-noto-cjk"):
            VideoFinisher(custom).check_ready()
        with pytest.raises(LabelFontError):
            report_label_settings(custom)
        VideoFinisher(LabelSettings(visible=False, text="本视频由AI生成")).check_ready()  # nothing to draw
    finally:
        find_font.cache_clear()
    latin = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
    if latin.is_file():  # a font without CJK glyphs would draw boxes: refused
        with pytest.raises(LabelFontError, match="cannot draw"):
            LabelOverlay(LabelSettings(font_path=latin)).font()


def test_readme_labels_example_is_valid_settings() -> None:
    import re

    import yaml

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text("utf-8")
    start = readme.index("## AI 生成内容标识")
    section = readme[start:readme.index("\n## ", start + 1)]
    [block] = re.findall(r"```yaml\n(.*?)```", section, re.S)
    settings = settings_from_mapping(yaml.safe_load(block), "README")
    assert len(settings.labels.producer()) == 27 and settings.content_check.sample_every == 6
    assert "labels.producer_code" in section and "GB 45438-2025" in section and "2025-09-01" in section


def test_the_bot_refuses_to_start_without_a_cjk_font(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import asyncio

    from bot.app import App, StartupError
    from bot.channels.local import LocalChannel
    from tests.chat_harness import make_settings

    find_font.cache_clear()
    monkeypatch.setattr(labels_mod, "FONT_CANDIDATES", ())
    monkeypatch.setattr(labels_mod, "_fc_match", lambda: None)
    try:
        app = App(make_settings(tmp_path, labels={"text": "本视频由AI生成"}), LocalChannel(), run_worker=False)
        with pytest.raises(StartupError, match="fonts-noto-cjk"):
            asyncio.run(app.start())
    finally:
        find_font.cache_clear()
