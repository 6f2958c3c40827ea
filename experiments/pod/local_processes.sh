#!/usr/bin/env bash
# Runs a command as the N processes of one multi-process JAX run on this machine (for tests and
# for a sweep's --launcher on one host):
#   experiments/pod/local_processes.sh N HOST:PORT command [args...]
# Process i runs `command args... --coordinator_address=HOST:PORT --num_processes=N
# --process_id=i`; the script exits with the first non-zero exit status of its processes.
# SIGTERM / SIGINT are passed on to every process (they checkpoint and exit 0).
set -u
n=$1 coordinator=$2
shift 2
pids=()
for ((i = 0; i < n; i++)); do
  "$@" --coordinator_address="$coordinator" --num_processes="$n" --process_id="$i" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}" 2>/dev/null' TERM INT
status=0
for pid in "${pids[@]}"; do
  while true; do  # a trapped signal interrupts `wait`: wait again until the process ends
    wait "$pid"
    code=$?
    kill -0 "$pid" 2>/dev/null || break
  done
  if ((code != 0 && status == 0)); then status=$code; fi
done
exit "$status"
