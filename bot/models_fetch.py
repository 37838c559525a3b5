"""`xiaoai models fetch [--checkpoint] [--translator]`: download the models the bot reads from local folders.

At run time nothing is ever downloaded (the generator and the MarianMT translator load local folders
only); this one command, run once on a machine with network access, fills those folders:

* the Pyramid Flow checkpoint: `rain1011/pyramid-flow-miniflux` (or `rain1011/pyramid-flow-sd3` when
  `generation.model_name: pyramid_mmdit`, or `--checkpoint-repo`) into `generation.checkpoint`
  (default `models/<repo name>`; the command prints the line to put in config.yaml when it is not set);
* the translator: `Helsinki-NLP/opus-mt-zh-en` into `prompts.marian.model_dir` (default
  `models/opus-mt-zh-en`), without the TensorFlow/Rust copies of the weights.

Neither flag: both. Downloads use `huggingface_hub.snapshot_download` into the folder itself (no cache
copy): files already there are skipped, so running the command again after an interruption carries
on where it stopped, and a dropped connection is resumed in place. `HF_ENDPOINT` picks a mirror (e.g.
`HF_ENDPOINT=https://hf-mirror.com` in mainland China), `HF_TOKEN` a token. Every failure is one
bilingual line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

CHECKPOINT_REPOS = {"pyramid_flux": "rain1011/pyramid-flow-miniflux", "pyramid_mmdit": "rain1011/pyramid-flow-sd3"}
TRANSLATOR_REPO = "Helsinki-NLP/opus-mt-zh-en"
DEFAULT_ENDPOINT = "https://huggingface.co"
MIRROR = "https://hf-mirror.com"
# the translator folder as MarianTranslator loads it (PyTorch weights only)
TRANSLATOR_IGNORE = ["*.h5", "*.ot", "*.msgpack", "*.onnx", "tf_model*", "rust_model*", "flax_model*"]
TRANSLATOR_FILES = ("config.json", "source.spm", "target.spm", "vocab.json")
CHECKPOINT_FOLDERS = ("causal_video_vae", "text_encoder", "tokenizer")
VARIANTS = ("384p", "768p")


class FetchError(Exception):
    """One bilingual line for the user."""


@dataclass
class Fetch:
    what: str  # "checkpoint" | "translator"
    repo: str
    folder: Path
    ignore: list[str] = field(default_factory=list)
    configured: bool = True  # the folder is the one the configuration points at
    config_key: str = ""
    variant: str | None = None


def _known_repo(folder: Path | None) -> str | None:
    """The released repo a configured checkpoint folder is named after (…/pyramid-flow-sd3 → its repo)."""
    if folder is None:
        return None
    return next((repo for repo in CHECKPOINT_REPOS.values() if repo.split("/")[1] == folder.name), None)


def plan(settings: Any, *, checkpoint: bool, translator: bool, checkpoint_repo: str | None = None,
         checkpoint_dir: Path | None = None, translator_dir: Path | None = None,
         variant: str | None = None) -> list[Fetch]:
    """What to download where, from the settings and the flags (neither flag: both)."""
    if not checkpoint and not translator:
        checkpoint = translator = True
    items: list[Fetch] = []
    if checkpoint:
        gen = settings.generation
        repo = (checkpoint_repo or _known_repo(gen.checkpoint)
                or CHECKPOINT_REPOS[gen.model_name or "pyramid_flux"])
        folder = checkpoint_dir or gen.checkpoint or Path("models") / repo.split("/")[-1]
        configured = gen.checkpoint is not None and Path(folder).resolve() == Path(gen.checkpoint).resolve()
        ignore = [f"diffusion_transformer_{v}/*" for v in VARIANTS if variant and v != variant]
        items.append(Fetch("checkpoint", repo, Path(folder), ignore, configured, "generation.checkpoint", variant))
    if translator:
        configured_dir = Path(settings.prompts.marian.model_dir)
        folder = translator_dir or configured_dir
        items.append(Fetch("translator", TRANSLATOR_REPO, Path(folder), list(TRANSLATOR_IGNORE),
                           Path(folder).resolve() == configured_dir.resolve(), "prompts.marian.model_dir"))
    return items


def missing_files(item: Fetch) -> list[str]:
    """What the folder still lacks for the bot to load it (empty: complete)."""
    folder = item.folder
    if item.what == "translator":
        missing = [name for name in TRANSLATOR_FILES if not (folder / name).is_file()]
        if not any(folder.glob("*.bin")) and not any(folder.glob("*.safetensors")):
            missing.append("pytorch_model.bin / model.safetensors")
        return missing
    missing = [name + "/" for name in CHECKPOINT_FOLDERS if not (folder / name).is_dir()]
    variants = [item.variant] if item.variant else list(VARIANTS)
    if not any((folder / f"diffusion_transformer_{v}").is_dir() for v in variants):
        missing.append(f"diffusion_transformer_{item.variant or '384p'}/")
    return missing


def _explain(exc: BaseException, item: Fetch, endpoint: str) -> str:
    """One bilingual line for a failed download."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    detail = " ".join(str(exc).split()).split(" For more information")[0][:300] or type(exc).__name__
    again = "再次运行同一命令会从中断处继续 / run the same command again to resume"
    if isinstance(exc, GatedRepoError) or (isinstance(exc, HfHubHTTPError) and exc.response is not None
                                           and exc.response.status_code in (401, 403)):
        return (f"需要访问令牌 / access denied to {item.repo} at {endpoint}: 请设置 HF_TOKEN / set HF_TOKEN "
                f"({detail})")
    if isinstance(exc, RepositoryNotFoundError | RevisionNotFoundError):
        return f"找不到模型仓库 / repository not found: {item.repo} at {endpoint}（检查仓库名和 HF_ENDPOINT / check the name and HF_ENDPOINT）"
    mirror = "" if endpoint.rstrip("/") == MIRROR else f"；连不上时可设置 HF_ENDPOINT={MIRROR} / try HF_ENDPOINT={MIRROR}"
    if isinstance(exc, LocalEntryNotFoundError | HfHubHTTPError | OSError) or "httpx" in type(exc).__module__:
        return f"下载失败 / download of {item.repo} from {endpoint} failed: {detail}；{again}{mirror}"
    return f"下载失败 / download of {item.repo} failed: {type(exc).__name__}: {detail}；{again}"


def fetch(item: Fetch, *, endpoint: str | None, out: TextIO,
          snapshot: Callable[..., Any] | None = None) -> None:
    """Download one item into its folder (resuming), then check the bot can load it. Raises FetchError.

    The commit is resolved first and passed as the revision: when the hub cannot be reached or does not
    know the repo, `snapshot_download` would otherwise hand back whatever the folder already holds."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import logging as hf_logging

    if snapshot is None:
        from huggingface_hub import snapshot_download as snapshot
    hf_logging.disable_propagation()  # its own handler prints its warnings once (e.g. a resumed download)
    shown = endpoint or DEFAULT_ENDPOINT
    try:
        item.folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FetchError(f"无法创建目录 / cannot create {item.folder}: {exc.strerror or exc}") from None
    if not os.access(item.folder, os.W_OK):
        raise FetchError(f"目录不可写 / cannot write to {item.folder}")
    label = "模型检查点 / checkpoint" if item.what == "checkpoint" else "翻译模型 / translator"
    print(f"下载{label}: {item.repo} → {item.folder}（来源 / from {shown}）", file=out, flush=True)
    try:
        commit = HfApi(endpoint=endpoint).repo_info(item.repo, revision="main").sha
        snapshot(repo_id=item.repo, local_dir=str(item.folder), endpoint=endpoint, revision=commit,
                 ignore_patterns=item.ignore or None)
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line for the user
        raise FetchError(_explain(exc, item, shown)) from None
    missing = missing_files(item)
    if missing:
        raise FetchError(f"下载的 {item.repo} 不完整 / incomplete download in {item.folder}: 缺少 / missing "
                         f"{', '.join(missing)}")
    print(f"完成 / done: {item.folder}", file=out, flush=True)
    if not item.configured:
        print(f"  使用它：在 config.yaml 里设置 / to use it, set in config.yaml: {item.config_key}: {item.folder}",
              file=out, flush=True)


def run_fetch(args: argparse.Namespace, *, out: TextIO = sys.stdout, err: TextIO = sys.stderr,
              environ: dict[str, str] | os._Environ[str] | None = None,
              snapshot: Callable[..., Any] | None = None) -> int:
    from bot.settings import load_settings

    env = os.environ if environ is None else environ
    offline = [name for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # huggingface_hub honours both
               if env.get(name, "").strip().lower() in ("1", "true", "yes", "on")]
    if offline:
        print(f"{offline[0]} 已开启（离线模式），无法下载 / {offline[0]} is set (offline mode): "
              f"unset {' '.join(offline)} to download", file=err)
        return 2
    settings = load_settings(Path(args.config) if args.config else None)
    items = plan(settings, checkpoint=args.checkpoint, translator=args.translator,
                 checkpoint_repo=args.checkpoint_repo, checkpoint_dir=args.checkpoint_dir,
                 translator_dir=args.translator_dir, variant=args.variant)
    endpoint = (env.get("HF_ENDPOINT") or "").strip().rstrip("/") or None
    failure: list[BaseException] = []

    def download_all() -> None:
        try:
            for item in items:
                fetch(item, endpoint=endpoint, out=out, snapshot=snapshot)
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            failure.append(exc)

    # The downloads run on a worker thread so Ctrl-C (delivered to the main thread) ends the command at once:
    # huggingface_hub's download threads would otherwise be waited for, each to the end of its file.
    worker = threading.Thread(target=download_all, name="models-fetch", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        print("\n已中断，再次运行同一命令会从中断处继续 / interrupted; run the same command again to resume",
              file=err, flush=True)
        out.flush()
        os._exit(130)  # not waiting for the download threads (their partial files are not reused)
    if failure:
        if isinstance(failure[0], FetchError):
            print(str(failure[0]), file=err)
            return 1
        raise failure[0]
    return 0


def add_models_parser(sub: Any) -> argparse.ArgumentParser:
    """`xiaoai models fetch …` (wired into `bot.cli`)."""
    models = sub.add_parser("models", help="download the models the bot needs (checkpoint, translator)")
    actions = models.add_subparsers(dest="models_command", required=True)
    f = actions.add_parser(
        "fetch", help="download the Pyramid Flow checkpoint and/or the MarianMT translator (resumes; "
                      "HF_ENDPOINT selects a mirror, e.g. https://hf-mirror.com)")
    f.add_argument("--checkpoint", action="store_true",
                   help="the Pyramid Flow checkpoint (rain1011/pyramid-flow-miniflux, or -sd3 for pyramid_mmdit)")
    f.add_argument("--translator", action="store_true", help=f"the translator ({TRANSLATOR_REPO})")
    f.add_argument("--checkpoint-repo", help="another checkpoint repo id (default: from generation.model_name)")
    f.add_argument("--checkpoint-dir", type=Path,
                   help="where to put it (default: generation.checkpoint, else models/<repo name>)")
    f.add_argument("--translator-dir", type=Path, help="where to put it (default: prompts.marian.model_dir)")
    f.add_argument("--variant", choices=VARIANTS, help="only this resolution's transformer (saves disk space)")
    f.set_defaults(func=run_fetch)
    return models


def main(argv: Sequence[str] | None = None) -> int:  # `python -m bot.models_fetch fetch …`
    parser = argparse.ArgumentParser(prog="python -m bot.models_fetch")
    parser.add_argument("--config")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["models", *(argv if argv is not None else sys.argv[1:])])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
