"""Interleaved timing of several step functions, so machine load affects them alike."""
import time
from typing import Callable

import numpy as np

Step = Callable[[], None]  # runs one step and waits for its result (block_until_ready)


def time_interleaved(steps: dict[str, Step], num_steps: int, warmup: int
                     ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Runs each step `warmup` times (compilation, caches: not timed), then `num_steps` rounds
  in which every step runs once in turn. Returns (wall, cpu): name -> (num_steps,) seconds per
  call of wall-clock time and of this process's CPU time (all threads; with one core, e.g.
  under `taskset -c 0`, a measure of work that other processes' load does not change)."""
  if num_steps < 1 or warmup < 0:
    raise ValueError(f'--steps={num_steps} must be >= 1 and --warmup={warmup} >= 0.')
  for step in steps.values():
    for _ in range(warmup):
      step()
  wall = {name: np.empty(num_steps) for name in steps}
  cpu = {name: np.empty(num_steps) for name in steps}
  for i in range(num_steps):
    for name, step in steps.items():
      start, start_cpu = time.perf_counter(), time.process_time()
      step()
      wall[name][i] = time.perf_counter() - start
      cpu[name][i] = time.process_time() - start_cpu
  return wall, cpu


def summarize(seconds: np.ndarray) -> dict[str, float]:
  """Median, quartiles, min and max of per-step seconds, and the relative spread
  (interquartile range / median)."""
  p25, median, p75 = np.percentile(seconds, [25, 50, 75])
  return {'median': float(median), 'p25': float(p25), 'p75': float(p75),
          'min': float(seconds.min()), 'max': float(seconds.max()), 'n': len(seconds),
          'iqr_over_median': float((p75 - p25) / median)}
