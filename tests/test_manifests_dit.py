"""Full-size DiT builds (meta device) against the checkpoint manifests, and config parsing rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from generation.models import (
    ConfigError,
    FluxDiTConfig,
    MMDiTConfig,
    build_dit,
    model_name_from_config,
)

MANIFESTS = Path(__file__).parent / "fixtures" / "manifests"
DIT_MANIFESTS = sorted(MANIFESTS.glob("dit_*.json"))


def test_both_variants_have_manifests() -> None:
    names = {model_name_from_config(json.loads(p.read_text())["config_json"]) for p in DIT_MANIFESTS}
    assert names == {"pyramid_flux", "pyramid_mmdit"}


@pytest.mark.parametrize("manifest_path", DIT_MANIFESTS, ids=lambda p: p.stem)
def test_full_size_state_dict_matches_manifest(manifest_path: Path) -> None:
    manifest = json.loads(manifest_path.read_text())
    config = manifest["config_json"]
    name = model_name_from_config(config)
    assert name is not None
    with torch.device("meta"):
        model = build_dit(name, config)
    assert model.model_name == name
    state = model.state_dict()
    expected: dict[str, list[int]] = manifest["state_dict"]

    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    assert not missing, f"keys the checkpoint has but the model lacks: {missing[:10]}"
    assert not unexpected, f"keys the model has but the checkpoint lacks: {unexpected[:10]}"
    wrong = {k: (list(state[k].shape), shape) for k, shape in expected.items() if list(state[k].shape) != shape}
    assert not wrong, f"shape mismatches (ours, checkpoint): {dict(list(wrong.items())[:10])}"

    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    buffers = dict(model.named_buffers())
    for key in manifest["persistent_buffers"]:
        assert key in buffers and key in state
    assert sum(buffers[k].numel() for k in manifest["persistent_buffers"]) == manifest[
        "num_persistent_buffer_elements"
    ]


def test_mmdit_uses_checkpoint_norm_names_and_reference_eps() -> None:
    with torch.device("meta"):
        model = build_dit("pyramid_mmdit", MMDiTConfig(num_layers=2, num_attention_heads=2, caption_projection_dim=128))
    attn = model.transformer_blocks[0].attn
    assert not hasattr(attn, "norm_added_q") or attn.norm_added_q is None
    for name in ("norm_q", "norm_k", "norm_add_q", "norm_add_k"):
        assert getattr(attn, name).eps == pytest.approx(1e-5)
    last = model.transformer_blocks[-1]
    assert last.context_pre_only and last.ff_context is None


def test_config_ignores_behaviour_keys_and_rejects_unknown_ones() -> None:
    flux = json.loads((MANIFESTS / "dit_pyramid_flux.json").read_text())["config_json"]
    cfg = FluxDiTConfig.from_dict(flux)
    assert cfg.num_layers == 8 and cfg.num_single_layers == 16 and cfg.axes_dims_rope == (16, 24, 24)
    assert cfg.inner_dim == 1920

    with pytest.raises(ConfigError, match="guidance_embeds"):
        FluxDiTConfig.from_dict({**flux, "guidance_embeds": True})

    mmdit = json.loads((MANIFESTS / "dit_pyramid_mmdit.json").read_text())
    cfg2 = MMDiTConfig.from_dict({**mmdit["config_json"], **mmdit["constructor_overrides"]})
    assert cfg2.inner_dim == 1536 and cfg2.pos_embed_max_size == 192 and cfg2.qk_norm_eps == 1e-5
    with pytest.raises(ConfigError, match="dual_attention_layers"):
        MMDiTConfig.from_dict({**mmdit["config_json"], "dual_attention_layers": [0]})
    with pytest.raises(ConfigError, match="pos_embed_type"):
        MMDiTConfig.from_dict({**mmdit["config_json"], "pos_embed_type": "rope"})


def test_build_dit_rejects_unknown_variant_and_mismatched_config() -> None:
    with pytest.raises(ConfigError, match="pyramid_sd35"):
        build_dit("pyramid_sd35", {})
    with pytest.raises(ConfigError):
        build_dit("pyramid_mmdit", FluxDiTConfig())
