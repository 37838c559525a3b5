"""The pyramid flow-matching sampling loops (SPEC §6.3–6.5), as functions taking the DiT.

Video = autoregressive units of one latent frame. Each unit runs three stages at 1/4, 1/2 and full
latent resolution; between stages the latent is nearest-upsampled and renoised with block noise.
Earlier frames are passed to the DiT as clean history at pyramid resolutions.

DiT contract: dit(clips, encoder_hidden_states, encoder_attention_mask, pooled_projections, timestep)
→ velocity of the last clip. CFG batches are ordered [negative, positive].
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from generation.api import CancelFn, GenerationCancelled, Progress, ProgressFn
from generation.sampling.noise import NoiseSource
from generation.sampling.schedule import (
    PyramidSchedule,
    StageSteps,
    build_schedule,
    renoise_coefficients,
    stage_steps,
)

log = logging.getLogger(__name__)

LATENT_CHANNELS = 16

DiTFn = Callable[..., torch.Tensor]
UnitFn = Callable[[int, torch.Tensor], None]  # (generated unit index, final full-res latent [B,C,1,h,w])
StageFn = Callable[[int, int, torch.Tensor], None]  # (generated unit index, stage, latent at end of stage)


@dataclass(frozen=True, slots=True)
class TextConditioning:
    """Text embeddings as the DiT takes them; with cfg=True the batch is [negative, positive]."""

    prompt_embeds: torch.Tensor  # [2B, L, D]
    attention_mask: torch.Tensor  # [2B, L], 1 = valid
    pooled: torch.Tensor  # [2B, P]
    cfg: bool = True

    @staticmethod
    def from_pair(
        neg: tuple[torch.Tensor, torch.Tensor, torch.Tensor], pos: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    ) -> TextConditioning:
        return TextConditioning(
            prompt_embeds=torch.cat([neg[0], pos[0]], dim=0),
            attention_mask=torch.cat([neg[1], pos[1]], dim=0),
            pooled=torch.cat([neg[2], pos[2]], dim=0),
            cfg=True,
        )


@dataclass(frozen=True, slots=True)
class SamplerOptions:
    first_frame_steps: tuple[int, ...] = (20, 20, 20)  # t2v unit 0, per stage
    video_steps: tuple[int, ...] = (10, 10, 10)  # later units (and every i2v unit)
    guidance_scale: float = 7.0  # t2v first frame; CFG is on when > 0
    video_guidance_scale: float = 5.0
    use_linear_guidance: bool = False
    linear_guidance_alpha: float = 0.5
    min_guidance_scale: float = 2.0
    latent_dtype: torch.dtype | None = None  # None → the model dtype (bf16-faithful rounding of latents/timesteps)
    # Opt-in step caching (0 = off, the exact path): inside a stage, a step may reuse the previous step's
    # velocity instead of calling the DiT when the velocity changed by less than this (relative mean
    # absolute change between the last two computed steps). Never two reuses in a row, never on a stage's
    # first or last step. Faster, not exact: the caller labels such videos.
    step_cache: float = 0.0


# --------------------------------------------------------------------------- pyramid helpers


def _per_frame(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    b, c, t, h, w = x.shape
    y = fn(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
    return y.reshape(b, t, c, y.shape[-2], y.shape[-1]).permute(0, 2, 1, 3, 4)


def downsample_half(x: torch.Tensor) -> torch.Tensor:
    """Per-frame bilinear (align_corners=False) to exactly half size, i.e. the 2x2 mean."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return _per_frame(x, lambda y: F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False))


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2] * 2, x.shape[-1] * 2
    return _per_frame(x, lambda y: F.interpolate(y, size=(h, w), mode="nearest"))


def prepare_initial_noise(
    noise: NoiseSource,
    *,
    batch: int,
    temp: int,
    latent_height: int,
    latent_width: int,
    num_stages: int,
    device: torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Full-resolution N(0, I) → halved (bilinear, x2) num_stages-1 times: [B, C, temp, h/4, w/4]."""
    x = noise.initial((batch, LATENT_CHANNELS, temp, latent_height, latent_width), device=device, dtype=dtype)
    for _ in range(num_stages - 1):
        x = downsample_half(x) * 2
    return x


class HistoryPyramid:
    """Generated clean latent frames kept at every pyramid resolution (index 0 = coarsest)."""

    def __init__(self, num_stages: int) -> None:
        self.num_stages = num_stages
        self.levels: list[list[torch.Tensor]] = [[] for _ in range(num_stages)]

    def __len__(self) -> int:
        return len(self.levels[-1])

    def append(self, frame: torch.Tensor) -> None:
        x = frame
        self.levels[-1].append(x)
        for s in range(self.num_stages - 2, -1, -1):
            x = downsample_half(x)
            self.levels[s].append(x)

    def clips_for_stage(self, stage: int) -> list[torch.Tensor]:
        """History clips (oldest first) for the current unit at `stage`, as the reference arranges them:
        the newest frame at the stage's resolution, the one before at stage-1, ... down to stage 1,
        and every older frame together as one clip at stage 0."""
        n = len(self)
        if n == 0:
            return []
        newest_first: list[torch.Tensor] = [self.levels[stage][n - 1]]
        level = stage
        used = 1
        while used < n:
            level = max(level - 1, 0)
            if level == 0:
                break
            used += 1
            newest_first.append(self.levels[level][n - used])
        if level == 0 and used < n:
            newest_first.append(torch.cat(self.levels[0][: n - used], dim=2))
        return list(reversed(newest_first))


# --------------------------------------------------------------------------- the loop


@dataclass(slots=True)
class _Plan:
    steps: list[tuple[int, ...]]  # per generated unit, per stage
    guidance: list[float]
    total_steps: int
    step_cache: float = 0.0


class StepCache:
    """The opt-in step caching rule of `SamplerOptions.step_cache` (a rule of our own, in the spirit of
    TeaCache): after two computed steps of a stage, the relative mean absolute change of the velocity between
    them predicts the next one; below the threshold the next step reuses the last velocity. A reuse is
    followed by a computed step, and a stage's first and last steps are always computed. One host read per
    computed step (the change), so it costs a device sync there."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)
        self.calls = 0  # DiT calls made
        self.reused = 0  # steps that reused a velocity
        self._last: torch.Tensor | None = None
        self._change: float | None = None
        self._reused_last = False

    def start_stage(self) -> None:
        self._last, self._change, self._reused_last = None, None, False

    def reuse(self, step: int, steps: int) -> torch.Tensor | None:
        """The velocity to reuse at this step, or None (call the DiT)."""
        if (self.threshold <= 0 or self._last is None or self._change is None or self._reused_last
                or step == 0 or step == steps - 1 or self._change >= self.threshold):  # fmt: skip
            self._reused_last = False
            return None
        self._reused_last = True
        self.reused += 1
        return self._last

    def computed(self, v: torch.Tensor) -> None:
        self.calls += 1
        if self.threshold <= 0:
            return
        vf = v.detach().float()
        if self._last is not None:
            prev = self._last.float()
            self._change = float((vf - prev).abs().mean() / prev.abs().mean().clamp_min(1e-12))
        self._last = v.detach()


def _model_dtype(dit: DiTFn) -> torch.dtype:
    if isinstance(dit, torch.nn.Module):
        for p in dit.parameters():
            return p.dtype
    return torch.float32


def _run_units(
    dit: DiTFn,
    text: TextConditioning,
    pyramid: HistoryPyramid,
    unit_noise: torch.Tensor,
    plan: _Plan,
    *,
    schedule: PyramidSchedule,
    noise: NoiseSource,
    latent_dtype: torch.dtype,
    model_dtype: torch.dtype,
    progress: ProgressFn | None,
    should_cancel: CancelFn | None,
    on_unit: UnitFn | None,
    on_stage: StageFn | None,
    stats: dict[str, int] | None = None,
) -> list[torch.Tensor]:
    device = unit_noise.device
    num_units = len(plan.steps)
    generated: list[torch.Tensor] = []
    cache = StepCache(plan.step_cache)
    done_steps = 0
    enc = text.prompt_embeds.to(device=device, dtype=model_dtype)
    mask = text.attention_mask.to(device)
    pooled = text.pooled.to(device=device, dtype=model_dtype)
    for k in range(num_units):
        x = unit_noise[:, :, k : k + 1].to(latent_dtype)
        g = plan.guidance[k]
        for s in range(schedule.num_stages):
            if s > 0:
                x = upsample_nearest2x(x)
                alpha, beta = renoise_coefficients(schedule, s)
                n = noise.block(k, s, tuple(x.shape), gamma=schedule.gamma, device=device, dtype=latent_dtype)
                x = alpha * x + beta * n
            steps: StageSteps = stage_steps(schedule, s, plan.steps[k][s])
            ts = torch.tensor(steps.timesteps, dtype=torch.float64, device=device).to(latent_dtype)
            history = [torch.cat([c, c], dim=0) if text.cfg else c for c in pyramid.clips_for_stage(s)]
            history = [c.to(model_dtype) for c in history]
            deltas = steps.deltas()
            cache.start_stage()
            n_steps = len(steps.timesteps)
            for i in range(n_steps):
                if should_cancel is not None and should_cancel():
                    raise GenerationCancelled(f"cancelled at unit {k} stage {s} step {i + 1}")
                v = cache.reuse(i, n_steps)
                if v is None:
                    x_in = torch.cat([x, x], dim=0) if text.cfg else x
                    t = ts[i].expand(x_in.shape[0])
                    v = dit(history + [x_in.to(model_dtype)], enc, mask, pooled, t)
                    if text.cfg:
                        v_neg, v_pos = v.chunk(2)
                        v = v_neg + g * (v_pos - v_neg)
                    cache.computed(v)
                x = (x.to(torch.float32) + deltas[i] * v.to(torch.float32)).to(latent_dtype)
                done_steps += 1
                if progress is not None:
                    progress(
                        Progress(
                            unit=k,
                            units=num_units,
                            stage=s,
                            step=i + 1,
                            steps=len(steps.timesteps),
                            fraction=done_steps / plan.total_steps,
                        )
                    )
            if on_stage is not None:
                on_stage(k, s, x)
        pyramid.append(x)
        generated.append(x)
        if on_unit is not None:
            on_unit(k, x)
    if stats is not None:
        stats["dit_calls"], stats["reused_steps"] = cache.calls, cache.reused
    return generated


def _guidance_list(options: SamplerOptions, history_sizes: Sequence[int], first_frame: Sequence[bool]) -> list[float]:
    out = []
    for n, first in zip(history_sizes, first_frame, strict=True):
        if options.use_linear_guidance:
            out.append(max(options.guidance_scale - options.linear_guidance_alpha * n, options.min_guidance_scale))
        else:
            out.append(options.guidance_scale if first else options.video_guidance_scale)
    return out


def sample_t2v(
    dit: DiTFn,
    text: TextConditioning,
    initial_noise: torch.Tensor,
    *,
    options: SamplerOptions,
    noise: NoiseSource,
    schedule: PyramidSchedule | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    on_unit: UnitFn | None = None,
    on_stage: StageFn | None = None,
    stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """Text-to-video. initial_noise: [B, C, temp, h/4, w/4] (from prepare_initial_noise).
    Returns the model-space latents [B, C, temp, h, w]."""
    schedule = schedule or build_schedule()
    temp = initial_noise.shape[2]
    model_dtype = _model_dtype(dit)
    latent_dtype = options.latent_dtype or model_dtype
    steps = [tuple(options.first_frame_steps)] + [tuple(options.video_steps)] * (temp - 1)
    plan = _Plan(
        steps=steps,
        guidance=_guidance_list(options, list(range(temp)), [True] + [False] * (temp - 1)),
        total_steps=sum(sum(s) for s in steps),
        step_cache=options.step_cache,
    )
    pyramid = HistoryPyramid(schedule.num_stages)
    frames = _run_units(
        dit, text, pyramid, initial_noise, plan,
        schedule=schedule, noise=noise, latent_dtype=latent_dtype, model_dtype=model_dtype,
        progress=progress, should_cancel=should_cancel, on_unit=on_unit, on_stage=on_stage, stats=stats,
    )
    return torch.cat(frames, dim=2)


def sample_i2v(
    dit: DiTFn,
    text: TextConditioning,
    image_latent: torch.Tensor,
    initial_noise: torch.Tensor,
    *,
    options: SamplerOptions,
    noise: NoiseSource,
    schedule: PyramidSchedule | None = None,
    progress: ProgressFn | None = None,
    should_cancel: CancelFn | None = None,
    on_unit: UnitFn | None = None,
    on_stage: StageFn | None = None,
    stats: dict[str, int] | None = None,
) -> torch.Tensor:
    """Image-to-video. image_latent: model-space first frame [B, C, 1, h, w]; initial_noise drawn for all
    temp frames (the last one is unused, as in the reference). Every generated unit uses
    options.video_steps and options.video_guidance_scale. Returns [B, C, temp, h, w] with frame 0 = image."""
    schedule = schedule or build_schedule()
    temp = initial_noise.shape[2]
    model_dtype = _model_dtype(dit)
    latent_dtype = options.latent_dtype or model_dtype
    n_gen = temp - 1
    steps = [tuple(options.video_steps)] * n_gen
    plan = _Plan(
        steps=steps,
        guidance=_guidance_list(options, list(range(1, temp)), [False] * n_gen),
        total_steps=max(1, sum(sum(s) for s in steps)),
        step_cache=options.step_cache,
    )
    pyramid = HistoryPyramid(schedule.num_stages)
    first = image_latent.to(latent_dtype)
    pyramid.append(first)
    frames = _run_units(
        dit, text, pyramid, initial_noise, plan,
        schedule=schedule, noise=noise, latent_dtype=latent_dtype, model_dtype=model_dtype,
        progress=progress, should_cancel=should_cancel, on_unit=on_unit, on_stage=on_stage, stats=stats,
    )
    return torch.cat([first] + frames, dim=2)
