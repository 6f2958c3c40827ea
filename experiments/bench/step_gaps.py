"""Gaps between train step executions in a profiler trace of a CPU training run: does the loop
keep the device busy, or does the next step wait on the host?

  XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true python -m vit_jax.main \
      --config=configs/quickstart.py --workdir=/tmp/gaps --config.profile_steps='(20,35)'
  python experiments/bench/step_gaps.py /tmp/gaps/profile

Reads the trace's XSpace (`jax.profiler.ProfileData`). With the flag above XLA's CPU client
traces each program run on its PjRt client thread: a short 'ThunkExecutor::Execute' (the run's
start: its thunks are dispatched) then 'ThunkExecutor::Execute (wait for completion)' (until its
last thunk ends), with a `run_id`. Runs at least --min-ms long are train steps; the gap is the
time from one step's end to the next step's start, in which the device (the CPU's XLA threads)
runs no train step. Prints the step times and gaps (median, max) and the gaps' share of the span.
"""
import argparse
import glob
import os

import numpy as np
from jax.profiler import ProfileData


def step_runs(path: str) -> list[tuple[int, int]]:
  """(start_ns, end_ns) of every program run in the trace at `path`, by start time."""
  runs = []
  for plane in ProfileData.from_file(path).planes:
    for line in plane.lines:
      start = None
      for event in line.events:
        if event.name == 'ThunkExecutor::Execute':
          start = event.start_ns
        elif event.name == 'ThunkExecutor::Execute (wait for completion)' and start is not None:
          runs.append((start, event.start_ns + event.duration_ns))
          start = None
  return sorted(runs)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('profile_dir', help="a run's profile/ directory (its newest trace is read)")
  parser.add_argument('--min-ms', type=float, default=20.0,
                      help='runs at least this long (ms) are train steps')
  args = parser.parse_args()
  traces = sorted(glob.glob(os.path.join(args.profile_dir, 'plugins', 'profile', '*',
                                         '*.xplane.pb')))
  if not traces:
    raise SystemExit(f'Error: no *.xplane.pb trace under {args.profile_dir}/plugins/profile/.')
  runs = np.array([r for r in step_runs(traces[-1]) if r[1] - r[0] >= args.min_ms * 1e6])
  if len(runs) < 2:
    raise SystemExit(f'Error: {len(runs)} train step runs in {traces[-1]}; need 2 or more '
                     '(was XLA_FLAGS=--xla_cpu_enable_xprof_traceme=true set?).')
  steps_ms = (runs[:, 1] - runs[:, 0]) / 1e6
  gaps_ms = (runs[1:, 0] - runs[:-1, 1]) / 1e6
  span_ms = (runs[-1, 1] - runs[0, 0]) / 1e6
  print(f'{traces[-1]}: {len(runs)} train steps')
  print(f'step: median {np.median(steps_ms):.1f} ms (min {steps_ms.min():.1f}, max '
        f'{steps_ms.max():.1f})')
  print(f'gap:  median {np.median(gaps_ms):.2f} ms (min {gaps_ms.min():.2f}, max '
        f'{gaps_ms.max():.2f}); all gaps {gaps_ms.sum():.1f} ms = '
        f'{100 * gaps_ms.sum() / span_ms:.2f}% of the {span_ms:.0f} ms span')
  print('gaps (ms):', ' '.join(f'{g:.2f}' for g in gaps_ms))


if __name__ == '__main__':
  main()
