"""Alternating timing of several subjects (in this process or in workers), so machine load
affects them alike."""
import time
from typing import Callable

import numpy as np

Step = Callable[[], None]  # runs one step and waits for its result (block_until_ready)
Call = Callable[[], tuple[float, float]]  # runs one step: (wall seconds, CPU seconds)


def timed(step: Step) -> Call:
  """`step` in this process, timed: wall-clock time and this process's CPU time (all
  threads; with one core, e.g. under `taskset -c 0`, a measure of work that other processes'
  load does not change)."""
  def call():
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    return time.perf_counter() - start, time.process_time() - start_cpu
  return call


def alternate(calls: dict[str, Call], num_steps: int, after: Callable[[str], None] = lambda _: None
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """`num_steps` rounds in which every call runs once in turn (a, b, a, b, ...), then
  `after(name)` (e.g. wait until that subject's process is idle). Returns (wall, cpu): name ->
  (num_steps,) seconds per call."""
  if num_steps < 1:
    raise ValueError(f'--steps={num_steps} must be >= 1.')
  wall = {name: np.empty(num_steps) for name in calls}
  cpu = {name: np.empty(num_steps) for name in calls}
  for i in range(num_steps):
    for name, call in calls.items():
      wall[name][i], cpu[name][i] = call()
      after(name)
  return wall, cpu


def time_in_blocks(steps: dict[str, Step], num_steps: int, warmup: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Steps of one process (the input pipeline's stages), one after the other: each runs
  `warmup` times (compilation, caches, starting workers: not timed), then `num_steps` times
  back to back (see `timed`), so a pipeline whose workers run ahead cannot hide behind another
  stage's step: its rate is its throughput. Returns (wall, cpu) as `alternate` does."""
  if num_steps < 1 or warmup < 0:
    raise ValueError(f'--steps={num_steps} must be >= 1 and --warmup={warmup} >= 0.')
  wall, cpu = {}, {}
  for name, step in steps.items():
    for _ in range(warmup):
      step()
    block_wall, block_cpu = alternate({name: timed(step)}, num_steps)
    wall[name], cpu[name] = block_wall[name], block_cpu[name]
  return wall, cpu


def summarize(seconds: np.ndarray) -> dict[str, float]:
  """Median, quartiles, min and max of per-step seconds, and the relative spread
  (interquartile range / median)."""
  p25, median, p75 = np.percentile(seconds, [25, 50, 75])
  return {'median': float(median), 'p25': float(p25), 'p75': float(p75),
          'min': float(seconds.min()), 'max': float(seconds.max()), 'n': len(seconds),
          'iqr_over_median': float((p75 - p25) / median)}
