"""`xiaoai models fetch`: the real command (a subprocess) against a fake hub on 127.0.0.1 reached through
`HF_ENDPOINT` (as a mirror such as hf-mirror.com is), never the network. The translator lands in the
configured folder and then really translates; the checkpoint lands where config.yaml points (or where the
command says to point it); an interrupted download carries on; failures are one line; the bot's run-time
code downloads nothing."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.models_fetch import CHECKPOINT_REPOS, TRANSLATOR_REPO, plan
from bot.prompts import PromptPipeline, PromptSettings
from bot.prompts.devtools import build_tiny_marian
from bot.prompts.status import translator_status
from bot.settings import Settings
from tests.fakes.hf_hub_fake import HubFake

REPO_ROOT = Path(__file__).resolve().parents[1]
MINIFLUX = CHECKPOINT_REPOS["pyramid_flux"]


@pytest.fixture(scope="module")
def marian_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = build_tiny_marian(tmp_path_factory.mktemp("tiny-opus"))
    files = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    files["tf_model.h5"] = b"TensorFlow weights the bot never loads" * 10
    files["rust_model.ot"] = b"rust weights" * 10
    return files


def checkpoint_files(big: bytes = b"") -> dict[str, bytes]:
    files = {"README.md": b"# pyramid flow (fake)\n"}
    for folder in ("causal_video_vae", "diffusion_transformer_384p", "diffusion_transformer_768p", "text_encoder",
                   "text_encoder_2", "tokenizer", "tokenizer_2"):
        files[f"{folder}/config.json"] = b'{"fake": "%s"}' % folder.encode()
    files["diffusion_transformer_384p/diffusion_pytorch_model.safetensors"] = big or b"\0" * 4096
    files["diffusion_transformer_768p/diffusion_pytorch_model.safetensors"] = b"\1" * 4096
    return files


def write_config(tmp: Path, **sections: dict[str, Any]) -> Path:
    path = tmp / "config.yaml"
    data: dict[str, Any] = {"prompts": {"marian": {"model_dir": str(tmp / "models" / "opus-mt-zh-en")}}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


def fetch(tmp: Path, config: Path, *args: str, endpoint: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("XIAOAI", "HF_", "TRANSFORMERS_"))}
    base.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
                PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", **env)
    return subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(config), "models", "fetch", *args],
                          cwd=tmp, env=base, capture_output=True, text=True, timeout=180)


def body_gets(hub: HubFake) -> list[str]:
    return [path.split("/resolve/", 1)[1].split("/", 1)[1] for method, path, _ in hub.requests
            if method == "GET" and "/resolve/" in path]


def test_translator_is_fetched_through_the_mirror_and_then_translates(tmp_path: Path,
                                                                       marian_files: dict[str, bytes]) -> None:
    config = write_config(tmp_path)
    settings = PromptSettings.model_validate({"marian": {"model_dir": str(tmp_path / "models" / "opus-mt-zh-en"),
                                                         "num_beams": 1, "max_new_tokens": 8}})
    before = translator_status(settings)
    assert "无 / none" in before and "xiaoai models fetch --translator" in before
    with HubFake({TRANSLATOR_REPO: marian_files}) as hub:
        result = fetch(tmp_path, config, "--translator", endpoint=hub.url)
        assert result.returncode == 0, result.stderr
        assert hub.url in result.stdout and "完成 / done" in result.stdout
        folder = tmp_path / "models" / "opus-mt-zh-en"
        assert {"config.json", "source.spm", "target.spm", "vocab.json"} <= {p.name for p in folder.iterdir()}
        assert not (folder / "tf_model.h5").exists() and not (folder / "rust_model.ot").exists()
        for name in ("config.json", "source.spm"):
            assert (folder / name).read_bytes() == marian_files[name]
        assert "tf_model.h5" not in body_gets(hub)
        assert {p for _, p, _ in hub.requests} >= {f"/api/models/{TRANSLATOR_REPO}/revision/main"}
        # again: everything is there, nothing is downloaded twice
        hub.requests.clear()
        again = fetch(tmp_path, config, "--translator", endpoint=hub.url)
        assert again.returncode == 0, again.stderr
        assert body_gets(hub) == []
    # out of the box now: the bot says so at start-up and Chinese prompts are translated
    assert translator_status(settings).startswith("翻译 / translator: 本地 MarianMT")
    pipe = PromptPipeline.from_settings(settings.model_copy(update={"fallback": []}))
    prepared = asyncio.run(pipe.prepare("一只柴犬在雪地里奔跑"))
    assert prepared.translator == "marian" and "模型提示词（英文）" in prepared.echo_text()
    pipe.close()


def test_checkpoint_goes_where_the_config_points_or_says_where_to_point_it(tmp_path: Path) -> None:
    files = checkpoint_files()
    with HubFake({MINIFLUX: files}) as hub:
        # nothing configured: models/<repo name> under the current folder, and the config line to add
        result = fetch(tmp_path, write_config(tmp_path), "--checkpoint", "--variant", "384p", endpoint=hub.url)
        assert result.returncode == 0, result.stderr
        folder = tmp_path / "models" / "pyramid-flow-miniflux"
        assert (folder / "diffusion_transformer_384p" / "diffusion_pytorch_model.safetensors").is_file()
        assert not (folder / "diffusion_transformer_768p").exists()  # --variant: the other one is skipped
        assert "generation.checkpoint: models/pyramid-flow-miniflux" in result.stdout
        # configured: into that folder, no hint needed
        target = tmp_path / "weights" / "miniflux"
        config = write_config(tmp_path, generation={"checkpoint": str(target)})
        result = fetch(tmp_path, config, "--checkpoint", endpoint=hub.url)
        assert result.returncode == 0, result.stderr
        assert (target / "diffusion_transformer_768p" / "config.json").is_file()
        assert "generation.checkpoint:" not in result.stdout


def test_plan_follows_the_configuration() -> None:
    both = plan(Settings(), checkpoint=False, translator=False)  # neither flag: everything the bot needs
    assert [(i.what, i.repo) for i in both] == [("checkpoint", MINIFLUX), ("translator", TRANSLATOR_REPO)]
    assert both[1].folder == Path(PromptSettings().marian.model_dir)
    sd3 = Settings.model_validate({"generation": {"model_name": "pyramid_mmdit"}})
    assert plan(sd3, checkpoint=True, translator=False)[0].repo == "rain1011/pyramid-flow-sd3"
    named = Settings.model_validate({"generation": {"checkpoint": "/data/pyramid-flow-sd3"}})
    [item] = plan(named, checkpoint=True, translator=False)
    assert (item.repo, item.folder, item.configured) == ("rain1011/pyramid-flow-sd3", Path("/data/pyramid-flow-sd3"), True)
    [own] = plan(Settings(), checkpoint=True, translator=False, checkpoint_repo="me/my-flow")
    assert own.folder == Path("models/my-flow") and not own.configured


def test_an_interrupted_download_carries_on(tmp_path: Path) -> None:
    big = os.urandom(11 * 1024 * 1024)  # over one 10 MiB download chunk, so a dropped connection resumes
    files = checkpoint_files(big)
    config = write_config(tmp_path, generation={"checkpoint": str(tmp_path / "ckpt")})
    with HubFake({MINIFLUX: files}) as hub:
        name = "diffusion_transformer_384p/diffusion_pytorch_model.safetensors"
        hub.cut_after[f"{MINIFLUX}/{name}"] = 10 * 1024 * 1024 + 12_345
        hub.fail[f"{MINIFLUX}/text_encoder_2/config.json"] = 10  # the hub keeps failing this one for now
        first = fetch(tmp_path, config, "--checkpoint", endpoint=hub.url)
        assert first.returncode == 1 and "Traceback" not in first.stderr, first.stderr
        line = first.stderr.strip().splitlines()[-1]
        assert "下载失败" in line and "run the same command again to resume" in line
        # the dropped connection was resumed in place, from the last full chunk, not from zero
        assert hub.downloads(name) == [None, f"bytes={10 * 1024 * 1024}-"]
        assert (tmp_path / "ckpt" / name).read_bytes() == big
        done_first = set(body_gets(hub)) - {"text_encoder_2/config.json"}
        hub.fail.clear()
        hub.requests.clear()
        second = fetch(tmp_path, config, "--checkpoint", endpoint=hub.url)
        assert second.returncode == 0, second.stderr
        assert "text_encoder_2/config.json" in body_gets(hub)
        assert not set(body_gets(hub)) & done_first  # what was complete is not downloaded again
    for path, data in files.items():
        assert (tmp_path / "ckpt" / path).read_bytes() == data


def test_failures_are_one_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    with HubFake({}) as hub:
        result = fetch(tmp_path, config, "--checkpoint", "--checkpoint-repo", "nobody/nothing", endpoint=hub.url)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert "repository not found: nobody/nothing" in result.stderr and len(result.stderr.strip().splitlines()) == 1
        for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
            offline = fetch(tmp_path, config, "--translator", endpoint=hub.url, **{var: "1"})
            assert offline.returncode == 2 and f"unset {var}" in offline.stderr and "Traceback" not in offline.stderr
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    result = fetch(tmp_path, config, "--translator", endpoint=dead)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert "下载失败" in line and "HF_ENDPOINT=https://hf-mirror.com" in line


def test_run_time_code_never_downloads(tmp_path: Path, marian_files: dict[str, bytes],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from bot.prompts.translate.base import TranslationError
    from bot.prompts.translate.marian import MarianTranslator

    with HubFake({TRANSLATOR_REPO: marian_files}) as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.chdir(tmp_path)
        for model_dir in (TRANSLATOR_REPO, str(tmp_path / "absent")):  # even a folder named like the repo
            translator = MarianTranslator(model_dir)
            with pytest.raises(TranslationError) as err:
                asyncio.run(translator.translate("一只猫"))
            assert err.value.reason == "unavailable"
            translator.close()
        assert hub.requests == []


def test_ctrl_c_stops_a_long_download_at_once_and_the_next_run_carries_on(tmp_path: Path,
                                                                           marian_files: dict[str, bytes]) -> None:
    import signal
    import time

    config = write_config(tmp_path)
    files = {**marian_files, "pytorch_model.bin": os.urandom(4 * 1024 * 1024)}  # ~64 s at the fake's pace
    with HubFake({TRANSLATOR_REPO: files}) as hub:
        hub.slow.add(f"{TRANSLATOR_REPO}/pytorch_model.bin")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("XIAOAI", "HF_", "TRANSFORMERS_"))}
        env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_PROGRESS_BARS="1",
                   PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
        proc = subprocess.Popen([sys.executable, "-m", "bot.cli", "--config", str(config), "models", "fetch",
                                 "--translator"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 60
        while "pytorch_model.bin" not in " ".join(body_gets(hub)):
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        time.sleep(0.5)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal
        out, err = proc.communicate(timeout=20)
        assert time.monotonic() - started < 10  # not after the file finished
        assert proc.returncode == 130 and "Traceback" not in err, err
        assert "run the same command again to resume" in err
        hub.slow.clear()
        hub.requests.clear()
        again = fetch(tmp_path, config, "--translator", endpoint=hub.url)
        assert again.returncode == 0, again.stderr
        assert "pytorch_model.bin" in body_gets(hub) and "config.json" not in body_gets(hub)
    assert (tmp_path / "models" / "opus-mt-zh-en" / "pytorch_model.bin").read_bytes() == files["pytorch_model.bin"]
