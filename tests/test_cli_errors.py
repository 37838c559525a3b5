"""The command line as a new user meets it, with real subprocesses: every error is one clear bilingual line
and a non-zero exit (never a Python traceback), Ctrl-C stops `playground`, `demo` and `run` cleanly (the
worker child included), and `--log-level` does what its help says."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from tests._web_support import REPO, fast_config

CLI = [sys.executable, "-m", "bot.cli"]
LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR) ", re.M)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XIAOAI")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def xiaoai(*args: str, timeout: float = 120, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)


def assert_one_clean_line(result: subprocess.CompletedProcess[str], *needles: str) -> str:
    """A refusal: non-zero exit, no traceback, the message on one line with both languages."""
    err = result.stderr
    assert result.returncode not in (0, None), (result.returncode, err)
    assert "Traceback" not in err and "Error:" not in err.replace("error:", ""), err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("配置文件 / config file")]
    line = next((line for line in lines if all(n in line for n in needles)), None)
    assert line is not None, f"no line with {needles} in:\n{err}"
    assert re.search(r"[\u4e00-\u9fff]", line) and re.search(r"[A-Za-z]{3}", line), line  # 中文 + English
    return line


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(fast_config(tmp_path), allow_unicode=True), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------ generate
def test_generate_with_a_bad_checkpoint_is_one_line(tmp_path: Path, config: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk"
    (junk / "diffusion_transformer_384p").mkdir(parents=True)
    (junk / "diffusion_transformer_384p" / "config.json").write_text("{not json", encoding="utf-8")
    (junk / "causal_video_vae").mkdir()
    (junk / "causal_video_vae" / "config.json").write_text("{}", encoding="utf-8")
    for checkpoint, needle in ((tmp_path / "missing", "checkpoint folder not found"),
                               (empty, "checkpoint folder is empty"),
                               (junk, "cannot load the model")):
        result = xiaoai("--config", str(config), "generate", "a cat", "--no-progress",
                        "--checkpoint", str(checkpoint), "--output", str(tmp_path / "out"))
        assert_one_clean_line(result, needle, str(checkpoint))


def test_generate_checks_device_and_output_before_generating(tmp_path: Path, config: Path) -> None:
    import torch

    start = time.monotonic()
    if not torch.cuda.is_available():
        result = xiaoai("--config", str(config), "generate", "a cat", "--no-progress", "--device", "cuda",
                        "--output", str(tmp_path / "out"))
        assert_one_clean_line(result, "CUDA", "--device cpu")
    result = xiaoai("--config", str(config), "generate", "a cat", "--no-progress", "--device", "tpu9",
                    "--output", str(tmp_path / "out"))
    assert_one_clean_line(result, "invalid device", "tpu9")
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    result = xiaoai("--config", str(config), "generate", "a cat", "--no-progress", "--output",
                    str(blocker / "video.mp4"))
    line = assert_one_clean_line(result, "cannot write to --output", str(blocker))
    assert "is a file" in line
    # refused up front: the model was never built, nothing was generated
    assert "tiny random-weight demo model" not in result.stderr and not result.stdout.strip()
    result = xiaoai("--config", str(config), "generate", "a cat", "--no-progress", "--image",
                    str(tmp_path / "nope.png"), "--output", str(tmp_path / "out"))
    assert_one_clean_line(result, "--image not found")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.mp4"))
    assert time.monotonic() - start < 90


# ------------------------------------------------------------------------------------------ config
def test_broken_config_files_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("quota:\n  daily: [1, 2\nbot: {}\n", encoding="utf-8")
    line = assert_one_clean_line(xiaoai("--config", str(broken), "config"), "not valid YAML", "line ")
    assert str(broken) in line
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(128, 256)))
    assert_one_clean_line(xiaoai("--config", str(binary), "config"), "cannot read the config file", "UTF-8")
    assert_one_clean_line(xiaoai("--config", str(tmp_path), "config"), "cannot read the config file")
    for command in ("demo", "playground", "generate"):  # every command that reads it says the same
        args = ["--synthetic"] if command != "generate" else ["a cat"]
        assert_one_clean_line(xiaoai("--config", str(broken), command, *args), "not valid YAML")


def test_bad_arguments_are_refused_without_a_traceback(tmp_path: Path, config: Path) -> None:
    result = xiaoai("--log-level", "LOUD", "config")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "DEBUG, INFO, WARNING, ERROR" in result.stderr
    result = xiaoai("--config", str(config), "playground", "--synthetic", "--port", "99999")
    assert result.returncode == 2 and "Traceback" not in result.stderr and "0-65535" in result.stderr
    blocker = tmp_path / "a-file"
    blocker.write_text("x", encoding="utf-8")
    for command in ("playground", "demo"):
        result = xiaoai("--config", str(config), command, "--synthetic", "--dir", str(blocker / "run"))
        assert_one_clean_line(result, "cannot create the data folder", str(blocker))


def test_playground_on_a_busy_port_says_so(tmp_path: Path, config: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = xiaoai("--config", str(config), "playground", "--synthetic", "--port", str(port),
                        "--dir", str(tmp_path / "run"))
    line = assert_one_clean_line(result, f"端口 {port} 已被占用", "--port")
    assert "in use" in line
    result = subprocess.run([*CLI, "--config", str(config), "playground", "--synthetic", "--port", "0",
                             "--dir", str(tmp_path / "run")], cwd=REPO, capture_output=True, text=True,
                            env=_env(XIAOAI_DASHBOARD_TOKEN="short"), timeout=60)
    assert_one_clean_line(result, "XIAOAI_DASHBOARD_TOKEN", "too short")


# ------------------------------------------------------------------------------------------ Ctrl-C
class Running:
    """A CLI process in its own process group (as a terminal runs it), read line by line."""

    def __init__(self, args: Sequence[str], tmp: Path, **env: str) -> None:
        self.err_path = tmp / "stderr.log"
        self.out_path = tmp / "stdout.log"
        with open(self.err_path, "w") as err, open(self.out_path, "w") as out:
            self.proc = subprocess.Popen([*CLI, *args], cwd=REPO, env=_env(**env), stdout=out, stderr=err,
                                         text=True, start_new_session=True)

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if re.search(pattern, self.stdout + self.stderr):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} not seen (rc={self.proc.poll()}):\n{self.stdout}\n{self.stderr}")

    def ctrl_c(self, timeout: float = 30) -> int:
        """SIGINT to the whole process group, like a terminal's Ctrl-C (the worker child gets it too)."""
        os.killpg(self.proc.pid, signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(f"did not stop after Ctrl-C:\n{self.stderr}") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def assert_clean_stop(run: Running, rc: int, allowed: tuple[int, ...] = (0, 130)) -> None:
    err = run.stderr
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert rc in allowed, (rc, err)


def test_ctrl_c_stops_the_playground_and_its_worker_cleanly(tmp_path: Path, config: Path) -> None:
    run = Running(["--config", str(config), "playground", "--synthetic", "--port", "0", "--dir",
                   str(tmp_path / "run")], tmp_path)
    try:
        run.wait_for(r"worker \S+ ready")
        assert_clean_stop(run, run.ctrl_c(), allowed=(0,))
        assert "app stopped" in run.stderr
    finally:
        run.close()


def test_ctrl_c_stops_the_demo_cleanly(tmp_path: Path, config: Path) -> None:
    run = Running(["--config", str(config), "demo", "--dir", str(tmp_path / "run")], tmp_path)
    try:
        run.wait_for(r"worker \S+ ready")
        rc = run.ctrl_c()
        assert_clean_stop(run, rc)
        assert "已停止 / stopped" in run.stderr or rc == 0
    finally:
        run.close()


def test_ctrl_c_stops_xiaoai_run_cleanly(tmp_path: Path) -> None:
    from tests.fakes.clawbot_fake import ClawbotFake
    from tests.fault_harness import _config
    from tests.fault_harness import _env as run_env

    async def scenario() -> None:
        async with ClawbotFake(hold_s=0.3) as fake:
            fake.write_credentials(tmp_path / "clawbot")
            env = {k: v for k, v in run_env(fake, tmp_path).items() if k.startswith("XIAOAI__")}
            run = Running(["--config", str(_config(tmp_path)), "run"], tmp_path, **env)
            try:
                deadline = time.monotonic() + 60
                while fake.calls["getupdates"] < 2 or not re.search(r"worker \S+ ready", run.stderr):
                    assert time.monotonic() < deadline and run.proc.poll() is None, run.stderr
                    await asyncio.sleep(0.1)
                rc = await asyncio.to_thread(run.ctrl_c)
                assert_clean_stop(run, rc)
            finally:
                run.close()

    asyncio.run(scenario())


# ------------------------------------------------------------------------------------------ --log-level
def test_log_level_is_obeyed_by_the_bot_and_its_worker(tmp_path: Path, config: Path) -> None:
    quiet = xiaoai("--config", str(config), "--log-level", "WARNING", "demo", "--synthetic", "--dir",
                   str(tmp_path / "quiet"))
    assert quiet.returncode == 0 and "demo OK" in quiet.stdout, quiet.stderr
    levels = set(LOG_LINE.findall(quiet.stderr))
    assert levels <= {"WARNING", "ERROR"}, quiet.stderr
    # the banner says which translator Chinese prompts go through (fast_config: translator none)
    assert re.search(r"^翻译 / translator: 关闭", quiet.stdout, re.M), quiet.stdout
    default = xiaoai("--config", str(config), "demo", "--synthetic", "--dir", str(tmp_path / "default"))
    assert default.returncode == 0, default.stderr
    assert re.search(r" INFO bot\.worker\[worker \d+\]: worker \S+ ready", default.stderr), default.stderr
    assert re.search(r" INFO bot\.prompts: 翻译 / translator: 关闭", default.stderr), default.stderr  # and the log
    # the help says what the default is
    help_text = xiaoai("--help").stdout
    assert "default: INFO for run/demo/playground, else WARNING" in " ".join(help_text.split())
    # the playground too (the web server's and the worker's lines included)
    run = Running(["--config", str(config), "--log-level", "WARNING", "playground", "--synthetic", "--port", "0",
                   "--dir", str(tmp_path / "run")], tmp_path)
    try:
        run.wait_for(r"playground: http://")
        time.sleep(1.5)  # the worker child starts and would log "ready" at INFO
        assert_clean_stop(run, run.ctrl_c(), allowed=(0,))
        assert set(LOG_LINE.findall(run.stderr)) <= {"WARNING", "ERROR"}, run.stderr
        assert re.search(r"^翻译 / translator: ", run.stdout, re.M), run.stdout
    finally:
        run.close()
