"""`xiaoai generate` (also `python -m generation.cli generate ...`): one video from the command line."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
from pathlib import Path

from generation.api import GenerationCancelled, GenerationRequest, InvalidRequest, Progress
from generation.content_check import (
    ContentBlocked,
    ContentCheckSettings,
    ModelUnavailable,
    report_content_check,
)
from generation.finisher import VideoFinisher
from generation.labels import LabelFontError, LabelSettings, report_label_settings
from generation.logs import setup_logging
from generation.settings import GenerationSettings

log = logging.getLogger(__name__)


def _steps(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.replace(",", " ").split()]
    if len(parts) == 1:
        parts = parts * 3
    if len(parts) != 3:
        raise argparse.ArgumentTypeError("give one number or three (one per pyramid stage), e.g. 20 or 20,20,20")
    return (parts[0], parts[1], parts[2])


def add_generate_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="generate one video locally (生成一个视频)")
    p.add_argument("prompt", help="text prompt (English works best)")
    p.add_argument("--image", default=None, help="input image for image-to-video")
    p.add_argument("--resolution", choices=["384p", "768p"], default=None)
    p.add_argument("--duration", type=int, choices=[5, 10], default=5, help="seconds")
    p.add_argument("--temp", type=int, default=None, help="latent frames (overrides --duration)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=_steps, default=None, help="first-frame steps per stage, e.g. 20,20,20")
    p.add_argument("--video-steps", type=_steps, default=None, help="later-frame steps per stage, e.g. 10,10,10")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--video-guidance", type=float, default=None)
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--output", type=Path, default=Path("outputs"), help="output .mp4 path or folder")
    p.add_argument("--checkpoint", type=Path, default=None, help="checkpoint root; omitted → tiny random demo model")
    p.add_argument("--model", choices=["pyramid_flux", "pyramid_mmdit"], default=None)
    p.add_argument("--variant", choices=["384p", "768p"], default=None, help="checkpoint variant (default: resolution)")
    p.add_argument("--dtype", choices=["auto", "bf16", "fp32", "fp16"], default=None)
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda, cuda:1 ...")
    p.add_argument("--placement", choices=["auto", "gpu", "text_offload", "model_offload", "sequential_offload"],
                   default=None)
    p.add_argument("--no-tiling", action="store_true", help="untiled VAE decode (more memory, no seams)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_generate)
    return p


def _settings_from_args(args: argparse.Namespace, base: GenerationSettings) -> GenerationSettings:
    over: dict = {"output_dir": args.output if args.output.suffix != ".mp4" else args.output.parent}
    if args.checkpoint is not None:
        over["checkpoint"] = args.checkpoint
    if args.model is not None:
        over["model_name"] = args.model
    if args.variant or args.resolution:
        over["variant"] = args.variant or args.resolution
    for key in ("dtype", "device", "placement"):
        if getattr(args, key) is not None:
            over[key] = getattr(args, key)
    if args.no_tiling:
        over["vae_tiling"] = False
    return base.model_copy(update=over)


class _Bar:
    def __init__(self, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=1000, unit="‰", bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}")

    def __call__(self, p: Progress) -> None:
        if self.bar is None:
            return
        self.bar.set_description(f"unit {p.unit + 1}/{p.units} stage {p.stage} step {p.step}/{p.steps}"
                                 if p.steps else (p.message or ""))
        self.bar.n = int(p.fraction * 1000)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


DETAILS_HINT = "（加 --log-level DEBUG 查看详情 / --log-level DEBUG shows the details）"


def output_problem(output: Path) -> str | None:
    """Why the video could not be written to `output` (a .mp4 path or a folder), checked before anything is
    generated; None when it can. Creates the folder, like the generator would."""
    folder = output.parent if output.suffix == ".mp4" else output
    if output.suffix == ".mp4" and output.is_dir():
        return f"输出路径是一个目录 / --output is a folder, not a file: {output}"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        return f"无法写入输出位置 / cannot write to --output {output}: {existing} 是文件 / is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".xiaoai-write-test-"):
            pass
    except OSError as exc:
        return f"无法写入输出位置 / cannot write to --output {output}: {exc.strerror or exc}"
    return None


def device_problem(name: str) -> str | None:
    """Why `--device`/`generation.device` cannot be used here (checked before the model is loaded)."""
    if name == "auto":
        return None
    import torch

    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        return f"无效的设备 / invalid device {name!r}（可用 / use: auto, cpu, cuda, cuda:1 …）"
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return (f"没有可用的 CUDA 显卡 / CUDA is not available for --device {name} "
                    f"(torch {torch.__version__}); 请用 --device cpu 或 auto / use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            return f"没有这块显卡 / no such GPU: {name} (本机 {torch.cuda.device_count()} 块 / this machine has "\
                   f"{torch.cuda.device_count()})"
    return None


def checkpoint_problem(checkpoint: Path | None) -> str | None:
    """A missing or empty checkpoint folder, said before anything is loaded."""
    if checkpoint is None:
        return None
    if not checkpoint.is_dir():
        return f"模型目录不存在 / checkpoint folder not found: {checkpoint}（xiaoai models fetch --checkpoint 可下载 / fetches it）"
    if not any(checkpoint.iterdir()):
        return f"模型目录是空的 / checkpoint folder is empty: {checkpoint}（xiaoai models fetch --checkpoint 可下载 / fetches it）"
    return None


def label_finisher(labels: LabelSettings | None, content_check: ContentCheckSettings | None) -> VideoFinisher:
    """The AI labels (and the output content check) every `xiaoai generate` video gets; raises `LabelFontError`
    or `ModelUnavailable` (one line) when they cannot be applied. Warns about `labels.visible: false`."""
    labels = labels or LabelSettings()
    content_check = content_check or ContentCheckSettings()
    report_label_settings(labels, log)
    report_content_check(content_check, log)
    if not labels.visible:
        print("警告：labels.visible 为 false，画面不带「AI生成」标识 / warning: labels.visible is false, no visible "
              "AI label in the picture", file=sys.stderr)
    return VideoFinisher.from_settings(labels, content_check)


def run_generate(args: argparse.Namespace, base: GenerationSettings | None = None, *,
                 labels: LabelSettings | None = None, content_check: ContentCheckSettings | None = None) -> int:
    """One video. `base` is the caller's `generation:` settings (`xiaoai generate` passes the ones from
    config.yaml); the command-line flags override it. Defaults when None.

    Every problem found is one bilingual line on stderr and a non-zero exit, never a traceback: the
    output, device, checkpoint folder and input image are checked before anything is generated."""
    from generation.pipeline import build_generator

    settings = _settings_from_args(args, base if base is not None else GenerationSettings())
    problem = (output_problem(args.output) or device_problem(settings.device)
               or checkpoint_problem(settings.checkpoint))
    if problem is None and args.image is not None and not Path(args.image).is_file():
        problem = f"图片不存在 / --image not found: {args.image}"
    if problem is not None:
        print(problem, file=sys.stderr)
        return 2
    try:  # the AI label in the picture + AIGC metadata, and the output content check (labels/content_check)
        finisher = label_finisher(labels, content_check)
    except (LabelFontError, ModelUnavailable) as exc:
        print(f"无法给视频加 AI 标识或做内容检查 / cannot label or check the video: {exc}", file=sys.stderr)
        return 2
    if settings.checkpoint is None:
        print("未配置模型权重：使用 tiny 随机权重演示模型（输出只是噪声画面）。"
              "No checkpoint given: using the tiny random-weight demo model.", file=sys.stderr)
    try:
        generator = build_generator(settings)
    except Exception as exc:  # noqa: BLE001 - one line for the user; the trace only at --log-level DEBUG
        from generation.loading import CheckpointError

        log.debug("cannot build the generator", exc_info=True)
        detail = " ".join(str(exc).split()) or type(exc).__name__
        hint = "" if isinstance(exc, CheckpointError) else DETAILS_HINT
        print(f"无法加载模型 / cannot load the model: {detail}{hint}", file=sys.stderr)
        return 1
    generator.finisher = finisher  # type: ignore[attr-defined]
    request = GenerationRequest(
        prompt=args.prompt,
        resolution=args.resolution or settings.variant,
        duration_s=args.duration,
        seed=args.seed,
        image_path=args.image,
        negative_prompt=args.negative_prompt,
        num_inference_steps=args.steps,
        video_num_inference_steps=args.video_steps,
        guidance_scale=args.guidance,
        video_guidance_scale=args.video_guidance,
        temp=args.temp,
    )
    bar = _Bar(not args.no_progress)
    try:
        result = generator.generate(request, settings.output_dir, progress=bar)
    except ContentBlocked as exc:
        bar.close()
        print(f"内容安全检查未通过，没有写出视频 / blocked by the content check, no video written "
              f"({exc.verdict.describe()})", file=sys.stderr)
        return 3
    except InvalidRequest as exc:
        bar.close()
        print(f"请求无效 / invalid request: {exc}", file=sys.stderr)
        return 2
    except (GenerationCancelled, KeyboardInterrupt):
        bar.close()
        print("已取消 / cancelled", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - one line for the user; the trace only at --log-level DEBUG
        bar.close()
        log.debug("generation failed", exc_info=True)
        print(f"生成失败 / generation failed: {' '.join(str(exc).split()) or type(exc).__name__}{DETAILS_HINT}",
              file=sys.stderr)
        return 1
    bar.close()
    video = result.video_path
    if args.output.suffix == ".mp4":
        args.output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(video), args.output)
        video = args.output
        if result.cover_path is not None:
            cover = args.output.with_suffix(".jpg")
            shutil.move(str(result.cover_path), cover)
    label = f" [{result.label}]" if result.label else ""
    print(f"{video} ({result.frames} frames {result.width}x{result.height}, "
          f"{result.extra.get('video_s', 0.0):.2f}s of video, made in {result.seconds:.1f}s){label}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m generation.cli")
    sub = ap.add_subparsers(dest="command", required=True)
    add_generate_parser(sub)
    args = ap.parse_args(argv)
    setup_logging("WARNING")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("已取消 / cancelled", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
