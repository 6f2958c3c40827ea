#!/usr/bin/env bash
# The CPU benchmark table of BENCHMARKS.md: ours against the PyTorch reference (transformers
# ViT, SDPA; float32 and, on CPUs with AMX-BF16 / AVX512-BF16, bfloat16 autocast) and, with
# VS_REF=<dir of a google-research/vision_transformer checkout>, the original code. Every
# subject runs in its own process; they take turns step by step (see BENCHMARKS.md).
#   [VS_REF=<dir>] experiments/bench/cpu.sh [OUT.jsonl]    (from anywhere)
# First all cores (about 20 min on 2 quiet cores), then one core (`taskset -c 0`: one thread
# each, CPU seconds per step, the figure other processes' load changes least; about 15 min).
# Appends one JSON object per measurement to OUT.jsonl (default /tmp/bench_cpu.jsonl), prints
# the readable tables, then the markdown rows of all of OUT.jsonl for BENCHMARKS.md. The load
# average goes into each record. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-/tmp/bench_cpu.jsonl}"
export JAX_PLATFORMS=cpu PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
REF=(--vs=torch ${VS_REF:+--vs-ref="$VS_REF"})
run() {
  "$@" --json | tee -a "$OUT" | "$PY" -c \
    'import json, sys; from vit_jax.bench import report; print(report.table(json.load(sys.stdin)))'
}
VIT_TI16=(--model=ViT-Ti_16 --image-size=224 --batch=32)
# The data-scaling study's CIFAR-10 ViT: 32x32, patch 4, width 192, depth 12, batch 128.
CIFAR=(--model=ViT-Ti_4 --image-size=32 --batch=128 --num-classes=10)
for cores in all one; do
  pin=(); steps=10
  [ "$cores" = one ] && pin=(taskset -c 0) && steps=3
  for mode in train infer; do
    for shape in VIT_TI16 CIFAR; do
      declare -n args="$shape"
      run "${pin[@]}" "$PY" -m vit_jax.bench "$mode" "${args[@]}" "${REF[@]}" --steps=$steps
    done
  done
done
# The input pipeline against the train step's consumption, on CIFAR-10 itself.
CIFAR10="$("$PY" -c 'from configs import cifar10; print(cifar10.CIFAR10)')"
run "$PY" -m vit_jax.bench data "${CIFAR[@]}" --steps=10 --dataset="folder:$CIFAR10"
# The rows for BENCHMARKS.md:
"$PY" -c 'import json, sys; from vit_jax.bench import report
print(report.markdown([json.loads(line) for line in open(sys.argv[1])]))' "$OUT"
