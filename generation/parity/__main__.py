"""`python -m generation.parity DIR`: run every parity fixture in DIR and print one line per check.

Each `*.json` sidecar is dispatched by its content (DiT forward, VAE, scheduler, end-to-end, weights
manifest). Exit status 0 only when every check passed and every sidecar was recognised and run.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import sys
import time
from pathlib import Path

from generation.logs import setup_logging
from generation.parity.common import CheckResult, error_result

# (label, module) in dispatch order; each module has detect(sidecar: dict) -> bool and
# run(fixture_dir: Path, sidecar_name: str) -> list[CheckResult]
RUNNERS = (
    ("dit", "generation.parity.dit"),
    ("vae", "generation.parity.vae"),
    ("scheduler", "generation.parity.scheduler"),
    ("e2e", "generation.parity.e2e"),
)


def is_weights_manifest(sidecar: dict) -> bool:
    files = sidecar.get("files")
    return isinstance(files, dict) and all(isinstance(v, dict) and "sha256" in v for v in files.values()) and bool(files)


def check_weights_manifest(fixture_dir: Path, name: str, sidecar: dict) -> list[CheckResult]:
    """The weights files a manifest lists exist and hash to the recorded sha256."""
    out = []
    for fname, info in sidecar["files"].items():
        label = f"{name}:{fname}:sha256"
        path = fixture_dir / fname
        if not path.is_file():
            out.append(CheckResult(label, float("nan"), float("nan"), 0, 0, error="file missing"))
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        ok = digest == info["sha256"]
        out.append(CheckResult(label, 0.0 if ok else 1.0, 0.0, 0.0, 0.0,
                               error=None if ok else f"sha256 {digest[:16]}… != recorded {info['sha256'][:16]}…"))
    return out


def run_sidecar(fixture_dir: Path, name: str) -> list[CheckResult]:
    try:
        sidecar = json.loads((fixture_dir / name).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        return [error_result(name, exc)]
    if not isinstance(sidecar, dict):
        return [CheckResult(name, float("nan"), float("nan"), 0, 0, error="sidecar is not a JSON object")]
    if is_weights_manifest(sidecar):
        return check_weights_manifest(fixture_dir, name, sidecar)
    unavailable: list[str] = []
    for label, module_name in RUNNERS:
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:  # noqa: BLE001 - a missing runner must not hide other sidecars
            unavailable.append(f"{label} ({type(exc).__name__}: {exc})")
            continue
        try:
            recognised = bool(module.detect(sidecar))
        except Exception:  # noqa: BLE001 - a detector failing means "not mine"
            recognised = False
        if recognised:
            try:
                results = list(module.run(fixture_dir, name))
            except Exception as exc:  # noqa: BLE001 - reported as a failed check
                return [error_result(f"{name} ({label})", exc)]
            if not results:
                return [CheckResult(name, float("nan"), float("nan"), 0, 0, error=f"{label} runner produced no checks")]
            return results
    extra = f"; runners that could not be imported: {', '.join(unavailable)}" if unavailable else ""
    return [CheckResult(name, float("nan"), float("nan"), 0, 0, error="sidecar not recognised by any runner" + extra)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generation.parity", description="Run parity fixtures.")
    ap.add_argument("fixture_dir", type=Path)
    ap.add_argument("-k", dest="only", default=None, help="only sidecars whose file name contains this text")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    setup_logging("INFO" if args.verbose else "WARNING")
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    fixture_dir: Path = args.fixture_dir
    if not fixture_dir.is_dir():
        print(f"FAIL {fixture_dir}: not a directory")
        return 2
    names = sorted(p.name for p in fixture_dir.glob("*.json"))
    if args.only:
        names = [n for n in names if args.only in n]
    if not names:
        print(f"FAIL {fixture_dir}: no *.json sidecars found")
        return 2
    failed = 0
    total = 0
    t0 = time.perf_counter()
    for name in names:
        for r in run_sidecar(fixture_dir, name):
            total += 1
            failed += 0 if r.ok else 1
            print(r.line(), flush=True)
    print(f"{total - failed}/{total} checks passed in {time.perf_counter() - t0:.1f}s"
          + ("" if failed == 0 else f"; {failed} FAILED"))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
