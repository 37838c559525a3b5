"""Parity of the pyramid scheduler tables against a scheduler sidecar (e.g. scheduler_384p.json)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from generation.parity.common import CheckResult, compare, error_result
from generation.sampling.schedule import build_schedule, renoise_coefficients, stage_steps


def detect(sidecar: dict) -> bool:
    return "schedules" in sidecar and ("stage_transitions" in sidecar or "start_sigmas" in sidecar)


def _t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def run(fixture_dir: Path, sidecar_name: str) -> list[CheckResult]:
    path = Path(fixture_dir) / sidecar_name
    side = json.loads(path.read_text(encoding="utf-8"))
    cons = side.get("constructor") or side.get("config") or {}
    tol = side.get("tolerance_advice", {})
    tol_t = float(tol.get("timesteps_abs", 1e-6))
    tol_s = float(tol.get("sigmas_abs", 1e-9))
    tol_ab = float(tol.get("alpha_beta_abs", 1e-9))
    if float(cons.get("shift", 1.0)) != 1.0:
        return [CheckResult(f"{sidecar_name}", float("nan"), float("nan"), 0, 0,
                            error=f"timestep shift {cons.get('shift')} is not supported (only 1.0)")]
    sched = build_schedule(
        num_train_timesteps=int(cons.get("num_train_timesteps", 1000)),
        stage_range=tuple(float(x) for x in cons.get("stage_range", (0, 1 / 3, 2 / 3, 1))),
        gamma=float(cons.get("gamma", 1 / 3)),
    )
    out: list[CheckResult] = []
    for key, ours in (("start_sigmas", sched.start_sigmas), ("end_sigmas", sched.end_sigmas),
                      ("ori_start_sigmas", sched.ori_start_sigmas)):
        if key in side:
            out.append(compare(f"{sidecar_name}:{key}", _t(ours), _t(side[key]), tol_max_abs=tol_s, tol_rel_l2=tol_s))
    if "timestep_ratios" in side:
        out.append(compare(f"{sidecar_name}:timestep_ratios", _t(sched.timestep_ratios), _t(side["timestep_ratios"]),
                           tol_max_abs=tol_s, tol_rel_l2=tol_s))
    for name, sch in side["schedules"].items():
        for st in sch["stages"]:
            label = f"{sidecar_name}:{name}:stage{st['stage']}"
            try:
                ours = stage_steps(sched, int(st["stage"]), int(st["num_inference_steps"]))
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                out.append(error_result(label, exc))
                continue
            out.append(compare(f"{label}:timesteps", _t(ours.timesteps), _t(st["timesteps"]),
                               tol_max_abs=tol_t, tol_rel_l2=tol_t))
            out.append(compare(f"{label}:sigmas", _t(ours.sigmas), _t(st["sigmas"]),
                               tol_max_abs=tol_s, tol_rel_l2=tol_s))
    for tr in side.get("stage_transitions", []):
        s = int(tr["into_stage"])
        a, b = renoise_coefficients(sched, s)
        out.append(compare(f"{sidecar_name}:renoise_into_stage{s}", _t([a, b]), _t([tr["alpha"], tr["beta"]]),
                           tol_max_abs=tol_ab, tol_rel_l2=tol_ab))
    bn = side.get("block_noise", {})
    if "covariance" in bn:
        g = sched.gamma
        ours = (1 + g) * torch.eye(4, dtype=torch.float64) - g * torch.ones(4, 4, dtype=torch.float64)
        # the stored matrix is float32: compare at float32 resolution
        out.append(compare(f"{sidecar_name}:block_noise_covariance", ours, _t(bn["covariance"]),
                           tol_max_abs=1e-6, tol_rel_l2=1e-6))
    return out
