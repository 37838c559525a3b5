"""Block noise: exact zero-sum blocks, unit variance, in-block covariance (1+g)I - g11^T, one vectorised draw."""

from __future__ import annotations

import pytest
import torch

from generation.sampling import block_noise as bn
from generation.sampling.noise import GeneratorNoise


def _blocks(n: torch.Tensor) -> torch.Tensor:
    """[..., H, W] → [num_blocks, 4] in (p, q) row-major order within each 2x2 block."""
    *lead, h, w = n.shape
    x = n.reshape(-1, h // 2, 2, w // 2, 2).permute(0, 1, 3, 2, 4)
    return x.reshape(-1, 4)


def test_shape_dtype_and_zero_sum_blocks() -> None:
    g = torch.Generator().manual_seed(0)
    n = bn.sample_block_noise((2, 16, 3, 8, 12), generator=g, dtype=torch.bfloat16)
    assert n.shape == (2, 16, 3, 8, 12) and n.dtype == torch.bfloat16
    n32 = bn.sample_block_noise((2, 16, 3, 8, 12), generator=torch.Generator().manual_seed(0))
    assert _blocks(n32).sum(-1).abs().max() < 1e-5
    with pytest.raises(ValueError):
        bn.sample_block_noise((1, 1, 1, 3, 4))


@pytest.mark.parametrize("gamma", [1 / 3, 0.2])
def test_in_block_covariance(gamma: float) -> None:
    g = torch.Generator().manual_seed(1234)
    n = bn.sample_block_noise((1, 16, 1, 256, 256), gamma=gamma, generator=g)  # 262,144 blocks
    b = _blocks(n).double()
    assert b.mean().abs() < 0.01
    cov = b.T @ b / b.shape[0]
    expected = (1 + gamma) * torch.eye(4, dtype=torch.float64) - gamma * torch.ones(4, 4, dtype=torch.float64)
    # standard error of each entry is ~0.003 here; 0.02 is generous yet catches a wrong gamma, layout or scale
    assert (cov - expected).abs().max() < 0.02
    assert torch.diagonal(cov).sub(1).abs().max() < 0.02  # unit variance per element
    if gamma == pytest.approx(1 / 3):
        assert b.sum(-1).abs().max() < 1e-4  # singular: exactly zero-sum


def test_neighbouring_blocks_are_independent() -> None:
    n = bn.sample_block_noise((1, 8, 1, 128, 128), generator=torch.Generator().manual_seed(5)).double()
    # element (0,1) of a block vs element (0,0) of the block to its right
    a = n[..., :, 1:-1:2]
    c = n[..., :, 2::2]
    corr = (a * c).mean() / (a.std() * c.std())
    assert corr.abs() < 0.02


def test_layout_matches_reference_rearrange() -> None:
    """'(b c t h2 w2) (p q) -> b c t (h2 p) (w2 q)': the 4 numbers of block (i, j) land at rows 2i..2i+1."""
    z = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 1, 1, 2, 3, 4)
    out = bn.block_noise_from_normal(z, gamma=1 / 3)
    mean = z.mean(-1, keepdim=True)
    vals = (4 / 3) ** 0.5 * (z - mean)
    assert out.shape == (1, 1, 1, 4, 6)
    assert torch.allclose(out[0, 0, 0, 2:4, 2:4].reshape(4), vals[0, 0, 0, 1, 1])


def test_single_vectorised_draw(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = torch.randn

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(bn.torch, "randn", counting)
    n = bn.sample_block_noise((1, 16, 1, 96, 160), generator=torch.Generator().manual_seed(0))
    assert len(calls) == 1  # one call for all 61,440 blocks (768p stage 2 size)
    assert n.shape == (1, 16, 1, 96, 160)


def test_seeded_and_on_requested_device() -> None:
    a = GeneratorNoise(7).block(0, 1, (1, 16, 1, 4, 8), gamma=1 / 3, device=torch.device("cpu"), dtype=torch.float32)
    b = GeneratorNoise(7).block(0, 1, (1, 16, 1, 4, 8), gamma=1 / 3, device=torch.device("cpu"), dtype=torch.float32)
    c = GeneratorNoise(8).block(0, 1, (1, 16, 1, 4, 8), gamma=1 / 3, device=torch.device("cpu"), dtype=torch.float32)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.device.type == "cpu"
