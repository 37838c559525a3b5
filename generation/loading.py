"""Checkpoint loading: DiT from diffusion_transformer_<variant>/, VAE from causal_video_vae/, text models.

Modules are built with parameters on the meta device and then receive the file tensors with
`load_state_dict(assign=True)`, each tensor converted to the target dtype on its own, so the whole model
never exists as an fp32 copy in CPU memory. Weights: `.safetensors` (single or sharded with an index json)
or `.bin` (torch.load with weights_only=True, mmap=True). Every problem raises `CheckpointError` naming
the file (and the key when one is at fault).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from accelerate import init_empty_weights
from torch import nn

from generation.components import PipelineComponents

log = logging.getLogger(__name__)

MODEL_NAMES = ("pyramid_flux", "pyramid_mmdit")
WEIGHT_NAMES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin", "model.safetensors",
                "pytorch_model.bin")
INDEX_NAMES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json",
               "diffusion_pytorch_model.bin.index.json", "pytorch_model.bin.index.json")


class CheckpointError(RuntimeError):
    """A checkpoint folder or weight file cannot be used; the message names the file and key."""


# --------------------------------------------------------------------------- weight files


def read_config(folder: Path) -> dict:
    path = Path(folder) / "config.json"
    if not Path(folder).is_dir():
        raise CheckpointError(f"checkpoint folder missing: {folder}")
    if not path.is_file():
        raise CheckpointError(f"config file missing: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: unreadable config ({exc})") from exc


def find_weight_files(folder: Path) -> list[Path]:
    """The weight files of a folder (all shards when an index json is present)."""
    folder = Path(folder)
    for name in INDEX_NAMES:
        index = folder / name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            except (OSError, json.JSONDecodeError, KeyError) as exc:
                raise CheckpointError(f"{index}: unreadable shard index ({exc})") from exc
            files = sorted({folder / f for f in weight_map.values()})
            for f in files:
                if not f.is_file():
                    raise CheckpointError(f"{f}: shard listed in {index.name} is missing")
            return files
    for name in WEIGHT_NAMES:
        if (folder / name).is_file():
            return [folder / name]
    raise CheckpointError(f"no weights file in {folder} (expected one of {', '.join(WEIGHT_NAMES)})")


def _convert(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() else t


def iter_tensors(path: Path, dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """(key, tensor converted to dtype), one tensor at a time."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc
        with handle as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                try:
                    t = f.get_tensor(key)
                except Exception as exc:  # noqa: BLE001
                    raise CheckpointError(f"{path}: cannot read tensor {key!r} ({exc})") from exc
                yield key, _convert(t, dtype)
        return
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle...
        raise CheckpointError(f"{path}: cannot read torch weights file ({exc})") from exc
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state_dict, found {type(sd).__name__}")
    for key in list(sd.keys()):
        yield key, _convert(sd.pop(key), dtype)


def load_weights_into(module: nn.Module, folder: Path, dtype: torch.dtype) -> nn.Module:
    """Fill a meta-built module from the folder's weight files; strict key and shape checks."""
    expected = {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}
    files = find_weight_files(folder)
    state: dict[str, torch.Tensor] = {}
    origin: dict[str, Path] = {}
    for path in files:
        for key, tensor in iter_tensors(path, dtype):
            if key not in expected:
                raise CheckpointError(f"{path}: unexpected key {key!r} (not a parameter of {type(module).__name__})")
            if tuple(tensor.shape) != expected[key]:
                raise CheckpointError(
                    f"{path}: shape mismatch for {key!r}: file {tuple(tensor.shape)}, model {expected[key]}"
                )
            state[key] = tensor
            origin[key] = path
    missing = [k for k in expected if k not in state]
    if missing:
        names = ", ".join(repr(k) for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{files[0] if len(files) == 1 else folder}: missing key {names}{more}")
    module.load_state_dict(state, strict=True, assign=True)
    leftover = [n for n, t in list(module.named_parameters()) + list(module.named_buffers()) if t.is_meta]
    if leftover:
        raise CheckpointError(f"{folder}: tensors left unmaterialised after loading: {leftover[:5]}")
    return module.eval().requires_grad_(False)


# --------------------------------------------------------------------------- modules


def detect_model_name(root: Path, variant: str, config: dict | None = None) -> str:
    """The DiT variant of a checkpoint: `model_name_from_config` (the rule `build_dit` uses), else an
    SD3-style third text encoder folder means MMDiT."""
    from generation.models.dit_config import model_name_from_config

    root = Path(root)
    cfg = config if config is not None else read_config(root / f"diffusion_transformer_{variant}")
    cls = str(cfg.get("_class_name", ""))
    named = model_name_from_config(cfg)
    if named is not None:
        return named
    if "Flux" in cls:
        return "pyramid_flux"
    if "MMDiT" in cls or (root / "text_encoder_3").is_dir():
        return "pyramid_mmdit"
    raise CheckpointError(f"{root / f'diffusion_transformer_{variant}' / 'config.json'}: cannot tell the model type")


def load_dit(root: Path, variant: str, model_name: str, *, dtype: torch.dtype, device: torch.device,
             attention_backend: str = "prefix", config: dict | None = None) -> nn.Module:
    """Build the DiT from its `config.json` (pass `config` when it was already read) and load its weights."""
    from generation.models.registry import build_dit

    folder = Path(root) / f"diffusion_transformer_{variant}"
    config = config if config is not None else read_config(folder)
    with init_empty_weights(include_buffers=False):
        try:
            dit = build_dit(model_name, config, attention_backend=attention_backend)
        except Exception as exc:  # noqa: BLE001 - config the DiT rejects
            raise CheckpointError(f"{folder / 'config.json'}: cannot build {model_name} ({exc})") from exc
    load_weights_into(dit, folder, dtype)
    return dit.to(device=device)


def load_vae(root: Path, *, dtype: torch.dtype, device: torch.device) -> nn.Module:
    from generation.models.vae import CausalVideoVAE, VAEConfig

    folder = Path(root) / "causal_video_vae"
    config = read_config(folder)
    with init_empty_weights(include_buffers=False):
        try:
            vae = CausalVideoVAE(VAEConfig.from_dict(config))
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"{folder / 'config.json'}: cannot build the VAE ({exc})") from exc
    load_weights_into(vae, folder, dtype)
    return vae.to(device=device)


# --------------------------------------------------------------------------- pre-flight check

# The text towers and tokenizers `load_text_encoder` reads, per model.
TEXT_FOLDERS: dict[str, tuple[str, ...]] = {
    "pyramid_flux": ("text_encoder", "text_encoder_2"),
    "pyramid_mmdit": ("text_encoder", "text_encoder_2", "text_encoder_3"),
}
TOKENIZER_FOLDERS: dict[str, tuple[str, ...]] = {
    "pyramid_flux": ("tokenizer", "tokenizer_2"),
    "pyramid_mmdit": ("tokenizer", "tokenizer_2", "tokenizer_3"),
}


def _header_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Key → shape of one weight file, reading only the safetensors header (a `.bin` is memory-mapped,
    its tensors are not read)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors file ({exc})") from exc
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read torch weights file ({exc})") from exc
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state_dict, found {type(sd).__name__}")
    return {k: tuple(v.shape) for k, v in sd.items() if isinstance(v, torch.Tensor)}


def check_weight_keys(expected: dict[str, tuple[int, ...]], folder: Path, owner: str) -> None:
    """The folder's weight files hold exactly the `expected` keys with the expected shapes (headers only)."""
    files = find_weight_files(folder)
    found: set[str] = set()
    for path in files:
        for key, shape in _header_shapes(path).items():
            if key not in expected:
                raise CheckpointError(f"{path}: unexpected key {key!r} (not a parameter of {owner})")
            if shape != expected[key]:
                raise CheckpointError(f"{path}: shape mismatch for {key!r}: file {shape}, model {expected[key]}")
            found.add(key)
    missing = [k for k in expected if k not in found]
    if missing:
        names = ", ".join(repr(k) for k in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise CheckpointError(f"{files[0] if len(files) == 1 else folder}: missing key {names}{more}")


def _meta_shapes(build, what: Path) -> tuple[dict[str, tuple[int, ...]], str]:
    with torch.device("meta"):
        try:
            module = build()
        except Exception as exc:  # noqa: BLE001 - a config the model rejects
            raise CheckpointError(f"{what}: cannot build the model from it ({exc})") from exc
    return {k: tuple(v.shape) for k, v in module.state_dict(keep_vars=True).items()}, type(module).__name__


def validate_checkpoint(root: Path, variant: str = "384p", model_name: str | None = None, *,
                        load_text: bool = True) -> str:
    """A cheap pre-flight check of a checkpoint, before anything accepts work: every folder
    `load_pipeline` reads exists, its config.json parses, the DiT and VAE are built on the meta device
    (no memory, no GPU) and their weight files' headers hold exactly the expected keys and shapes; the
    text towers' weight headers are readable and their tokenizer folders are present. No tensor is read.
    Returns the model name; raises `CheckpointError` naming the path (file, key) at fault."""
    from generation.models.registry import build_dit
    from generation.models.vae import CausalVideoVAE, VAEConfig

    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder missing: {root}")
    dit_folder = root / f"diffusion_transformer_{variant}"
    dit_config = read_config(dit_folder)
    name = model_name or detect_model_name(root, variant, dit_config)
    if name not in MODEL_NAMES:
        raise CheckpointError(f"unknown model name {name!r} (expected one of {MODEL_NAMES})")
    expected, owner = _meta_shapes(lambda: build_dit(name, dit_config), dit_folder / "config.json")
    check_weight_keys(expected, dit_folder, owner)
    vae_folder = root / "causal_video_vae"
    vae_config = read_config(vae_folder)
    expected, owner = _meta_shapes(lambda: CausalVideoVAE(VAEConfig.from_dict(vae_config)), vae_folder / "config.json")
    check_weight_keys(expected, vae_folder, owner)
    if load_text:
        for sub in TEXT_FOLDERS[name]:
            folder = root / sub
            read_config(folder)
            files = find_weight_files(folder)
            if not any(_header_shapes(path) for path in files):
                raise CheckpointError(f"{files[0]}: holds no tensors")
        for sub in TOKENIZER_FOLDERS[name]:
            folder = root / sub
            if not folder.is_dir() or not any(folder.iterdir()):
                raise CheckpointError(f"tokenizer folder missing or empty: {folder}")
    return name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]


def load_pipeline(
    root: Path,
    variant: str = "384p",
    model_name: str | None = None,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    load_text: bool = True,
    negative_prompt: str | None = None,
    prompt_suffix: str | None = None,
    attention_backend: str = "prefix",
    t5_max_length: int = 128,
) -> PipelineComponents:
    from generation.text_encoders import PromptEncoder, TextEncoderError, load_text_encoder

    root = Path(root)
    if not root.is_dir():
        raise CheckpointError(f"checkpoint folder missing: {root}")
    device = torch.device(device)
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    dit_config = read_config(root / f"diffusion_transformer_{variant}")  # read once, used twice
    if model_name is None:
        model_name = detect_model_name(root, variant, dit_config)
    if model_name not in MODEL_NAMES:
        raise CheckpointError(f"unknown model name {model_name!r} (expected one of {MODEL_NAMES})")
    log.info("loading %s %s from %s (%s on %s)", model_name, variant, root, dtype, device)
    dit = load_dit(root, variant, model_name, dtype=dtype, device=device, attention_backend=attention_backend,
                   config=dit_config)
    vae = load_vae(root, dtype=dtype, device=device)
    text = None
    if load_text:
        try:
            encoder = load_text_encoder(root, model_name, dtype=dtype, device=device, t5_max_length=t5_max_length)
        except TextEncoderError as exc:
            raise CheckpointError(str(exc)) from exc
        kwargs = {}
        if negative_prompt is not None:
            kwargs["negative_prompt"] = negative_prompt
        if prompt_suffix is not None:
            kwargs["suffix"] = prompt_suffix
        text = PromptEncoder(encoder, **kwargs)
    return PipelineComponents(model_name=model_name, variant=variant, dit=dit, vae=vae, text=text,
                              dtype=dtype, device=device)
