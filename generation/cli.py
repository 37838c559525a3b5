"""`xiaoai generate` (also `python -m generation.cli generate ...`): one video from the command line."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path

from generation.api import GenerationCancelled, GenerationRequest, InvalidRequest, Progress
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


def run_generate(args: argparse.Namespace, base: GenerationSettings | None = None) -> int:
    """One video. `base` is the caller's `generation:` settings (`xiaoai generate` passes the ones from
    config.yaml); the command-line flags override it. Defaults when None."""
    from generation.pipeline import build_generator

    settings = _settings_from_args(args, base if base is not None else GenerationSettings())
    if settings.checkpoint is None:
        print("未配置模型权重：使用 tiny 随机权重演示模型（输出只是噪声画面）。"
              "No checkpoint given: using the tiny random-weight demo model.", file=sys.stderr)
    try:
        generator = build_generator(settings)
    except Exception as exc:  # noqa: BLE001 - shown to the user, full trace in the log
        log.exception("cannot build the generator")
        print(f"无法加载模型 / cannot load the model: {exc}", file=sys.stderr)
        return 1
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
    except InvalidRequest as exc:
        bar.close()
        print(f"请求无效 / invalid request: {exc}", file=sys.stderr)
        return 2
    except (GenerationCancelled, KeyboardInterrupt):
        bar.close()
        print("已取消 / cancelled", file=sys.stderr)
        return 130
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
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
