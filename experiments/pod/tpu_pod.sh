#!/usr/bin/env bash
# NOT RUNNABLE HERE (no Google Cloud access from this machine): the commands to train on a
# Cloud TPU pod slice, written from https://cloud.google.com/tpu/docs/jax-pods and the JAX
# multi-process guide. Run it from a machine with the gcloud CLI, step by step:
#   experiments/pod/tpu_pod.sh create | install | train | sweep | delete
# Data (TFDS) and the workdir live in a GCS bucket every worker can read and write.
set -euo pipefail
: "${PROJECT_ID:?set PROJECT_ID}" "${BUCKET:?set BUCKET, e.g. gs://my-bucket}"
TPU_NAME=${TPU_NAME:-vit-pod}
ZONE=${ZONE:-us-central2-b}
ACCELERATOR_TYPE=${ACCELERATOR_TYPE:-v4-32}        # 16 chips, 4 hosts
RUNTIME_VERSION=${RUNTIME_VERSION:-tpu-ubuntu2204-base}
CONFIG=${CONFIG:-configs/pretrain.py:B_16,i1k}
MESH=${MESH:-"(('fsdp', -1),)"}
RUN=${RUN:-b16_i1k}
REPO=${REPO:-https://github.com/<you>/vit_jax.git}

on_all_workers() {  # the same command on every host of the slice, at once
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --project="$PROJECT_ID" --zone="$ZONE" \
    --worker=all --command="$1"
}

case "${1:-}" in
  create)
    gcloud compute tpus tpu-vm create "$TPU_NAME" --project="$PROJECT_ID" --zone="$ZONE" \
      --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION"
    ;;
  install)
    on_all_workers "git clone $REPO vit_jax || git -C vit_jax pull; \
      pip install -U 'jax[tpu]' && pip install -e './vit_jax[tfds,gcs]'"
    ;;
  train)
    # One process per host; --distributed=on lets JAX find the coordinator, the process
    # count and id from the TPU metadata. TFDS reads (and prepares once) under $BUCKET/tfds.
    # The workdir is in the bucket itself (orbax writes each host's shards there; process 0
    # writes metrics, result.json and the lock object); no gcsfuse mount.
    on_all_workers "cd vit_jax && TFDS_DATA_DIR=$BUCKET/tfds \
      python -m vit_jax.main --config=$CONFIG --workdir=$BUCKET/runs/$RUN \
      --distributed=on --config.mesh=\"$MESH\" 2>&1 | tee -a ~/$RUN.log"
    ;;
  sweep)
    # A data-scaling sweep whose points each run on this whole slice, one after another: the
    # sweep process runs here (it only launches and collects), every point on all workers.
    python -m vit_jax.sweep --config="${SWEEP_CONFIG:-configs/data_scaling.py:paper}" \
      --workdir="$BUCKET/sweeps/$RUN" --max_parallel=1 \
      --launcher="gcloud compute tpus tpu-vm ssh $TPU_NAME --project=$PROJECT_ID --zone=$ZONE \
        --worker=all --command=\"cd vit_jax && TFDS_DATA_DIR=$BUCKET/tfds python -m vit_jax.sweep \
        {point_flags} --distributed=on\""
    ;;
  delete)
    gcloud compute tpus tpu-vm delete "$TPU_NAME" --project="$PROJECT_ID" --zone="$ZONE"
    ;;
  *)
    echo "usage: $0 create|install|train|sweep|delete" >&2
    exit 2
    ;;
esac
