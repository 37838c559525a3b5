"""`python -m generation.parity DIR`: exit 0 on the shared fixtures, non-zero on a corrupted copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "pyramid_flow"


def _run(folder: Path, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "generation.parity", str(folder), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)


def test_shared_fixtures_pass() -> None:
    proc = _run(FIXTURES)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("OK", "FAIL"))]
    assert lines and all(ln.startswith("OK") for ln in lines)
    # every sidecar produced at least one check line
    for sidecar in FIXTURES.glob("*.json"):
        assert any(f" {sidecar.name}:" in ln for ln in lines), sidecar.name
    assert "checks passed" in proc.stdout


def _copy_subset(dst: Path) -> None:
    """weights + the scheduler sidecar + one e2e fixture (keeps the test short)."""
    names = ["weights.json", "scheduler_384p.json", "e2e_pyramid_flux_t2v.json", "e2e_pyramid_flux_t2v.safetensors"]
    names += list(json.loads((FIXTURES / "weights.json").read_text())["files"])
    for n in names:
        shutil.copy(FIXTURES / n, dst / n)


def test_perturbed_tensor_fails(tmp_path: Path) -> None:
    _copy_subset(tmp_path)
    path = tmp_path / "e2e_pyramid_flux_t2v.safetensors"
    tensors = load_file(str(path))
    t = tensors["unit1.stage1.latents"].clone()
    t.view(-1)[7] += 0.05
    tensors["unit1.stage1.latents"] = t
    save_file(tensors, str(path))
    proc = _run(tmp_path)
    assert proc.returncode != 0
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(failed) == 1 and "unit1.stage1.latents" in failed[0], proc.stdout
    assert "scheduler_384p.json" in proc.stdout  # the other sidecars still ran


def test_perturbed_noise_fails_downstream(tmp_path: Path) -> None:
    _copy_subset(tmp_path)
    path = tmp_path / "e2e_pyramid_flux_t2v.safetensors"
    tensors = load_file(str(path))
    tensors["noise.block.unit2.stage2"] = tensors["noise.block.unit2.stage2"] * 1.1
    save_file(tensors, str(path))
    proc = _run(tmp_path, "-k", "e2e")
    assert proc.returncode != 0
    failed = [ln for ln in proc.stdout.splitlines() if ln.startswith("FAIL")]
    assert any("unit2.stage2.latents" in ln for ln in failed)
    assert not any("unit1." in ln for ln in failed)  # earlier units unaffected


def test_unrecognised_sidecar_and_bad_weights_fail(tmp_path: Path) -> None:
    _copy_subset(tmp_path)
    (tmp_path / "mystery.json").write_text(json.dumps({"fixture": "something else"}), encoding="utf-8")
    proc = _run(tmp_path, "-k", "mystery")
    assert proc.returncode != 0 and "not recognised" in proc.stdout
    weights = tmp_path / "vae.weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF
    weights.write_bytes(bytes(data))
    proc = _run(tmp_path, "-k", "weights")
    assert proc.returncode != 0 and "sha256" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(empty).returncode != 0
