"""The generator end to end with the tiny random model: t2v and i2v to real MP4s, progress and cancel,
input validation, placement (offload) paths equal to the plain path, streaming decode, the CLI."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from generation.api import GenerationCancelled, GenerationRequest, InvalidRequest, Progress
from generation.pipeline import PyramidFlowGenerator, build_components, build_generator
from generation.sampling.noise import GeneratorNoise
from generation.settings import GenerationSettings
from generation.tiny import TINY_LABEL
from generation.video_io import probe

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
CJK = re.compile(r"[\u4e00-\u9fff]")

FAST = dict(num_inference_steps=(2, 1, 1), video_num_inference_steps=(1, 1, 1))


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def gen() -> PyramidFlowGenerator:
    return build_generator(GenerationSettings())


def _png(path: Path, size=(300, 200), mode="RGBA") -> Path:
    img = Image.new(mode, size, (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30))
    img.save(path)
    return path


def test_t2v_tiny_to_mp4(gen: PyramidFlowGenerator, tmp_path: Path) -> None:
    events: list[Progress] = []
    res = gen.generate(GenerationRequest(prompt="a red panda surfing", temp=3, **FAST), tmp_path,
                       progress=events.append)
    info = probe(res.video_path)
    assert info["frames"] == 1 + 8 * 2 == res.frames
    assert (info["width"], info["height"]) == (128, 64) == (res.width, res.height)
    assert info["codec"] == "h264" and info["faststart"]
    assert res.cover_path is not None and res.cover_path.stat().st_size > 0
    assert res.label == TINY_LABEL and "随机权重" in res.label
    # progress after every denoising step: unit 0 has 2+1+1 steps, units 1-2 have 1+1+1
    steps = [e for e in events if e.steps]
    assert len(steps) == 4 + 3 + 3
    assert [(e.unit, e.stage, e.step) for e in steps[:4]] == [(0, 0, 1), (0, 0, 2), (0, 1, 1), (0, 2, 1)]
    fractions = [e.fraction for e in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert all(e.units == 3 for e in steps)


def test_i2v_tiny_to_mp4(gen: PyramidFlowGenerator, tmp_path: Path) -> None:
    img = _png(tmp_path / "in.png")
    res = gen.generate(GenerationRequest(prompt="the panda waves", temp=2, image_path=str(img),
                                         num_inference_steps=(1, 1, 1)), tmp_path / "out")
    assert probe(res.video_path)["frames"] == 9
    assert res.label == TINY_LABEL


def test_same_seed_same_frames_different_seed_differs(gen: PyramidFlowGenerator) -> None:
    req = GenerationRequest(prompt="a cat", temp=2, **FAST)
    job = gen.validate(req)
    a, _ = gen.render(job, noise=GeneratorNoise(5))
    b, _ = gen.render(job, noise=GeneratorNoise(5))
    c, _ = gen.render(job, noise=GeneratorNoise(6))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_cancel_stops_at_a_step(gen: PyramidFlowGenerator, tmp_path: Path) -> None:
    seen: list[Progress] = []
    with pytest.raises(GenerationCancelled):
        gen.generate(GenerationRequest(prompt="a cat", temp=3, **FAST), tmp_path, progress=seen.append,
                     should_cancel=lambda: len(seen) >= 5)
    assert len([e for e in seen if e.steps]) == 5
    assert not list(tmp_path.glob("*.mp4"))


@pytest.mark.parametrize(
    "request_kwargs, pattern",
    [
        (dict(prompt=""), "描述"),
        (dict(prompt="x" * 501), "太长"),
        (dict(prompt="a cat", duration_s=7), "5 秒或 10 秒"),
        (dict(prompt="a cat", duration_s=10), "384p"),  # 10 s needs 31 latent frames: 768p only
        (dict(prompt="a cat", temp=17), "384p"),
        (dict(prompt="a cat", num_inference_steps=(0, 1, 1)), "步数"),
        (dict(prompt="a cat", guidance_scale=99.0), "引导"),
        (dict(prompt="a cat", image_path="/nonexistent/image.png"), "图片"),
    ],
)
def test_invalid_requests_rejected_before_model_work(gen: PyramidFlowGenerator, tmp_path: Path, request_kwargs,
                                                      pattern) -> None:
    calls = []
    handle = gen.c.dit.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        with pytest.raises(InvalidRequest) as err:
            gen.generate(GenerationRequest(**request_kwargs), tmp_path)
    finally:
        handle.remove()
    assert re.search(pattern, str(err.value)) and CJK.search(str(err.value))
    assert calls == []


def test_bad_images(gen: PyramidFlowGenerator, tmp_path: Path) -> None:
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(InvalidRequest, match="无法识别"):
        gen.validate(GenerationRequest(prompt="a", temp=2, image_path=str(bad)))
    small = GenerationSettings(max_image_pixels=1000, max_image_bytes=10_000_000)
    g2 = PyramidFlowGenerator(gen.c, small)
    with pytest.raises(InvalidRequest, match="分辨率过高"):
        g2.validate(GenerationRequest(prompt="a", temp=2, image_path=str(_png(tmp_path / "big.png"))))
    tiny_bytes = PyramidFlowGenerator(gen.c, GenerationSettings(max_image_bytes=100))
    with pytest.raises(InvalidRequest, match="太大"):
        tiny_bytes.validate(GenerationRequest(prompt="a", temp=2, image_path=str(_png(tmp_path / "b2.png"))))


def test_image_preparation_exif_rgba_crop(gen: PyramidFlowGenerator, tmp_path: Path) -> None:
    # a portrait JPEG stored landscape with EXIF orientation 6 (rotate 90° clockwise to display)
    img = Image.new("RGB", (400, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 200, 100))  # left half red → after rotation: top half red
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif)
    path = tmp_path / "rot.jpg"
    path.write_bytes(buf.getvalue())
    job = gen.validate(GenerationRequest(prompt="a", temp=2, image_path=str(path)))
    assert job.image is not None and job.image.shape == (64, 128, 3) and job.image.dtype == np.uint8
    rgba = gen.validate(GenerationRequest(prompt="a", temp=2, image_path=str(_png(tmp_path / "a.png"))))
    assert rgba.image is not None and rgba.image.shape == (64, 128, 3)
    # half-transparent red over white background
    assert abs(int(rgba.image[32, 64, 0]) - 227) <= 3 and abs(int(rgba.image[32, 64, 1]) - 142) <= 3


def test_rotated_exif_is_applied(tmp_path: Path) -> None:
    from generation.images import load_image_for_video

    img = Image.new("RGB", (400, 100), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 200, 100))
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    img.save(path, format="JPEG", exif=exif)
    out = load_image_for_video(path, 64, 128, max_bytes=10**7, max_pixels=10**7)  # portrait target
    assert out.shape == (128, 64, 3)
    assert out[5, 32, 0] > 200 and out[5, 32, 2] < 60  # top is red after applying the orientation
    assert out[-5, 32, 2] > 200 and out[-5, 32, 0] < 60  # bottom is blue


@pytest.mark.parametrize("placement", ["model_offload", "sequential_offload"])
def test_offload_paths_equal_plain_path(placement: str) -> None:
    plain_settings = GenerationSettings()
    plain = PyramidFlowGenerator(build_components(plain_settings), plain_settings)
    settings = GenerationSettings(placement=placement)
    off = PyramidFlowGenerator(build_components(settings), settings)
    req = GenerationRequest(prompt="a cat", temp=2, **FAST)
    a, _ = plain.render(plain.validate(req), noise=GeneratorNoise(3))
    b, _ = off.render(off.validate(req), noise=GeneratorNoise(3))
    assert np.array_equal(a, b)
    if placement == "model_offload":
        moved = [m for m, _ in off.placement.moves]
        assert moved.count("CausalVideoVAE") >= 2 and moved.count("T5EncoderModel") >= 2  # in and out
        assert moved.count(type(off.c.dit).__name__) >= 2
    else:
        streamers = {type(s.module).__name__: s for s in off.placement.streamers}
        dit = streamers[type(off.c.dit).__name__]
        assert dit.blocks and dit.loads >= len(dit.blocks) * 4  # every block streamed at every DiT call
        assert "T5EncoderModel" in streamers and streamers["T5EncoderModel"].loads > 0


def test_streaming_decode_matches_full_decode() -> None:
    full_settings = GenerationSettings()
    stream_settings = GenerationSettings(stream_decode=True)
    comps = build_components(full_settings)
    full = PyramidFlowGenerator(comps, full_settings)
    stream = PyramidFlowGenerator(comps, stream_settings)
    req = GenerationRequest(prompt="a cat", temp=3, **FAST)
    a, _ = full.render(full.validate(req), noise=GeneratorNoise(2))
    b, _ = stream.render(stream.validate(req), noise=GeneratorNoise(2))
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_mmdit_tiny_and_label_through_build_generator(tmp_path: Path) -> None:
    g = build_generator(GenerationSettings(tiny_model_name="pyramid_mmdit", negative_prompt="ugly",
                                           prompt_suffix=", 4k"))
    assert g.c.model_name == "pyramid_mmdit" and g.label == TINY_LABEL
    assert g.c.text is not None and g.c.text.negative_prompt == "ugly" and g.c.text.suffix == ", 4k"
    assert g.supports("384p") and not g.supports("1080p")
    res = g.generate(GenerationRequest(prompt="a cat", temp=2, **FAST), tmp_path)
    assert probe(res.video_path)["frames"] == 9


def test_cli_generate(tmp_path: Path) -> None:
    out = tmp_path / "clip.mp4"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "generation.cli", "generate", "a cat on the sea", "--temp", "2", "--steps", "1",
         "--video-steps", "1", "--seed", "3", "--output", str(out), "--no-progress"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and out.with_suffix(".jpg").is_file()
    assert probe(out)["frames"] == 9
    assert "tiny" in proc.stderr and "随机权重" in proc.stdout + proc.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "generation.cli", "generate", "a cat", "--temp", "40", "--no-progress",
         "--output", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert bad.returncode == 2 and CJK.search(bad.stderr)


def test_text_bucket_gives_the_same_video() -> None:
    # pads masked by key (one CUDA graph per text bucket) instead of cut out per row: the same video
    plain_settings = GenerationSettings()
    bucket_settings = GenerationSettings(text_bucket=16)
    comps = build_components(plain_settings)
    plain = PyramidFlowGenerator(comps, plain_settings)
    a, _ = plain.render(plain.validate(GenerationRequest(prompt="a cat on a red sofa", temp=2, **FAST)),
                        noise=GeneratorNoise(4))  # fmt: skip
    bucketed = PyramidFlowGenerator(comps, bucket_settings)
    assert comps.dit.text_bucket == 16
    b, _ = bucketed.render(bucketed.validate(GenerationRequest(prompt="a cat on a red sofa", temp=2, **FAST)),
                           noise=GeneratorNoise(4))  # fmt: skip
    diff = np.abs(a.astype(int) - b.astype(int))
    assert a.shape == b.shape and diff.max() <= 1 and (diff > 0).mean() < 1e-3


def test_step_cache_is_off_by_default_and_when_on_reuses_steps_and_says_so(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from generation.api import GenerationRequest
    from generation.pipeline import STEP_CACHE_NOTE, build_generator
    from generation.sampling.noise import GeneratorNoise
    from generation.sampling.pyramid import StepCache
    from generation.settings import GenerationSettings

    exact = build_generator(GenerationSettings())
    req = GenerationRequest(prompt="a boat on a lake", seed=3, temp=3, num_inference_steps=(6, 6, 6),
                            video_num_inference_steps=(5, 5, 5))
    job = exact.validate(req)
    assert job.options.step_cache == 0.0
    frames_exact, t_exact = exact.render(job, noise=GeneratorNoise(3))
    assert t_exact["reused_steps"] == 0 and t_exact["dit_calls"] == (
        sum(job.options.first_frame_steps) + sum(job.options.video_steps) * (job.temp - 1))
    assert STEP_CACHE_NOTE not in exact._label(t_exact)

    fast = build_generator(GenerationSettings(step_cache=0.5))  # a loose threshold: reuses wherever the rule may
    job2 = fast.validate(req)
    frames_fast, t_fast = fast.render(job2, noise=GeneratorNoise(3))
    assert t_fast["reused_steps"] > 0
    assert t_fast["dit_calls"] + t_fast["reused_steps"] == t_exact["dit_calls"]
    assert frames_fast.shape == frames_exact.shape and not np.array_equal(frames_fast, frames_exact)
    assert STEP_CACHE_NOTE in fast._label(t_fast)

    # the rule itself: never the first or last step of a stage, never two reuses in a row
    cache = StepCache(5.0)
    cache.start_stage()
    pattern = []
    import torch

    for i in range(8):
        v = cache.reuse(i, 8)
        pattern.append(v is not None)
        if v is None:
            cache.computed(torch.full((2,), float(i + 1)))
    assert pattern == [False, False, True, False, True, False, True, False]
    assert cache.calls == 5 and cache.reused == 3
    strict = StepCache(0.01)  # the velocity changes by far more than 1 % per step here: every step computed
    strict.start_stage()
    for i in range(8):
        assert strict.reuse(i, 8) is None
        strict.computed(torch.full((2,), float(i + 1)))
    assert strict.reused == 0
