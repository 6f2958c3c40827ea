#!/usr/bin/env bash
# The GPU benchmark table of BENCHMARKS.md (H100 / H200): ours in bfloat16 against timm +
# torch.compile + bf16 autocast + SDPA in the same process, interleaved step by step.
#   pip install -e ".[test]" timm && experiments/bench/gpu.sh [OUT.jsonl]
# Needs a CUDA build of jax and torch and timm (timm needs torchvision). About 15 min.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-/tmp/bench_gpu.jsonl}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
bench() {
  "$PY" -m vit_jax.bench "$@" --dtype=bfloat16 --steps=20 --json | tee -a "$OUT" |
    "$PY" -c 'import json, sys; from vit_jax.bench import report; print(report.table(json.load(sys.stdin)))'
}
for model in ViT-S_16 ViT-B_16 ViT-L_16; do
  batch=$([ "$model" = ViT-L_16 ] && echo 128 || echo 256)
  bench train --model=$model --image-size=224 --batch=$batch --vs=torch
  bench infer --model=$model --image-size=224 --batch=$batch --vs=torch
done
# Ours only, without the reference's share of the GPU memory: the headline MFU.
bench train --model=ViT-B_16 --image-size=224 --batch=256
bench data --model=ViT-B_16 --image-size=224 --batch=256
