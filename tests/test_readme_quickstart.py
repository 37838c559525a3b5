"""README structure: `## Quickstart` holds exactly two fenced bash blocks (demo, then tests), and
`.ci/run` runs the second block's test command (it extracts and executes that block)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def quickstart_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    m = re.search(r"^## Quickstart\s*$(.*?)(?=^## |\Z)", text, re.S | re.M)
    assert m, "README.md needs a '## Quickstart' section"
    openers: list[str] = []
    inside = False
    for line in m.group(1).splitlines():
        if line.startswith("```"):
            if not inside:
                openers.append(line[3:].strip())
            inside = not inside
    assert not inside, "unclosed code fence in Quickstart"
    assert openers == ["bash", "bash"], f"Quickstart must hold exactly two bash blocks, found {openers}"
    return re.findall(r"^```bash\n(.*?)^```", m.group(1), re.S | re.M)


def commands(block: str) -> list[str]:
    return [line.strip() for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_first_block_sets_up_and_runs_the_demo() -> None:
    demo = commands(quickstart_blocks()[0])
    assert demo[0].startswith("python3.11 -m venv")
    assert any(c.startswith(". ") or c.startswith("source ") for c in demo)
    assert "pip install torch==2.13.0" in demo
    assert "pip install -e ." in demo
    assert demo[-1] == "xiaoai demo"
    assert demo.index("pip install torch==2.13.0") < demo.index("pip install -e .")


CPU_TORCH = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"


def test_torch_line_says_what_it_really_installs() -> None:
    """Plain `pip install torch==2.13.0` is the CUDA build on an ordinary PC: the README says so and gives the
    CPU-only command (the blocks keep the plain line: CI's pip has a local index, see .ci/run)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Quickstart\s*$(.*?)(?=^## |\Z)", text, re.S | re.M).group(1)
    assert "this line installs the CPU build" not in section and "这里安装 CPU 版" not in section
    assert "CUDA build" in section and "带 CUDA" in section
    for block in quickstart_blocks():  # each block's own comment says it, next to the line
        assert "https://download.pytorch.org/whl/cpu" in block and "CUDA" in block
    assert CPU_TORCH in section


def test_second_block_sets_up_and_runs_the_tests() -> None:
    tests = commands(quickstart_blocks()[1])
    venv = next(i for i, c in enumerate(tests) if c.startswith("python3.11 -m venv"))
    assert "pip install torch==2.13.0" in tests
    assert any(re.fullmatch(r'pip install -e "?\.\[dev\]"?', c) for c in tests)
    assert tests[-1] == "python -m pytest -q"
    # the browser tests' chromium and CJK fonts are installed by the block itself, before anything else
    install = " ".join(tests[:venv])
    assert "apt-get install -y chromium fonts-noto-cjk" in install
    assert "command -v sudo" in install  # works as root (no sudo there) and as a user


def _install_step() -> str:
    """The block's lines before the venv: the system packages the tests need."""
    block = quickstart_blocks()[1]
    return block[: block.index("python3.11 -m venv")]


@pytest.mark.parametrize("case", ["root", "user", "present", "ubuntu"])
def test_install_step_runs_on_a_fresh_machine(tmp_path: Path, case: str) -> None:
    """The step under `bash -euo pipefail`, as .ci/run runs it, with apt-get/sudo replaced by recorders."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls.log"

    def tool(name: str, body: str) -> None:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n", encoding="utf-8")
        path.chmod(0o755)

    fail_chromium = 'case "$*" in *" chromium "*) exit 100;; esac' if case == "ubuntu" else ""
    tool("apt-get", f'echo "apt-get $*" >> {log}\n{fail_chromium}')
    tool("env", 'while [ "${1#*=}" != "$1" ]; do export "$1"; shift; done\nexec "$@"')
    if case == "user":
        tool("sudo", f'echo "sudo $1" >> {log}\nexec "$@"')
    if case == "present":
        tool("chromium", "exit 0")
    result = subprocess.run(["/bin/bash", "-euo", "pipefail", "-c", _install_step()], capture_output=True,
                            text=True, env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, timeout=30)
    assert result.returncode == 0, result.stderr
    calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
    if case == "present":
        assert calls == []
        return
    installs = [c for c in calls if c.startswith("apt-get install")]
    assert "apt-get update" in calls and installs[0] == "apt-get install -y chromium fonts-noto-cjk"
    if case == "ubuntu":
        assert installs[1] == "apt-get install -y chromium-browser fonts-noto-cjk"
    assert any(c.startswith("sudo") for c in calls) == (case == "user")


def test_license_is_declared() -> None:
    license_text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert license_text.startswith("MIT License") and "Copyright (c) 2026 小爱视频 contributors" in license_text
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert project["license"] == "MIT"
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "Apache-2.0" in readme and "[LICENSE](LICENSE)" in readme


def test_ci_runs_the_second_block() -> None:
    script = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert script.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in script
    # the script extracts the block it runs; check it picks exactly our second block
    extractor = re.search(r"python3 - <<'PY'\n(.*?)\nPY\n", script, re.S)
    assert extractor, ".ci/run must extract the block from README.md"
    out = subprocess.run(
        ["python3", "-c", extractor.group(1)], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    assert out == quickstart_blocks()[1]
    assert 'bash -euo pipefail -c "$block"' in script
    assert "apt-get" not in script  # the block installs chromium itself: nothing CI-only beside it
    assert (REPO / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"


def test_console_script_is_declared() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'xiaoai = "bot.cli:main"' in pyproject
    assert re.search(r"dev = \[.*pytest", pyproject)
