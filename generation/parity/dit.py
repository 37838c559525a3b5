"""Parity of our DiT forward against the reference's golden tensors (DiT forward fixtures).

Nothing about a fixture is assumed beyond its contract: the variant comes from the config
(`_class_name` or its structural keys), cases from the tensor names (`<case>.sample.<i>`,
`<case>.timestep_ratio`, `<case>.output.0`), tolerances from the sidecar (README defaults otherwise).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from generation.models.fusion import fuse_projections, unfuse_projections
from generation.models.registry import build_dit, model_name_from_config
from generation.parity.common import CheckResult, compare, error_result

log = logging.getLogger(__name__)

DEFAULT_MAX_ABS = 1e-4
DEFAULT_REL_L2 = 1e-5
_SAMPLE = re.compile(r"^(?P<case>.+)\.sample\.(?P<i>\d+)$")
_SHARED_INPUTS = ("encoder_hidden_states", "encoder_attention_mask", "pooled_projections")


def _config_of(sidecar: Mapping[str, Any], fixture_dir: Path | None) -> dict[str, Any] | None:
    config = sidecar.get("config")
    if isinstance(config, dict):
        return config
    weights_file = sidecar.get("weights_file")
    if fixture_dir is not None and isinstance(weights_file, str):
        index = fixture_dir / "weights.json"
        if index.is_file():
            entry = json.loads(index.read_text()).get("files", {}).get(weights_file, {})
            if isinstance(entry.get("config"), dict):
                return entry["config"]
    return None


def detect(sidecar: dict) -> bool:
    """True if this sidecar describes DiT forward cases (either variant)."""
    config = sidecar.get("config")
    if not isinstance(config, dict) or model_name_from_config(config) is None:
        return False
    tensors = sidecar.get("tensors")
    if isinstance(tensors, dict):
        names = set(tensors)
        return any(_SAMPLE.match(n) for n in names) and any(n.endswith(".output.0") for n in names)
    return True


def _tolerances(sidecar: Mapping[str, Any]) -> tuple[float, float]:
    advice = sidecar.get("tolerance_advice")
    if isinstance(advice, dict):
        return float(advice.get("max_abs", DEFAULT_MAX_ABS)), float(advice.get("rel_l2", DEFAULT_REL_L2))
    return DEFAULT_MAX_ABS, DEFAULT_REL_L2


def discover_cases(names: Sequence[str]) -> dict[str, list[str]]:
    """case -> its sample tensor names in clip order (only cases that also have an output)."""
    samples: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        m = _SAMPLE.match(name)
        if m:
            samples.setdefault(m["case"], []).append((int(m["i"]), name))
    present = set(names)
    return {
        case: [n for _, n in sorted(items)]
        for case, items in sorted(samples.items())
        if f"{case}.output.0" in present
    }


def _case_input(tensors: Mapping[str, torch.Tensor], case: str, name: str) -> torch.Tensor:
    for key in (f"{case}.{name}", name):
        if key in tensors:
            return tensors[key]
    raise KeyError(f"fixture has neither {case}.{name} nor {name}")


def _timestep(tensors: Mapping[str, torch.Tensor], case: str) -> torch.Tensor:
    for key in (f"{case}.timestep_ratio", f"{case}.timestep", "timestep_ratio", "timestep"):
        if key in tensors:
            return tensors[key]
    raise KeyError(f"fixture has no timestep for {case}")


def run(
    fixture_dir: Path,
    sidecar_name: str,
    *,
    backends: Sequence[str] = ("prefix", "dense"),
    merge_tokens: int | None = None,
    fused: Sequence[bool] = (False, True),
) -> list[CheckResult]:
    """Run every case of one DiT forward fixture with each attention backend, with the separate and the fused
    input projections (`generation.models.fusion`, the resident fast path); one result per combination."""
    fixture_dir = Path(fixture_dir)
    label = sidecar_name
    try:
        sidecar = json.loads((fixture_dir / sidecar_name).read_text())
        config = _config_of(sidecar, fixture_dir)
        if config is None:
            raise ValueError("sidecar names no DiT config")
        model_name = model_name_from_config(config)
        if model_name is None:
            raise ValueError("config is neither pyramid_flux nor pyramid_mmdit")
        tol_abs, tol_rel = _tolerances(sidecar)
        tensors = load_file(str(fixture_dir / (Path(sidecar_name).stem + ".safetensors")))
        weights_name = sidecar.get("weights_file") or f"dit_{model_name}.weights.safetensors"
        model = build_dit(model_name, config)
        model.load_state_dict(load_file(str(fixture_dir / weights_name)), strict=True)
        model = model.to(torch.float32).eval()
        if merge_tokens is not None:
            model.merge_tokens = merge_tokens
        cases = discover_cases(list(tensors))
        if not cases:
            raise ValueError("no '<case>.sample.<i>' / '<case>.output.0' tensors found")
    except Exception as exc:  # noqa: BLE001 - reported as a failed check, not raised
        log.exception("DiT parity setup failed for %s", label)
        return [error_result(label, exc)]

    results: list[CheckResult] = []
    combos = [(backend, f) for f in fused for backend in backends]
    for case, sample_names in cases.items():
        for backend, use_fused in combos:
            name = f"{label}:{case}[{model_name},{backend}{',fused' if use_fused else ''}]"
            try:
                if use_fused:
                    fuse_projections(model)
                else:
                    unfuse_projections(model)
                model.set_attention_backend(backend)  # type: ignore[arg-type]
                clips = [tensors[n] for n in sample_names]
                with torch.no_grad():
                    out = model(
                        clips,
                        _case_input(tensors, case, _SHARED_INPUTS[0]),
                        _case_input(tensors, case, _SHARED_INPUTS[1]),
                        _case_input(tensors, case, _SHARED_INPUTS[2]),
                        _timestep(tensors, case),
                    )
                results.append(compare(name, out, tensors[f"{case}.output.0"], tol_max_abs=tol_abs, tol_rel_l2=tol_rel))
            except Exception as exc:  # noqa: BLE001
                log.exception("DiT parity case failed: %s", name)
                results.append(error_result(name, exc))
    for r in results:
        log.info("parity %s", r.line())
    return results
