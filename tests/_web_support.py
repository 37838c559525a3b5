"""Helpers of the playground tests: fast settings, the real `xiaoai playground` as a subprocess, and the
Debian chromium for Playwright (no browser download; a missing browser FAILS the tests, never skips)."""

from __future__ import annotations

import io
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
# $XIAOAI_CHROMIUM, else Debian's chromium, else Ubuntu's chromium-browser (what README's Quickstart installs)
CHROMIUM = os.environ.get("XIAOAI_CHROMIUM") or next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
TOKEN = "test-dashboard-token-1234"
ADMIN_ID = "wxid_play_admin"
USERS = [
    {"id": "wxid_play_xiaoming", "name": "小明", "admin": False},
    {"id": "wxid_play_xiaohong", "name": "小红", "admin": False},
    {"id": "wxid_play_xiaogang", "name": "小刚", "admin": False},
    {"id": "wxid_play_xiaomei", "name": "小美", "admin": False},
    {"id": ADMIN_ID, "name": "管理员", "admin": True},
]


def fast_config(tmp: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """A config.yaml mapping for a quick run: the synthetic generator, short polls, no translator."""
    data: dict[str, Any] = {
        "bot": {"data_dir": str(tmp / "data"), "flood_user_max": 50},
        "storage": {"db_path": str(tmp / "xiaoai.db")},
        "worker": {"generator": "synthetic", "output_dir": str(tmp / "videos"), "poll_s": 0.05,
                   "synthetic_steps": 4, "synthetic_step_delay_s": 0.05, "synthetic_width": 160,
                   "synthetic_height": 96},
        "queue": {"delivery_poll_s": 0.1, "delivery_backoff_s": 0.1},
        "prompts": {"translator": "none"},
        "playground": {"users": USERS},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return data


def beach_png(size: tuple[int, int] = (320, 192)) -> bytes:
    img = Image.new("RGB", size, (135, 190, 235))
    draw = ImageDraw.Draw(img)
    w, h = size
    draw.rectangle((0, h // 2, w, h * 3 // 4), fill=(30, 90, 160))
    draw.rectangle((0, h * 3 // 4, w, h), fill=(230, 205, 150))
    draw.ellipse((w * 3 // 4, h // 12, w * 3 // 4 + 44, h // 12 + 44), fill=(255, 220, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Playground:
    base: str
    token: str
    run_dir: Path
    process: subprocess.Popen[str]
    stdout_lines: list[str]
    stderr_path: Path

    def stderr_tail(self, chars: int = 4000) -> str:
        try:
            return self.stderr_path.read_text(encoding="utf-8", errors="replace")[-chars:]
        except OSError:
            return ""


@contextmanager
def playground_process(tmp: Path, *, token: str = TOKEN, **sections: dict[str, Any]) -> Iterator[Playground]:
    """`python -m bot.cli playground --synthetic --port 0` with a fast config; yields once it serves."""
    config = tmp / "config.yaml"
    config.write_text(yaml.safe_dump(fast_config(tmp, **sections), allow_unicode=True), encoding="utf-8")
    stderr_path = tmp / "playground.stderr.log"
    env = {**os.environ, "XIAOAI_DASHBOARD_TOKEN": token, "PYTHONUNBUFFERED": "1"}
    env.pop("XIAOAI_CONFIG", None)
    with open(stderr_path, "w", encoding="utf-8") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot.cli", "--config", str(config), "--log-level", "INFO", "playground",
             "--synthetic", "--port", "0", "--dir", str(tmp / "run")],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, text=True, encoding="utf-8",
        )
    lines: list[str] = []
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            match = re.search(r"playground: (http://\S+?)/?$", line.strip())
            if match:
                found.put(match.group(1))

    threading.Thread(target=read, daemon=True).start()
    pg = Playground("", token, tmp / "run", process, lines, stderr_path)
    try:
        try:
            pg.base = found.get(timeout=60)
        except queue.Empty:
            raise AssertionError(
                f"xiaoai playground did not start (rc={process.poll()}):\n{chr(10).join(lines)}\n{pg.stderr_tail()}"
            ) from None
        _wait_healthy(pg)
        yield pg
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_healthy(pg: Playground, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{pg.base}/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"playground at {pg.base} is not healthy:\n{pg.stderr_tail()}")


def require_chromium() -> str:
    """The Debian chromium binary; FAIL (not skip) with the fix when it is missing."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"chromium not found at {CHROMIUM}: the browser tests need Debian's chromium "
            "(`apt-get install -y chromium fonts-noto-cjk`, as README's Quickstart does; or set XIAOAI_CHROMIUM). "
            "Do not run `playwright install`.",
            pytrace=False,
        )
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as err:
        pytest.fail(f"playwright is not installed ({err}): pip install -e '.[dev]'", pytrace=False)
    return CHROMIUM
