"""End-to-end parity: run our sampler + VAE on an e2e fixture with its recorded noise injected.

Everything is read from the sidecar: model type (from the DiT config's class name), weights files, the
call's arguments (temp, steps, guidance, size, save_memory), latent normalisation constants, scheduler
constants and tolerances. Text embeddings come from the fixture (text encoders are bypassed).
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from generation.decode import decode_to_frames, encode_image_latent
from generation.latents import LatentNorm, latent_norm
from generation.parity.common import CheckResult, compare, error_result
from generation.sampling.noise import ReplayNoise
from generation.sampling.pyramid import (
    SamplerOptions,
    TextConditioning,
    prepare_initial_noise,
    sample_i2v,
    sample_t2v,
)
from generation.sampling.schedule import build_schedule

CLASS_TO_MODEL = {"PyramidFluxTransformer": "pyramid_flux", "PyramidDiffusionMMDiT": "pyramid_mmdit"}


def detect(sidecar: dict) -> bool:
    return "random_draws" in sidecar and "call" in sidecar and "generate" in str(sidecar["call"])


def parse_call(call: str) -> tuple[str, dict]:
    """('generate' | 'generate_i2v', {keyword: literal value}) from the sidecar's call string."""
    m = re.search(r"\.(generate(?:_i2v)?)\(", call)
    if not m:
        raise ValueError(f"cannot find a generate call in {call!r}")
    kwargs: dict = {}
    for km in re.finditer(r"(\w+)\s*=\s*(\[[^\]]*\]|'[^']*'|\"[^\"]*\"|True|False|None|-?[\d.eE+-]+)", call[m.end():]):
        try:
            kwargs[km.group(1)] = ast.literal_eval(km.group(2))
        except (ValueError, SyntaxError):
            continue
    return m.group(1), kwargs


def _steps(v, default: int = 28) -> tuple[int, int, int]:
    if v is None:
        v = default
    if isinstance(v, int):
        return (v, v, v)
    return tuple(int(x) for x in v)  # type: ignore[return-value]


def _norm_from_sidecar(side: dict, model_name: str) -> LatentNorm:
    c = side.get("pipeline_constants_in_effect") or {}
    keys = ("vae_shift_factor", "vae_scale_factor", "vae_video_shift_factor", "vae_video_scale_factor")
    if all(k in c for k in keys):
        return LatentNorm(*(float(c[k]) for k in keys))
    return latent_norm(model_name)


def _load_models(fixture_dir: Path, side: dict):
    from generation.models import build_dit
    from generation.models.vae import CausalVideoVAE, VAEConfig

    weights_manifest = json.loads((fixture_dir / "weights.json").read_text(encoding="utf-8"))["files"]
    files = side["weights_files"]
    dit_cfg = dict(weights_manifest[files["dit"]]["config"])
    model_name = CLASS_TO_MODEL.get(str(dit_cfg.get("_class_name")))
    if model_name is None:
        raise ValueError(f"unknown DiT class {dit_cfg.get('_class_name')!r}")
    dit = build_dit(model_name, dit_cfg)
    dit.load_state_dict(load_file(str(fixture_dir / files["dit"])), strict=True)
    vae = CausalVideoVAE(VAEConfig.from_dict(dict(weights_manifest[files["vae"]]["config"])))
    vae.load_state_dict(load_file(str(fixture_dir / files["vae"])), strict=True)
    return model_name, dit.eval().float(), vae.eval().float()


def _frames_check(name: str, ours: np.ndarray, ref: torch.Tensor, tol_abs: float, tol_frac: float) -> CheckResult:
    r = ref.numpy()
    if ours.shape != r.shape:
        return CheckResult(name, float("nan"), float("nan"), tol_abs, tol_frac,
                           error=f"shape {ours.shape} != reference {r.shape}")
    d = np.abs(ours.astype(np.int32) - r.astype(np.int32))
    # for uint8 frames the second number is the fraction of differing values (README rule)
    return CheckResult(name + " (2nd value = fraction of differing values)", float(d.max()), float((d > 0).mean()),
                       tol_abs, tol_frac)


def run(fixture_dir: Path, sidecar_name: str, *, record_calls: list[dict] | None = None,
        device: str = "cpu", fused: bool = True) -> list[CheckResult]:
    """All checks of one e2e fixture. With `record_calls`, every DiT call is appended to it as
    {"sample": [clip shapes], "timestep": [floats]} (compare with the sidecar's `dit_calls`).
    `fused`: the DiT runs with fused input projections, as the generator runs a resident DiT."""
    fixture_dir = Path(fixture_dir)
    side = json.loads((fixture_dir / sidecar_name).read_text(encoding="utf-8"))
    tensors = load_file(str(fixture_dir / (Path(sidecar_name).stem + ".safetensors")))
    tol = side.get("tolerance_advice", {})
    tol_lat_abs = float(tol.get("latents_max_abs", 1e-3))
    tol_lat_rel = float(tol.get("latents_rel_l2", 2e-5))
    tol_fr_abs = float(tol.get("frames_max_abs", 1))
    tol_fr_frac = float(tol.get("frames_max_fraction_differing", 1e-3))
    method, kw = parse_call(side["call"])
    model_name, model, vae = _load_models(fixture_dir, side)
    model.to(device)
    vae.to(device)
    if fused:
        from generation.models.fusion import fuse_projections

        fuse_projections(model)
    dit = model
    if record_calls is not None:

        def dit(clips, *args):  # same call, logged
            record_calls.append({"sample": [list(c.shape) for c in clips], "timestep": args[-1].tolist()})
            return model(clips, *args)
    norm = _norm_from_sidecar(side, model_name)
    consts = (side.get("pipeline_constants_in_effect") or {}).get("scheduler", {})
    schedule = build_schedule(
        stage_range=tuple(float(x) for x in consts.get("stage_range", (0, 1 / 3, 2 / 3, 1))),
        gamma=float(consts.get("gamma", 1 / 3)),
    )
    num_stages = schedule.num_stages
    other = str(side.get("other_arguments", ""))
    options = SamplerOptions(
        first_frame_steps=_steps(kw.get("num_inference_steps")),
        video_steps=_steps(kw.get("video_num_inference_steps") if method == "generate"
                           else kw.get("num_inference_steps")),
        guidance_scale=float(kw.get("guidance_scale", 7.0)),
        video_guidance_scale=float(kw.get("video_guidance_scale", 7.0 if method == "generate" else 4.0)),
        use_linear_guidance=bool(kw.get("use_linear_guidance", "use_linear_guidance=True" in other)),
        linear_guidance_alpha=float(kw.get("alpha", 0.5)),
        min_guidance_scale=float(kw.get("min_guidance_scale", 2.0)),
        latent_dtype=torch.float32,
    )
    cfg = options.guidance_scale > 0
    pos = (tensors["text.pos.prompt_embeds"], tensors["text.pos.prompt_attention_mask"],
           tensors["text.pos.pooled_prompt_embeds"])
    if cfg:
        neg = (tensors["text.neg.prompt_embeds"], tensors["text.neg.prompt_attention_mask"],
               tensors["text.neg.pooled_prompt_embeds"])
        text = TextConditioning.from_pair(neg, pos)
    else:
        text = TextConditioning(*pos, cfg=False)
    text = TextConditioning(text.prompt_embeds.to(device), text.attention_mask.to(device), text.pooled.to(device),
                            cfg=text.cfg)
    noise = ReplayNoise(tensors)
    temp = int(kw.get("temp", 1))
    save_memory = bool(kw.get("save_memory", True))
    tiling = "enable_tiling" in str(side.get("construction", ""))
    device = torch.device(device)
    stages: dict[str, torch.Tensor] = {}
    results: list[CheckResult] = []
    with torch.no_grad():  # not inference_mode: the DiT plan cache reads tensor version counters
        if method == "generate":
            h, w = int(kw["height"]), int(kw["width"])
        else:
            img = tensors["input.image_uint8_hwc"]
            h, w = int(img.shape[0]), int(img.shape[1])
        init = prepare_initial_noise(noise, batch=1, temp=temp, latent_height=h // 8, latent_width=w // 8,
                                     num_stages=num_stages, device=device, dtype=torch.float32)
        for k in range(temp):
            key = f"unit{k}.input_noise"
            if key in tensors:
                results.append(compare(f"{sidecar_name}:{key}", init[:, :, k:k + 1].cpu(), tensors[key],
                                       tol_max_abs=tol_lat_abs, tol_rel_l2=tol_lat_rel))

        def on_stage(k: int, s: int, x: torch.Tensor) -> None:
            stages[f"unit{k}.stage{s}.latents"] = x.clone()

        if method == "generate":
            latents = sample_t2v(dit, text, init, options=options, noise=noise, schedule=schedule, on_stage=on_stage)
        else:
            image_latent = encode_image_latent(vae, tensors["input.image_uint8_hwc"].numpy(), norm, noise,
                                               device=device, dtype=torch.float32, tiling=tiling)
            latents = sample_i2v(dit, text, image_latent, init, options=options, noise=noise, schedule=schedule,
                                 on_stage=on_stage)
        stored_stage_keys = sorted(k for k in tensors if re.fullmatch(r"unit\d+\.stage\d+\.latents", k))
        for key in stored_stage_keys:
            if key not in stages:
                results.append(CheckResult(f"{sidecar_name}:{key}", float("nan"), float("nan"), tol_lat_abs,
                                           tol_lat_rel, error="our sampler produced no such unit/stage"))
                continue
            results.append(compare(f"{sidecar_name}:{key}", stages[key], tensors[key],
                                   tol_max_abs=tol_lat_abs, tol_rel_l2=tol_lat_rel))
        if "output.latents" in tensors:
            results.append(compare(f"{sidecar_name}:output.latents", latents, tensors["output.latents"],
                                   tol_max_abs=tol_lat_abs, tol_rel_l2=tol_lat_rel))
        if "output.frames_uint8" in tensors:
            try:
                frames = decode_to_frames(vae, latents, norm, tiling=tiling, save_memory=save_memory)
                results.append(_frames_check(f"{sidecar_name}:output.frames_uint8", frames,
                                             tensors["output.frames_uint8"], tol_fr_abs, tol_fr_frac))
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                results.append(error_result(f"{sidecar_name}:output.frames_uint8", exc))
    unused = sorted(k for k in tensors if k.startswith("noise.") and k not in noise.used)
    if unused:
        results.append(CheckResult(f"{sidecar_name}:noise_draws", float("nan"), float("nan"), 0, 0,
                                   error=f"recorded draws not consumed by our sampler: {unused}"))
    return results
