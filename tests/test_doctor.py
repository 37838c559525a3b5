"""`xiaoai doctor`: one ✅/⚠️/❌ line per check, exit 1 on any ❌. Every endpoint here is on 127.0.0.1;
nothing touches another host."""

from __future__ import annotations

import json
import socket
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot import doctor
from bot.cli import main as cli_main
from bot.settings import Settings, settings_from_mapping

GiB = 2**30


def _settings(tmp_path: Path, **sections: Any) -> Settings:
    data: dict[str, Any] = {
        "storage": {"db_path": str(tmp_path / "var" / "xiaoai.db")},
        "worker": {"output_dir": str(tmp_path / "var" / "outputs")},
        "bot": {"data_dir": str(tmp_path / "var" / "data")},
        "prompts": {"marian": {"model_dir": str(tmp_path / "no-marian")}},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return settings_from_mapping(data)


@pytest.fixture
def listening_port() -> Iterator[int]:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        yield srv.getsockname()[1]


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from generation.tiny import build_tiny_pipeline, save_checkpoint

    return save_checkpoint(build_tiny_pipeline("pyramid_flux", seed=1), tmp_path_factory.mktemp("ckpt") / "flux")


def _statuses(checks: list[doctor.Check]) -> list[str]:
    return [c.status for c in checks]


# ---------------------------------------------------------------------------------------- lines
def test_line_format_has_icon_name_detail_and_fix() -> None:
    assert doctor.ok("Python", "3.11.7").line() == "✅ Python: 3.11.7"
    line = doctor.fail("x", "broken", "do y").line()
    assert line.startswith("❌ x: broken") and line.endswith("→ do y")
    assert doctor.warn("x", "meh").line() == "⚠️ x: meh"


def test_python_version() -> None:
    assert doctor.check_python((3, 11, 7)).status == "ok"
    old = doctor.check_python((3, 10, 12))
    assert old.status == "fail" and "3.10.12" in old.detail and "3.11" in old.fix


# ----------------------------------------------------------------------------------- checkpoint
def test_missing_checkpoint_fails_naming_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "models" / "pyramid-flow-miniflux"
    check = doctor.check_checkpoint(_settings(tmp_path, generation={"checkpoint": str(missing)}))
    assert check.status == "fail"
    assert str(missing) in check.line() and check.line().startswith("❌")


def test_truncated_checkpoint_fails_naming_the_file(tmp_path: Path, tiny_checkpoint: Path) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    weights = broken / "causal_video_vae" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    check = doctor.check_checkpoint(_settings(tmp_path, generation={"checkpoint": str(broken)}))
    assert check.status == "fail" and "causal_video_vae" in check.detail


def test_valid_checkpoint_passes(tmp_path: Path, tiny_checkpoint: Path) -> None:
    check = doctor.check_checkpoint(_settings(tmp_path, generation={"checkpoint": str(tiny_checkpoint)}))
    assert check.status == "ok" and str(tiny_checkpoint) in check.detail and "pyramid_flux" in check.detail


def test_no_checkpoint_or_synthetic_is_a_warning(tmp_path: Path) -> None:
    assert doctor.check_checkpoint(_settings(tmp_path)).status == "warn"
    assert doctor.check_checkpoint(_settings(tmp_path, worker={"generator": "synthetic"})).status == "warn"


# --------------------------------------------------------------------------------- GPU and plan
def test_gpu_plan_for_the_configured_checkpoint(tmp_path: Path, tiny_checkpoint: Path) -> None:
    settings = _settings(tmp_path, generation={"checkpoint": str(tiny_checkpoint)})
    big = doctor.check_torch_gpu(settings, lambda: doctor.GpuInfo("Fake H100", free=78 * GiB, total=80 * GiB))
    assert _statuses(big) == ["ok"]
    assert "Fake H100" in big[0].detail and "memory plan" in big[0].detail and ": gpu" in big[0].detail
    small = doctor.check_torch_gpu(settings, lambda: doctor.GpuInfo("Fake 2 GB", free=2 * GiB, total=2 * GiB))
    assert "sequential_offload" in small[0].detail and "Fake 2 GB" in small[0].detail
    capped = _settings(tmp_path, generation={"checkpoint": str(tiny_checkpoint), "memory_cap_gib": 8})
    plan = doctor.check_torch_gpu(capped, lambda: doctor.GpuInfo("Fake H100", free=78 * GiB, total=80 * GiB))
    assert "of 7.5 GiB" in plan[0].detail  # the cap minus the planner's reserve, not the free memory


def test_real_checkpoint_without_a_gpu_fails(tmp_path: Path, tiny_checkpoint: Path) -> None:
    settings = _settings(tmp_path, generation={"checkpoint": str(tiny_checkpoint)})
    (check,) = doctor.check_torch_gpu(settings, lambda: None)
    assert check.status == "fail" and "GPU" in check.detail
    (demo,) = doctor.check_torch_gpu(_settings(tmp_path), lambda: None)
    assert demo.status == "warn"

    def broken() -> doctor.GpuInfo:
        raise RuntimeError("CUDA driver version is insufficient")

    (drv,) = doctor.check_torch_gpu(settings, broken)
    assert drv.status == "fail" and "insufficient" in drv.detail and "nvidia-smi" in drv.fix


def test_ffmpeg_is_found() -> None:
    check = doctor.check_ffmpeg()
    assert check.status == "ok" and "ffmpeg version" in check.detail


# ----------------------------------------------------------------------------------- translator
def test_marian_folder(tmp_path: Path) -> None:
    from bot.prompts.devtools import build_tiny_marian

    (missing,) = doctor.check_translator(_settings(tmp_path), {})
    assert missing.status == "warn" and "no-marian" in missing.detail and "opus-mt-zh-en" in missing.fix
    folder = build_tiny_marian(tmp_path / "marian")
    (present,) = doctor.check_translator(_settings(tmp_path, prompts={"marian": {"model_dir": str(folder)}}), {})
    assert present.status == "ok" and str(folder) in present.detail


def test_openai_translator_key(tmp_path: Path) -> None:
    settings = _settings(tmp_path, prompts={"translator": "openai", "fallback": [],
                                            "openai": {"base_url": "https://api.example.invalid/v1"}})  # fmt: skip
    (nokey,) = doctor.check_translator(settings, {})
    assert nokey.status == "warn" and "XIAOAI_TRANSLATE_API_KEY" in nokey.detail
    (key,) = doctor.check_translator(settings, {"XIAOAI_TRANSLATE_API_KEY": "sk-x"})
    assert key.status == "ok" and "sk-x" not in key.line()


# ---------------------------------------------------------------------------------------- fonts
def test_label_font(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert doctor.check_fonts(settings, lambda: None).status == "fail"
    assert "fonts-noto-cjk" in doctor.check_fonts(settings, lambda: None).fix
    assert doctor.check_fonts(settings, lambda: "/fonts/x.ttc").status == "ok"
    found = doctor.find_cjk_font(lambda cmd: "/usr/share/fonts/noto/NotoSansCJK-Regular.ttc: \n", paths=())
    assert found == "/usr/share/fonts/noto/NotoSansCJK-Regular.ttc"
    assert doctor.find_cjk_font(lambda cmd: "", paths=()) is None
    missing = _settings(tmp_path, labels={"font_path": str(tmp_path / "nope.ttc")})
    check = doctor.check_fonts(missing)  # the label module's own lookup
    assert check.status == "fail" and "nope.ttc" in check.detail
    off = doctor.check_fonts(_settings(tmp_path, labels={"visible": False}))
    assert off.status == "warn" and "labels.visible" in off.detail


# ------------------------------------------------------------------------------------- channels
def test_no_channel_enabled_fails(tmp_path: Path) -> None:
    checks = doctor.check_channels(_settings(tmp_path), {}, network=False)
    assert _statuses(checks) == ["fail"] and "none is enabled" in checks[0].detail


def test_clawbot_needs_the_login_and_its_api(tmp_path: Path, listening_port: int) -> None:
    state = tmp_path / "clawbot"
    settings = _settings(tmp_path, channels={"clawbot": {"enabled": True, "state_dir": str(state),
                                                          "base_url": f"http://127.0.0.1:{listening_port}"}})
    creds, reach = doctor.check_channels(settings, {}, timeout_s=1.0)
    assert creds.status == "fail" and "xiaoai login clawbot" in creds.fix and "credentials.json" in creds.detail
    assert reach.status == "ok" and f"127.0.0.1:{listening_port}" in reach.detail
    state.mkdir()
    path = state / "credentials.json"
    path.write_text(json.dumps({"bot_token": "secret-token", "baseurl": ""}), encoding="utf-8")
    path.chmod(0o600)
    creds, reach = doctor.check_channels(settings, {}, timeout_s=1.0)
    assert creds.status == "ok" and reach.status == "ok"
    assert "secret-token" not in creds.line() + reach.line()
    path.chmod(0o644)
    creds, _ = doctor.check_channels(settings, {}, timeout_s=1.0)
    assert creds.status == "warn" and "chmod 600" in creds.fix


def test_wecom_secret_and_an_unreachable_host(tmp_path: Path, closed_port: int) -> None:
    settings = _settings(tmp_path, channels={"wecom": {"enabled": True, "bot_id": "aib1",
                                                        "ws_url": f"ws://127.0.0.1:{closed_port}"}})
    creds, reach = doctor.check_channels(settings, {}, timeout_s=1.0)
    assert creds.status == "fail" and "XIAOAI_WECOM_SECRET" in creds.detail
    assert reach.status == "fail" and f"127.0.0.1:{closed_port}" in reach.detail
    creds, _ = doctor.check_channels(settings, {"XIAOAI_WECOM_SECRET": "s3cret"}, timeout_s=1.0)
    assert creds.status == "ok" and "s3cret" not in creds.line()


def test_qq_and_wechaty(tmp_path: Path, listening_port: int) -> None:
    base = f"http://127.0.0.1:{listening_port}"
    settings = _settings(tmp_path, channels={"qq": {"enabled": True, "app_id": "102",
                                                     "api_base": base, "token_url": base + "/token"}})
    env = {"XIAOAI_QQ_SECRET": "x", "WECHATY_PUPPET_SERVICE_ENDPOINT": f"127.0.0.1:{listening_port}"}
    checks = doctor.check_channels(settings, env, timeout_s=1.0)
    # QQ credentials, one reach for API and token (same host:port), wechaty token warning, gateway reach
    assert _statuses(checks) == ["ok", "ok", "warn", "ok"]
    assert "WECHATY_PUPPET_SERVICE_TOKEN" in checks[2].detail
    missing = doctor.check_channels(settings, {}, network=False)
    assert missing[0].status == "fail" and "XIAOAI_QQ_SECRET" in missing[0].detail
    assert "--offline" in missing[1].detail  # nothing was contacted


# ------------------------------------------------------------------------------- disk, database
def test_disk_space_thresholds(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert _statuses(doctor.check_disk(settings, fail_below=0, warn_below=0)) == ["ok"]
    assert _statuses(doctor.check_disk(settings, fail_below=1 << 62, warn_below=1 << 62)) == ["fail"]
    assert _statuses(doctor.check_disk(settings, fail_below=0, warn_below=1 << 62)) == ["warn"]


def test_database_schema_and_integrity(tmp_path: Path) -> None:
    from bot.store.db import SCHEMA_VERSION, open_db

    settings = _settings(tmp_path)
    assert _statuses(doctor.check_database(settings)) == ["ok"]  # not created yet
    db = open_db(settings.storage.db_path)
    db.conn.close()
    version, integrity = doctor.check_database(settings)
    assert version.status == "ok" and f"version {SCHEMA_VERSION}" in version.detail
    assert integrity.status == "ok" and "integrity_check ok" in integrity.detail
    with sqlite3.connect(settings.storage.db_path) as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", [str(SCHEMA_VERSION + 1)])
    version, _ = doctor.check_database(settings)
    assert version.status == "fail" and "restore a backup" in version.fix


def test_damaged_database_fails(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.storage.db_path.parent.mkdir(parents=True)
    settings.storage.db_path.write_bytes(b"this is not a database" * 100)
    checks = doctor.check_database(settings)
    assert checks[-1].status == "fail" and str(settings.storage.db_path) in checks[-1].detail


# ------------------------------------------------------------------------------------------ CLI
def _write_config(tmp_path: Path, **extra: Any) -> Path:
    config = {
        "storage": {"db_path": str(tmp_path / "var" / "xiaoai.db")},
        "worker": {"output_dir": str(tmp_path / "var" / "outputs")},
        "bot": {"data_dir": str(tmp_path / "var" / "data")},
        **extra,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def test_cli_exit_codes(tmp_path: Path, listening_port: int, monkeypatch: pytest.MonkeyPatch,
                        capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    for name in ("XIAOAI_CONFIG", "XIAOAI_WECOM_SECRET", "XIAOAI_QQ_SECRET", "WECHATY_PUPPET_SERVICE_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WECHATY_PUPPET_SERVICE_ENDPOINT", f"127.0.0.1:{listening_port}")
    good = _write_config(tmp_path)
    assert cli_main(["--config", str(good), "doctor", "--timeout", "1"]) == 0
    out = capsys.readouterr().out
    assert not any(line.startswith("❌") for line in out.splitlines()) and f"✅ wechaty 网关 / gateway: 127.0.0.1:{listening_port}" in out
    assert "✅ Python" in out and "✅ ffmpeg" in out and "ready to deploy" in out

    missing = tmp_path / "nowhere" / "ckpt"
    bad = _write_config(tmp_path, generation={"checkpoint": str(missing)})
    assert cli_main(["--config", str(bad), "doctor", "--offline"]) == 1
    out = capsys.readouterr().out
    assert any(line.startswith("❌ 模型检查点 / checkpoint") and str(missing) in line for line in out.splitlines())

    typo = tmp_path / "typo.yaml"
    typo.write_text("quota:\n  dailly: 3\n", encoding="utf-8")
    assert cli_main(["--config", str(typo), "doctor", "--offline"]) == 1
    assert "quota.dailly" in capsys.readouterr().out
