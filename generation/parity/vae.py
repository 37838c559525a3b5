"""Parity checks of our causal video VAE against the reference's stored outputs.

A VAE sidecar (`*.json` beside a `*.safetensors` of inputs/outputs) lists `calls`; each names its input
tensor, the stored output key (exact, or `prefix.*` for several posterior quantities) and the exact
reference call as a string, e.g.
`vae.enable_tiling(); vae.decode(z, temporal_chunk=True, window_size=1, tile_sample_min_size=32).sample`.
Nothing about the fixture's shapes, key names or tile sizes is assumed here: every call string is read
for its operation (encode / decode), its keyword arguments and its `name = d.attr` assignments.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from generation.models.vae import CausalVideoVAE, VAEConfig

from .common import CheckResult, compare, error_result

log = logging.getLogger(__name__)

DEFAULT_MAX_ABS = 1e-4  # fixtures README, "VAE outputs / moments"
DEFAULT_REL_L2 = 1e-5

# Reference signature defaults: encode(window_size=16, tile_sample_min_size=256), decode(window_size=2, 256).
_DEFAULT_WINDOW = {"encode": 16, "decode": 2}
_DEFAULT_TILE = 256

_OP_RE = re.compile(r"\b(encode|decode)\s*\(")
_KWARG_RE = re.compile(r"\b(\w+)\s*=\s*(True|False|None|-?\d+(?:\.\d+)?)\b")
_ASSIGN_RE = re.compile(r"\b(\w+)\s*=\s*\w+\.(parameters|mean|std|var|logvar|mode\(\)|sample\(\))")

_POSTERIOR: dict[str, Callable[[Tensor], Tensor]] = {
    "parameters": lambda m: m,
    "moments": lambda m: m,
    "mean": CausalVideoVAE.posterior_mean,
    "mode()": CausalVideoVAE.posterior_mean,
    "mode": CausalVideoVAE.posterior_mean,
    "std": CausalVideoVAE.posterior_std,
    "logvar": CausalVideoVAE.posterior_logvar,
    "var": lambda m: torch.exp(CausalVideoVAE.posterior_logvar(m)),
}


@dataclass(frozen=True, slots=True)
class ParsedCall:
    op: str  # "encode" | "decode"
    chunk_window: int | None
    tile_size: int | None
    outputs: dict[str, str]  # local name -> posterior attribute (encode only)


def _literal(text: str) -> Any:
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    return float(text) if "." in text else int(text)


def parse_call(entry: dict[str, Any]) -> ParsedCall:
    """Interpret one `calls` entry of a VAE sidecar."""
    call = str(entry.get("call", ""))
    ops = _OP_RE.findall(call)
    if len(set(ops)) != 1:
        raise ValueError(f"cannot tell encode from decode in call {call!r}")
    op = ops[0]
    kwargs: dict[str, Any] = {}
    for name, value in _KWARG_RE.findall(call):
        kwargs[name] = _literal(value)
    if kwargs.get("is_init_image", True) is not True:
        raise ValueError("is_init_image=False (decoding from the middle of a video) is not a supported call")
    if "use_tiling" in entry:
        use_tiling = bool(entry["use_tiling"])
    else:
        use_tiling = "enable_tiling()" in call.replace(" ", "") or "enable_tiling(True)" in call.replace(" ", "")
    chunk = kwargs.get("temporal_chunk", False)
    window = int(kwargs.get("window_size", _DEFAULT_WINDOW[op])) if chunk else None
    tile = int(kwargs.get("tile_sample_min_size", _DEFAULT_TILE)) if use_tiling else None
    outputs = {local: attr for local, attr in _ASSIGN_RE.findall(call)}
    return ParsedCall(op, window, tile, outputs)


def _output_names(entry: dict[str, Any], available: list[str]) -> list[tuple[str, str]]:
    """(tensor name, local suffix) pairs of the stored outputs of one call."""
    key = str(entry["key"])
    inp = entry.get("input")
    if key.endswith("*"):
        prefix = key[:-1]
        names = [n for n in available if n.startswith(prefix) and n != inp]
        if not names:
            raise KeyError(f"no stored tensor matches {key!r}")
        return [(n, n[len(prefix):]) for n in sorted(names)]
    if key not in available:
        raise KeyError(f"stored tensor {key!r} missing")
    return [(key, key.rsplit(".", 1)[-1])]


def _tolerances(sidecar: dict[str, Any], entry: dict[str, Any]) -> tuple[float, float]:
    for source in (entry.get("tolerance"), entry.get("tolerance_advice"), sidecar.get("tolerance_advice"),
                   sidecar.get("tolerance")):
        if isinstance(source, dict) and "max_abs" in source and "rel_l2" in source:
            return float(source["max_abs"]), float(source["rel_l2"])
    return DEFAULT_MAX_ABS, DEFAULT_REL_L2


def _config(fixture_dir: Path, sidecar: dict[str, Any]) -> dict[str, Any]:
    if isinstance(sidecar.get("config"), dict):
        return sidecar["config"]
    weights = json.loads((fixture_dir / "weights.json").read_text())
    return weights["files"][sidecar["weights_file"]]["config"]


def _tensors_file(fixture_dir: Path, sidecar_name: str, sidecar: dict[str, Any]) -> Path:
    for field in ("tensors_file", "outputs_file", "file"):
        if isinstance(sidecar.get(field), str):
            return fixture_dir / sidecar[field]
    return fixture_dir / (Path(sidecar_name).stem + ".safetensors")


def detect(sidecar: dict[str, Any]) -> bool:
    """True for a causal-VAE sidecar: a `calls` list of vae encode/decode calls."""
    calls = sidecar.get("calls")
    if not isinstance(calls, list) or not calls:
        return False
    config = sidecar.get("config")
    if isinstance(config, dict) and config.get("_class_name") == "CausalVideoVAE":
        return True
    return all(isinstance(c, dict) and re.search(r"\bvae\.(encode|decode)\s*\(", str(c.get("call", "")))
               for c in calls)


def load_vae(fixture_dir: Path, sidecar: dict[str, Any], device: str | torch.device = "cpu") -> CausalVideoVAE:
    vae = CausalVideoVAE(VAEConfig.from_dict(_config(fixture_dir, sidecar)))
    vae.load_state_dict(load_file(fixture_dir / sidecar["weights_file"]), strict=True)
    return vae.to(device=device, dtype=torch.float32).eval()


def run_call(vae: CausalVideoVAE, parsed: ParsedCall, x: Tensor) -> Callable[[str], Tensor]:
    """Run one call; return a function from an output suffix to our tensor."""
    if parsed.op == "decode":
        out = vae.decode(x, chunk_window=parsed.chunk_window, tile_size=parsed.tile_size)
        return lambda _suffix: out
    moments = vae.encode_moments(x, chunk_window=parsed.chunk_window, tile_size=parsed.tile_size)

    def pick(suffix: str) -> Tensor:
        attr = parsed.outputs.get(suffix, suffix)
        if attr not in _POSTERIOR:
            raise KeyError(f"unknown posterior quantity {suffix!r}")
        return _POSTERIOR[attr](moments)

    return pick


@contextmanager
def exact_fp32() -> Iterator[None]:
    """Disable TF32 for the duration (on an H100, TF32 convs miss the 1e-4 tolerance by ~70x)."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def run(fixture_dir: Path, sidecar_name: str, *, device: str | torch.device = "cpu") -> list[CheckResult]:
    """Check every stored output of one VAE sidecar; one CheckResult per stored tensor (fp32, no TF32)."""
    with exact_fp32():
        return _run(Path(fixture_dir), sidecar_name, device)


def _run(fixture_dir: Path, sidecar_name: str, device: str | torch.device) -> list[CheckResult]:
    sidecar = json.loads((fixture_dir / sidecar_name).read_text())
    try:
        vae = load_vae(fixture_dir, sidecar, device)
        tensors = load_file(_tensors_file(fixture_dir, sidecar_name, sidecar))
    except Exception as exc:  # a broken fixture or model is a failed check, not a crash of the runner
        return [error_result(f"{sidecar_name}:load", exc)]
    names = list(tensors)
    results: list[CheckResult] = []
    for index, entry in enumerate(sidecar.get("calls", [])):
        label = f"{sidecar_name}:{entry.get('key', index)}"
        try:
            parsed = parse_call(entry)
            outputs = _output_names(entry, names)
            x = tensors[entry["input"]].to(device=device, dtype=torch.float32)
            with torch.no_grad():
                ours = run_call(vae, parsed, x)
                tol_abs, tol_rel = _tolerances(sidecar, entry)
                for name, suffix in outputs:
                    try:
                        results.append(compare(f"{sidecar_name}:{name}", ours(suffix), tensors[name],
                                               tol_max_abs=tol_abs, tol_rel_l2=tol_rel))
                    except Exception as exc:
                        results.append(error_result(f"{sidecar_name}:{name}", exc))
        except Exception as exc:
            results.append(error_result(label, exc))
        log.info("vae parity %s done", label)
    return results
