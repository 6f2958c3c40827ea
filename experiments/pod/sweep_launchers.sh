#!/usr/bin/env bash
# Launcher templates for `python -m vit_jax.sweep --launcher=...`: each sweep point becomes one
# multi-process job. Only `local` is runnable here (tests/test_sweep.py runs it); `slurm` and
# `tpu` are written from the SLURM srun manual and the Cloud TPU "Run JAX code on TPU slices"
# guide. Usage:  experiments/pod/sweep_launchers.sh local|slurm|tpu [sweep flags...]
#
# Placeholders the sweep fills in per point: {point_flags} (the flags that make
# `python -m vit_jax.sweep` train that point, shell-quoted), {workdir}, {index},
# {num_processes} (--num_processes), {coordinator} (127.0.0.1:<free port>), {python}.
# A point is done when its workdir has result.json; rerunning the sweep skips those and
# retries the rest. SIGTERM to the sweep goes to each launcher's process group: srun passes it
# on to its tasks (they checkpoint and exit); gcloud ssh does not reach the TPU workers (stop
# those with `pkill -TERM -f vit_jax.sweep` through another `--worker=all` ssh).
set -euo pipefail
CONFIG=${CONFIG:-configs/data_scaling.py:smoke}
WORKDIR=${WORKDIR:-/tmp/sweep}
case "${1:-}" in
  local)  # N processes per point on this machine, N CPU devices each (gloo collectives)
    shift
    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
    JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo python -m vit_jax.sweep --config="$CONFIG" \
      --workdir="$WORKDIR" --num_processes=2 --max_parallel=1 "$@" \
      --launcher='experiments/pod/local_processes.sh {num_processes} {coordinator} {python} -m vit_jax.sweep {point_flags}'
    ;;
  slurm)  # inside an allocation (salloc / sbatch) of 4 nodes: two 2-node points at a time
    shift
    python -m vit_jax.sweep --config="$CONFIG" --workdir="$WORKDIR" --max_parallel=2 "$@" \
      --launcher='srun --exclusive --nodes=2 --ntasks-per-node=8 --gpus-per-node=8 --kill-on-bad-exit=1 python -m vit_jax.sweep {point_flags}'
    ;;
  tpu)  # every point on all workers of the slice vit-pod-0, one after another (WORKDIR=gs://...)
    shift
    : "${ZONE:?set ZONE}"
    python -m vit_jax.sweep --config="$CONFIG" --workdir="$WORKDIR" --max_parallel=1 "$@" \
      --launcher="gcloud compute tpus tpu-vm ssh vit-pod-0 --zone=$ZONE --worker=all --command=\"cd vit_jax && python -m vit_jax.sweep {point_flags} --distributed=on\""
    ;;
  *)
    echo "usage: $0 local|slurm|tpu [sweep flags...]" >&2
    exit 2
    ;;
esac
