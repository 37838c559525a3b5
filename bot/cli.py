"""Console script `xiaoai`.

  xiaoai demo       the scripted Quickstart: the whole bot on the local channel, one text-to-video
                    and one image-to-video request, prints the chat and the MP4 paths, exits 0
  xiaoai run        serve every configured channel (ClawBot, WeCom, QQ, wechaty) in one process
  xiaoai playground the bot in a local web page (a simulated group chat) + the admin dashboard
  xiaoai generate   one video from the command line (generation.cli)
  xiaoai login      log a channel in (`xiaoai login clawbot`: scan the QR code with WeChat)
  xiaoai config     validate the configuration and print it (secrets are never printed)
  xiaoai models fetch  download the checkpoint and the translator into their configured folders
  xiaoai backup     a consistent copy of the database while the bot runs (`bot.store.backup`)
  xiaoai restore    put a backup in place of the database (refused while a bot uses it)
  xiaoai doctor     check everything a deployment needs, one ✅/⚠️/❌ line each (bot/doctor.py)
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bot.settings import Settings, SettingsError, config_source, load_settings
from generation.logs import setup_logging

log = logging.getLogger("xiaoai")

DEMO_PROMPT = "a shiba inu running in the snow"  # the model's text encoders read English
DEMO_I2V_PROMPT = "the waves roll gently towards the beach"


# Commands that serve users log at INFO by default (what an operator watches); the others at WARNING.
_INFO_COMMANDS = frozenset({"run", "demo", "playground"})


_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class CliError(Exception):
    """A problem the user can fix: printed as one line (no traceback), exit code 2."""


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in _LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"日志级别只能是 / must be one of {', '.join(_LOG_LEVELS)}, got {text!r}")
    return level


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"端口要在 0-65535 之间 / must be 0-65535, got {text!r}")
    return port


def _make_dir(path: Path) -> Path:
    """The run's data folder `path` created (with its parents), or a `CliError` saying why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CliError(f"无法创建数据目录 / cannot create the data folder {path}: {exc.strerror or exc}") from None
    return path


def _setup_logging(args: argparse.Namespace) -> None:
    level = args.log_level or ("INFO" if args.command in _INFO_COMMANDS else "WARNING")
    setup_logging(level, args.log_format, file=args.log_file, max_bytes=args.log_max_bytes,
                  backups=args.log_backups)


def _load(args: argparse.Namespace) -> Settings:
    path = Path(args.config) if args.config else None
    if args.command in _INFO_COMMANDS:  # which file the bot runs with (or that none was found), first
        print(config_source(path), file=sys.stderr, flush=True)
    return load_settings(path)


# ---------------------------------------------------------------------------------------- demo
def demo_image_bytes() -> bytes:
    """A small beach picture drawn with Pillow (sky, sea, sand), as a user would send."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (320, 192), (135, 190, 235))
    draw = ImageDraw.Draw(img)
    draw.rectangle((0, 90, 320, 140), fill=(30, 90, 160))
    draw.rectangle((0, 140, 320, 192), fill=(230, 205, 150))
    draw.ellipse((240, 15, 285, 60), fill=(255, 220, 90))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _demo_settings(base: Settings, run_dir: Path, synthetic: bool) -> Settings:
    data = base.model_dump(mode="python")
    data["storage"]["db_path"] = run_dir / "xiaoai.db"
    data["worker"]["output_dir"] = run_dir / "videos"
    data["bot"]["data_dir"] = run_dir / "data"
    data["bot"]["flood_user_max"] = max(data["bot"]["flood_user_max"], 20)
    data["quota"]["daily"] = max(data["quota"]["daily"], 5)
    if synthetic:
        data["worker"]["generator"] = "synthetic"
    return Settings.model_validate(data)


class _Transcript:
    """Prints the chat as it happens: what the user sends and what the bot answers."""

    def __init__(self, channel: object, out: io.TextIOBase) -> None:
        self._channel = channel
        self._out = out
        self._shown = 0
        self._t0 = time.monotonic()

    def _stamp(self) -> str:
        return f"[{time.monotonic() - self._t0:6.1f}s]"

    def user(self, name: str, text: str) -> None:
        print(f"{self._stamp()} {name}: {text}", file=self._out, flush=True)

    def flush_bot(self) -> None:
        sent = self._channel.sent  # type: ignore[attr-defined]
        for item in sent[self._shown :]:
            if item.text is not None:
                body = item.text.text.replace("\n", "\n" + " " * 12)
                print(f"{self._stamp()} 小爱: {body}", file=self._out, flush=True)
            elif item.video is not None:
                print(f"{self._stamp()} 小爱: [视频] {item.video.video_path}", file=self._out, flush=True)
                if item.video.caption:
                    body = item.video.caption.replace("\n", "\n" + " " * 12)
                    print(f"{self._stamp()} 小爱: {body}", file=self._out, flush=True)
        self._shown = len(sent)


async def run_demo(
    settings: Settings,
    *,
    run_dir: Path,
    timeout_s: float,
    synthetic: bool,
    out: io.TextIOBase,
) -> int:
    from bot.app import App, build_pipeline
    from bot.channels.local import LocalChannel

    settings = _demo_settings(settings, run_dir, synthetic)
    channel = LocalChannel()
    pipeline = build_pipeline(settings)
    app = App(settings, channel, pipeline=pipeline)
    show = _Transcript(channel, out)
    print(f"小爱视频 demo — 数据目录 / run dir: {run_dir}", file=out)
    print(f"生成器 / generator: {settings.worker.generator}", file=out)
    from bot.prompts.status import translator_status

    print(translator_status(settings.prompts), file=out, flush=True)
    await app.start()
    try:
        user = {"sender_id": "wxid_demo_user", "sender_name": "小明", "chat_id": "demo-room@chatroom"}
        for text, image in (
            ("/帮助", None),
            (f"/视频 {DEMO_PROMPT}", None),
            ("", demo_image_bytes()),
            (f"/视频 {DEMO_I2V_PROMPT}", None),
            ("/队列", None),
        ):
            show.user(user["sender_name"], text or "[图片]")
            await channel.say(text, image=image, **user)  # type: ignore[arg-type]
            show.flush_bot()

        def all_settled(_: object) -> bool:
            """Both videos sent, or every job of the demo ended (failures were told to the user)."""
            show.flush_bot()
            if len(channel.videos()) >= 2:
                return True
            assert app.queue is not None
            jobs = app.queue.jobs_of(user["sender_id"])
            return bool(jobs) and all(
                j.state == "delivered" or (j.state in ("failed", "cancelled") and j.notified) for j in jobs
            )

        await channel.wait_for(all_settled, timeout=timeout_s)
        show.flush_bot()
        ok = len(channel.videos()) >= 2
        if ok:
            show.user(user["sender_name"], "/额度")
            await channel.say("/额度", **user)  # type: ignore[arg-type]
            show.flush_bot()
    finally:
        await app.stop()
    videos = channel.videos()
    if not ok:
        print(f"\n失败 / FAILED: {len(videos)} of 2 videos were delivered", file=out, flush=True)
        return 1
    print("\n生成的视频 / MP4 files:", file=out)
    for video in videos:
        print(f"  {video.video_path}", file=out)
    print("demo OK", file=out, flush=True)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    settings = _load(args)
    run_dir = Path(args.dir) if args.dir else Path("var/demo") / time.strftime("%Y%m%d-%H%M%S")
    run_dir = _make_dir(run_dir.resolve())
    return asyncio.run(
        run_demo(settings, run_dir=run_dir, timeout_s=args.timeout, synthetic=args.synthetic, out=sys.stdout)
    )


# ----------------------------------------------------------------------------------------- run
async def _serve(settings: Settings) -> int:
    from bot.serve import serve

    return await serve(settings)


def cmd_run(args: argparse.Namespace) -> int:
    return asyncio.run(_serve(_load(args)))


# ------------------------------------------------------------------------------------ playground
def cmd_playground(args: argparse.Namespace) -> int:
    from bot.app import build_pipeline
    from bot.web.runner import PlaygroundError, playground_settings, run_playground

    run_dir = Path(args.dir).resolve() if args.dir else Path("var/playground").resolve()
    _make_dir(run_dir)
    settings = playground_settings(_load(args), run_dir, synthetic=args.synthetic, host=args.host, port=args.port)
    try:
        return asyncio.run(run_playground(settings, pipeline=build_pipeline(settings)))
    except PlaygroundError as err:
        print(str(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


# ------------------------------------------------------------------------------------ login
def cmd_login(args: argparse.Namespace) -> int:
    """`xiaoai login clawbot`: QR login; the running bot picks the new credentials up by itself."""
    from bot.channels.clawbot.login import login

    settings = _load(args).channels.clawbot

    def out(line: str) -> None:
        print(line, flush=True)

    def ask(question: str) -> str:
        return input(question)

    try:
        return asyncio.run(login(settings, out=out, ask=ask))
    except (KeyboardInterrupt, EOFError):
        print("\n已取消登录 / login cancelled", file=sys.stderr)
        return 130


# ------------------------------------------------------------------------------------ config
def cmd_config(args: argparse.Namespace) -> int:
    import yaml

    from bot.app import checkpoint_problem

    settings = _load(args)
    print(f"# {config_source(Path(args.config) if args.config else None)}")
    print(yaml.safe_dump(settings.model_dump(mode="json"), allow_unicode=True, sort_keys=False))
    if problem := checkpoint_problem(settings):
        print(problem, file=sys.stderr)
        return 2
    return 0


# ------------------------------------------------------------------------------------ backup / restore
def cmd_backup(args: argparse.Namespace) -> int:
    from bot.store.backup import BackupError, backup

    storage = _load(args).storage
    try:
        info = backup(storage.db_path, Path(args.path), overwrite=args.force,
                      busy_timeout_ms=storage.busy_timeout_ms)
    except BackupError as err:
        print(f"备份失败 / backup failed: {err}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{k} {v}" for k, v in info.rows.items())
    print(f"备份完成 / backup written: {info.path} ({info.bytes} bytes, schema {info.schema_version}, {rows}; "
          f"integrity_check ok, {info.seconds:.2f} s)")
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from bot.store.backup import BackupError, DatabaseInUse, restore

    storage = _load(args).storage
    try:
        info, kept = restore(Path(args.path), storage.db_path)
    except DatabaseInUse as err:
        print(f"未恢复 / not restored: {err}", file=sys.stderr)
        return 2
    except (BackupError, OSError, sqlite3.DatabaseError) as err:
        print(f"恢复失败 / restore failed: {err}", file=sys.stderr)
        return 1
    rows = ", ".join(f"{k} {v}" for k, v in info.rows.items())
    print(f"已恢复 / restored: {storage.db_path} from {args.path} (schema {info.schema_version}, {rows})")
    if kept is not None:
        print(f"原数据库保留为 / the replaced database is kept as: {kept}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xiaoai", description="小爱视频 — WeChat /video bot")
    parser.add_argument("--config", help="config file (default: $XIAOAI_CONFIG or ./config.yaml)")
    parser.add_argument("--log-level", default=None, type=_log_level,
                        help="DEBUG, INFO, WARNING, ERROR (default: INFO for run/demo/playground, else WARNING); "
                             "the worker process follows it")
    parser.add_argument("--log-format", choices=["text", "json"], default="text",
                        help="text (default; ids as job=… user=… chat=…) or json (one object per line)")
    parser.add_argument("--log-file", default=None, metavar="PATH",
                        help="also write the log to PATH (same format), rotated; the worker process appends to it")
    parser.add_argument("--log-max-bytes", type=int, default=20 * 1024 * 1024, metavar="N",
                        help="rotate the log file at N bytes (default 20 MiB; 0 = never)")
    parser.add_argument("--log-backups", type=int, default=5, metavar="N",
                        help="rotated log files kept: PATH.1 … PATH.N (default 5)")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the scripted local demo (no WeChat, no GPU, no weights)")
    demo.add_argument("--dir", help="run directory (default: var/demo/<timestamp>)")
    demo.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for both videos")
    demo.add_argument(
        "--synthetic",
        action="store_true",
        help="use the synthetic test generator instead of our Pyramid Flow (tiny random weights)",
    )
    demo.set_defaults(func=cmd_demo)

    run = sub.add_parser("run", help="serve every configured chat channel (ClawBot, WeCom, QQ, wechaty)")
    run.set_defaults(func=cmd_run)

    play = sub.add_parser("playground", help="the bot in a local web page (simulated group chat) + admin dashboard")
    play.add_argument("--host", help="address to listen on (default: playground.host, 127.0.0.1)")
    play.add_argument("--port", type=_port, help="port (default: playground.port, 8765; 0 = any free port)")
    play.add_argument("--dir", help="data directory: SQLite file, videos, images (default: var/playground)")
    play.add_argument(
        "--synthetic",
        action="store_true",
        help="use the synthetic test generator instead of our Pyramid Flow (tiny random weights)",
    )
    play.set_defaults(func=cmd_playground)

    login = sub.add_parser("login", help="log a channel in (ClawBot: scan the QR code with WeChat)")
    login.add_argument("channel", choices=["clawbot"], help="which channel")
    login.set_defaults(func=cmd_login)

    bak = sub.add_parser("backup", help="copy the database to PATH while the bot runs (checked, consistent)")
    bak.add_argument("path", help="file to write, or an existing folder (xiaoai-<date>-<time>.db in it)")
    bak.add_argument("--force", action="store_true", help="replace PATH if it exists")
    bak.set_defaults(func=cmd_backup)

    res = sub.add_parser("restore", help="replace the database with the backup PATH (the bot must be stopped)")
    res.add_argument("path", help="a file written by `xiaoai backup`")
    res.set_defaults(func=cmd_restore)

    cfg = sub.add_parser("config", help="validate and print the configuration")
    cfg.set_defaults(func=cmd_config)

    from bot.models_fetch import add_models_parser  # `xiaoai models fetch [--checkpoint] [--translator]`

    add_models_parser(sub)

    doc = sub.add_parser("doctor", help="check everything a deployment needs (GPU, model, channels, disk, database)")
    doc.add_argument("--offline", action="store_true", help="skip the TCP reachability checks of the endpoints")
    doc.add_argument("--timeout", type=float, default=3.0, help="seconds per reachability check (default 3)")
    doc.set_defaults(func=lambda args: __import__("bot.doctor", fromlist=["main"]).main(
        Path(args.config) if args.config else None, network=not args.offline, timeout_s=args.timeout))

    from generation.cli import add_generate_parser, run_generate

    gen = add_generate_parser(sub)
    gen.set_defaults(func=lambda args: (lambda s: run_generate(args, base=s.generation, labels=s.labels,
                                                                content_check=s.content_check))(_load(args)))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except (SettingsError, CliError) as err:
        print(str(err), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handling: no traceback
        print("\n已停止 / stopped", file=sys.stderr)
        return 130
    except Exception as err:  # the app refused to start (bot.app.StartupError): one line, exit code 2
        from bot.app import StartupError

        if not isinstance(err, StartupError):
            raise
        print(str(err), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
