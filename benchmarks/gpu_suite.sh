#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md, in device calls of under 10 minutes each (speed and more
# give every row of the issue-5 table; ab says what each switch is worth).
# Usage (on the GPU machine, repo root): bash benchmarks/gpu_suite.sh OUT_DIR [speed|more|caps|final|next|bucket|bucket2|verify|ab|restart|768]
#   speed: smoke checks (placements, side-stream decode, graphs under offload), miniflux 384p fast path
#          (+ per-call DiT times), the 8 GiB and 4.5 GiB caps as planned, 384p without compile and without
#          streaming (separate sampling / decode peaks)
#   more:  sd3 384p fast path, miniflux 768p temp=31, fast-vs-plain equality
#   caps:  the 8 GiB and 4.5 GiB caps, sd3 384p fast path, kernel-kind profile of single DiT layouts
#   final: miniflux 384p fast path, the 8 GiB and 4.5 GiB caps, miniflux 768p temp=31, fast-vs-plain equality
#   next:  the 8 GiB and 4.5 GiB caps on the fixed planner, a new prompt length per video (graph capture per
#          text layout), 384p without compile, kernel kinds of the new layout
#   bucket: text_bucket with the text attended apart (equality incl. the bucket path, a new prompt length per
#          video), the 8 GiB cap on the fixed planner, and the fast path without the bucket in the same call
#   bucket2: kernel kinds with and without text_bucket, the 8 GiB cap on the pool-aware planner
#   verify: the fused text part of text_bucket: GPU equality, a new prompt length per video, kernel kinds
#   cap8tile: the 8 GiB cap with 128 and with 256 px decode tiles after sampling (reserved peaks)
#   restart: compile cache cold vs warm (two processes, one cache folder), the 8 GiB cap after the uint8 fix
#   round2a / round2b / round2c: issue 23 round two (the new kernels, the default config, sd3, the product
#          path, step caching, the memory caps)
#   ab:    one switch off at a time (fusion, compile, side stream) and the cap variants left out of `speed`
# Each step has its own time limit, so one failure keeps the rest. Steps that compile fall back to eager
# when this machine cannot compile, and later steps then stop trying.
set -u
out="${1:-/tmp/bench}"; part="${2:-speed}"; mkdir -p "$out"
py="${PYTHON:-python3}"
run_step() { local name="$1" limit="$2"; shift 2; echo "== $name ($(date +%T))"; timeout "$limit" "$py" "$@" 2>&1 | tee "$out/$name.log" | grep -v "^\s*$" | grep -v Warning | tail -n 14; }
step() { local name="$1" limit="$2"; shift 2; run_step "$name" "$limit" -m generation.bench "$@"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$out/gpu.txt"
"$py" -c "import triton; print('triton', triton.__version__)" 2>&1 | tail -1 | tee -a "$out/gpu.txt"
( command -v gcc || command -v cc || echo "no C compiler" ) | tee -a "$out/gpu.txt"
# --compile unless an earlier step of this call found it cannot compile here (the bench then runs eagerly)
fast() { if ! grep -q "compile failed" "$out"/*.log 2>/dev/null; then echo "--compile"; fi; }
case "$part" in
speed)
  step tiny 90 tiny
  step flux384_fast 180 full --model pyramid_flux --graphs --stream --side-stream --planner --per-call --repeat 3 --compile
  step flux384_cap8_planner 80 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 $(fast)
  step flux384_cap4p5_planner_graphs 140 full --model pyramid_flux --graphs --offload-graphs --stream --planner --mem-cap-gib 4.5 --repeat 1
  step flux384_graphs_nostream 70 full --model pyramid_flux --graphs --repeat 2
  ;;
more)
  step mmdit384_fast 150 full --model pyramid_mmdit --graphs --stream --side-stream --planner --per-call --repeat 3 --compile
  step flux768_t31_fast 330 full --model pyramid_flux --variant 768p --temp 31 --graphs --stream --side-stream --planner --per-call --repeat 1 $(fast)
  step equal 110 equal --models pyramid_flux --temp 3 $(fast)
  ;;
caps)
  step tiny 60 tiny
  run_step profile_layouts 150 benchmarks/gpu_profile.py layouts --model pyramid_flux --compile
  step flux384_cap8_planner 110 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 $(fast)
  step flux384_cap4p5_planner_graphs 120 full --model pyramid_flux --graphs --offload-graphs --stream --planner --mem-cap-gib 4.5 --repeat 1
  step mmdit384_fast 150 full --model pyramid_mmdit --graphs --stream --side-stream --planner --per-call --repeat 3 $(fast)
  ;;
final)  # one device call: every row of the table on the latest code
  step flux384_fast 120 full --model pyramid_flux --graphs --stream --side-stream --planner --per-call --repeat 2 --compile
  step flux384_cap8_planner 90 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 $(fast)
  step flux384_cap4p5_planner_graphs 100 full --model pyramid_flux --graphs --offload-graphs --stream --planner --mem-cap-gib 4.5 --repeat 1
  step flux768_t31_fast 230 full --model pyramid_flux --variant 768p --temp 31 --graphs --stream --side-stream --planner --repeat 1 $(fast)
  step equal 60 equal --models pyramid_flux --temp 3 $(fast)
  ;;
next)  # the rows the 2026-12-01 calls left open: both caps on the fixed planner, compile's own worth, a new profile
  step flux384_cap8_planner 110 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 --compile
  step flux384_cap4p5_planner_graphs 110 full --model pyramid_flux --graphs --offload-graphs --stream --planner --mem-cap-gib 4.5 --repeat 2
  step flux384_vary_text 100 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 3 --vary-text --compile
  step flux384_vary_text_bucket 100 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 3 --vary-text --text-bucket 32 --compile
  step flux384_nocompile 70 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2
  run_step profile_layouts 100 benchmarks/gpu_profile.py layouts --model pyramid_flux --compile --merge 256
  ;;
bucket)  # 2026-12-02: the text_bucket split (text keys apart, flash for images), the 8 GiB row, a baseline
  step equal 100 equal --models pyramid_flux --temp 3 --compile
  step flux384_bucket 130 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 3 --vary-text --text-bucket 32 --compile
  step flux384_cap8_planner 150 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 --compile
  step flux384_fast 100 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2 --compile
  ;;
bucket2)  # why text_bucket costs 3 s a video (kernel kinds with and without it), the 8 GiB row on the pool-aware plan
  run_step profile_bucket 130 benchmarks/gpu_profile.py layouts --model pyramid_flux --compile --labels u2s0 u15s0 u15s2 --text-bucket 0 32 --replays 10 --profiled 3
  step flux384_cap8_planner 150 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 --compile
  ;;
verify)  # for the next session: the fused text part of text_bucket (now the default) timed and checked
  step equal 170 equal --models pyramid_flux --temp 3 --compile
  step flux384_bucket 130 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 3 --vary-text --text-bucket 32 --compile
  run_step profile_bucket 130 benchmarks/gpu_profile.py layouts --model pyramid_flux --compile --labels u2s0 u15s0 u15s2 --text-bucket 0 32 --replays 10 --profiled 3
  ;;
ab)  # what each switch is worth, and the cap variants `speed` leaves out
  step flux384_nofuse 80 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2 --no-fuse $(fast)
  step flux384_nocompile 80 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2
  step flux384_mainstream 80 full --model pyramid_flux --graphs --stream --planner --repeat 2 $(fast)
  step flux384_cap8_gpu 90 full --model pyramid_flux --graphs --stream --side-stream --mem-cap-gib 8 --repeat 2 $(fast)
  step flux384_cap4p5_planner 250 full --model pyramid_flux --graphs --stream --planner --mem-cap-gib 4.5 --repeat 1
  ;;
restart)  # 2026-12-06: the compile cache across worker restarts (a cold cache, then the same cache in a new
  # process), and the 8 GiB row with the chunked uint8 step after the decode (it ran out of memory there)
  export TORCHINDUCTOR_CACHE_DIR="$out/cc/inductor" TRITON_CACHE_DIR="$out/cc/triton"
  step flux384_cache_cold 220 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2 --compile
  step flux384_cache_warm 150 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2 --compile
  step flux384_cap8_planner 150 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 --compile
  ;;
cap8tile)  # 2026-12-06: under the 8 GiB cap, the decode after sampling with the plan's 128 px tiles and with
  # 256 px tiles; the allocator's reserved peak (what the cap is enforced on) is now in the output
  export TORCHINDUCTOR_CACHE_DIR="$out/cc/inductor" TRITON_CACHE_DIR="$out/cc/triton"
  step flux384_cap8_tile128 150 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 --compile --decode-tile 128
  step flux384_cap8_tile256 150 full --model pyramid_flux --graphs --stream --side-stream --planner --mem-cap-gib 8 --repeat 2 --compile --decode-tile 256
  ;;
round2a)  # 2026-12-06, issue 23 round two: the new kernels checked on the GPU, the default config (a new
  # prompt length per video, text_bucket 32) from a cold compile cache with the graphs captured ahead, the
  # same prompt with the kernels on and then off in one process (warm cache), and the reference beside them
  export TORCHINDUCTOR_CACHE_DIR="$out/cc/inductor" TRITON_CACHE_DIR="$out/cc/triton"
  step equal 80 equal --models pyramid_flux --temp 2
  step flux384_default_cold 170 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 3 --vary-text --text-bucket 32 --prewarm --compile
  step flux384_same_ab 170 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 3 --prewarm --compile --ab-off
  ;;
round2b)  # 2026-12-06: kernel kinds per layout with the new kernels, sd3 as configured by default, the product
  # path (ack → MP4 at the channel), opt-in step caching beside the exact path
  export TORCHINDUCTOR_CACHE_DIR="$out/cc/inductor" TRITON_CACHE_DIR="$out/cc/triton"
  run_step profile_layouts 120 benchmarks/gpu_profile.py layouts --model pyramid_flux --compile --labels u2s0 u15s0 u15s2 --text-bucket 0 32 --replays 10 --profiled 3
  step mmdit384_default 150 full --model pyramid_mmdit --graphs --stream --side-stream --planner --repeat 3 --vary-text --text-bucket 32 --prewarm --compile
  run_step product_path 140 -m benchmarks.product_path --jobs 4 --no-content-check
  step flux384_step_cache 120 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2 --vary-text --text-bucket 32 --prewarm --compile --step-cache 0.1
  ;;
round2c)  # 2026-12-06: the varlen attention and the vectorised norm/RoPE kernel checked on the GPU; the default
  # config with them, then in the same process with every hand-written kernel off, then with step caching; the
  # product path (ack → MP4 at the channel)
  export TORCHINDUCTOR_CACHE_DIR="$out/cc/inductor" TRITON_CACHE_DIR="$out/cc/triton"
  step equal 50 equal --models pyramid_flux --temp 2
  step flux384_default_ab_cache 180 full --model pyramid_flux --graphs --stream --side-stream --planner --repeat 2 --vary-text --text-bucket 32 --prewarm --compile --ab-off --step-cache 0.1
  grep -ho '"step_cache": [0-9.]*, "dit_calls": [0-9]*, "reused_steps": [0-9]*, "rel_l2_vs_exact_first": [0-9.e-]*' "$out/flux384_default_ab_cache.log"
  grep -h "varlen flash\|GELU in the GEMM" "$out"/*.log | cut -c1-200
  ;;
768)
  step flux768_t31_fast 420 full --model pyramid_flux --variant 768p --temp 31 --graphs --stream --side-stream --planner --per-call --repeat 1 $(fast)
  ;;
esac
