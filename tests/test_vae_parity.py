"""Our causal video VAE against the reference's stored outputs (tests/fixtures/pyramid_flow/vae_forward.*)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from generation.models.vae import CausalVideoVAE, TilePlan, VAEConfig, VAEConfigError, chunk_bounds
from generation.models.vae.tiling import blend_edge
from generation.parity import vae as vae_parity

FIXTURES = Path(__file__).parent / "fixtures" / "pyramid_flow"
SIDECAR = "vae_forward.json"
TOL_ABS = 1e-4
TOL_REL = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sidecar() -> dict:
    return json.loads((FIXTURES / SIDECAR).read_text())


@pytest.fixture(scope="module")
def tensors() -> dict[str, torch.Tensor]:
    return load_file(FIXTURES / "vae_forward.safetensors")


@pytest.fixture(scope="module")
def vae(sidecar) -> CausalVideoVAE:
    return vae_parity.load_vae(FIXTURES, sidecar)


def assert_close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape
    diff = (ours.double() - ref.double())
    max_abs = float(diff.abs().max())
    rel = float(diff.norm() / ref.double().norm())
    assert max_abs <= TOL_ABS and rel <= TOL_REL, f"max_abs={max_abs:.3e} rel_l2={rel:.3e}"


# ---------------------------------------------------------------- stored outputs through the public API
@pytest.mark.parametrize(
    ("key", "kwargs"),
    [
        ("decode.full.output", {}),
        ("decode.chunk_w1.output", {"chunk_window": 1}),
        ("decode.chunk_w2.output", {"chunk_window": 2}),
    ],
)
@torch.no_grad()
def test_decode_matches_reference(vae, tensors, key, kwargs):
    assert_close(vae.decode(tensors["decode.z"], **kwargs), tensors[key])


@torch.no_grad()
def test_tiled_decode_matches_reference(vae, tensors):
    z = tensors["decode_tiled.z"]
    assert TilePlan.for_decode(32, 8).needed(z.shape[-2], z.shape[-1])
    assert_close(vae.decode(z, chunk_window=1, tile_size=32), tensors["decode_tiled.output"])


@pytest.mark.parametrize("name", ["encode_image", "encode_clip"])
@torch.no_grad()
def test_encode_matches_reference(vae, tensors, name):
    moments = vae.encode_moments(tensors[f"{name}.x"])
    assert_close(moments, tensors[f"{name}.moments"])
    assert_close(CausalVideoVAE.posterior_mean(moments), tensors[f"{name}.mean"])
    assert_close(CausalVideoVAE.posterior_std(moments), tensors[f"{name}.std"])


@torch.no_grad()
def test_chunked_encode_matches_reference(vae, tensors):
    assert_close(vae.encode_moments(tensors["encode_clip.x"], chunk_window=8), tensors["encode_clip_chunk_w8.moments"])


@torch.no_grad()
def test_tiled_encode_matches_reference(vae, tensors):
    assert_close(vae.encode_moments(tensors["encode_tiled.x"], tile_size=32), tensors["encode_tiled.moments"])


# ---------------------------------------------------------------- streaming
@torch.no_grad()
def test_streaming_one_frame_at_a_time_equals_full_decode(vae, tensors):
    z = tensors["decode.z"]
    full = vae.decode(z)
    stream = vae.stream_decoder()
    pieces = [stream.push(z[:, :, t : t + 1]) for t in range(z.shape[2])]
    assert [p.shape[2] for p in pieces] == [1] + [vae.config.temporal_factor] * (z.shape[2] - 1)
    assert stream.cache_bytes() > 0
    assert_close(torch.cat(pieces, dim=2), full)
    assert_close(torch.cat(pieces, dim=2), tensors["decode.full.output"])


@torch.no_grad()
def test_streaming_tiled_equals_reference_tiled_decode(vae, tensors):
    z = tensors["decode_tiled.z"]
    stream = vae.stream_decoder(tile_size=32)
    out = torch.cat([stream.push(z[:, :, t : t + 1]) for t in range(z.shape[2])], dim=2)
    assert_close(out, tensors["decode_tiled.output"])
    with pytest.raises(ValueError, match="latent size changed"):
        stream.push(z[:, :, :1, :4])


@torch.no_grad()
def test_tile_major_decode_gives_the_streamed_frames_and_holds_one_tiles_caches(vae, tensors):
    """`decode(chunk_window=1, tile_size=...)` runs tile by tile (one tile's causal caches alive at a time);
    the streamed decoder runs frame by frame over all tiles. Same arithmetic: the same frames, bit for bit,
    and a smaller peak of live tensors (counted on the meta device, as benchmarks/live_memory.py does)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from live_memory import LiveBytes

    z = tensors["decode_tiled.z"]
    stream = vae.stream_decoder(tile_size=32)
    streamed = torch.cat([stream.push(z[:, :, a:b]) for a, b in chunk_bounds(z.shape[2], 1)], dim=2)
    assert torch.equal(vae.decode(z, chunk_window=1, tile_size=32), streamed)

    meta_vae = CausalVideoVAE(vae.config).to("meta")
    zm = torch.zeros(1, vae.config.latent_channels, 4, 16, 16, device="meta")
    peaks = {}
    for order in ("tile_major", "time_major"):
        mode = LiveBytes()
        with mode:
            if order == "tile_major":
                meta_vae.decode(zm, chunk_window=1, tile_size=32)
            else:
                s = meta_vae.stream_decoder(tile_size=32)
                torch.cat([s.push(zm[:, :, t : t + 1]) for t in range(zm.shape[2])], dim=2)
        peaks[order] = mode.peak
    assert 0 < peaks["tile_major"] < peaks["time_major"], peaks


@torch.no_grad()
def test_streaming_uneven_pushes(vae, tensors):
    z = tensors["decode.z"]
    stream = vae.stream_decoder()
    out = torch.cat([stream.push(z[:, :, :2]), stream.push(z[:, :, 2:])], dim=2)
    assert stream.frames_out == 1 + 8 * (z.shape[2] - 1)
    assert_close(out, tensors["decode.full.output"])


# ---------------------------------------------------------------- posterior, dtypes, validation
def test_posterior_sample_clamps_logvar():
    mean = torch.tensor([0.5, -1.0]).reshape(1, 2, 1, 1, 1)
    logvar = torch.tensor([100.0, -100.0]).reshape(1, 2, 1, 1, 1)
    moments = torch.cat([mean, logvar], dim=1)
    eps = torch.tensor([1.0, 2.0]).reshape(1, 2, 1, 1, 1)
    sample = CausalVideoVAE.posterior_sample(moments, eps)
    expected = mean + torch.exp(0.5 * torch.tensor([20.0, -30.0])).reshape(1, 2, 1, 1, 1) * eps
    torch.testing.assert_close(sample, expected)
    torch.testing.assert_close(CausalVideoVAE.posterior_mean(moments), mean)
    with pytest.raises(ValueError, match="eps shape"):
        CausalVideoVAE.posterior_sample(moments, torch.zeros(1, 3, 1, 1, 1))


@torch.no_grad()
def test_bf16_decode_close_to_fp32(vae, tensors):
    z = tensors["decode.z"][:, :, :2]
    ref = vae.decode(z)
    bf = CausalVideoVAE(vae.config).to(torch.bfloat16).eval()
    bf.load_state_dict(vae.state_dict())
    out = bf.decode(z.to(torch.bfloat16), chunk_window=1)
    assert out.dtype == torch.bfloat16 and out.shape == ref.shape
    rel = float((out.float() - ref).norm() / ref.norm())
    assert rel < 0.05, rel


def test_encode_chunk_window_must_fit_temporal_factor(vae, tensors):
    with pytest.raises(ValueError, match="multiple of 8"):
        vae.encode_moments(tensors["encode_clip.x"], chunk_window=4)
    with pytest.raises(ValueError, match="1 \\+ 8k"):
        vae.encode_moments(tensors["encode_clip.x"][:, :, :12], chunk_window=8)


def test_config_rejects_unknown_keys_and_accepts_metadata(sidecar):
    cfg = dict(sidecar["config"], _diffusers_version="0.29.2", _name_or_path="x")
    assert VAEConfig.from_dict(cfg).encoder_block_out_channels == (4, 8, 16, 16)
    with pytest.raises(VAEConfigError, match="'encoder_magic'"):
        VAEConfig.from_dict(dict(cfg, encoder_magic=1))
    with pytest.raises(VAEConfigError, match="interpolate"):
        VAEConfig.from_dict(dict(cfg, interpolate=True))


def test_blend_edge_follows_reference_rule():
    gen = torch.Generator().manual_seed(0)
    prev = torch.randn(1, 2, 1, 7, 5, generator=gen)
    cur = torch.randn(1, 2, 1, 6, 5, generator=gen)
    n = 4
    expected = cur.clone()
    for y in range(n):
        expected[:, :, :, y] = prev[:, :, :, -n + y] * (1 - y / n) + cur[:, :, :, y] * (y / n)
    assert torch.equal(blend_edge(prev, cur, n, dim=-2), expected)
    # extent is limited by the smaller tile
    assert torch.equal(blend_edge(prev, cur[:, :, :, :2], n, dim=-2)[:, :, :, 0], prev[:, :, :, -2])


# ---------------------------------------------------------------- the generic parity runner
def test_runner_checks_every_stored_output(sidecar):
    results = vae_parity.run(FIXTURES, SIDECAR)
    bad = [r.line() for r in results if not r.ok]
    assert not bad, bad
    checked = {r.fixture.split(":", 1)[1] for r in results}
    stored_outputs = set(load_file(FIXTURES / "vae_forward.safetensors")) - {c["input"] for c in sidecar["calls"]}
    assert checked == stored_outputs


def test_detect():
    assert vae_parity.detect(json.loads((FIXTURES / SIDECAR).read_text()))
    for other in ("dit_pyramid_flux_forward.json", "e2e_pyramid_flux_t2v.json", "scheduler_384p.json"):
        assert not vae_parity.detect(json.loads((FIXTURES / other).read_text()))


def _rewritten_fixture(tmp_path: Path, calls: list[dict]) -> Path:
    for name in ("vae.weights.safetensors", "vae_forward.safetensors"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    side = json.loads((FIXTURES / SIDECAR).read_text())
    side["calls"] = calls
    (tmp_path / "vae_forward.json").write_text(json.dumps(side))
    return tmp_path


def test_runner_reads_call_arguments(tmp_path):
    calls = [
        # chunking is exact, so another window must still match the unchunked output
        {"key": "decode.full.output", "input": "decode.z",
         "call": "vae.decode(z, temporal_chunk=True, window_size=3).sample"},
        # only the mean requested, through an explicit assignment
        {"key": "encode_clip.*", "input": "encode_clip.x",
         "call": "d = vae.encode(x).latent_dist; mean = d.mean"},
        # a tile as large as the image means no tiling at all: must be detected as a mismatch
        {"key": "decode_tiled.output", "input": "decode_tiled.z",
         "call": "vae.enable_tiling(); vae.decode(z, temporal_chunk=True, window_size=1, tile_sample_min_size=64).sample"},
        {"key": "decode.chunk_w2.output", "input": "decode.z", "call": "vae.frobnicate(z)"},
    ]
    results = {r.fixture.split(":", 1)[1]: r for r in vae_parity.run(_rewritten_fixture(tmp_path, calls), SIDECAR)}
    assert results["decode.full.output"].ok
    assert results["encode_clip.mean"].ok and results["encode_clip.std"].ok and results["encode_clip.moments"].ok
    assert not results["decode_tiled.output"].ok and results["decode_tiled.output"].error is None
    assert results["decode_tiled.output"].max_abs > 1e-3
    errors = [r for r in results.values() if r.error]
    assert len(errors) == 1 and "encode from decode" in errors[0].error


# ---------------------------------------------------------------- loading a checkpoint folder
@pytest.mark.parametrize("weights_name", ["diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"])
@torch.no_grad()
def test_load_checkpoint_folder(tmp_path, sidecar, tensors, weights_name):
    from safetensors.torch import save_file

    from generation.models.vae import load_causal_vae

    (tmp_path / "config.json").write_text(json.dumps(dict(sidecar["config"], _diffusers_version="0.29.2")))
    state = load_file(FIXTURES / "vae.weights.safetensors")
    if weights_name.endswith(".safetensors"):
        save_file(state, tmp_path / weights_name)
    else:
        torch.save(state, tmp_path / weights_name)
    vae = load_causal_vae(tmp_path, dtype=torch.float32)
    assert not vae.training
    assert_close(vae.decode(tensors["decode.z"], chunk_window=2), tensors["decode.chunk_w2.output"])


def test_load_checkpoint_folder_missing_weights(tmp_path, sidecar):
    from generation.models.vae import load_causal_vae

    (tmp_path / "config.json").write_text(json.dumps(sidecar["config"]))
    with pytest.raises(FileNotFoundError, match="no VAE weights"):
        load_causal_vae(tmp_path)


def test_chunk_bounds_reference_rule():
    from generation.models.vae import chunk_bounds

    assert chunk_bounds(3, 1) == [(0, 2), (2, 3)]
    assert chunk_bounds(3, 2) == [(0, 3)]
    assert chunk_bounds(17, 8) == [(0, 9), (9, 17)]
    assert chunk_bounds(16, 2) == [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13), (13, 15), (15, 16)]
    with pytest.raises(ValueError):
        chunk_bounds(3, 0)
