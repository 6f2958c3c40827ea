#!/usr/bin/env bash
# The GPU benchmark table of BENCHMARKS.md (H100 / H200): ours in bfloat16 against timm +
# torch.compile + bf16 autocast + SDPA + fused AdamW, each in its own process (sharing the GPU),
# taking turns step by step.
#   pip install -e ".[test,export]" && experiments/bench/gpu.sh [OUT.jsonl]
# Needs CUDA builds of jax and torch, and timm with a matching torchvision (the [export] extra
# pins torch 2.14.1 + torchvision 0.29.1 + timm). About 15 min.
# Appends JSON records to OUT.jsonl (default /tmp/bench_gpu.jsonl), prints the readable tables,
# then the markdown rows of all of OUT.jsonl for BENCHMARKS.md. PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT="${1:-/tmp/bench_gpu.jsonl}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python}"
run() {
  "$PY" -m vit_jax.bench "$@" --dtype=bfloat16 --steps=20 --json | tee -a "$OUT" | "$PY" -c \
    'import json, sys; from vit_jax.bench import report; print(report.table(json.load(sys.stdin)))'
}
# Side by side with the reference (with --vs, JAX takes 45% of the GPU memory, leaving the
# rest to PyTorch's process).
for model in ViT-S_16 ViT-B_16 ViT-L_16; do
  batch=$([ "$model" = ViT-L_16 ] && echo 64 || echo 256)
  run train --model=$model --image-size=224 --batch=$batch --vs=torch
  run infer --model=$model --image-size=224 --batch=$batch --vs=torch
done
# Ours alone with the whole GPU: the headline MFU, with XLA's and cuDNN's attention.
run train --model=ViT-B_16 --image-size=224 --batch=256
run train --model=ViT-B_16 --image-size=224 --batch=256 --set=attention_impl=cudnn
run data --model=ViT-B_16 --image-size=224 --batch=256
# The rows for BENCHMARKS.md:
"$PY" -c 'import json, sys; from vit_jax.bench import report
print(report.markdown([json.loads(line) for line in open(sys.argv[1])]))' "$OUT"
