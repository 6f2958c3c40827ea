"""Run a sweep of training runs (a data-scaling study) and write its report.

  python -m vit_jax.sweep --config=configs/data_scaling.py:digits --workdir=/tmp/scaling \
      [--dry_run] [--config.<field>=<value> ...]

Each point (model x training-set size) trains in its own process (`--point=<index>`, output in
`<point>/log.txt`), so a crash costs one point; a point whose `result.json` exists is skipped,
so rerunning an interrupted sweep resumes it (a half-trained point from its checkpoint); a failed
point is recorded with its error in `<point>/error.txt` and retried by the next run, and the
sweep carries on. SIGTERM or Ctrl-C stops the running point at a checkpoint and ends the sweep
(rerun to continue); if the sweep process itself dies, its running point gets SIGTERM. A point
run with a different config than the sweep's now is refused, never mixed into the results. At
the end `results.csv` is collected and `vit_jax.scaling` writes the figures and `REPORT.md`.
"""
import contextlib
import ctypes
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from typing import Iterator

from absl import app
from absl import flags
from flax import traverse_util
import ml_collections
from ml_collections import config_flags

from vit_jax import cli, files, metrics, train
from vit_jax import config as config_lib
from vit_jax.scaling import report, results, tables
from vit_jax.models import config_fields

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Sweep config (configs/data_scaling.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory: one subfolder per point.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'List the points and their configs; run nothing.')
_POINT = flags.DEFINE_integer('point', None, 'Internal: train this point in this process.')

@dataclasses.dataclass
class Point:
  label: str
  train_size: int | None
  config: ml_collections.ConfigDict   # the complete training config of this point
  workdir: str


def expand(sweep: ml_collections.ConfigDict, sweep_dir: str) -> list[Point]:
  """Every (model, train size) of the sweep (checked by `config.check_sweep`), models in
  config order, sizes in config order."""
  config_lib.check_sweep(sweep)
  points = []
  for label, entry in sweep.models.items():
    for size in sweep.train_sizes:
      config = ml_collections.ConfigDict(sweep.base.to_dict())
      config.model = entry.model
      config.train_size = size
      if entry.lr is not None:
        config.optim.lr = entry.lr
      name = f'{label}_n{"all" if size is None else size}'.replace('/', '-')
      points.append(Point(label, size, config, os.path.join(sweep_dir, name)))
  return points


def _family_depth_width(config: ml_collections.ConfigDict) -> tuple[str, int, int]:
  """('vit' | 'hybrid' | 'resnet' | 't2t', depth, width) of a point's model."""
  fields = config_fields(config.model)
  if fields['family'] == 'resnet':
    return 'resnet', 3 * sum(fields['resnet_layers']) + 2, fields['resnet_width']
  return fields['family'], fields['num_layers'], fields['hidden_size']


def _row(point: Point) -> dict:
  """One results.csv row from the point's result.json (or its recorded error)."""
  family, depth, width = _family_depth_width(point.config)
  row = dict(model=point.label, family=family, depth=depth, width=width,
             train_size=point.train_size, workdir=point.workdir)
  result_path = os.path.join(point.workdir, 'result.json')
  if not os.path.exists(result_path):
    error_path = os.path.join(point.workdir, 'error.txt')
    error = 'not run'
    if os.path.exists(error_path):
      with open(error_path) as f:
        error = f.read().strip()
    return dict(row, status='failed', error=error)
  return dict(row, **results.from_result(files.read_json(result_path)))


def write_results(points: list[Point], path: str) -> list[dict]:
  rows = [_row(p) for p in points]
  results.write_results(rows, path)
  return rows


def _error_message(output: str, returncode: int) -> str:
  """The informative line of a failed point's output: our 'Error: ...' line, else the last
  exception line of a traceback, else the exit status."""
  lines = [l.strip() for l in output.splitlines() if l.strip()]
  for line in reversed(lines):
    if line.startswith('Error') or 'Error:' in line or 'Exception:' in line:
      return line[:500]
  return f'exited with status {returncode}' + (f': {lines[-1][:300]}' if lines else '')


def check_configs(points: list[Point]) -> None:
  """Raises ValueError if a point's workdir was started with another config than the sweep
  gives it now, so results of different configs are never mixed. Fields present on one side
  only (added or removed by a newer version of the code) are not compared."""
  for point in points:
    path = os.path.join(point.workdir, 'config.json')
    if not os.path.exists(path):
      continue
    then = traverse_util.flatten_dict(files.read_json(path), sep='.')  # {'optim.lr': ...}
    now = traverse_util.flatten_dict(json.loads(point.config.to_json_best_effort()), sep='.')
    changed = sorted(k for k in then.keys() & now.keys() if then[k] != now[k])
    if changed:
      raise ValueError(
          f'{point.workdir} was run with another config than this sweep gives it (' +
          ', '.join(f'{k}: {then[k]!r} then, {now[k]!r} now'
                    for k in changed[:5]) +
          '); use a new --workdir, or delete that point to rerun it.')


def _die_with_parent() -> None:
  """In the child: ask Linux for SIGTERM when the sweep process dies (prctl PR_SET_PDEATHSIG),
  so an orphaned point checkpoints and stops instead of training on unsupervised."""
  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@contextlib.contextmanager
def _forward_stop_signals(current: list) -> Iterator[list]:
  """Inside the block, SIGTERM and SIGINT are recorded in the yielded list and passed on to
  the running child (`current[0]`) as SIGTERM, which makes it checkpoint and exit."""
  received = []
  def handler(signum, frame):
    received.append(signum)
    if current:
      current[0].send_signal(signal.SIGTERM)
  previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    yield received
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def run_point(index: int, point: Point, argv: list[str], current: list) -> tuple[str, str]:
  """Trains `point` in a child process (registered in `current` while it runs, output
  appended to `<point>/log.txt`); returns (status, error), status 'done', 'failed' or
  'stopped' (by a signal, at a checkpoint)."""
  os.makedirs(point.workdir, exist_ok=True)
  overrides = [a for a in argv[1:] if not a.startswith(('--dry_run', '--point'))]
  cmd = [sys.executable, '-m', 'vit_jax.sweep', *overrides, f'--point={index}']
  log_path = os.path.join(point.workdir, 'log.txt')
  with open(log_path, 'a') as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            preexec_fn=_die_with_parent)
    current[:] = [proc]
    try:
      returncode = proc.wait()
    finally:
      current.clear()
  error_path = os.path.join(point.workdir, 'error.txt')
  if returncode == 0:
    if os.path.exists(error_path):
      os.remove(error_path)
    finished = os.path.exists(os.path.join(point.workdir, 'result.json'))
    return ('done' if finished else 'stopped'), ''
  with open(log_path) as log:
    error = _error_message(log.read()[-20_000:], returncode)
  with files.atomic_open(error_path) as f:
    f.write(error + '\n')
  return 'failed', error


def run_sweep(sweep: ml_collections.ConfigDict, sweep_dir: str, argv: list[str]) -> list[dict]:
  """Runs every unfinished point, then writes results.csv and the report."""
  points = expand(sweep, sweep_dir)
  check_configs(points)
  os.makedirs(sweep_dir, exist_ok=True)
  files.write_json(os.path.join(sweep_dir, 'sweep_config.json'), sweep.to_dict())
  todo = [i for i, p in enumerate(points)
          if not os.path.exists(os.path.join(p.workdir, 'result.json'))]
  print(f'Sweep {sweep.get("name", "")}: {len(points)} points, {len(points) - len(todo)} '
        f'already finished, {len(todo)} to run.', flush=True)
  start, current = time.time(), []
  with _forward_stop_signals(current) as stop:
    for n, index in enumerate(todo, 1):
      point = points[index]
      status, error = run_point(index, point, argv, current) if not stop else ('stopped', '')
      if stop:
        write_results(points, os.path.join(sweep_dir, 'results.csv'))
        print(f'Stopped by signal {stop[0]} at {point.label} train_size={point.train_size} '
              f'({status}); {len(points) - len(todo) + n - 1} of {len(points)} points '
              'finished. Rerun the same command to continue.', flush=True)
        return []
      per_point = (time.time() - start) / n
      print(f'[{len(points) - len(todo) + n}/{len(points)}] {point.label} train_size='
            f'{point.train_size}: {status}{" (" + error + ")" if error else ""} | elapsed '
            f'{metrics.format_duration(time.time() - start)} | ETA '
            f'{metrics.format_duration(per_point * (len(todo) - n))}', flush=True)
  rows = write_results(points, os.path.join(sweep_dir, 'results.csv'))
  written = report.write_report(sweep_dir)
  print(tables.results_table(results.read_results(os.path.join(sweep_dir, 'results.csv'))))
  print('\nResults:', os.path.join(sweep_dir, 'results.csv'))
  for key, path in written.items():
    if isinstance(path, str) and os.path.exists(path):
      print(f'{key}: {path}')
  return rows


def describe(points: list[Point]) -> str:
  """The dry-run listing: every point with its model, data, steps and mesh."""
  lines = []
  for i, p in enumerate(points):
    c = p.config
    model = {k: v for k, v in c.model.items() if v is not None}
    lines.append(f'[{i}] {p.label}: train_size={p.train_size} steps={c.total_steps} '
                 f'batch={c.batch_size} lr={c.optim.lr} mesh={c.mesh} dataset={c.dataset} '
                 f'model={model}\n    workdir={p.workdir}')
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  if not _WORKDIR.value or _CONFIG.value is None:
    raise app.UsageError('--config and --workdir are required.')
  try:
    points = expand(_CONFIG.value, _WORKDIR.value)
    if _DRY_RUN.value:
      print(describe(points))
      return
    if _POINT.value is not None:  # child process: one training run
      cli.setup_logging()
      point = points[_POINT.value]
      train.train_and_evaluate(point.config, point.workdir)
      return
    with files.exclusive_lock(_WORKDIR.value, 'sweep'):
      run_sweep(_CONFIG.value, _WORKDIR.value, sys.argv)
  except (ValueError, OSError, FloatingPointError, files.LockedError) as e:
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  cli.set_cpu_flag()
  app.run(main, flags_parser=cli.parse_flags)
