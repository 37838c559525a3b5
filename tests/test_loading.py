"""Checkpoint loading from a tiny checkpoint folder written to disk (safetensors, sharded, .bin) and
the error messages for broken checkpoints."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from generation.loading import CheckpointError, detect_model_name, iter_tensors, load_pipeline
from generation.tiny import TINY_DIT_CONFIGS, TINY_T5_LENGTH, build_tiny_pipeline, save_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def flux_ckpt(tmp_path_factory):
    torch.set_num_threads(1)
    comps = build_tiny_pipeline("pyramid_flux", seed=3)
    root = save_checkpoint(comps, tmp_path_factory.mktemp("flux") / "ckpt")
    return comps, root


@pytest.fixture(scope="module")
def mmdit_bin_ckpt(tmp_path_factory):
    comps = build_tiny_pipeline("pyramid_mmdit", seed=4)
    root = save_checkpoint(comps, tmp_path_factory.mktemp("mmdit") / "ckpt", weights_format="bin")
    return comps, root


def _same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k].cpu(), sb[k].cpu()), k


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def test_load_safetensors_checkpoint(flux_ckpt) -> None:
    comps, root = flux_ckpt
    assert detect_model_name(root, "384p") == "pyramid_flux"
    loaded = load_pipeline(root, "384p", dtype=torch.float32, device="cpu", t5_max_length=TINY_T5_LENGTH)
    assert loaded.model_name == "pyramid_flux" and loaded.label == ""
    _same_state(comps.dit, loaded.dit)
    _same_state(comps.vae, loaded.vae)
    assert not any(p.is_meta for p in loaded.dit.parameters())
    # the text towers come from the checkpoint's own folders and encode identically
    a = comps.text("a red panda")
    b = loaded.text("a red panda")
    assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.pooled, b.pooled)
    assert torch.equal(a.attention_mask, b.attention_mask)


def test_load_bin_checkpoint_with_buffer(mmdit_bin_ckpt) -> None:
    comps, root = mmdit_bin_ckpt
    assert (root / "diffusion_transformer_384p" / "diffusion_pytorch_model.bin").is_file()
    assert detect_model_name(root, "384p") == "pyramid_mmdit"
    loaded = load_pipeline(root, "384p", dtype=torch.float32, device="cpu", load_text=False)
    _same_state(comps.dit, loaded.dit)  # includes the persistent pos_embed buffer
    assert "pos_embed.pos_embed" in loaded.dit.state_dict()


def test_load_converts_dtype_per_tensor(flux_ckpt) -> None:
    _, root = flux_ckpt
    loaded = load_pipeline(root, "384p", "pyramid_flux", dtype=torch.bfloat16, device="cpu", load_text=False)
    assert {p.dtype for p in loaded.dit.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in loaded.vae.parameters()} == {torch.bfloat16}
    path = root / "causal_video_vae" / "diffusion_pytorch_model.safetensors"
    first = next(iter_tensors(path, torch.bfloat16))
    assert first[1].dtype == torch.bfloat16


def test_sharded_safetensors(flux_ckpt, tmp_path: Path) -> None:
    comps, _ = flux_ckpt
    root = save_checkpoint(comps, tmp_path / "sharded", shards=3)
    folder = root / "diffusion_transformer_384p"
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    loaded = load_pipeline(root, "384p", dtype=torch.float32, device="cpu", load_text=False)
    _same_state(comps.dit, loaded.dit)
    (folder / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model-00002-of-00003\.safetensors.*missing"):
        load_pipeline(root, "384p", dtype=torch.float32, device="cpu", load_text=False)


def _rewrite(path: Path, fn) -> None:
    sd = load_file(str(path))
    fn(sd)
    save_file(sd, str(path))


def test_missing_key_names_file_and_key(flux_ckpt, tmp_path: Path) -> None:
    root = _copy(flux_ckpt[1], tmp_path)
    path = root / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors"
    _rewrite(path, lambda sd: sd.pop("proj_out.weight"))
    with pytest.raises(CheckpointError) as err:
        load_pipeline(root, "384p", device="cpu", load_text=False)
    assert str(path) in str(err.value) and "'proj_out.weight'" in str(err.value) and "missing" in str(err.value)


def test_unexpected_key_names_file_and_key(flux_ckpt, tmp_path: Path) -> None:
    root = _copy(flux_ckpt[1], tmp_path)
    path = root / "causal_video_vae" / "diffusion_pytorch_model.safetensors"
    _rewrite(path, lambda sd: sd.__setitem__("encoder.extra.weight", torch.zeros(3)))
    with pytest.raises(CheckpointError) as err:
        load_pipeline(root, "384p", device="cpu", load_text=False)
    assert str(path) in str(err.value) and "'encoder.extra.weight'" in str(err.value)
    assert "unexpected" in str(err.value)


def test_shape_mismatch_names_file_and_key(flux_ckpt, tmp_path: Path) -> None:
    root = _copy(flux_ckpt[1], tmp_path)
    path = root / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors"
    _rewrite(path, lambda sd: sd.__setitem__("context_embedder.weight", torch.zeros(5, 5)))
    with pytest.raises(CheckpointError) as err:
        load_pipeline(root, "384p", device="cpu", load_text=False)
    msg = str(err.value)
    assert str(path) in msg and "'context_embedder.weight'" in msg and "(5, 5)" in msg


def test_missing_folders(flux_ckpt, tmp_path: Path) -> None:
    root = _copy(flux_ckpt[1], tmp_path)
    with pytest.raises(CheckpointError, match="diffusion_transformer_768p"):
        load_pipeline(root, "768p", device="cpu", load_text=False)
    shutil.rmtree(root / "causal_video_vae")
    with pytest.raises(CheckpointError, match="causal_video_vae"):
        load_pipeline(root, "384p", device="cpu", load_text=False)
    with pytest.raises(CheckpointError, match="does-not-exist"):
        load_pipeline(tmp_path / "does-not-exist", "384p", device="cpu")
    root2 = tmp_path / "copy2"
    shutil.copytree(flux_ckpt[1], root2)
    shutil.rmtree(root2 / "text_encoder_2")
    with pytest.raises(CheckpointError, match="text_encoder_2"):
        load_pipeline(root2, "384p", device="cpu")


def test_no_weights_and_bad_config(flux_ckpt, tmp_path: Path) -> None:
    root = _copy(flux_ckpt[1], tmp_path)
    folder = root / "diffusion_transformer_384p"
    (folder / "config.json").write_text(json.dumps({"_class_name": "PyramidFluxTransformer", "bogus_key": 1}))
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_pipeline(root, "384p", "pyramid_flux", device="cpu", load_text=False)
    (folder / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "config.json").write_text(json.dumps(TINY_DIT_CONFIGS["pyramid_flux"]))
    with pytest.raises(CheckpointError, match="no weights file in .*diffusion_transformer_384p"):
        load_pipeline(root, "384p", "pyramid_flux", device="cpu", load_text=False)


def test_truncated_safetensors(flux_ckpt, tmp_path: Path) -> None:
    root = _copy(flux_ckpt[1], tmp_path)
    path = root / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_pipeline(root, "384p", device="cpu", load_text=False)
    assert str(path) in str(err.value)


def test_truncated_bin(mmdit_bin_ckpt, tmp_path: Path) -> None:
    root = _copy(mmdit_bin_ckpt[1], tmp_path)
    path = root / "causal_video_vae" / "diffusion_pytorch_model.bin"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        load_pipeline(root, "384p", device="cpu", load_text=False)
    assert str(path) in str(err.value)
