#!/usr/bin/env bash
# The GPU data-scaling study: the `cifar10` preset of configs/data_scaling.py (BiT ResNet
# R26x0.5, the R8+ViT-Ti/4 hybrid and ViT-Ti/4 at 12 / 24 / 36 layers on six CIFAR-10 subsets,
# 1k..50k images; budget rule, early stopping, 2 seeds up to 2k images), sized for about 9
# minutes of wall time on one H200 (an estimate until it has run there).
#
#   experiments/data_scaling/gpu_study.sh OUT_DIR [--config.<field>=<value> ...] [--max_parallel=K]
#
# Arguments after OUT_DIR go to `python -m vit_jax.sweep`: config overrides, or --max_parallel=K
# to train K points at once on the one GPU (each preallocates 1/K of JAX's share of its memory;
# these models are small for an H200, but whether K > 1 finishes more points in the time has not
# been measured).
# Writes OUT_DIR/results.csv, REPORT.md, the figures, report.json, grid.json (if the preset has
# a grid), sweep_config.json, sweep.log (the sweep's progress), device.txt (device and
# versions) and points/<point>/log.txt; checkpoints stay in $WORK (default /tmp/gpu_study),
# so rerunning with the same WORK resumes. TIME_LIMIT (seconds, default 510; empty: none)
# stops the sweep when the time is up, its running points at a checkpoint, and it still
# writes results.csv and the report of the points finished so far: on a machine lent for
# 10-minute calls (a run killed at the call's limit would bring back only its log) it returns
# what it did. PRESET=smoke runs the same steps in seconds on a CPU (the test of this script).
# PYTHON picks the interpreter (default python3).
#
# On a bare GPU machine without network (Python with jax[cuda], flax, optax, orbax, numpy,
# scipy, matplotlib, pillow, but no ml-collections, clu or grain):
#   1. beforehand, on a machine with network, from the project's root: download the missing
#      wheels for that Python (pip download --no-deps --only-binary=:all: ml-collections clu
#      grain array-record portpicker tensorboardx) into ./.whl, and copy the CIFAR-10 archive
#      (image-folder layout, train/<class>/*, test/<class>/*, as .tar.gz) to
#      ./.data/cifar10.tar.gz; both folders are ignored by git;
#   2. there, with the checkout (and .whl, .data) as the working directory, run this script:
#      it installs the wheels into /tmp/site (no dependency resolution, nothing downloaded)
#      and uses the project through PYTHONPATH=$PWD (never `pip install -e .` offline).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT_DIR="$(mkdir -p "${1:?usage: gpu_study.sh OUT_DIR [sweep flags ...]}" \
  && cd "$1" && pwd)"
shift
PY="${PYTHON:-python3}"
PRESET="${PRESET:-cifar10}"
WORK="${WORK:-/tmp/gpu_study}"
TIME_LIMIT="${TIME_LIMIT-510}"
if ! "$PY" -c 'import ml_collections' 2>/dev/null; then
  compgen -G '.whl/*.whl' >/dev/null || { echo 'Error: ml_collections is missing and there' \
    'are no wheels in .whl/ to install it from.' >&2; exit 1; }
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${VIT_JAX_DATA:-}" ] && [ -f .data/cifar10.tar.gz ]; then
  export VIT_JAX_DATA="$PWD/.data"
fi
# All points of one model share their step programs: the persistent cache compiles each once.
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-$WORK/jax_cache}"
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0
mkdir -p "$WORK"
"$PY" -c 'import jax, jaxlib, flax, optax, platform
print("devices:", jax.devices()); print("python", platform.python_version(), "jax",
      jax.__version__, "jaxlib", jaxlib.__version__, "flax", flax.__version__, "optax",
      optax.__version__)' > "$OUT_DIR/device.txt"
start=$(date +%s)
status=0
"$PY" -m vit_jax.sweep --config="configs/data_scaling.py:$PRESET" --workdir="$WORK/sweep" \
  --config.base.data.cache_dir="$WORK/data_cache" --config.base.checkpoint.keep=1 \
  ${TIME_LIMIT:+--time_limit="$TIME_LIMIT"} "$@" \
  2>&1 | tee -a "$OUT_DIR/sweep.log" || status=$?
echo "wall time: $(( $(date +%s) - start )) s (exit status $status)" | tee -a "$OUT_DIR/device.txt"
# The readable results, never the checkpoints.
for f in "$WORK"/sweep/{results.csv,REPORT.md,report.json,grid.json,sweep_config.json} \
         "$WORK"/sweep/*.png; do
  if [ -f "$f" ]; then cp "$f" "$OUT_DIR/"; fi
done
(cd "$WORK/sweep" && find . -name log.txt -o -name error.txt -o -name result.json) | \
  while read -r f; do mkdir -p "$OUT_DIR/points/$(dirname "$f")"; \
    cp "$WORK/sweep/$f" "$OUT_DIR/points/$f"; done
exit "$status"
