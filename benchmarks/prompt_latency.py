"""Added latency per `/video` request from the prompt pipeline, per translator backend.

Tiny models and a local server, so this measures our plumbing (detection, safety normalisation,
thread hand-off, HTTP round trip, enhancement) — not the speed of a real opus-mt model or a real LLM.

    .venv/bin/python benchmarks/prompt_latency.py [--requests 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bot.prompts import PromptPipeline, PromptSettings  # noqa: E402
from bot.prompts.devtools import ChatCompletionsServer, Reply, build_tiny_marian  # noqa: E402

PROMPTS = [
    "一只柴犬在雪地里奔跑",
    "一隻柴犬在雪地裡奔跑，鏡頭緩緩推進",
    "一只 shiba inu 在雪地里 running 🐕！",
    "夕阳下的海边，海浪拍打着礁石。镜头从高空缓缓下降。",
]


def _summary(samples_s: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples_s)
    return {
        "n": len(ms),
        "median_ms": statistics.median(ms),
        "p95_ms": ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))],
        "mean_ms": statistics.fmean(ms),
        "max_ms": ms[-1],
    }


async def _measure(pipe: PromptPipeline, n: int, *, raw: bool = False) -> tuple[float, list[float], str]:
    started = time.perf_counter()
    first = await pipe.prepare(PROMPTS[0], raw=raw)
    cold = time.perf_counter() - started
    samples: list[float] = []
    for i in range(n):
        t0 = time.perf_counter()
        prepared = await pipe.prepare(PROMPTS[i % len(PROMPTS)], raw=raw)
        samples.append(time.perf_counter() - t0)
        assert not prepared.refused
    return cold, samples, first.translator


async def run(n: int, marian_beams: int) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, ChatCompletionsServer() as server:
        model_dir = build_tiny_marian(Path(tmp) / "opus-mt-zh-en")
        server.set_default(Reply(content="A shiba inu running in the snow"))
        openai = {"base_url": server.base_url, "timeout_s": 2.0, "retries": 0}
        marian = {"model_dir": str(model_dir), "num_beams": marian_beams, "max_new_tokens": 64}
        cases: dict[str, tuple[dict[str, Any], bool]] = {
            "none (detect + safety + enhance)": ({"translator": "none"}, False),
            "raw flag (-raw)": ({"translator": "openai", "openai": openai}, True),
            "marian (tiny, CPU thread)": ({"translator": "marian", "fallback": [], "marian": marian}, False),
            "openai (local 127.0.0.1 server)": (
                {"translator": "openai", "fallback": [], "openai": openai},
                False,
            ),
        }
        for name, (section, raw) in cases.items():
            pipe = PromptPipeline.from_settings(PromptSettings.model_validate(section), environ={})
            cold, samples, backend = await _measure(pipe, n, raw=raw)
            results[name] = {"backend": backend, "first_request_ms": cold * 1000, **_summary(samples)}
            pipe.close()
        # fallback: the endpoint fails fast (HTTP 500, no retry) and the local model answers
        server.set_default(Reply(kind="status", status=500))
        section = {"translator": "openai", "fallback": ["marian"], "openai": openai, "marian": marian}
        pipe = PromptPipeline.from_settings(PromptSettings.model_validate(section), environ={})
        cold, samples, backend = await _measure(pipe, n)
        results["openai HTTP 500 -> marian fallback"] = {
            "backend": backend,
            "first_request_ms": cold * 1000,
            **_summary(samples),
        }
        pipe.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--marian-beams", type=int, default=4)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the fallback case logs one warning per request
    logging.getLogger("transformers").setLevel(logging.ERROR)
    results = asyncio.run(run(args.requests, args.marian_beams))
    print(f"{'backend':38} {'1st req':>9} {'median':>8} {'p95':>8} {'mean':>8}  (ms, n={args.requests})")
    for name, r in results.items():
        print(
            f"{name:38} {r['first_request_ms']:9.1f} {r['median_ms']:8.2f} {r['p95_ms']:8.2f} {r['mean_ms']:8.2f}"
            f"  -> {r['backend']}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
