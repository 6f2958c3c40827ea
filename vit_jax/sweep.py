"""Run a sweep of training runs (a data-scaling study) and write its report.

  python -m vit_jax.sweep --config=configs/data_scaling.py:digits --workdir=/tmp/scaling \
      [--dry_run] [--config.<field>=<value> ...]

The study (a sweep config's optional fields, `vit_jax.config.SWEEP_FIELDS`):
- budget rule: each point trains `budget.epochs` passes over its subset, clipped to
  [`budget.min_steps`, `budget.max_steps`] steps (a model's own `min_steps` replaces the
  floor for its points), evaluated `budget.evals` times; with
  `base.eval.patience` it stops early on the validation split and reports the best step's test
  accuracy;
- seeds: every point runs `seeds` times (`small_seeds` up to `small_size` images), varying the
  initialisation and data order, and the subset too with `vary_subset`;
- grid: with `grid.size`, one model per family first trains every `grid.lr` x
  `grid.weight_decay` at that size; the values with the best validation accuracy (never test)
  are used by the study's points and written to `grid.json`;
- convergence check: with `convergence_check`, every model reruns the smallest and largest
  size with twice the budget (`<label>_n<size>_x2`), at the smallest over its first
  `convergence_seeds` seeds (`..._s<seed>_x2`), where one rerun cannot tell the budget from
  seed noise; the report states the difference (the mean over the seeds rerun).

Each point (model x training-set size x seed) trains in its own process (`--point=<index>`,
output in `<point>/log.txt`), so a crash costs one point; the points share a JAX compilation
cache on the machine (`point_env`), so each model compiles once per budget. `--max_parallel=K`
runs K points at once (small models do not keep several CPU cores busy, and a process's start
is mostly single-threaded; on one accelerator they split its memory). A point whose
`result.json` exists is skipped, so rerunning an interrupted sweep resumes it (a half-trained
point from its checkpoint); a failed point is recorded with its error in `<point>/error.txt`
and retried by the next run, and the sweep carries on. SIGTERM or Ctrl-C stops the running
point at a checkpoint and ends the sweep (rerun to continue), as does `--time_limit=<seconds>`
when that much time has passed (a sitting of a long study, or a machine lent for minutes);
results.csv and the report of the points finished so far are written then. If the sweep
process itself dies, its running point gets SIGTERM. A point run with a different config than
the sweep's now is refused, never mixed into the results. At the end `results.csv` is
collected and `vit_jax.scaling` writes the figures and `REPORT.md`.

Multi-host points: `--launcher=<template>` runs each point through a shell command instead,
e.g. an `srun ...` or `gcloud compute tpus tpu-vm ssh ... --worker=all --command=...` that
starts the point's processes on a pod; `--max_parallel=K` runs up to K points at once (each is
its own launcher job). The template's placeholders (Python format fields):
  {point_flags}    the flags that make `python -m vit_jax.sweep` train this point
                   (`--config=... --config.<field>=... --workdir=... --point=<i>`), quoted;
  {workdir}        the point's workdir;            {index}     the point's number;
  {num_processes}  the sweep's --num_processes;    {python}    this interpreter;
  {coordinator}    127.0.0.1:<a free port>, for launchers that start processes on this machine
                   (SLURM and Cloud TPU find their coordinator themselves).
Each process of a point runs `python -m vit_jax.sweep {point_flags}` with the
`--coordinator_address/--num_processes/--process_id` (or `--distributed=on`) a multi-process
`vit_jax.main` takes. A point is tracked only by its workdir's files (`result.json`: done), so
a rerun skips finished points and retries failed or stopped ones, whichever host ran them.
"""
import collections
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Iterator

from absl import app
from absl import flags
from etils import epath
from flax import traverse_util
import ml_collections
from ml_collections import config_flags

from vit_jax import cli, data, distributed, files, metrics, train
from vit_jax import config as config_lib
from vit_jax import workdir as run_dir
from vit_jax.scaling import report, results, tables
from vit_jax.models import config_fields

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Sweep config (configs/data_scaling.py).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep directory: one subfolder per point.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'List the points and their configs; run nothing.')
_POINT = flags.DEFINE_integer('point', None, 'Train this point in this process (what the '
                               'sweep and its launcher jobs run).', lower_bound=0)
_LAUNCHER = flags.DEFINE_string('launcher', None, 'Shell command template that runs one point '
                                '(placeholders: see the module docstring); default: one local '
                                'process per point.')
_MAX_PARALLEL = flags.DEFINE_integer('max_parallel', 1, 'Points run at once (local processes '
                                     'or launcher jobs).')
_TIME_LIMIT = flags.DEFINE_float('time_limit', None, 'Seconds after which the sweep stops as on '
                                 'SIGTERM (running points checkpoint; results.csv and the '
                                 'report of the finished points are written); rerun to continue.')
_JOIN = distributed.define_flags()  # --num_processes: processes per point (of --launcher)
# Flags of the sweep process alone, not passed on to a point.
_SWEEP_ONLY = ('--dry_run', '--nodry_run', '--point', '--launcher', '--max_parallel',
               '--time_limit', '--num_processes', '--distributed', '--coordinator_address',
               '--process_id')

@dataclasses.dataclass
class Point:
  label: str
  train_size: int | None
  config: ml_collections.ConfigDict   # the complete training config of this point
  workdir: str
  seed: int = 0                       # index of the seed (config.seed = base.seed + seed)
  role: str = 'study'                 # 'study' | 'convergence' (twice the budget) | 'grid'


def _training_images(size: int, evaluation: ml_collections.ConfigDict) -> int:
  """Images a point of `size` trains on: the subset less its eval.val_fraction hold-out (all of
  it with eval.val_size, whose validation images lie outside every subset)."""
  return size - round(size * evaluation.val_fraction)


def budget_steps(sweep: ml_collections.ConfigDict, size: int | None,
                 entry: ml_collections.ConfigDict | None = None) -> int:
  """Training steps of a point with `size` images by the budget rule: budget.epochs passes
  over the training images (the subset less its validation hold-out), clipped to
  [floor, budget.max_steps], the floor being the model entry's min_steps if it has one, else
  budget.min_steps; base.total_steps without a rule."""
  epochs = config_lib.sweep_field(sweep, 'budget.epochs')
  if epochs is None:
    return sweep.base.total_steps
  steps = math.ceil(epochs * _training_images(size, sweep.base.eval) / sweep.base.batch_size)
  floor = (entry or {}).get('min_steps') or config_lib.sweep_field(sweep, 'budget.min_steps')
  return int(min(max(steps, floor), config_lib.sweep_field(sweep, 'budget.max_steps')))


def _point_config(sweep: ml_collections.ConfigDict, entry: ml_collections.ConfigDict,
                  size: int | None, seed: int, steps_factor: int = 1,
                  hparams: tuple[float, float] | None = None) -> ml_collections.ConfigDict:
  """The training config of one point: the base with the entry's model, the size, the seed,
  the budget (times `steps_factor`) and the learning rate / weight decay (the entry's own,
  else `hparams`, else the base's)."""
  base = sweep.base
  config = ml_collections.ConfigDict(base.to_dict())
  config.model = entry.model
  config.train_size = size
  config.seed = base.seed + seed
  if config_lib.sweep_field(sweep, 'vary_subset'):
    config.data.subset_seed = base.data.subset_seed + seed
  lr, weight_decay = hparams or (base.optim.lr, base.optim.weight_decay)
  config.optim.lr = lr if entry.get('lr') is None else entry.lr
  config.optim.weight_decay = (weight_decay if entry.get('weight_decay') is None
                               else entry.weight_decay)
  budgeted = config_lib.sweep_field(sweep, 'budget.epochs') is not None
  if budgeted or steps_factor != 1:
    steps = budget_steps(sweep, size, entry) * steps_factor
    evals = (config_lib.sweep_field(sweep, 'budget.evals') if budgeted
             else max(base.total_steps // base.eval_every, 1))
    config.total_steps = steps
    config.eval_every = config.checkpoint_every = max(steps // evals, 1)
    config.log_every = min(base.log_every, config.eval_every)
    config.schedule.warmup_steps = base.schedule.warmup_steps * steps // base.total_steps
  return config


def _folder(label: str) -> str:
  """A model label as it appears in directory names: '/' written '-'."""
  return label.replace('/', '-')


def _name(label: str, size: int | None, suffix: str = '', seed: int = 0) -> str:
  """A point's directory name: '<label>_n<size>', '_s<seed>' for seeds after 0, `suffix`."""
  seeded = f'_s{seed}' if seed else ''
  return f'{_folder(label)}_n{"all" if size is None else size}{seeded}{suffix}'


def _check(sweep: ml_collections.ConfigDict) -> None:
  """`config.check_sweep`, and model labels that give distinct directory names.

  Raises:
    ValueError: naming the field, or the two labels.
  """
  config_lib.check_sweep(sweep)
  folders = {}
  for label in sweep.models:
    if (other := folders.setdefault(_folder(label), label)) != label:
      raise ValueError(f'config.models: the labels {other!r} and {label!r} would train in the '
                       f'same folders ({_folder(label)}_n...: \'/\' is written \'-\'); rename '
                       'one.')


def seeds_at(sweep: ml_collections.ConfigDict, size: int | None) -> int:
  """How many seeds a point of `size` runs: small_seeds up to small_size, else seeds."""
  small = size is not None and size <= config_lib.sweep_field(sweep, 'small_size')
  return config_lib.sweep_field(sweep, 'small_seeds' if small else 'seeds')


def family(model: ml_collections.ConfigDict) -> str:
  """'vit' | 'hybrid' | 'resnet' | 't2t': the family of a model section."""
  return config_fields(model)['family']


def grid_points(sweep: ml_collections.ConfigDict, sweep_dir: str) -> list[Point]:
  """The learning-rate x weight-decay grid at grid.size: one model per family (the first of
  its family in config order), seed 0; none without grid.size. A model's own weight decay
  (or learning rate) replaces that axis of its family's grid."""
  _check(sweep)
  size = config_lib.sweep_field(sweep, 'grid.size')
  if size is None:
    return []
  points, seen = [], set()
  for label, entry in sweep.models.items():
    if family(entry.model) in seen:
      continue
    seen.add(family(entry.model))
    workdirs = set()
    for lr in config_lib.sweep_field(sweep, 'grid.lr'):
      for wd in config_lib.sweep_field(sweep, 'grid.weight_decay'):
        config = _point_config(sweep, entry, size, 0, hparams=(lr, wd))
        workdir = os.path.join(sweep_dir, 'grid', _name(
            label, size, f'_lr{config.optim.lr:g}_wd{config.optim.weight_decay:g}'))
        if workdir not in workdirs:
          workdirs.add(workdir)
          points.append(Point(label, size, config, workdir, role='grid'))
  return points


def choose_hparams(points: list[Point]) -> dict[str, dict]:
  """{family: {'lr', 'weight_decay', 'val_accuracy', 'model'}}: the finished grid point of
  every family with the highest validation accuracy (never test accuracy); families with no
  finished grid point are absent (`results.grid_picks`, the rule the report marks too)."""
  runs = []
  for point in points:
    path = os.path.join(point.workdir, 'result.json')
    if not files.exists(path):
      continue
    val = files.read_json(path).get('best_val_accuracy')
    if val is None:
      raise ValueError(f'{point.workdir}: the grid picks by validation accuracy; set '
                       'base.eval.val_fraction or base.eval.val_size > 0.')
    runs.append(dict(family=family(point.config.model), lr=point.config.optim.lr,
                     weight_decay=point.config.optim.weight_decay, val_accuracy=val,
                     model=point.label))
  return {fam: {key: run[key] for key in ('lr', 'weight_decay', 'val_accuracy', 'model')}
          for fam, run in results.grid_picks(runs).items()}


def _chosen(chosen: dict[str, dict], entry: ml_collections.ConfigDict
            ) -> tuple[float, float] | None:
  pick = chosen.get(family(entry.model))
  return (pick['lr'], pick['weight_decay']) if pick else None


def expand(sweep: ml_collections.ConfigDict, sweep_dir: str,
           chosen: dict[str, dict] | None = None) -> list[Point]:
  """Every (model, train size, seed) of the sweep (checked by `_check`), models in config
  order, then sizes, then seeds; then the convergence reruns (twice the budget at the smallest
  and largest size, seed 0; at the smallest the first `convergence_seeds` seeds) if asked for.
  `chosen` ({family: {'lr', 'weight_decay'}}, from `choose_hparams`) replaces the base's
  learning rate and weight decay."""
  _check(sweep)
  chosen = chosen or {}
  points = []
  for label, entry in sweep.models.items():
    hparams = _chosen(chosen, entry)
    for size in sweep.train_sizes:
      for seed in range(seeds_at(sweep, size)):
        config = _point_config(sweep, entry, size, seed, hparams=hparams)
        points.append(Point(label, size, config,
                            os.path.join(sweep_dir, _name(label, size, seed=seed)), seed))
  if config_lib.sweep_field(sweep, 'convergence_check'):
    numbers = [s for s in sweep.train_sizes if s is not None]
    largest = None if None in sweep.train_sizes else max(numbers)
    ends = list(dict.fromkeys([min(numbers) if numbers else None, largest]))
    for label, entry in sweep.models.items():
      hparams = _chosen(chosen, entry)
      for size in ends:
        reruns = config_lib.sweep_field(sweep, 'convergence_seeds') if size == ends[0] else 1
        for seed in range(min(reruns, seeds_at(sweep, size))):
          config = _point_config(sweep, entry, size, seed, steps_factor=2, hparams=hparams)
          points.append(Point(label, size, config,
                              os.path.join(sweep_dir, _name(label, size, '_x2', seed)), seed,
                              'convergence'))
  return points


def all_points(sweep: ml_collections.ConfigDict, sweep_dir: str) -> list[Point]:
  """The grid points, then the study's points with the values the finished grid chose."""
  grid = grid_points(sweep, sweep_dir)
  return grid + expand(sweep, sweep_dir, choose_hparams(grid))


def _family_depth_width(config: ml_collections.ConfigDict) -> tuple[str, int, int]:
  """('vit' | 'hybrid' | 'resnet' | 't2t', depth, width) of a point's model."""
  fields = config_fields(config.model)
  if fields['family'] == 'resnet':
    return 'resnet', 3 * sum(fields['resnet_layers']) + 2, fields['resnet_width']
  return fields['family'], fields['num_layers'], fields['hidden_size']


def _row(point: Point) -> dict:
  """One results.csv row from the point's result.json; without it status 'failed' (with the
  error it recorded) or 'unfinished' (not run, or stopped before its end).

  Raises:
    ValueError: the result.json is damaged (not JSON, or lacking a field); the message says
      to delete the point's folder, which reruns it.
  """
  family, depth, width = _family_depth_width(point.config)
  config = point.config
  images = None if point.train_size is None else _training_images(point.train_size, config.eval)
  row = dict(model=point.label, family=family, depth=depth, width=width,
             train_size=point.train_size, seed=point.seed, role=point.role,
             lr=config.optim.lr, weight_decay=config.optim.weight_decay,
             budget_steps=config.total_steps,
             budget_epochs=None if images is None else round(
                 config.total_steps * config.batch_size / images, 2),
             workdir=point.workdir)
  result_path = os.path.join(point.workdir, 'result.json')
  if not files.exists(result_path):
    error_path = os.path.join(point.workdir, 'error.txt')
    if files.exists(error_path):
      return dict(row, status='failed', error=files.read_text(error_path).strip())
    return dict(row, status='unfinished', error='')
  try:
    result = files.read_json(result_path)
    if not isinstance(result, dict):
      raise ValueError(f'{result_path} is not a JSON object')
    return dict(row, **results.from_result(result))
  except (ValueError, KeyError) as e:
    problem = f'no field {e}' if isinstance(e, KeyError) else str(e).removeprefix(
        f'{result_path} is ')
    raise ValueError(f'{result_path} is damaged ({problem}); delete {point.workdir} and rerun '
                     'the sweep to run that point again.') from e


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


# Fields that say where or how, never what, a run computes: a point may resume with others.
_NOT_COMPARED = ('data.cache_dir', 'data.tfds_dir', 'data.workers', 'checkpoint.keep',
                 'checkpoint_every', 'profile_steps')


def _comparable(config: dict) -> dict:
  """A config flattened ({'optim.lr': ...}) without the _NOT_COMPARED fields, with every
  'folder:' or 'records:' dataset (the training one, a sweep's base.dataset, a few-shot probe's)
  reduced to its file or directory name: a study committed with its runs resumes from another
  checkout or machine whose $VIT_JAX_DATA holds the same archive under another absolute path,
  and a sweep may go on with fewer checkpoints kept or another cache folder."""
  flat = {key: value for key, value in traverse_util.flatten_dict(config, sep='.').items()
          if not any(key == f or key.endswith('.' + f) for f in _NOT_COMPARED)}
  for key, value in flat.items():
    kind, _, path = value.partition(':') if isinstance(value, str) else ('', '', '')
    if kind in ('folder', 'records') and path:
      flat[key] = f'{kind}:{os.path.basename(path.rstrip("/"))}'
  return flat


def _differences(path: str, config: ml_collections.ConfigDict) -> str:
  """The fields in which the config JSON file `path` differs from `config` ('' when none or
  no file): 'field: <then> then, <now> now, ...' (at most five). Fields present on one side
  only (added or removed by a newer version of the code) are not compared, nor the directory a
  'folder:' or 'records:' dataset lies in (its name is: `_comparable`)."""
  if not files.exists(path):
    return ''
  then = _comparable(files.read_json(path))
  now = _comparable(json.loads(config.to_json_best_effort()))
  changed = sorted(k for k in then.keys() & now.keys() if then[k] != now[k])
  return ', '.join(f'{k}: {then[k]!r} then, {now[k]!r} now' for k in changed[:5]) + (
      f' and {len(changed) - 5} more' if len(changed) > 5 else '')


def check_configs(points: list[Point]) -> None:
  """Raises ValueError if a point's workdir was started with another config than the sweep
  gives it now (`_differences`), so results of different configs are never mixed."""
  for point in points:
    if changed := _differences(os.path.join(point.workdir, 'config.json'), point.config):
      raise ValueError(
          f'{point.workdir} was run with another config than this sweep gives it ({changed}); '
          'use a new --workdir, or delete that point to rerun it.')


def write_sweep_config(sweep: ml_collections.ConfigDict, sweep_dir: str) -> None:
  """Writes sweep_config.json. One that differs (`_differences`: more seeds or sizes, fewer,
  another report field) or cannot be read is kept with a timestamp, and a warning says that
  the report now covers this config's points (the others' folders stay)."""
  path = os.path.join(sweep_dir, 'sweep_config.json')
  try:
    changed = _differences(path, sweep)
  except ValueError as e:  # a damaged file: a record only, it must not stop the sweep
    changed = str(e)
  if changed:
    backup = f'{path}.{time.strftime("%Y%m%d-%H%M%S")}'
    files.rename(path, backup)
    print(f'Warning: this sweep config differs from the last one run in {sweep_dir} ({changed}); '
          "results.csv and the report now cover this config's points (the folders of the "
          f'others stay), and the earlier config is kept as {backup}.', flush=True)
  files.write_json(path, sweep.to_dict())


def check_data(points: list[Point]) -> None:
  """For each distinct dataset of `points`: `data.check_present` (paths, the training and
  evaluation splits, a TFDS build's metadata), then its training split's size
  (`data.training_examples`, no image decoded) against the points' largest train_size. Data
  that is not there, or too few images, fails the sweep in one line before any point runs, not
  every point in turn.

  Raises:
    FileNotFoundError, ValueError: as `data.check_present`; ValueError: a train_size beyond
      the training split less eval.val_size (held out of it first), or a val_size that leaves
      nothing, naming the field.
  """
  groups = collections.defaultdict(list)
  for p in points:
    groups[json.dumps([p.config.dataset, p.config.eval.fewshot_dataset, p.config.eval.val_size,
                       p.config.data.to_dict()], sort_keys=True)].append(p)
  for group in groups.values():
    config = group[0].config
    data.check_present(config)
    largest = max((p for p in group if p.train_size is not None), default=None,
                  key=lambda p: p.train_size)
    held_out = config.eval.val_size or 0
    if largest is None and not held_out:
      continue
    examples = data.training_examples(config)
    if held_out >= examples:
      raise ValueError(f'eval.val_size={held_out} leaves none of the {examples:,} training '
                       f'images of config.dataset={config.dataset!r} (data.train_split='
                       f'{config.data.train_split!r}) to train on: lower eval.val_size.')
    available = examples - held_out
    if largest is not None and largest.train_size > available:
      field = 'grid.size' if largest.role == 'grid' else 'train_sizes'
      less = f' less the eval.val_size={held_out} held out' if held_out else ''
      raise ValueError(f'{field} asks for {largest.train_size:,} training images but '
                       f'config.dataset={config.dataset!r} has {available:,} in '
                       f'data.train_split={config.data.train_split!r}{less}: lower {field} or '
                       'use a larger training split.')


def _die_with_parent() -> None:
  """In the child: ask Linux for SIGTERM when the sweep process dies (prctl PR_SET_PDEATHSIG),
  so an orphaned point checkpoints and stops instead of training on unsupervised."""
  with contextlib.suppress(OSError, AttributeError):
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def _stop_points(current: list) -> None:
  """SIGTERM to the process group of every running point (`current`: its child or launcher and
  what they started), which makes its processes checkpoint and exit."""
  for proc in current:
    with contextlib.suppress(ProcessLookupError):
      os.killpg(proc.pid, signal.SIGTERM)


@contextlib.contextmanager
def _forward_stop_signals(current: list) -> Iterator[list]:
  """Inside the block, the stop signals (`workdir.on_stop_signals`) are recorded in the
  yielded list (as 'SIGTERM' or 'Ctrl-C', the reason the sweep stops) and passed on to the
  running points (`_stop_points`)."""
  received = []
  def handler(signum, frame):
    received.append(run_dir.STOP_SIGNAL_NAMES[signum])
    _stop_points(current)
  with run_dir.on_stop_signals(handler):
    yield received


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def point_command(index: int, point: Point, argv: list[str], launcher: str | None,
                  num_processes: int) -> list[str] | str:
  """The command that trains `point`: `python -m vit_jax.sweep <the sweep's flags> --point=i`,
  or with a launcher, its template filled in (a shell command; `fill_launcher`)."""
  point_flags, value_next = [], False
  for arg in argv[1:]:  # the sweep's own flags left out, as --flag=value or --flag value
    if value_next:
      value_next = False
    elif arg.startswith(_SWEEP_ONLY):
      value_next = '=' not in arg and arg not in ('--dry_run', '--nodry_run')
    else:
      point_flags.append(arg)
  point_flags.append(f'--point={index}')
  if not launcher:
    return [sys.executable, '-m', 'vit_jax.sweep', *point_flags]
  return fill_launcher(launcher, point_flags=shlex.join(point_flags),
                       workdir=shlex.quote(point.workdir), index=index,
                       num_processes=num_processes, python=shlex.quote(sys.executable),
                       coordinator=f'127.0.0.1:{_free_port()}')


def fill_launcher(launcher: str, *, point_flags: str, workdir: str, index: int,
                  num_processes: int, python: str, coordinator: str) -> str:
  """The `--launcher` template with its placeholders filled in.

  Raises:
    ValueError: the template names an unknown placeholder or is malformed.
  """
  try:
    return launcher.format(point_flags=point_flags, workdir=workdir, index=index,
                           num_processes=num_processes, python=python, coordinator=coordinator)
  except (KeyError, IndexError, ValueError) as e:
    raise ValueError(f'--launcher={launcher!r} cannot be filled in ({type(e).__name__}: {e}); '
                     'its placeholders are {point_flags}, {workdir}, {index}, '
                     '{num_processes}, {python} and {coordinator} ({{ and }} for braces).') from e


@dataclasses.dataclass
class _Running:
  """A point being trained: its process (child or launcher) and its output so far."""
  index: int
  proc: subprocess.Popen
  log: Any        # the open log file: <point>/log.txt, or a local temporary file
  start: int      # where this attempt's output begins in `log`


def point_env(parallel: int = 1) -> dict[str, str]:
  """The environment of a point's processes: this process's, with a JAX compilation cache on
  this machine shared by the sweep's points (`$JAX_COMPILATION_CACHE_DIR` where set, else
  `<temp dir>/vit_jax_compilation_cache`, at most 2 GB, least recently used entries evicted),
  so the points of one model and budget compile their programs once (a cached program gives
  the same results as a freshly compiled one). With `parallel` points at once on this machine,
  each preallocates 1/parallel of JAX's default 75% of an accelerator's memory (where
  `XLA_PYTHON_CLIENT_MEM_FRACTION` is not set), so they fit side by side."""
  env = dict(os.environ)
  env.setdefault('JAX_COMPILATION_CACHE_DIR',
                 os.path.join(tempfile.gettempdir(), 'vit_jax_compilation_cache'))
  env.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(2 * 10**9))  # bytes
  env.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')  # small models' too
  if parallel > 1:
    env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.75 / parallel:.3f}')
  return env


def start_point(index: int, point: Point, command: list[str] | str,
                env: dict[str, str]) -> _Running:
  """Starts `command` (a shell command if a string) in its own session with `env`, output
  appended to `<point>/log.txt` (on an object store, to a local file uploaded when it
  ends)."""
  files.makedirs(point.workdir)
  log_path = os.path.join(point.workdir, 'log.txt')
  log = open(log_path, 'a+') if files.is_local(log_path) else tempfile.TemporaryFile('w+')
  start = log.tell()
  proc = subprocess.Popen(command, shell=isinstance(command, str), env=env, stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True,
                          preexec_fn=_die_with_parent)
  return _Running(index, proc, log, start)


def finish_point(point: Point, running: _Running, stopping: bool) -> tuple[str, str]:
  """(status, error) of an ended point from its workdir's files and exit status: 'done'
  (`result.json` exists), 'stopped' (exit 0 without it: a signal, at a checkpoint; or ended by
  SIGTERM or SIGINT before its handler was installed, while starting) or 'failed' (recorded
  in `<point>/error.txt` with the informative line of its output; also exit 0 without a
  `config.json` while the sweep was not `stopping`: the command never ran the point, as an
  asynchronous launcher such as sbatch does)."""
  log, returncode = running.log, running.proc.returncode
  log.seek(running.start)
  output = log.read()
  log.close()
  log_path = os.path.join(point.workdir, 'log.txt')
  if not files.is_local(log_path):
    earlier = files.read_text(log_path) if files.exists(log_path) else ''
    with files.atomic_open(log_path) as f:
      f.write(earlier + output)
  error_path = os.path.join(point.workdir, 'error.txt')
  if returncode == 0 and (stopping or files.exists(os.path.join(point.workdir, 'config.json'))):
    if files.exists(error_path):
      epath.Path(error_path).unlink()
    finished = files.exists(os.path.join(point.workdir, 'result.json'))
    return ('done' if finished else 'stopped'), ''
  if returncode in (-signal.SIGTERM, -signal.SIGINT):
    return 'stopped', ''
  error = (_error_message(output[-20_000:], returncode) if returncode else
           f'the command exited 0 without running the point (no config.json in '
           f'{point.workdir}); a --launcher command must run it and wait for its end (srun, '
           'not sbatch)')
  with files.atomic_open(error_path) as f:
    f.write(error + '\n')
  return 'failed', error


def run_sweep(sweep: ml_collections.ConfigDict, sweep_dir: str, argv: list[str],
              launcher: str | None = None, num_processes: int = 1,
              max_parallel: int = 1, time_limit: float | None = None) -> list[dict]:
  """Runs the grid's unfinished points (if the sweep has a grid), then the study's with the
  values the grid chose (up to `max_parallel` points at once, each through `launcher` if
  given), then writes results.csv and the report. After `time_limit` seconds (or on SIGTERM
  or SIGINT) the running points stop at a checkpoint and the sweep returns [] with
  results.csv written, and in the study's stage the report of the points finished so far
  (the unfinished ones are counted, not listed).

  Raises (before anything is written):
    ValueError: a bad launcher template, max_parallel or time_limit; `sweep_dir` is a run's.
    FileNotFoundError, ValueError: without a launcher, a dataset path that is not there
      (`check_data`).
    files.LockedError: another sweep runs in `sweep_dir`.
  """
  if max_parallel < 1:
    raise ValueError(f'--max_parallel={max_parallel} must be at least 1.')
  if time_limit is not None and not time_limit > 0:
    raise ValueError(f'--time_limit={time_limit} must be a positive number of seconds.')
  if launcher:  # a template that cannot be filled in is refused before the sweep folder is made
    fill_launcher(launcher, point_flags='', workdir='', index=0, num_processes=num_processes,
                  python='', coordinator='')
  deadline = None if time_limit is None else time.monotonic() + time_limit
  run = lambda points, indices, title: _run_points(
      points, indices, argv, title, launcher, num_processes, max_parallel, deadline)
  grid = grid_points(sweep, sweep_dir)
  check_configs(grid)
  if not launcher:  # a launcher's jobs may run on hosts that hold data this one lacks
    check_data(grid + expand(sweep, sweep_dir))
  with files.exclusive_lock(sweep_dir, 'sweep'):  # (makes the folder, checks access)
    if (files.exists(os.path.join(sweep_dir, 'config.json'))
        and not files.exists(os.path.join(sweep_dir, 'sweep_config.json'))):
      raise ValueError(f"{sweep_dir} is a training run's folder (it holds config.json): give "
                       'the sweep a --workdir of its own.')
    return _run_stages(sweep, sweep_dir, grid, run)


def _run_stages(sweep: ml_collections.ConfigDict, sweep_dir: str, grid: list[Point],
                run) -> list[dict]:
  """The body of `run_sweep` once its checks passed and it holds the folder: the grid's points,
  the study's, results.csv and the report; `run(points, indices, title)` runs points."""
  write_sweep_config(sweep, sweep_dir)
  csv_path = os.path.join(sweep_dir, 'results.csv')
  chosen = {}
  if grid:
    if not run(grid, range(len(grid)), 'Grid'):
      write_results(grid, csv_path)
      return []
    chosen = choose_hparams(grid)
    files.write_json(os.path.join(sweep_dir, 'grid.json'), chosen)
    print('Chosen by validation accuracy: ' + ', '.join(
        f'{fam}: lr {c["lr"]:g}, weight decay {c["weight_decay"]:g}'
        for fam, c in chosen.items()), flush=True)
  points = grid + expand(sweep, sweep_dir, chosen)
  check_configs(points)
  finished = run(points, range(len(grid), len(points)), f'Sweep {sweep.get("name", "")}')
  rows = write_results(points, csv_path)
  written = report.write_report(sweep_dir)
  if not finished:
    print(f'Report of the points finished so far: {written["report"]}', flush=True)
    return []
  print(tables.results_table(results.read_results(csv_path)))
  print('\nResults:', csv_path)
  for key, path in written.items():
    if isinstance(path, str) and files.exists(path):
      print(f'{key}: {path}')
  return rows


def _run_points(points: list[Point], indices: range, argv: list[str], title: str,
                launcher: str | None, num_processes: int, max_parallel: int,
                deadline: float | None) -> bool:
  """Runs the unfinished points among `points[indices]` (each in child processes, by its index
  in `points`, up to `max_parallel` at once) until `deadline` (time.monotonic(); None: no
  limit); False when a signal or the deadline stopped them."""
  commands = {i: point_command(i, points[i], argv, launcher, num_processes) for i in indices}
  env = point_env(1 if launcher else max_parallel)  # launcher jobs may run on other machines
  todo = [i for i in indices
          if not files.exists(os.path.join(points[i].workdir, 'result.json'))]
  total, before = len(indices), len(indices) - len(todo)
  print(f'{title}: {total} points, {before} already finished, {len(todo)} to run.', flush=True)
  start, waiting, running, current, finished = time.time(), list(todo), [], [], before
  with _forward_stop_signals(current) as stop:
    while running or waiting and not stop:
      if deadline is not None and not stop and time.monotonic() >= deadline:
        stop.append('the time limit')
        _stop_points(current)
      while waiting and len(running) < max_parallel and not stop:
        index = waiting.pop(0)
        running.append(start_point(index, points[index], commands[index], env))
        current.append(running[-1].proc)
      for ended in [r for r in running if r.proc.poll() is not None]:
        running.remove(ended)
        current.remove(ended.proc)
        point = points[ended.index]
        status, error = finish_point(point, ended, bool(stop))
        if stop:
          outcome = {'done': 'finished as the sweep stopped', 'failed': f'failed ({error})',
                     'stopped': f'stopped by {stop[0]}; the rerun resumes it'}[status]
          print(f'{point.label} train_size={point.train_size} seed={point.seed} '
                f'({point.role}): {outcome}.', flush=True)
          continue
        finished += 1
        per_point = (time.time() - start) / (finished - before)
        eta = per_point * (len(waiting) + len(running)) / max_parallel
        print(f'[{finished}/{total}] {point.label} train_size={point.train_size} '
              f'seed={point.seed} ({point.role}): {status}{" (" + error + ")" if error else ""}'
              f' | elapsed {metrics.format_duration(time.time() - start)} | ETA '
              f'{metrics.format_duration(eta)}', flush=True)
      time.sleep(0.2)
  if stop:
    done = sum(files.exists(os.path.join(points[i].workdir, 'result.json')) for i in indices)
    print(f'Stopped by {stop[0]}; {done} of {total} points finished. Rerun the same '
          'command to continue.', flush=True)
    return False
  return True


def describe(points: list[Point], indices: list[int] | None = None) -> str:
  """The dry-run listing: each point of `indices` (default all) with its model, data, seed,
  role, budget and mesh (before the grid has run, the study's points show the base's learning
  rate)."""
  lines = []
  for i in range(len(points)) if indices is None else indices:
    p = points[i]
    c = p.config
    model = {k: v for k, v in c.model.items() if v is not None}
    lines.append(f'[{i}] {p.label}: train_size={p.train_size} seed={p.seed} role={p.role} '
                 f'steps={c.total_steps} eval_every={c.eval_every} batch={c.batch_size} '
                 f'lr={c.optim.lr} weight_decay={c.optim.weight_decay} mesh={c.mesh} '
                 f'dataset={c.dataset} model={model}\n    workdir={p.workdir}')
  return '\n'.join(lines)


def summarize(points: list[Point]) -> str:
  """The dry-run listing's last line: the points by role, their training steps (at most: early
  stopping may end a point sooner) and how many have finished already."""
  roles = collections.Counter(p.role for p in points)
  steps = sum(p.config.total_steps for p in points)
  finished = sum(files.exists(os.path.join(p.workdir, 'result.json')) for p in points)
  return (f'{len(points)} points ({", ".join(f"{n} {role}" for role, n in roles.items())}), '
          f'{steps:,} training steps at most; {finished} finished already.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value or _CONFIG.value is None:
    raise app.UsageError('--config and --workdir are required.')
  try:
    points = all_points(_CONFIG.value, _WORKDIR.value)
    if _POINT.value is not None and _POINT.value >= len(points):
      raise ValueError(f'--point={_POINT.value}: the sweep has {len(points)} points, 0 to '
                       f'{len(points) - 1} (--dry_run lists them).')
    if _DRY_RUN.value:
      print(describe(points, None if _POINT.value is None else [_POINT.value]))
      if _POINT.value is None:
        print(summarize(points))
      return
    if _POINT.value is not None:  # child process: one training run
      cli.setup_logging()
      _JOIN()
      point = points[_POINT.value]
      train.train_and_evaluate(point.config, point.workdir)
      return
    run_sweep(_CONFIG.value, _WORKDIR.value, sys.argv, _LAUNCHER.value,
              flags.FLAGS.num_processes or 1, _MAX_PARALLEL.value, _TIME_LIMIT.value)
  except cli.COMMAND_ERRORS as e:
    sys.exit(f'Error: {e}')


if __name__ == '__main__':
  cli.run(main, 'Stopped by Ctrl-C; rerun the same command to continue (finished points are '
                'kept, stopped ones resume from their checkpoints).')
