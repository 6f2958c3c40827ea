"""The sweep's results schema: `results.csv`, one row per (model, training-set size) point.

`COLUMNS` are the columns the sweep writes (`write_results`) and the report reads
(`read_results`); `from_result` maps a run's `result.json` to them. `curves` groups the finished rows
by model; `gaps`, `reference` (the ResNet baseline), `vits_by_depth` and `sizes` select from them.
"""
import csv
import io

from vit_jax import files

COLUMNS = ('model', 'family', 'depth', 'width', 'params', 'train_size', 'steps', 'examples_seen',
           'best_step', 'train_accuracy', 'val_accuracy', 'test_accuracy', 'fewshot_accuracy',
           'train_flops', 'wall_time_sec', 'status', 'error', 'workdir')


_NUMERIC = {**dict.fromkeys(('depth', 'width', 'params', 'train_size', 'steps', 'examples_seen',
                             'best_step'), int),
            **dict.fromkeys(('train_accuracy', 'val_accuracy', 'test_accuracy',
                             'fewshot_accuracy', 'train_flops', 'wall_time_sec'), float)}


def read_results(path: str) -> list[dict]:
  """Rows of a sweep's `results.csv` as dicts; numeric columns become int or float (None when
  empty), the others stay strings."""
  if not files.exists(path):
    raise FileNotFoundError(f'Sweep results not found: {path}')
  with io.StringIO(files.read_text(path)) as f:
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
      raise ValueError(f'{path} lacks the columns {missing}; its header is {reader.fieldnames}.')
    return [_parse_row(row, f'{path} line {reader.line_num}') for row in reader]


def _parse_row(row: dict, where: str) -> dict:
  parsed = {key: row[key] or '' for key in COLUMNS}
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


def curves(rows: list[dict]) -> dict[str, list[dict]]:
  """Finished rows by model label (in order of first appearance), each sorted by train_size; a
  later row for the same (model, train_size) replaces an earlier one."""
  points = {}
  for row in rows:
    if row['status'] != 'done':
      continue
    if row['train_size'] is None or row['test_accuracy'] is None:
      raise ValueError(f'Run {row["workdir"]} ({row["model"]}) is marked done but has no '
                       'train_size or test_accuracy.')
    points.setdefault(row['model'], {})[row['train_size']] = row
  return {label: [by_size[s] for s in sorted(by_size)] for label, by_size in points.items()}


def accuracies(curve: list[dict]) -> dict[int, float]:
  return {p['train_size']: p['test_accuracy'] for p in curve}


def gaps(curve: list[dict], reference: list[dict]) -> list[tuple[int, float]]:
  """(size, accuracy - reference accuracy) at every size both curves have, by size."""
  ref = accuracies(reference)
  return [(s, acc - ref[s]) for s, acc in accuracies(curve).items() if s in ref]


def reference(curves: dict[str, list[dict]]) -> str | None:
  """The first label of the `resnet` family, the baseline every other model is compared with."""
  return next((label for label, c in curves.items() if c[0]['family'] == 'resnet'), None)


def vits_by_depth(curves: dict[str, list[dict]]) -> list[str]:
  return sorted((label for label, c in curves.items() if c[0]['family'] == 'vit'),
                key=lambda label: curves[label][0]['depth'] or 0)


def sizes(curves: dict[str, list[dict]]) -> list[int]:
  return sorted({p['train_size'] for c in curves.values() for p in c})
