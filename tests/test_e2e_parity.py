"""End-to-end parity with the reference on the four e2e fixtures (stored noise injected, text from fixture):
latents per unit/stage, final latents, uint8 frames; plus the DiT call sequence (clip shapes, timesteps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from generation.parity import e2e

FIXTURES = Path(__file__).parent / "fixtures" / "pyramid_flow"
CASES = sorted(p.name for p in FIXTURES.glob("e2e_*.json"))


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_four_fixtures_present() -> None:
    assert CASES == ["e2e_pyramid_flux_i2v.json", "e2e_pyramid_flux_t2v.json",
                     "e2e_pyramid_mmdit_i2v.json", "e2e_pyramid_mmdit_t2v.json"]


@pytest.mark.parametrize("name", CASES)
def test_e2e_fixture(name: str) -> None:
    calls: list[dict] = []
    results = e2e.run(FIXTURES, name, record_calls=calls)
    failures = [r.line() for r in results if not r.ok]
    assert not failures, "\n".join(failures)
    names = {r.fixture.split(":")[1].split(" ")[0] for r in results}
    side = json.loads((FIXTURES / name).read_text(encoding="utf-8"))
    stage_keys = {k for k in side["tensors"] if k.endswith(".latents") and k.startswith("unit")}
    assert stage_keys and stage_keys <= names  # every stored unit/stage latent was compared
    assert {"output.latents", "output.frames_uint8"} <= names
    # the DiT saw exactly the reference's calls: same number, clip shapes (history layout) and timesteps
    ref_calls = side["dit_calls"]["calls"]
    assert len(calls) == side["dit_calls"]["count"] == len(ref_calls)
    for ours, ref in zip(calls, ref_calls, strict=True):
        assert ours["sample"] == ref["sample"][0]
        assert ours["timestep"] == pytest.approx(ref["timestep"], abs=1e-4)


def test_parse_call_reads_arguments() -> None:
    method, kw = e2e.parse_call(
        "g = torch.Generator('cpu').manual_seed(1); result = pipe.generate_i2v(prompt='x, y', input_image=I, "
        "temp=5, num_inference_steps=[4, 1, 2], video_guidance_scale=3.5, generator=g, save_memory=False)")
    assert method == "generate_i2v"
    assert kw["temp"] == 5 and kw["num_inference_steps"] == [4, 1, 2]
    assert kw["video_guidance_scale"] == 3.5 and kw["save_memory"] is False


def test_history_layout_for_longer_videos() -> None:
    """SPEC §6.3 table for units beyond the fixtures' reach: older frames at stage 0 in one clip,
    then one frame per coarser-to-finer resolution, newest at the current stage's resolution."""
    from generation.sampling.pyramid import HistoryPyramid

    pyr = HistoryPyramid(3)
    for i in range(6):
        pyr.append(torch.full((1, 16, 1, 8, 16), float(i)))
    shapes = {s: [(c.shape[2], c.shape[3], int(c[0, 0, 0, 0, 0])) for c in pyr.clips_for_stage(s)] for s in range(3)}
    assert shapes[0] == [(5, 2, 0), (1, 2, 5)]
    assert shapes[1] == [(5, 2, 0), (1, 4, 5)]
    assert shapes[2] == [(4, 2, 0), (1, 4, 4), (1, 8, 5)]


def test_linear_guidance_schedule() -> None:
    from generation.sampling.pyramid import SamplerOptions, _guidance_list

    off = SamplerOptions(guidance_scale=7.0, video_guidance_scale=5.0)
    assert _guidance_list(off, [0, 1, 2], [True, False, False]) == [7.0, 5.0, 5.0]
    on = SamplerOptions(guidance_scale=7.0, video_guidance_scale=5.0, use_linear_guidance=True)
    assert _guidance_list(on, list(range(12)), [True] + [False] * 11) == [
        7.0, 6.5, 6.0, 5.5, 5.0, 4.5, 4.0, 3.5, 3.0, 2.5, 2.0, 2.0]
