"""Data-scaling sweep report: figures, power-law fits, crossings and findings from `results.csv`.

  python -m vit_jax.report <sweep workdir> [title]

Reads `<sweep workdir>/results.csv` (one row per (model, train_size) point, written by the
sweep) and writes next to it `accuracy_vs_data.png`, `gap_vs_data.png`,
`accuracy_vs_compute.png`, `REPORT.md` and `report.json`, all atomically.

Every model's test error is fitted with err(D) = a * D^-b + c over the training-set size D (the
ViT paper's Figures 3/4 show the same curves as accuracy); the sizes where two fitted curves
cross are reported, marked "extrapolated" outside the measured range. Findings are sentences
generated from the numbers; accuracy differences below half a point are called "about equal".

Figures are drawn on `matplotlib.figure.Figure` objects and rendered by Agg without pyplot, so
nothing depends on (or changes) the process's matplotlib backend and no figure stays open.
"""
import csv
import os
import sys
import warnings

from matplotlib.figure import Figure
import numpy as np
from scipy import optimize

from vit_jax import files

COLUMNS = ('model', 'family', 'depth', 'width', 'params', 'train_size', 'steps', 'examples_seen',
           'best_step', 'train_accuracy', 'val_accuracy', 'test_accuracy', 'fewshot_accuracy',
           'train_flops', 'wall_time_sec', 'status', 'error', 'workdir')
_NUMERIC = {**dict.fromkeys(('depth', 'width', 'params', 'train_size', 'steps', 'examples_seen',
                             'best_step'), int),
            **dict.fromkeys(('train_accuracy', 'val_accuracy', 'test_accuracy',
                             'fewshot_accuracy', 'train_flops', 'wall_time_sec'), float)}
TIE = 0.005  # accuracy differences below half a point are "about equal"
MIN_FIT_POINTS = 3
_DASH = '-'


def read_results(path: str) -> list[dict]:
  """Rows of a sweep's `results.csv` as dicts; numeric columns become int or float (None when
  empty), the others stay strings."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Sweep results not found: {path}')
  with open(path, newline='') as f:
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


def _power_law(d: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
  return a * d ** -b + c


def fit_power_law(sizes: np.ndarray, errors: np.ndarray) -> dict:
  """Least-squares fit of err(D) = a * D^-b + c with a >= 0, 0 <= b <= 3, 0 <= c <= 1.

  Returns {'a', 'b', 'c', 'r2', 'rmse', 'n'} ('r2' is None when all errors are equal). Raises
  ValueError with fewer than 3 points, invalid inputs or when the optimiser fails; the report
  then lists the model without a fit. D is divided by its maximum inside the fit (so a is O(1)
  there) and a is converted back to the original units.
  """
  sizes, errors = np.asarray(sizes, np.float64), np.asarray(errors, np.float64)
  if sizes.shape != errors.shape or sizes.ndim != 1:
    raise ValueError(f'sizes {sizes.shape} and errors {errors.shape} must be equal-length 1-D.')
  if len(sizes) < MIN_FIT_POINTS:
    raise ValueError(f'only {len(sizes)} points; a power-law fit needs {MIN_FIT_POINTS}.')
  if not (np.all(np.isfinite(sizes)) and np.all(sizes > 0)):
    raise ValueError(f'training-set sizes must be finite and positive, got {sizes.tolist()}.')
  if not (np.all(np.isfinite(errors)) and np.all((errors >= 0) & (errors <= 1))):
    raise ValueError(f'errors must lie in [0, 1], got {errors.tolist()}.')
  scale = sizes.max()
  x = sizes / scale
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optimize.OptimizeWarning)  # pcov is not used
      (a, b, c), _ = optimize.curve_fit(_power_law, x, errors, p0=_initial_guess(x, errors),
                                        bounds=([0, 0, 0], [np.inf, 3, 1]), max_nfev=10_000)
  except RuntimeError as e:
    raise ValueError(f'the power-law fit did not converge: {e}') from e
  residuals = errors - _power_law(x, a, b, c)
  total = np.sum((errors - errors.mean()) ** 2)
  return {'a': float(a * scale ** b), 'b': float(b), 'c': float(c),
          'r2': float(1 - np.sum(residuals ** 2) / total) if total > 0 else None,
          'rmse': float(np.sqrt(np.mean(residuals ** 2))), 'n': len(sizes)}


def _initial_guess(x: np.ndarray, errors: np.ndarray) -> list[float]:
  """c at half the smallest error; a and b from a log-log line through the rest."""
  c = 0.5 * errors.min()
  rest = np.maximum(errors - c, 1e-6)
  slope, intercept = np.polyfit(np.log(x), np.log(rest), 1) if np.ptp(x) > 0 else (0., 0.)
  return [float(np.exp(intercept)), float(np.clip(-slope, 0.01, 2.99)), float(min(c, 0.99))]


def predict_error(fit: dict, sizes: np.ndarray) -> np.ndarray:
  """The fitted error a * D^-b + c at training-set sizes D."""
  return _power_law(np.asarray(sizes, np.float64), fit['a'], fit['b'], fit['c'])


def crossing(fit_a: dict, fit_b: dict, lo: float, hi: float) -> float | None:
  """Training-set size D where two fitted error curves cross, searched from lo / 100 to
  hi * 100; None if they do not cross there.

  The difference of two such curves changes sign at most twice; when it does twice, the crossing
  nearer the measured range [lo, hi] (in log distance, 0 inside it) is returned.
  """
  if not 0 < lo <= hi:
    raise ValueError(f'Need 0 < lo <= hi for the crossing search, got lo={lo}, hi={hi}.')
  log_d = np.linspace(np.log(lo / 100), np.log(hi * 100), 2001)
  diff = lambda t: predict_error(fit_a, np.exp(t)) - predict_error(fit_b, np.exp(t))
  sign = np.sign(diff(log_d))
  roots = [log_d[i] if sign[i] == 0 else optimize.brentq(diff, log_d[i], log_d[i + 1])
           for i in np.flatnonzero(sign[:-1] != sign[1:])]
  # A root exactly on a grid point shows up twice (+ to 0, then 0 to -); the set keeps one.
  roots = sorted({float(np.exp(t)) for t in roots})
  if not roots:
    return None
  distance = lambda d: max(np.log(lo) - np.log(d), np.log(d) - np.log(hi), 0.)
  return min(roots, key=distance)


def _curves(rows: list[dict]) -> dict[str, list[dict]]:
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


def _accuracies(curve: list[dict]) -> dict[int, float]:
  return {p['train_size']: p['test_accuracy'] for p in curve}


def _gaps(curve: list[dict], reference: list[dict]) -> list[tuple[int, float]]:
  """(size, accuracy - reference accuracy) at every size both curves have, by size."""
  ref = _accuracies(reference)
  return [(s, acc - ref[s]) for s, acc in _accuracies(curve).items() if s in ref]


def _reference(curves: dict[str, list[dict]]) -> str | None:
  """The first label of the `resnet` family, the baseline every other model is compared with."""
  return next((label for label, c in curves.items() if c[0]['family'] == 'resnet'), None)


def _vits_by_depth(curves: dict[str, list[dict]]) -> list[str]:
  return sorted((label for label, c in curves.items() if c[0]['family'] == 'vit'),
                key=lambda label: curves[label][0]['depth'] or 0)


def _sizes(curves: dict[str, list[dict]]) -> list[int]:
  return sorted({p['train_size'] for c in curves.values() for p in c})


# Number formatting.


def _pct(accuracy: float | None) -> str:
  return _DASH if accuracy is None else f'{100 * accuracy:.1f}'


def _points(difference: float) -> str:
  return f'{100 * abs(difference):.1f} points'


def _images(size: float) -> str:
  """Measured sizes (integers) exactly, fitted ones (floats) to 3 significant digits."""
  if isinstance(size, int):
    return f'{size:,} images'
  return f'{float(f"{size:.3g}"):,.0f} images'


def _count(n: int | None) -> str:
  if n is None:
    return _DASH
  for unit, scale in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= scale:
      return f'{n / scale:.1f}{unit}'
  return str(n)


def _number(value: float | None, fmt: str = '.3g') -> str:
  return _DASH if value is None else format(value, fmt)


# Tables.


def _results_cells(curves: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
  """Header and rows: model, params, test accuracy (%) per size, few-shot at the largest size."""
  sizes = _sizes(curves)
  header = ['model', 'params', *(f'{s:,}' for s in sizes), f'few-shot @ {sizes[-1]:,}']
  body = []
  for label, curve in curves.items():
    by_size = {p['train_size']: p for p in curve}
    accuracies = [_pct(by_size[s]['test_accuracy']) if s in by_size else _DASH for s in sizes]
    fewshot = by_size[sizes[-1]]['fewshot_accuracy'] if sizes[-1] in by_size else None
    body.append([label, _count(curve[-1]['params']), *accuracies, _pct(fewshot)])
  return header, body


def _plain_table(header: list[str], body: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
  line = lambda r: '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
  return '\n'.join([line(header), line(['-' * w for w in widths]), *map(line, body)])


def _markdown_table(header: list[str], body: list[list[str]]) -> str:
  cell = lambda text: str(text).replace('|', '\\|').replace('\n', ' ')
  line = lambda r: '| ' + ' | '.join(map(cell, r)) + ' |'
  return '\n'.join([line(header), line(['---'] * len(header)), *map(line, body)])


def results_table(rows: list[dict]) -> str:
  """Plain-text table of the finished points: model, params, test accuracy (%) per
  training-set size, few-shot accuracy (%) at the largest size."""
  curves = _curves(rows)
  if not curves:
    return 'No point finished.'
  return 'Test accuracy (%) by training-set size:\n' + _plain_table(*_results_cells(curves))


def _fit_cells(fits: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
  header = ['model', 'points', 'a', 'b', 'c', 'R^2', 'asymptotic accuracy (1 - c, %)']
  body = []
  for label, fit in fits.items():
    if 'error' in fit:
      body.append([label, str(fit['n']), _DASH, _DASH, _DASH, _DASH, f'no fit: {fit["error"]}'])
    else:
      asymptote = _pct(1 - fit['c'])
      if min(fit['c'], 1 - fit['c']) < 1e-6:
        asymptote += ' (c at its bound: not determined)'
      body.append([label, str(fit['n']), _number(fit['a']), _number(fit['b'], '.3f'),
                   _number(fit['c'], '.3f'), _number(fit['r2'], '.3f'), asymptote])
  return header, body


def _crossing_text(entry: dict) -> str:
  if entry['size'] is None:
    return entry['reason']
  where = (f'extrapolated, outside the measured {entry["lo"]:,}-{entry["hi"]:,}'
           if entry['extrapolated'] else 'measured range')
  return f'about {_images(entry["size"])} ({where})'


# Fits and crossings.


def _fits(curves: dict[str, list[dict]]) -> dict[str, dict]:
  """A power-law fit of test error per label, or {'error': why not, 'n': points}."""
  fits = {}
  for label, curve in curves.items():
    sizes = np.array([p['train_size'] for p in curve])
    try:
      fits[label] = fit_power_law(sizes, 1 - np.array([p['test_accuracy'] for p in curve]))
    except ValueError as e:
      fits[label] = {'error': str(e), 'n': len(curve)}
  return fits


def _pairs(curves: dict[str, list[dict]]) -> list[tuple[str, str]]:
  """Every non-ResNet model against the ResNet, every deeper ViT against the shallowest."""
  ref, vits = _reference(curves), _vits_by_depth(curves)
  pairs = [(label, ref) for label in curves if ref is not None and label != ref]
  return pairs + [(deeper, vits[0]) for deeper in vits[1:]]


def _crossings(curves: dict[str, list[dict]], fits: dict[str, dict]) -> list[dict]:
  """{'models': [a, b], 'size', 'extrapolated', 'lo', 'hi', 'reason'} per compared pair; size
  is None (and reason says why) when the fits do not cross or one is missing."""
  entries = []
  for pair in _pairs(curves):
    sizes = [p['train_size'] for label in pair for p in curves[label]]
    entry = {'models': list(pair), 'size': None, 'extrapolated': None, 'lo': min(sizes),
             'hi': max(sizes)}
    unfitted = [label for label in pair if 'error' in fits[label]]
    if unfitted:
      entry['reason'] = f'no fit for {" and ".join(unfitted)}'
    else:
      entry['size'] = crossing(fits[pair[0]], fits[pair[1]], entry['lo'], entry['hi'])
      if entry['size'] is None:
        entry['reason'] = (f'no crossing between {_images(entry["lo"] / 100)} and '
                           f'{_images(entry["hi"] * 100)}')
      else:
        entry['extrapolated'] = not entry['lo'] <= entry['size'] <= entry['hi']
    entries.append(entry)
  return entries


# Findings.


def _versus(label: str, other: str, gap: float) -> str:
  """'ViT-12 loses to ResNet by 3.1 points' / 'beats ... by' / 'is about equal to'."""
  if abs(gap) < TIE:
    return f'{label} is about equal to {other} ({100 * gap:+.1f} points)'
  return f'{label} {"beats" if gap > 0 else "loses to"} {other} by {_points(gap)}'


def _best_at(curves: dict[str, list[dict]], size: int, which: str) -> str:
  """Finding (1): the best model at one training-set size and its margin."""
  accuracies = {label: _accuracies(c) for label, c in curves.items()}
  ranked = sorted(((acc[size], label) for label, acc in accuracies.items() if size in acc),
                  reverse=True)
  (best_acc, best), where = ranked[0], f'At the {which} training size ({_images(size)})'
  if len(ranked) == 1:
    return f'{where}, only {best} finished ({_pct(best_acc)}% test accuracy).'
  second_acc, second = ranked[1]
  if best_acc - second_acc < TIE:
    return (f'{where}, {best} and {second} are about equal ({_pct(best_acc)}% vs '
            f'{_pct(second_acc)}% test accuracy).')
  return (f'{where}, {best} is best with {_pct(best_acc)}% test accuracy, '
          f'{_points(best_acc - second_acc)} ahead of {second} ({_pct(second_acc)}%).')


def _trend(label: str, ref: str, first: float, last: float) -> str:
  if first < -TIE and last > TIE:
    return f'{label} overtakes {ref} as data grows'
  if first > TIE and last < -TIE:
    return f'{label} falls behind {ref} as data grows'
  change = abs(last) - abs(first)
  if abs(change) < TIE:
    return f'the gap stays about the same as data grows ({_points(first)} vs {_points(last)})'
  return (f'the gap {"shrinks" if change < 0 else "widens"} as data grows, from '
          f'{_points(first)} to {_points(last)}')


def _against_reference(curves: dict[str, list[dict]], entry: dict) -> str:
  """Finding (2): one model against the ResNet at the smallest and largest shared size, the
  trend of the gap and the fitted crossing."""
  label, ref = entry['models']
  gaps = _gaps(curves[label], curves[ref])
  if not gaps:
    return f'{label} and {ref} share no training size, so they cannot be compared directly.'
  (small, first), (large, last) = gaps[0], gaps[-1]
  text = f'{_versus(label, ref, first)} at {_images(small)}'
  if large != small:
    text += (f' and {_versus(label, ref, last).removeprefix(label + " ")} at {_images(large)}; '
             f'{_trend(label, ref, first, last)}')
  if entry['size'] is None:
    return f'{text}. Fitted curves: {_crossing_text(entry)}.'
  return f'{text}. Their fitted curves cross at {_crossing_text(entry)}.'


def _depth_finding(curves: dict[str, list[dict]]) -> list[str]:
  """Finding (3): whether each deeper ViT overtakes the shallowest one, and from which size."""
  vits = _vits_by_depth(curves)
  if len(vits) < 2:
    return ['Fewer than two ViT depths finished, so deeper and shallower ViTs cannot be compared.']
  sentences = []
  for deeper in vits[1:]:
    gaps = _gaps(curves[deeper], curves[vits[0]])
    ahead = [gap > TIE for _, gap in gaps]
    if not gaps:
      sentences.append(f'{deeper} and {vits[0]} share no training size.')
    elif all(ahead):
      sentences.append(f'{deeper} beats {vits[0]} at every measured size, by '
                       f'{_points(min(g for _, g in gaps))} to {_points(max(g for _, g in gaps))}.')
    elif ahead[-1]:
      start = gaps[len(ahead) - ahead[::-1].index(False)][0]
      sentences.append(f'{deeper} overtakes {vits[0]} from {_images(start)} on; at '
                       f'{_images(gaps[-1][0])}, {_versus(deeper, vits[0], gaps[-1][1])}.')
    else:
      sentences.append(f'{deeper} does not overtake {vits[0]} within the measured range: at '
                       f'{_images(gaps[-1][0])}, {_versus(deeper, vits[0], gaps[-1][1])}.')
  return sentences


def _paper_finding(curves: dict[str, list[dict]]) -> str:
  """Finding (4): agreement with the paper's three claims, each checked where measurable."""
  ref, vits = _reference(curves), _vits_by_depth(curves)
  checks = []
  gaps = [_gaps(curves[v], curves[ref]) for v in vits] if ref else []
  smallest = _sizes(curves)[0]
  at_smallest = [g[0][1] for g in gaps if g and g[0][0] == smallest]
  if at_smallest:
    checks.append((f'every ViT measured at {_images(smallest)} behind the ResNet there',
                   all(gap < -TIE for gap in at_smallest)))
  trends = [g for g in gaps if len(g) > 1]
  if trends:
    checks.append(('every ViT gaining on the ResNet as data grows',
                   all(g[-1][1] > g[0][1] + TIE for g in trends)))
  depth = _gaps(curves[vits[-1]], curves[vits[0]]) if len(vits) > 1 else []
  if len(depth) > 1:
    (small, first), (large, last) = depth[0], depth[-1]
    checks.append((f'the deepest ViT ({vits[-1]}) ahead of the shallowest ({vits[0]}) at '
                   f'{_images(large)} but not at {_images(small)}', first <= TIE < last))
  claim = ('the paper (ViT behind the ResNet on small data, catching up with more data; larger '
           'ViTs paying off only with the most data)')
  if not checks:
    return (f'This sweep cannot be compared with {claim}: that needs a ResNet and a ViT, or two '
            'ViT depths, measured at two or more shared sizes.')
  held = [ok for _, ok in checks]
  verdict = 'agrees' if all(held) else 'disagrees' if not any(held) else 'partly agrees'
  details = '; '.join(f'{name}: {"yes" if ok else "no"}' for name, ok in checks)
  return f'Compared with {claim}, this sweep {verdict} ({details}).'


def _findings(curves: dict[str, list[dict]], crossings: list[dict]) -> list[str]:
  sizes = _sizes(curves)
  findings = [_best_at(curves, sizes[0], 'smallest')]
  if len(sizes) > 1:
    findings.append(_best_at(curves, sizes[-1], 'largest'))
  ref = _reference(curves)
  if ref is None:
    findings.append('No ResNet finished, so no model can be compared with the CNN baseline.')
  findings += [_against_reference(curves, e) for e in crossings if e['models'][1] == ref]
  return findings + _depth_finding(curves) + [_paper_finding(curves)]


# Figures.


def _save_figure(fig: Figure, path: str) -> None:
  with files.atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=120)


def _draw(path: str, title: str, xlabel: str, ylabel: str, lines: list[dict],
          zero_line: bool = False) -> None:
  """One log-x figure; `lines` are {'x', 'y', 'label', 'color', 'style'} (a label starting
  with '_' stays out of the legend)."""
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  for line in lines:
    ax.plot(line['x'], line['y'], line['style'], color=line['color'], label=line['label'],
            alpha=0.6 if line['style'] == '--' else 1.)
  if zero_line:
    ax.axhline(0, color='black', linewidth=0.8)
  ax.set(xscale='log', xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize='small')
  fig.tight_layout()
  _save_figure(fig, path)


def _figures(sweep_dir: str, title: str, curves: dict[str, list[dict]],
             fits: dict[str, dict]) -> dict[str, str]:
  """Writes the figures that have something to show; returns {name: path}."""
  colors = {label: f'C{i % 10}' for i, label in enumerate(curves)}

  def line(model, x, y, style='o-', label=None):
    return {'x': x, 'y': y, 'color': colors[model], 'style': style, 'label': label or model}

  accuracy = lambda label, points, key: line(label, [p[key] for p in points],
                                             [100 * p['test_accuracy'] for p in points])
  data = [accuracy(label, c, 'train_size') for label, c in curves.items()]
  for label, fit in fits.items():
    if 'error' not in fit:
      d = np.geomspace(curves[label][0]['train_size'], curves[label][-1]['train_size'], 100)
      data.append(line(label, d, 100 * (1 - predict_error(fit, d)), '--', '_nolegend_'))
  ref = _reference(curves)
  gaps = {label: _gaps(c, curves[ref]) for label, c in curves.items() if ref and label != ref}
  compute = {label: [p for p in c if p['train_flops']] for label, c in curves.items()}
  specs = {
      'accuracy_vs_data': (f'{title}: test accuracy vs data (dashed: power-law fits)',
                           'Training-set size (images)', 'Test accuracy (%)', data),
      'gap_vs_data': (f'{title}: accuracy gap to {ref}', 'Training-set size (images)',
                      f'Test accuracy minus {ref} (points)',
                      [line(label, [s for s, _ in g], [100 * d for _, d in g], 'o-',
                            f'{label} - {ref}') for label, g in gaps.items() if g]),
      'accuracy_vs_compute': (f'{title}: test accuracy vs compute', 'Training compute (FLOPs)',
                              'Test accuracy (%)', [accuracy(label, c, 'train_flops')
                                                    for label, c in compute.items() if c]),
  }
  paths = {}
  for name, (fig_title, xlabel, ylabel, lines) in specs.items():
    if lines:
      paths[name] = os.path.join(sweep_dir, f'{name}.png')
      _draw(paths[name], fig_title, xlabel, ylabel, lines, zero_line=name == 'gap_vs_data')
  return paths


# The report.


def _setup_line(rows: list[dict], curves: dict[str, list[dict]]) -> str:
  failed = sum(row['status'] != 'done' for row in rows)
  if not curves:
    return f'No point finished: all {failed} runs failed (or did not finish).'
  return (f'Setup: {len(curves)} models ({", ".join(curves)}); training sizes '
          f'{", ".join(f"{s:,}" for s in _sizes(curves))}; '
          f'{sum(map(len, curves.values()))} finished points, {failed} failed.')


def _failed_section(rows: list[dict]) -> list[str]:
  failed = [[r['model'], _number(r['train_size'], ','), r['status'], r['error'] or _DASH]
            for r in rows if r['status'] != 'done']
  if not failed:
    return []
  return ['## Failed runs', '', _markdown_table(['model', 'train size', 'status', 'error'],
                                                failed), '']


_INSIDE = 'analysis/sweep.png'  # written by `python -m vit_jax.analyze --sweep`


def _markdown(sweep_dir: str, title: str, rows: list[dict], curves: dict[str, list[dict]],
              fits: dict[str, dict], crossings: list[dict], figures: dict[str, str],
              findings: list[str]) -> str:
  lines = [f'# {title}', '', _setup_line(rows, curves), '']
  if curves:
    lines += ['## Results', '', 'Test accuracy (%) by training-set size; few-shot accuracy (%) '
              'at the largest size.', '', _markdown_table(*_results_cells(curves)), '',
              '## Power-law fits', '', 'Test error err(D) = a * D^-b + c over training-set size '
              'D; asymptotic accuracy 1 - c.', '', _markdown_table(*_fit_cells(fits)), '']
  if crossings:
    lines += ['## Crossings of the fitted curves', '', _markdown_table(
        ['pair', 'crossing'], [[' vs '.join(e['models']), _crossing_text(e)] for e in crossings]),
              '']
  if figures:
    lines += ['## Figures', '']
    lines += [f'![{name}]({os.path.basename(path)})\n' for name, path in figures.items()]
  if os.path.exists(os.path.join(sweep_dir, _INSIDE)):
    lines += ['## Inside the models', '', 'Mean attention distance of the first layer and the '
              'high-frequency content of the last block by training-set size '
              '(`python -m vit_jax.analyze --sweep`; numbers in `analysis/sweep.csv`).', '',
              f'![inside the models]({_INSIDE})', '']
  lines += _failed_section(rows)
  if findings:
    lines += ['## Findings', '', *(f'- {sentence}' for sentence in findings), '']
  return '\n'.join(lines)


def write_report(sweep_dir: str, title: str | None = None) -> dict:
  """Writes the figures, `REPORT.md` and `report.json` for `<sweep_dir>/results.csv`.

  The title defaults to the sweep's preset name (from `sweep_config.json`). Returns
  {'report': REPORT.md path, 'json': report.json path, 'findings': [sentences]} plus
  {figure name: png path} for 'accuracy_vs_data', 'gap_vs_data' (not without a ResNet) and
  'accuracy_vs_compute' (not without FLOPs). With no finished point only the two text files
  are written.
  """
  rows = read_results(os.path.join(sweep_dir, 'results.csv'))
  if title is None:  # the sweep's preset name, else the directory's
    config_path = os.path.join(sweep_dir, 'sweep_config.json')
    name = files.read_json(config_path).get('name') if os.path.exists(config_path) else None
    title = f'Data scaling: {name or os.path.basename(os.path.abspath(sweep_dir))}'
  curves = _curves(rows)
  fits = _fits(curves)
  crossings = _crossings(curves, fits)
  figures = _figures(sweep_dir, title, curves, fits) if curves else {}
  findings = _findings(curves, crossings) if curves else []
  paths = {'report': os.path.join(sweep_dir, 'REPORT.md'),
           'json': os.path.join(sweep_dir, 'report.json')}
  with files.atomic_open(paths['report']) as f:
    f.write(_markdown(sweep_dir, title, rows, curves, fits, crossings, figures, findings))
  failed = [{key: r[key] for key in ('model', 'train_size', 'status', 'error', 'workdir')}
            for r in rows if r['status'] != 'done']
  files.write_json(paths['json'], {'title': title, 'sizes': _sizes(curves), 'fits': fits,
                                   'crossings': crossings, 'findings': findings,
                                   'failed': failed})
  return {**figures, **paths, 'findings': findings}


def main(argv: list[str]) -> None:
  if len(argv) not in (2, 3):
    sys.exit(f'Usage: python -m vit_jax.report <sweep workdir> [title]; got {argv[1:]}')
  try:
    table = results_table(read_results(os.path.join(argv[1], 'results.csv')))
    result = write_report(*argv[1:])
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'Error: {e}')
  print(table)
  for key, path in result.items():
    if key != 'findings':
      print(f'Wrote {path}')


if __name__ == '__main__':
  main(sys.argv)
