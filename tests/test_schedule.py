"""Pyramid scheduler tables against the reference's scheduler_384p.json, renoise constants, Euler step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from generation.latents import pipeline_constants
from generation.sampling.schedule import build_schedule, euler_step, renoise_coefficients, stage_steps

FIXTURE = Path(__file__).parent / "fixtures" / "pyramid_flow" / "scheduler_384p.json"


@pytest.fixture(scope="module")
def ref() -> dict:
    return json.loads(FIXTURE.read_text(encoding="utf-8"))


def test_stage_boundaries_match_reference(ref: dict) -> None:
    s = build_schedule()
    for ours, theirs in ((s.start_sigmas, ref["start_sigmas"]), (s.end_sigmas, ref["end_sigmas"]),
                         (s.ori_start_sigmas, ref["ori_start_sigmas"])):
        assert ours == pytest.approx(theirs, abs=1e-9)
    for (a0, a1), (b0, b1) in zip(s.timestep_ratios, ref["timestep_ratios"], strict=True):
        assert a0 == pytest.approx(b0, abs=1e-9) and a1 == pytest.approx(b1, abs=1e-9)
    for st, (t_first, t_last) in enumerate(ref["timesteps_per_stage_first_last"]):
        assert s.stage_t_max[st] == pytest.approx(t_first, abs=1e-6)
        assert s.stage_t_min[st] == pytest.approx(t_last, abs=1e-6)


def test_every_stage_table_matches_reference(ref: dict) -> None:
    s = build_schedule()
    checked = 0
    for sched in ref["schedules"].values():
        for st in sched["stages"]:
            ours = stage_steps(s, st["stage"], st["num_inference_steps"])
            assert len(ours.timesteps) == len(st["timesteps"])
            assert max(abs(a - b) for a, b in zip(ours.timesteps, st["timesteps"], strict=True)) <= 1e-6
            assert max(abs(a - b) for a, b in zip(ours.sigmas, st["sigmas"], strict=True)) <= 1e-9
            assert ours.sigmas[-1] == 0.0
            checked += 1
    assert checked == 9


def test_steps10_and_20_tables_in_pipeline_constants() -> None:
    s = build_schedule()
    tables = pipeline_constants()["per_stage_schedules"]
    for key, table in tables.items():
        n, stage = key.removeprefix("steps").split("_stage")
        ours = stage_steps(s, int(stage), int(n))
        assert max(abs(a - b) for a, b in zip(ours.timesteps, table["timesteps"], strict=True)) <= 1e-6
        assert max(abs(a - b) for a, b in zip(ours.sigmas, table["sigmas"], strict=True)) <= 1e-9


def test_renoise_coefficients(ref: dict) -> None:
    s = build_schedule()
    for tr in ref["stage_transitions"]:
        a, b = renoise_coefficients(s, tr["into_stage"])
        assert a == pytest.approx(tr["alpha"], abs=1e-9)
        assert b == pytest.approx(tr["beta"], abs=1e-9)
        # the renoised latent lands on the next stage's line: sigma_start = 1 - alpha * signal
        assert 1 - a * (1 - s.ori_start_sigmas[tr["into_stage"]]) == pytest.approx(
            s.start_sigmas[tr["into_stage"]], abs=1e-12)
    with pytest.raises(ValueError):
        renoise_coefficients(s, 0)


def test_euler_step_is_fp32_then_cast() -> None:
    x = torch.tensor([1.0, -2.0, 0.5], dtype=torch.bfloat16)
    v = torch.tensor([0.3, 0.7, -1.1], dtype=torch.bfloat16)
    out = euler_step(x, v, -0.05)
    assert out.dtype == torch.bfloat16
    expected = (x.float() + -0.05 * v.float()).to(torch.bfloat16)
    assert torch.equal(out, expected)
    x32, v32 = x.float(), v.float()
    assert torch.allclose(euler_step(x32, v32, -0.05), x32 - 0.05 * v32, atol=0, rtol=0)


def test_other_step_counts_are_linear_and_monotone() -> None:
    s = build_schedule()
    for st in range(3):
        steps = stage_steps(s, st, 7)
        ts = steps.timesteps
        assert ts[0] == s.stage_t_max[st] and ts[-1] == pytest.approx(s.stage_t_min[st])
        assert all(a > b for a, b in zip(ts, ts[1:], strict=False))
        assert sum(steps.deltas()) == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        stage_steps(s, 0, 0)
