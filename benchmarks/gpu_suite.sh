#!/usr/bin/env bash
# One device call: parity on the GPU, fast-vs-plain equality, and the SPEC §11.1 timing runs.
# Usage (on the GPU machine, repo root): bash benchmarks/gpu_suite.sh OUT_DIR [part]
# part: 384 (default) | 768 | caps. Each step has its own time limit so one failure keeps the rest.
set -u
out="${1:-/tmp/bench}"; part="${2:-384}"; mkdir -p "$out"
py="${PYTHON:-python3}"
step() { local name="$1" limit="$2"; shift 2; echo "== $name"; timeout "$limit" "$py" -m generation.bench "$@" 2>&1 | tee "$out/$name.log" | grep -v "^\s*$" | tail -n 12; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
"$py" -c "import torch; print('torch', torch.__version__)" | tee -a "$out/gpu.txt"
case "$part" in
384)
  step parity 90 parity
  step equal 150 equal --temp 3
  step flux384_graphs_stream 150 full --model pyramid_flux --graphs --stream --repeat 2
  step flux384_eager 120 full --model pyramid_flux --stream --repeat 1
  step mmdit384_graphs_stream 150 full --model pyramid_mmdit --graphs --stream --repeat 2
  ;;
768)
  step flux768_t31_graphs_stream 420 full --model pyramid_flux --variant 768p --temp 31 --graphs --stream --repeat 1
  ;;
caps)  # written after the last GPU call of 2026-12-01: not run yet
  step flux384_cap8 200 full --model pyramid_flux --graphs --stream --repeat 2 --mem-cap-gib 8 --planner
  step flux384_cap4p5 400 full --model pyramid_flux --graphs --stream --repeat 1 --mem-cap-gib 4.5 --planner
  ;;
esac
