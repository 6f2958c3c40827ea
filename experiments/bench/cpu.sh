#!/usr/bin/env bash
# The CPU benchmark table of BENCHMARKS.md: ours against the PyTorch reference (transformers
# ViT, SDPA) in the same process, same threads, interleaved step by step.
#   experiments/bench/cpu.sh [OUT.jsonl]     (from the repository root; about 20 min, 2 cores)
# Appends one JSON object per measurement to OUT.jsonl (default /tmp/bench_cpu.jsonl) and
# prints the readable tables. Run it on a quiet machine: the load average goes into each record.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-/tmp/bench_cpu.jsonl}"
export JAX_PLATFORMS=cpu PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
bench() {
  "$PY" -m vit_jax.bench "$@" --vs=torch --steps=10 --json | tee -a "$OUT" |
    "$PY" -c 'import json, sys; from vit_jax.bench import report; print(report.table(json.load(sys.stdin)))'
}
# ViT-Ti/16 at 224, batch 32 (ImageNet-1k head).
bench train --model=ViT-Ti_16 --image-size=224 --batch=32
bench infer --model=ViT-Ti_16 --image-size=224 --batch=32
# The data-scaling study's CIFAR-10 ViT: 32x32, patch 4, width 192, depth 12, batch 128.
bench train --model=ViT-Ti_4 --image-size=32 --batch=128 --num-classes=10
bench infer --model=ViT-Ti_4 --image-size=32 --batch=128 --num-classes=10
# The input pipeline against the train step's consumption, on CIFAR-10 itself.
"$PY" -m vit_jax.bench data --model=ViT-Ti_4 --image-size=32 --batch=128 --num-classes=10 \
  --dataset="folder:$("$PY" -c 'from configs import cifar10; print(cifar10.CIFAR10)')" --json | tee -a "$OUT" |
  "$PY" -c 'import json, sys; from vit_jax.bench import report; print(report.table(json.load(sys.stdin)))'
