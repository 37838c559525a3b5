"""Per-stage timestep/sigma tables of the pyramidal flow-matching scheduler and the Euler step.

Plain dataclasses and functions (SPEC §6.1). Boundary sigmas are float32 values taken from the
global linear schedule; everything derived from them is computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True, slots=True)
class PyramidSchedule:
    num_train_timesteps: int
    gamma: float
    start_sigmas: tuple[float, ...]  # corrected for the upsample + renoise
    end_sigmas: tuple[float, ...]
    ori_start_sigmas: tuple[float, ...]  # uncorrected boundaries (float32 values)
    timestep_ratios: tuple[tuple[float, float], ...]
    stage_t_max: tuple[float, ...]
    stage_t_min: tuple[float, ...]

    @property
    def num_stages(self) -> int:
        return len(self.end_sigmas)


@dataclass(frozen=True, slots=True)
class StageSteps:
    stage: int
    timesteps: tuple[float, ...]  # model timesteps on the 0..1000 scale, one DiT call each
    sigmas: tuple[float, ...]  # stage-local ratios, len(timesteps)+1, ending at 0

    def deltas(self) -> tuple[float, ...]:
        """Euler step sizes sigma[k+1] - sigma[k] (negative)."""
        return tuple(self.sigmas[k + 1] - self.sigmas[k] for k in range(len(self.timesteps)))


def build_schedule(
    *,
    num_train_timesteps: int = 1000,
    stage_range: tuple[float, ...] = (0.0, 1 / 3, 2 / 3, 1.0),
    gamma: float = 1 / 3,
) -> PyramidSchedule:
    n = num_train_timesteps
    stages = len(stage_range) - 1
    # Global linear sigmas as the reference stores them: float32 of (n - i) / n.
    global_sigmas = (np.linspace(1, n, n, dtype=np.float64)[::-1] / n).astype(np.float32)
    ori_start: list[float] = []
    ends: list[float] = []
    for s in range(stages):
        i0 = int(stage_range[s] * n)
        i1 = int(stage_range[s + 1] * n)
        ori_start.append(float(global_sigmas[i0]))
        ends.append(0.0 if i1 >= n else float(global_sigmas[i1]))
    starts = [ori_start[0]]
    for s in range(1, stages):
        alpha, _ = _alpha_beta(1.0 - ori_start[s], gamma)
        starts.append(1.0 - alpha * (1.0 - ori_start[s]))
    lengths = [starts[s] - ends[s] for s in range(stages)]
    total = sum(lengths)
    cum = [0.0]
    for length in lengths:
        cum.append(cum[-1] + length / total)
    cum[-1] = 1.0
    ratios = tuple((cum[s], cum[s + 1]) for s in range(stages))
    big_t = np.linspace(n, 1, n, dtype=np.float64)
    t_max: list[float] = []
    t_min: list[float] = []
    for s in range(stages):
        t_start = big_t[int(n * cum[s])]
        t_end = big_t[min(int(n * cum[s + 1]), n - 1)]
        # table = t_end + linspace(1, 0.001, n) * (t_start - t_end): first and last entries
        t_max.append(float(t_end + 1.0 * (t_start - t_end)))
        t_min.append(float(t_end + (1.0 / n) * (t_start - t_end)))
    return PyramidSchedule(
        num_train_timesteps=n,
        gamma=gamma,
        start_sigmas=tuple(starts),
        end_sigmas=tuple(ends),
        ori_start_sigmas=tuple(ori_start),
        timestep_ratios=ratios,
        stage_t_max=tuple(t_max),
        stage_t_min=tuple(t_min),
    )


def _alpha_beta(signal_coeff: float, gamma: float) -> tuple[float, float]:
    s = signal_coeff
    alpha = 1.0 / (math.sqrt(1.0 + 1.0 / gamma) * (1.0 - s) + s)
    beta = alpha * (1.0 - s) / math.sqrt(gamma)
    return alpha, beta


def renoise_coefficients(schedule: PyramidSchedule, stage: int) -> tuple[float, float]:
    """(alpha, beta) applied when entering `stage` (>= 1): x <- alpha * Up(x) + beta * block_noise."""
    if not 1 <= stage < schedule.num_stages:
        raise ValueError(f"renoise only applies when entering stages 1..{schedule.num_stages - 1}, got {stage}")
    return _alpha_beta(1.0 - schedule.ori_start_sigmas[stage], schedule.gamma)


def stage_steps(schedule: PyramidSchedule, stage: int, num_steps: int) -> StageSteps:
    if num_steps < 1:
        raise ValueError("num_steps must be >= 1")
    ts = np.linspace(schedule.stage_t_max[stage], schedule.stage_t_min[stage], num_steps, dtype=np.float64)
    n = schedule.num_train_timesteps
    sig = np.linspace(1.0, 1.0 / n, num_steps, dtype=np.float64)
    return StageSteps(
        stage=stage,
        timesteps=tuple(float(t) for t in ts),
        sigmas=tuple(float(s) for s in sig) + (0.0,),
    )


def euler_step(sample: torch.Tensor, velocity: torch.Tensor, delta: float) -> torch.Tensor:
    """x <- x + delta * v computed in float32, returned in the velocity's dtype (as the reference)."""
    out = sample.to(torch.float32) + delta * velocity.to(torch.float32)
    return out.to(velocity.dtype)
