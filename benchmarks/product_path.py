"""Seconds from the ack of a `/视频` to the MP4 handed to the chat channel, along the product's own path.

The real `App` (router, plugins, quota, SQLite queue, delivery loop) on the local channel, and the worker's
own claim loop (`bot.worker.serve_jobs`) with the Pyramid Flow generator as the worker runs it (planner,
compiled blocks, CUDA graphs, streamed decode, text bucket), followed by the finisher (AI label in the
picture, the NSFW check, x264 encode with the AIGC metadata). The weights are random, full size: the DiT and
VAE of the released configs, a T5-XXL and a CLIP-L text encoder built from their configurations (the
tokenizers are the small test ones, so token counts differ from the real T5's). Nothing is downloaded.

The worker runs in a thread of this process rather than in its own process: the wake-ups between bot and
worker are the same `WorkerSignals` events, set by the same hooks. Jobs run one after another, each with a
prompt of another length. Reported per job: ack → MP4 at the channel, the generator's sampling and decode,
and everything else (queue → claim, text encoding, label + check + encode, complete → delivered).

    python -m benchmarks.product_path --jobs 4            # on a GPU
    python -m benchmarks.product_path --tiny --jobs 1     # a dry run with the tiny models (CPU)
    python -m benchmarks.product_path --synthetic --jobs 5  # 384p frames without a model: the rest of the path
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch

from bot.app import App
from bot.channels.local import LocalChannel
from bot.settings import Settings
from bot.worker import WorkerSignals, open_queue, serve_jobs

PROMPTS = [
    "a red fox running through fresh snow in a quiet pine forest at dawn",
    "waves on a beach",
    "an old steam train crossing a stone bridge over a deep green valley, mist rising from the river below, "
    "autumn trees on both sides, late afternoon light",
    "a cat sleeping on a windowsill while rain falls outside",
    "fireworks over a city harbour at night, reflections on the water",
    "a hot air balloon drifting over lavender fields",
]


class TimedGenerator:
    """The generator as the worker sees it; keeps each job's start time and the generator's own timings."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.runs: list[dict[str, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def generate(self, request: Any, out_dir: Path, **kwargs: Any) -> Any:
        start = time.perf_counter()
        result = self.inner.generate(request, out_dir, **kwargs)
        end = time.perf_counter()
        timings = {"text_s": 0.0, "sample_s": 0.0, "decode_s": 0.0, "encode_s": end - start,  # synthetic frames
                   **(getattr(result, "extra", None) or {})}  # fmt: skip
        self.runs.append({"claimed_at": start, "returned_at": end, **timings})
        return result


def _full_text_encoder(model_name: str, device: torch.device, dtype: torch.dtype):  # type: ignore[no-untyped-def]
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from generation.text_encoders import PromptEncoder, TextEncoder
    from generation.tiny import tiny_clip_tokenizer, tiny_t5_tokenizer

    if model_name != "pyramid_flux":
        raise SystemExit("the full-size text encoders here are pyramid_flux's (CLIP-L + T5-XXL)")
    t5_cfg = T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                      relative_attention_num_buckets=32, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
                      use_cache=False, pad_token_id=0, eos_token_id=1)  # fmt: skip
    clip_cfg = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              max_position_embeddings=77, projection_dim=768, bos_token_id=1, eos_token_id=3,
                              pad_token_id=3)  # CLIP-L's text tower (pooled width 768), the test tokenizer's ids
    with torch.device(device):
        t5 = T5EncoderModel(t5_cfg).to(dtype).eval().requires_grad_(False)
        clip = CLIPTextModel(clip_cfg).to(dtype).eval().requires_grad_(False)
    enc = TextEncoder(model_name=model_name, clip_tokenizers=[tiny_clip_tokenizer()], clip_models=[clip],
                      t5_tokenizer=tiny_t5_tokenizer(), t5_model=t5, projected=False)  # fmt: skip
    return PromptEncoder(enc)


def build_generator(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from generation.bench import _random_models
    from generation.compile_cache import use_compile_cache
    from generation.components import PipelineComponents
    from generation.pipeline import PyramidFlowGenerator
    from generation.settings import GenerationSettings

    if args.synthetic:  # 384p frames made at once: everything but text encoding, sampling and decode is real
        from generation.content_check import ContentCheckSettings
        from generation.finisher import VideoFinisher
        from generation.labels import LabelSettings
        from generation.synthetic import SyntheticGenerator

        synthetic = SyntheticGenerator(steps=1, step_delay_s=0.0, fps=24, width=640, height=384)
        synthetic.finisher = VideoFinisher.from_settings(LabelSettings(producer_code="bench"),
                                                         ContentCheckSettings(enabled=not args.no_content_check))
        synthetic.finisher.check_ready()
        synthetic.finisher.warm()  # as the worker does
        return synthetic
    t = time.perf_counter()
    settings = GenerationSettings()  # the product's defaults (placement auto, compile auto, text_bucket 32, ...)
    if args.tiny:
        from generation.tiny import build_tiny_pipeline

        components = build_tiny_pipeline(args.model, device=args.device)
    else:
        device, dtype = torch.device(args.device), torch.bfloat16
        if device.type == "cuda":
            use_compile_cache(settings.compile_cache_dir)
        dit, vae = _random_models(args.model, torch.device("cpu"), dtype)  # the planner moves what it keeps
        components = PipelineComponents(model_name=args.model, variant="384p", dit=dit, vae=vae,
                                        text=_full_text_encoder(args.model, device, dtype), dtype=dtype,
                                        device=device)  # fmt: skip
    gen = PyramidFlowGenerator(components, settings)
    # the worker's finisher: the AI label, the AIGC metadata and (unless --no-content-check) the NSFW check
    from generation.content_check import ContentCheckSettings
    from generation.finisher import VideoFinisher
    from generation.labels import LabelSettings

    check = ContentCheckSettings(enabled=not args.no_content_check)
    gen.finisher = VideoFinisher.from_settings(LabelSettings(producer_code="bench"), check)
    gen.finisher.check_ready()
    gen.finisher.warm()  # as the worker does
    built = time.perf_counter() - t
    compile_s = gen.warm_up()
    prewarm_s = gen.prewarm()
    print(json.dumps({"bench": "product_path_setup", "build_s": round(built, 1), "compile_s": round(compile_s, 1),
                      "prewarm_s": round(prewarm_s, 1), "plan": gen.plan.describe() if gen.plan else None}),
          flush=True)  # fmt: skip
    return gen


def app_settings(root: Path, *, content_check: bool = True) -> Settings:
    return Settings.model_validate({
        "content_check": {"enabled": content_check},
        "storage": {"db_path": str(root / "bench.db")},
        "bot": {"data_dir": str(root / "data"), "flood_user_max": 1000, "image_caption_wait_s": 0},
        "quota": {"daily": 1000},
        "prompts": {"translator": "none", "fallback": []},
        "worker": {"output_dir": str(root / "videos"), "generator": "pyramid_flow"},
    })  # fmt: skip


async def measure(args: argparse.Namespace, root: Path) -> list[dict[str, float]]:
    settings = app_settings(root, content_check=not args.no_content_check)
    generator = TimedGenerator(build_generator(args))
    channel = LocalChannel(clock=time.perf_counter)
    app = App(settings, channel, run_worker=False)  # the worker is the thread below
    await app.start()
    assert app.queue is not None and app.delivery is not None
    signals = WorkerSignals(threading.Event(), threading.Event(), threading.Event())
    app.queue.on_queued = signals.work.set
    delivery = app.delivery

    def watch_ended() -> None:  # what the supervisor does for a worker process
        while not signals.is_set():
            if signals.ended.wait(0.5):
                signals.ended.clear()
                delivery.poke()

    worker = threading.Thread(target=serve_jobs, args=(open_queue(settings), generator, settings.worker,
                                                       "bench-worker", signals), daemon=True)  # fmt: skip
    watcher = threading.Thread(target=watch_ended, daemon=True)
    worker.start()
    watcher.start()
    rows: list[dict[str, float]] = []
    try:
        await asyncio.sleep(0.5)  # the worker is idle in its wait, as in a running bot
        for i in range(args.jobs):
            before = len(channel.videos())
            await channel.say(f"/视频 {PROMPTS[i % len(PROMPTS)]}", sender_id=f"u{i}", sender_name=f"user{i}",
                              chat_id="bench-room")  # fmt: skip
            ack_at = channel.sent[-1].at  # the ack is sent before `say` returns
            ok = await channel.wait_for(lambda sent, n=before: sum(1 for s in sent if s.video) > n,
                                        timeout=args.timeout)  # fmt: skip
            if not ok:
                raise SystemExit(f"job {i}: no video within {args.timeout} s")
            video_at = [s.at for s in channel.sent if s.video][-1]
            run = generator.runs[-1]
            gen_s = run["sample_s"] + run["decode_s"]
            row = {
                "job": i, "ack_to_mp4_s": video_at - ack_at, "sample_s": run["sample_s"], "decode_s": run["decode_s"],
                "outside_sample_decode_s": video_at - ack_at - gen_s,
                "ack_to_claim_s": run["claimed_at"] - ack_at, "text_s": run["text_s"],
                "finish_s": run["encode_s"],  # label + NSFW check + encode with the AIGC metadata
                "returned_to_delivered_s": video_at - run["returned_at"],
            }  # fmt: skip
            rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
            print(json.dumps({"bench": "product_path", **rows[-1]}), flush=True)
    finally:
        signals.set()
        await app.stop()
        worker.join(30)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=4)
    p.add_argument("--model", default="pyramid_flux", choices=["pyramid_flux"])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny random models (a dry run of the path, CPU)")
    p.add_argument("--synthetic", action="store_true",
                   help="640x384, 120-frame synthetic videos made at once: the path around the model, on any machine")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--no-content-check", action="store_true",
                   help="leave the NSFW check of the frames out (where its model is not installed)")
    args = p.parse_args(argv)
    if (args.tiny or args.synthetic) and args.device == "cuda" and not torch.cuda.is_available():
        args.device = "cpu"
    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(measure(args, Path(tmp)))
    later = rows[1:] or rows
    summary = {key: round(statistics.median(r[key] for r in later), 3)
               for key in ("ack_to_mp4_s", "sample_s", "decode_s", "outside_sample_decode_s", "ack_to_claim_s",
                           "text_s", "finish_s", "returned_to_delivered_s")}  # fmt: skip
    print(json.dumps({"bench": "product_path_summary", "jobs": len(rows), "first_ack_to_mp4_s": rows[0]["ack_to_mp4_s"],
                      "median_of_later": summary}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
