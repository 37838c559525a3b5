"""The full-size VAE built from the released config.json has exactly the checkpoint's state_dict layout."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from generation.models.vae import CausalVideoVAE, VAEConfig

MANIFEST = Path(__file__).parent / "fixtures" / "manifests" / "causal_vae.json"


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


@pytest.fixture(scope="module")
def full_vae(manifest) -> CausalVideoVAE:
    with torch.device("meta"):
        return CausalVideoVAE(VAEConfig.from_dict(manifest["config_json"]))


def test_state_dict_keys_and_shapes_equal_manifest(full_vae, manifest):
    ours = {k: list(v.shape) for k, v in full_vae.state_dict().items()}
    expected = manifest["state_dict"]
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    mismatched = {k: (ours[k], expected[k]) for k in expected if ours[k] != expected[k]}
    assert mismatched == {}
    assert list(ours) == list(expected)  # same registration order as the reference module tree
    assert len(ours) == manifest["num_state_dict_tensors"]


def test_parameter_counts_equal_manifest(full_vae, manifest):
    assert sum(p.numel() for p in full_vae.parameters()) == manifest["num_parameters"]
    for name, numel in manifest["numel_by_top_level_module"].items():
        assert sum(p.numel() for p in getattr(full_vae, name).parameters()) == numel, name
    assert not list(full_vae.buffers())


def test_released_config_values(manifest):
    cfg = VAEConfig.from_dict(manifest["config_json"])
    assert cfg.latent_channels == 16
    assert cfg.spatial_factor == 8 == cfg.downsample_scale
    assert cfg.temporal_factor == 8
    assert cfg.encoder_norm_num_groups == cfg.decoder_norm_num_groups == 32
