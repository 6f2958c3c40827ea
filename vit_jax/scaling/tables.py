"""Number formatting and the tables of the report: results, fits, crossings."""
from vit_jax.scaling import results

DASH = '-'


def percent(accuracy: float | None) -> str:
  return DASH if accuracy is None else f'{100 * accuracy:.1f}'


def points(difference: float) -> str:
  return f'{100 * abs(difference):.1f} points'


def images(size: float) -> str:
  """Measured sizes (integers) exactly, fitted ones (floats) to 3 significant digits."""
  if isinstance(size, int):
    return f'{size:,} images'
  return f'{float(f"{size:.3g}"):,.0f} images'


def spread(point: dict) -> str:
  """A curve point's mean test accuracy (%), '+- std (n seeds)' with several seeds."""
  if point.get('test_std') is None:
    return percent(point['test_accuracy'])
  return f'{percent(point["test_accuracy"])} +- {100 * point["test_std"]:.1f} ({point["seeds"]})'


def _count(n: int | None) -> str:
  if n is None:
    return DASH
  for unit, scale in (('B', 1e9), ('M', 1e6), ('K', 1e3)):
    if n >= scale:
      return f'{n / scale:.1f}{unit}'
  return str(n)


def number(value: float | None, fmt: str = '.3g') -> str:
  return DASH if value is None else format(value, fmt)


def results_cells(curves: dict[str, list[dict]]) -> tuple[list[str], list[list[str]]]:
  """Header and rows: model, params, test accuracy (%) per size (mean +- standard deviation
  (seeds) with several seeds), few-shot at the largest size."""
  sizes = results.sizes(curves)
  header = ['model', 'params', *(f'{s:,}' for s in sizes), f'few-shot @ {sizes[-1]:,}']
  body = []
  for label, curve in curves.items():
    by_size = {p['train_size']: p for p in curve}
    accuracies = [spread(by_size[s]) if s in by_size else DASH for s in sizes]
    fewshot = by_size[sizes[-1]]['fewshot_accuracy'] if sizes[-1] in by_size else None
    body.append([label, _count(curve[-1]['params']), *accuracies, percent(fewshot)])
  return header, body


def _plain_table(header: list[str], body: list[list[str]]) -> str:
  widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
  line = lambda r: '  '.join(c.ljust(w) if i == 0 else c.rjust(w)
                             for i, (c, w) in enumerate(zip(r, widths)))
  return '\n'.join([line(header), line(['-' * w for w in widths]), *map(line, body)])


def markdown_table(header: list[str], body: list[list[str]]) -> str:
  cell = lambda text: str(text).replace('|', '\\|').replace('\n', ' ')
  line = lambda r: '| ' + ' | '.join(map(cell, r)) + ' |'
  return '\n'.join([line(header), line(['---'] * len(header)), *map(line, body)])


def results_table(rows: list[dict]) -> str:
  """Plain-text table of the finished points: model, params, test accuracy (%) per
  training-set size, few-shot accuracy (%) at the largest size."""
  curves = results.curves(rows)
  if not curves:
    return 'No point finished.'
  return 'Test accuracy (%) by training-set size:\n' + _plain_table(*results_cells(curves))


def fit_cells(fits: dict[str, dict]) -> tuple[list[str], list[list[str]]]:
  header = ['model', 'points', 'a', 'b', 'c', 'R^2', 'asymptotic accuracy (1 - c, %)']
  body = []
  for label, fit in fits.items():
    if 'error' in fit:
      body.append([label, str(fit['n']), DASH, DASH, DASH, DASH, f'no fit: {fit["error"]}'])
    else:
      asymptote = percent(1 - fit['c'])
      if min(fit['c'], 1 - fit['c']) < 1e-6:
        asymptote += ' (c at its bound: not determined)'
      body.append([label, str(fit['n']), number(fit['a']), number(fit['b'], '.3f'),
                   number(fit['c'], '.3f'), number(fit['r2'], '.3f'), asymptote])
  return header, body


def crossing_text(entry: dict) -> str:
  """'about 6,500 images (measured range)', plus why the measured gaps do not support it where
  the report found so (entry['unsupported']); or why there is no crossing."""
  if entry['size'] is None:
    return entry['reason']
  where = (f'extrapolated, outside the measured {entry["lo"]:,}-{entry["hi"]:,}'
           if entry['extrapolated'] else 'measured range')
  text = f'about {images(entry["size"])} ({where})'
  if entry.get('unsupported'):
    return f'{text}; not supported by the measured gaps: {entry["unsupported"]}'
  return text
