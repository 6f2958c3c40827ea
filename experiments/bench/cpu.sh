#!/usr/bin/env bash
# The CPU benchmark table of BENCHMARKS.md: ours against the PyTorch reference (transformers
# ViT, SDPA) in the same process, same threads, interleaved step by step.
#   experiments/bench/cpu.sh [OUT.jsonl]     (from anywhere; about 20 min on 2 cores)
# Appends one JSON object per measurement to OUT.jsonl (default /tmp/bench_cpu.jsonl), prints
# the readable tables, then the markdown rows of all of OUT.jsonl for BENCHMARKS.md. Run it on
# a quiet machine: the load average goes into each record. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-/tmp/bench_cpu.jsonl}"
export JAX_PLATFORMS=cpu PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
run() {
  "$PY" -m vit_jax.bench "$@" --json | tee -a "$OUT" | "$PY" -c \
    'import json, sys; from vit_jax.bench import report; print(report.table(json.load(sys.stdin)))'
}
# ViT-Ti/16 at 224, batch 32 (ImageNet-1k head).
run train --model=ViT-Ti_16 --image-size=224 --batch=32 --vs=torch --steps=10
run infer --model=ViT-Ti_16 --image-size=224 --batch=32 --vs=torch --steps=10
# The data-scaling study's CIFAR-10 ViT: 32x32, patch 4, width 192, depth 12, batch 128.
run train --model=ViT-Ti_4 --image-size=32 --batch=128 --num-classes=10 --vs=torch --steps=10
run infer --model=ViT-Ti_4 --image-size=32 --batch=128 --num-classes=10 --vs=torch --steps=10
# The input pipeline against the train step's consumption, on CIFAR-10 itself.
CIFAR10="$("$PY" -c 'from configs import cifar10; print(cifar10.CIFAR10)')"
run data --model=ViT-Ti_4 --image-size=32 --batch=128 --num-classes=10 --steps=10 \
  --dataset="folder:$CIFAR10"
# The rows for BENCHMARKS.md:
"$PY" -c 'import json, sys; from vit_jax.bench import report
print(report.markdown([json.loads(line) for line in open(sys.argv[1])]))' "$OUT"
