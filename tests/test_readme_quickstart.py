"""README structure: `## Quickstart` holds exactly two fenced bash blocks (demo, then tests), and
`.ci/run` runs the second block's test command (it extracts and executes that block)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

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


def test_second_block_sets_up_and_runs_the_tests() -> None:
    tests = commands(quickstart_blocks()[1])
    assert tests[0].startswith("python3.11 -m venv")
    assert "pip install torch==2.13.0" in tests
    assert any(re.fullmatch(r'pip install -e "?\.\[dev\]"?', c) for c in tests)
    assert tests[-1] == "python -m pytest -q"


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
    assert (REPO / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"


def test_console_script_is_declared() -> None:
    pyproject = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert 'xiaoai = "bot.cli:main"' in pyproject
    assert re.search(r"dev = \[.*pytest", pyproject)
