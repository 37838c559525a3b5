"""A broken or missing checkpoint stops the bot before it accepts work (issue "The first hour of a new user",
item 1): `generation.loading.validate_checkpoint` reads only configs and weight-file headers; `App.start`
refuses to start (`StartupError`), `xiaoai run` / `demo` / `config` say so in one line with exit code 2. A
generator that fails later (the worker keeps failing to build it) makes /视频 refuse uncharged, tells queued
users once and alerts the admins."""

from __future__ import annotations

import io
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from bot.app import App, StartupError
from bot.channels.local import LocalChannel
from bot.cli import main
from bot.executors.alerts import ALERT_PREFIX, PoolAlerts
from bot.executors.base import MSG_GENERATOR_DOWN, GeneratorWatch, PoolView
from bot.executors.local import LocalExecutor
from bot.executors.status import PoolStore, record_generator_build
from bot.serve import serve
from bot.store.db import open_db
from generation.loading import CheckpointError, validate_checkpoint
from generation.tiny import build_tiny_pipeline, save_checkpoint
from tests.chat_harness import ADMIN, ROOM, async_test, make_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ALICE = {"sender_id": "wxid_alice", "sender_name": "Alice", "chat_id": ROOM}
BOB = {"sender_id": "wxid_bob", "sender_name": "Bob", "chat_id": ROOM}


@pytest.fixture(scope="module")
def good_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    return save_checkpoint(build_tiny_pipeline("pyramid_flux", seed=3), tmp_path_factory.mktemp("good") / "ckpt")


def _copy(root: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(root, tmp_path / "ckpt"))


def _broken_settings(tmp_path: Path, checkpoint: Path, **sections: dict[str, Any]):
    worker = {"generator": "pyramid_flow", **sections.pop("worker", {})}
    return make_settings(tmp_path, worker=worker, generation={"checkpoint": str(checkpoint), "device": "cpu"},
                         **sections)


# ----------------------------------------------------------------------------------- the cheap check
def test_validate_checkpoint_reads_headers_and_names_path_file_and_key(good_ckpt: Path, tmp_path: Path) -> None:
    assert validate_checkpoint(good_ckpt, "384p") == "pyramid_flux"

    with pytest.raises(CheckpointError, match="checkpoint folder missing"):
        validate_checkpoint(tmp_path / "nowhere", "384p")
    with pytest.raises(CheckpointError, match="diffusion_transformer_768p"):
        validate_checkpoint(good_ckpt, "768p")  # the configured variant's folder is not there

    root = _copy(good_ckpt, tmp_path / "garbage")
    dit_file = root / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors"
    dit_file.write_bytes(b"this is not a safetensors file" * 4)
    with pytest.raises(CheckpointError, match="diffusion_pytorch_model.safetensors: cannot read safetensors"):
        validate_checkpoint(root, "384p")

    root = _copy(good_ckpt, tmp_path / "missing-key")
    vae_file = root / "causal_video_vae" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(vae_file))
    dropped = sorted(tensors)[0]
    save_file({k: v for k, v in tensors.items() if k != dropped}, str(vae_file))
    with pytest.raises(CheckpointError) as err:
        validate_checkpoint(root, "384p")
    assert str(vae_file) in str(err.value) and f"missing key {dropped!r}" in str(err.value)

    root = _copy(good_ckpt, tmp_path / "bad-config")
    (root / "text_encoder_2" / "config.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(CheckpointError, match=r"text_encoder_2/config.json: unreadable config"):
        validate_checkpoint(root, "384p")

    root = _copy(good_ckpt, tmp_path / "no-tokenizer")
    for f in (root / "tokenizer").iterdir():
        f.unlink()
    with pytest.raises(CheckpointError, match="tokenizer folder missing or empty"):
        validate_checkpoint(root, "384p")


def test_validate_checkpoint_finds_a_wrong_shape_without_reading_tensors(good_ckpt: Path, tmp_path: Path) -> None:
    root = _copy(good_ckpt, tmp_path)
    folder = root / "diffusion_transformer_384p"
    tensors = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    key = next(k for k, v in sorted(tensors.items()) if v.dim() == 2)
    tensors[key] = torch.zeros(tensors[key].shape[0] + 1, tensors[key].shape[1])
    save_file(tensors, str(folder / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError, match=f"shape mismatch for {key!r}"):
        validate_checkpoint(root, "384p")


# ----------------------------------------------------------------------------------- start-up refuses
@async_test
async def test_app_does_not_start_on_a_missing_checkpoint(tmp_path: Path) -> None:
    settings = _broken_settings(tmp_path, tmp_path / "no-such-folder")
    channel = LocalChannel()
    app = App(settings, channel, pipeline=None)
    with pytest.raises(StartupError) as err:
        await app.start()
    line = str(err.value)
    assert "\n" not in line and "generation.checkpoint" in line and "no-such-folder" in line
    assert "checkpoint folder missing" in line and "请修正路径" in line
    assert app.db is None and app.executor is None and not settings.storage.db_path.exists()
    with pytest.raises(RuntimeError):  # the channel never started: nothing was accepted
        await channel.say("/视频 一只猫", **ALICE)


@async_test
async def test_run_exits_2_with_one_line_before_any_channel_opens(tmp_path: Path, good_ckpt: Path) -> None:
    root = _copy(good_ckpt, tmp_path / "c")
    (root / "causal_video_vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    settings = _broken_settings(tmp_path, root, channels={"clawbot": {
        "enabled": True, "state_dir": str(tmp_path / "cb"), "base_url": "http://127.0.0.1:9"}})
    err = io.StringIO()
    code = await serve(settings, environ={}, err=err)
    out = err.getvalue().strip()
    assert code == 2 and len(out.splitlines()) == 1, out
    assert "checkpoint unusable" in out and "causal_video_vae" in out and "xiaoai login" not in out
    assert "Traceback" not in out


def _config(tmp_path: Path, checkpoint: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps({
        "worker": {"generator": "pyramid_flow"}, "generation": {"checkpoint": str(checkpoint)},
        "storage": {"db_path": str(tmp_path / "x.db")}}), encoding="utf-8")
    return path


def test_cli_config_and_demo_report_the_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _config(tmp_path, tmp_path / "missing-ckpt")
    assert main(["--config", str(cfg), "config"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == f"# 配置文件 / config file: {cfg.resolve()}"
    assert len(err.strip().splitlines()) == 1 and "missing-ckpt" in err and "checkpoint unusable" in err

    assert main(["--config", str(cfg), "demo", "--dir", str(tmp_path / "run"), "--timeout", "5"]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert lines[0].startswith("配置文件 / config file:") and "checkpoint unusable" in lines[-1]
    assert "Traceback" not in err and "demo OK" not in out

    assert main(["--config", str(cfg), "playground", "--port", "0", "--dir", str(tmp_path / "pg")]) == 2
    out, err = capsys.readouterr()
    assert "checkpoint unusable" in err.strip().splitlines()[-1] and "Traceback" not in err
    assert "playground:" not in out  # the page was never served


# ----------------------------------------------------------------------------------- later failures
def test_generator_health_rows_and_the_watch(tmp_path: Path) -> None:
    db = open_db(tmp_path / "h.db")
    store = PoolStore(db, time.time)
    watch = GeneratorWatch(failures=2, deaths=3, window_s=60)
    assert watch.down_reason(store.generator_health(), 0) == ""
    with pytest.raises(CheckpointError):
        record_generator_build(db, "w-1", lambda: (_ for _ in ()).throw(CheckpointError("config file missing: x")))
    assert store.generator_health().failures == 1 and watch.down_reason(store.generator_health(), 1) == ""
    with pytest.raises(CheckpointError):
        record_generator_build(db, "w-2", lambda: (_ for _ in ()).throw(CheckpointError("config file missing: x")))
    reason = watch.down_reason(store.generator_health(), 2)
    assert "连续 2 次加载失败" in reason and "config file missing: x" in reason

    class Gen:
        name = "synthetic"

    assert record_generator_build(db, "w-3", Gen) .name == "synthetic"
    health = store.generator_health()
    assert (health.state, health.failures, health.device) == ("ready", 0, "cpu")
    assert watch.down_reason(health, 3, "w-3") == ""  # back as soon as a build succeeds
    # later workers die before they build anything (the last good build was w-3's): three deaths
    assert watch.down_reason(health, 5, "w-5") == ""
    assert watch.down_reason(health, 6, "w-6").startswith("生成进程")
    assert watch.down_reason(store.generator_ready("w-6", "cuda:0"), 6, "w-6") == ""
    # a row from before the watch (an earlier run of the bot) is ignored
    later = GeneratorWatch(failures=1, now=lambda: time.time() + 3600)
    store.generator_failed("old", "boom")
    assert later.down_reason(store.generator_health(), 0) == ""


def failing_worker(settings: Any, worker_id: str, stop: Any) -> None:
    """A worker process main whose generator never builds (what the real worker records the same way)."""
    db = open_db(settings.storage.db_path)

    def build() -> Any:
        raise CheckpointError(f"{settings.generation.checkpoint}: cannot read safetensors file (header too large)")

    record_generator_build(db, worker_id, build)


def test_local_executor_reports_a_generator_that_never_loads(tmp_path: Path) -> None:
    settings = _broken_settings(tmp_path, tmp_path / "ckpt", worker={"restart_backoff_s": 0.05})
    executor = LocalExecutor(settings, target=failing_worker)
    executor.start()
    try:
        deadline = time.monotonic() + 60
        while not executor.view().down and time.monotonic() < deadline:
            time.sleep(0.2)
        view = executor.view()
        assert "加载失败" in view.down and "header too large" in view.down
        assert not view.available and executor.notice() == f"⚠️ {MSG_GENERATOR_DOWN}"
        assert view.actors[0].state == "dead" and "加载失败" in view.actors[0].error
    finally:
        executor.stop()


def dying_worker(settings: Any, worker_id: str, stop: Any) -> None:
    """A worker process that dies before it can record anything (the fallback: counted restarts)."""
    raise SystemExit(3)


def test_a_worker_that_keeps_dying_is_reported_down_too(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, worker={"restart_backoff_s": 0.05, "restart_backoff_max_s": 0.2})
    executor = LocalExecutor(settings, target=dying_worker)
    executor.start()
    try:
        deadline = time.monotonic() + 60
        while not executor.view().down and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "生成进程" in executor.view().down and executor.notice() == f"⚠️ {MSG_GENERATOR_DOWN}"
    finally:
        executor.stop()


class DownExecutor:
    """An executor whose generator is down (what LocalExecutor reports after repeated failed builds)."""

    kind = "local"

    def __init__(self, down: str = "生成模型连续 2 次加载失败：checkpoint folder missing: /models/x") -> None:
        self.down = down

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def view(self) -> PoolView:
        return PoolView(kind="local", cluster=None, down=self.down)

    def notice(self) -> str | None:
        return f"⚠️ {MSG_GENERATOR_DOWN}" if self.down else None


@async_test
async def test_video_is_refused_uncharged_while_the_generator_is_down(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    channel = LocalChannel()
    app = App(settings, channel, pipeline=None, run_worker=False)
    await app.start()
    try:
        assert app.dispatcher is not None and app.quota is not None and app.queue is not None
        app.dispatcher._ctx.executor = DownExecutor()  # noqa: SLF001 - the executor the plugins see
        for text in ("/视频 一只猫", "/视频", "/视频 -图 樱花"):
            await channel.say(text, **ALICE)
            reply = channel.texts()[-1]
            assert MSG_GENERATOR_DOWN in reply and "没有扣额度" in reply and "/视频" in reply, reply
        assert app.queue.jobs_of("wxid_alice") == []
        assert [r.kind for r in app.quota.history("wxid_alice")] in ([], ["grant"])
    finally:
        await app.stop()


@async_test
async def test_queued_users_are_told_once_and_admins_get_the_reason(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    channel = LocalChannel()
    app = App(settings, channel, pipeline=None, run_worker=False)
    await app.start()
    try:
        await channel.say("/视频 一只猫", **ALICE)
        await channel.say("/视频 一只狗", **ALICE)
        await channel.say("/视频 一只鸟", **BOB)
        before = len(channel.sent)
        down = DownExecutor()
        app.executor = down  # type: ignore[assignment]
        alerts = PoolAlerts(down, app._on_pool_alert)  # noqa: SLF001
        await alerts.check_once()
        sent = channel.sent[before:]
        to_admin = [s.text.text for s in sent if s.text and s.chat_id == ADMIN]
        assert len(to_admin) == 1 and to_admin[0].startswith(ALERT_PREFIX)
        assert "checkpoint folder missing" in to_admin[0] and "重启" in to_admin[0]
        to_room = [s.text for s in sent if s.text and s.chat_id == ROOM]
        assert len(to_room) == 2  # one note per user, listing all their queued jobs
        alice = next(t for t in to_room if t.mention_ids == ("wxid_alice",))
        assert alice.text.startswith("@Alice ") and "#1、#2" in alice.text and "/取消" in alice.text
        await alerts.check_once()  # unchanged: nothing more
        await app._on_pool_alert("again")  # noqa: SLF001 - even a repeated alert tells nobody twice
        assert [s for s in channel.sent[before:] if s.chat_id == ROOM and s.text] == [
            s for s in sent if s.chat_id == ROOM and s.text]
    finally:
        await app.stop()
