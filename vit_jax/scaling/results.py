"""The sweep's results schema: `results.csv`, one row per (model, training-set size, seed) run.

`COLUMNS` are the columns the sweep writes (`write_results`) and the report reads
(`read_results`; the `OPTIONAL` ones may be missing in older files); `from_result` maps a run's
`result.json` to them. `curves` groups the finished study rows by model and size (mean and
spread over seeds); `gaps`, `reference` (the ResNet baseline), `vits_by_depth` and `sizes`
select from them; `convergence` pairs the twice-the-budget reruns with their study runs
(`convergence_means`: per model and size, over the seeds rerun).
"""
import csv
import io
import os

import numpy as np

from vit_jax import files

COLUMNS = ('model', 'family', 'depth', 'width', 'params', 'train_size', 'seed', 'role', 'lr',
           'weight_decay', 'budget_steps', 'budget_epochs', 'steps', 'examples_seen',
           'best_step', 'train_accuracy', 'val_accuracy', 'test_accuracy', 'fewshot_accuracy',
           'train_flops', 'wall_time_sec', 'status', 'error', 'workdir')
# Columns added with seeds, budgets and grids; a results.csv without them (or a row with them
# empty) reads as seed 0, role 'study'.
OPTIONAL = {'seed': '0', 'role': 'study', 'lr': '', 'weight_decay': '', 'budget_steps': '',
            'budget_epochs': ''}


_NUMERIC = {**dict.fromkeys(('depth', 'width', 'params', 'train_size', 'seed', 'budget_steps',
                             'steps', 'examples_seen', 'best_step'), int),
            **dict.fromkeys(('lr', 'weight_decay', 'budget_epochs', 'train_accuracy',
                             'val_accuracy', 'test_accuracy', 'fewshot_accuracy', 'train_flops',
                             'wall_time_sec'), float)}


def read_results(path: str) -> list[dict]:
  """Rows of a sweep's `results.csv` as dicts; numeric columns become int or float (None when
  empty), the others stay strings. A copy edited in a spreadsheet (UTF-8 with a byte-order
  mark, CRLF line ends) reads the same."""
  if not files.exists(path):
    run = files.exists(os.path.join(os.path.dirname(path), 'config.json'))
    raise FileNotFoundError(f'Sweep results not found: {path}' + (
        ' (that folder is one training run, not a sweep)' if run else ''))
  with io.StringIO(files.read_text(path).removeprefix('\ufeff')) as f:  # a spreadsheet's BOM
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or []) and c not in OPTIONAL]
    if missing:
      raise ValueError(f'{path} lacks the columns {missing}; its header is {reader.fieldnames}.')
    return [_parse_row(row, f'{path} line {reader.line_num}') for row in reader]


STATUSES = ('done', 'failed', 'unfinished')


def _parse_row(row: dict, where: str) -> dict:
  if None in row or None in row.values():  # csv.DictReader's marks of extra / missing cells
    raise ValueError(f'{where} does not have one cell per column of the header (the file is '
                     'damaged or cut short).')
  parsed = {key: row.get(key) or OPTIONAL.get(key, '') for key in COLUMNS}
  if parsed['status'] not in STATUSES:
    raise ValueError(f"{where}: column 'status' holds {parsed['status']!r}, not one of "
                     f'{", ".join(STATUSES)}.')
  for key, kind in _NUMERIC.items():
    text = parsed[key].strip()
    try:
      parsed[key] = kind(text) if text else None
    except ValueError:
      raise ValueError(f'{where}: column {key!r} holds {text!r}, not a valid {kind.__name__}.') \
          from None
  return parsed


def from_result(result: dict) -> dict:
  """The columns a finished run's `result.json` gives: its size and steps, the best
  evaluation's accuracies (few-shot: the most shots), training compute and time."""
  shots = sorted(int(k[len('best_fewshot_'):-len('shot')]) for k in result
                 if k.startswith('best_fewshot_'))
  return dict(
      params=result['num_params'], train_size=result['train_size'], steps=result['step'],
      examples_seen=result['examples_seen'], best_step=result.get('best_step'),
      train_accuracy=result.get('train_accuracy'), val_accuracy=result.get('best_val_accuracy'),
      test_accuracy=result.get('best_test_accuracy', result.get('test_accuracy')),
      fewshot_accuracy=result.get(f'best_fewshot_{shots[-1]}shot') if shots else None,
      train_flops=result.get('train_flops'), wall_time_sec=result['wall_time_sec'],
      status='done', error='')


def write_results(rows: list[dict], path: str) -> None:
  """Writes `rows` (dicts with COLUMNS as keys, missing ones empty) as `results.csv`,
  atomically."""
  with files.atomic_open(path) as f:
    writer = csv.DictWriter(f, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(rows)


def finished(rows: list[dict], role: str) -> list[dict]:
  """The rows of `role` ('study', 'grid' or 'convergence') whose runs finished.

  Raises:
    ValueError: a finished row without its train_size or test_accuracy.
  """
  done = [r for r in rows if r['status'] == 'done' and r['role'] == role]
  for row in done:
    if row['train_size'] is None or row['test_accuracy'] is None:
      raise ValueError(f'Run {row["workdir"]} ({row["model"]}) is marked done but has no '
                       'train_size or test_accuracy.')
  return done


def _mean(values: list) -> float | None:
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def mean_and_std(values: list[float]) -> tuple[float, float | None]:
  """The mean of the seeds' `values` and their sample standard deviation (None for one)."""
  std = float(np.std(values, ddof=1)) if len(values) > 1 else None
  return float(np.mean(values)), std


def curves(rows: list[dict]) -> dict[str, list[dict]]:
  """The finished study rows by model label (in order of first appearance): one point per
  training size, sorted by size, with the mean over seeds as 'test_accuracy' (likewise
  'val_accuracy', 'fewshot_accuracy', 'train_flops'), the seeds' test accuracies as
  'test_accuracies', their sample standard deviation as 'test_std' (None for one seed) and
  'seeds' (how many). A later row of the same (model, size, seed) replaces an earlier one."""
  runs = {}
  for row in finished(rows, 'study'):
    runs.setdefault(row['model'], {}).setdefault(row['train_size'], {})[row['seed']] = row
  out = {}
  for label, by_size in runs.items():
    out[label] = []
    for size in sorted(by_size):
      seeds = list(by_size[size].values())
      accs = [r['test_accuracy'] for r in seeds]
      mean, std = mean_and_std(accs)
      out[label].append(dict(
          seeds[0], test_accuracy=mean, test_accuracies=accs, test_std=std, seeds=len(accs),
          **{k: _mean([r[k] for r in seeds])
             for k in ('val_accuracy', 'fewshot_accuracy', 'train_flops')}))
  return out


def standard_error(point: dict) -> float | None:
  """Standard error of a curve point's mean test accuracy; None for a single seed."""
  return None if point['test_std'] is None else point['test_std'] / np.sqrt(point['seeds'])


def convergence(rows: list[dict], curves: dict[str, list[dict]]) -> list[dict]:
  """Every finished twice-the-budget rerun with its study run (same model, size, seed):
  {'model', 'train_size', 'seed', 'steps', 'steps_x2', 'test_accuracy', 'test_accuracy_x2',
  'difference'} (x2 minus x1) and 'test_std' (the study point's sample standard deviation over
  its seeds in `curves`, the `curves(rows)`; None for one seed: the scale of seed noise), in row
  order; reruns whose study run is missing are left out."""
  study = {(r['model'], r['train_size'], r['seed']): r for r in finished(rows, 'study')}
  spread = {(label, p['train_size']): p['test_std']
            for label, curve in curves.items() for p in curve}
  checks = []
  for rerun in finished(rows, 'convergence'):
    base = study.get((rerun['model'], rerun['train_size'], rerun['seed']))
    if base is not None:
      checks.append(dict(model=rerun['model'], train_size=rerun['train_size'],
                         seed=rerun['seed'], steps=base['steps'], steps_x2=rerun['steps'],
                         test_accuracy=base['test_accuracy'],
                         test_accuracy_x2=rerun['test_accuracy'],
                         difference=rerun['test_accuracy'] - base['test_accuracy'],
                         test_std=spread[rerun['model'], rerun['train_size']]))
  return checks


def convergence_means(checks: list[dict]) -> list[dict]:
  """The `convergence` checks per (model, train size), in order: {'model', 'train_size',
  'reruns' (how many seeds reran), 'difference' (their mean), 'difference_se' (the differences'
  sample standard deviation over sqrt(reruns); None for one rerun), 'test_std'}."""
  groups = {}
  for check in checks:
    groups.setdefault((check['model'], check['train_size']), []).append(check)
  means = []
  for (model, size), group in groups.items():
    differences = np.array([c['difference'] for c in group])
    se = float(differences.std(ddof=1) / np.sqrt(len(group))) if len(group) > 1 else None
    means.append(dict(model=model, train_size=size, reruns=len(group),
                      difference=float(differences.mean()), difference_se=se,
                      test_std=group[0]['test_std']))
  return means


def grid(rows: list[dict]) -> list[dict]:
  """The finished grid rows (learning rate x weight decay per family), in row order."""
  return finished(rows, 'grid')


def grid_picks(runs: list[dict]) -> dict[str, dict]:
  """{family: the run with the highest 'val_accuracy' (never test accuracy; the first of equal
  ones)} of finished grid runs (dicts with 'family' and 'val_accuracy'; None is passed over):
  the rule by which the sweep picks its learning rate and weight decay."""
  best = {}
  for run in runs:
    if run['val_accuracy'] is not None and (
        run['family'] not in best or run['val_accuracy'] > best[run['family']]['val_accuracy']):
      best[run['family']] = run
  return best


def accuracies(curve: list[dict]) -> dict[int, float]:
  return {p['train_size']: p['test_accuracy'] for p in curve}


def gaps(curve: list[dict], reference: list[dict]) -> list[tuple[int, float]]:
  """(size, accuracy - reference accuracy) at every size both curves have, by size."""
  ref = accuracies(reference)
  return [(s, acc - ref[s]) for s, acc in accuracies(curve).items() if s in ref]


def gap_errors(curve: list[dict], reference: list[dict]) -> dict[int, float | None]:
  """{size: standard error of the gap} at every size both curves have: the two means'
  standard errors added in quadrature; None where either has a single seed."""
  ref = {p['train_size']: p for p in reference}
  errors = {}
  for p in curve:
    if p['train_size'] in ref:
      both = [standard_error(p), standard_error(ref[p['train_size']])]
      errors[p['train_size']] = None if None in both else float(np.hypot(*both))
  return errors


def reference(curves: dict[str, list[dict]]) -> str | None:
  """The first label of the `resnet` family, the baseline every other model is compared with."""
  return next((label for label, c in curves.items() if c[0]['family'] == 'resnet'), None)


def vits_by_depth(curves: dict[str, list[dict]]) -> list[str]:
  return sorted((label for label, c in curves.items() if c[0]['family'] == 'vit'),
                key=lambda label: curves[label][0]['depth'] or 0)


def sizes(curves: dict[str, list[dict]]) -> list[int]:
  return sorted({p['train_size'] for c in curves.values() for p in c})
