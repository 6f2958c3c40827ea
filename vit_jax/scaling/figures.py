"""The report's figures: accuracy against data (with the fits), the gap to the ResNet, and
accuracy against training compute.

Figures are drawn on `matplotlib.figure.Figure` objects and rendered by Agg without pyplot, so
nothing depends on (or changes) the process's matplotlib backend and no figure stays open.
"""
import os

from matplotlib.figure import Figure
import numpy as np

from vit_jax import files
from vit_jax.scaling import powerlaw, results

def _save_figure(fig: Figure, path: str) -> None:
  with files.atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=120)


def _draw(path: str, title: str, xlabel: str, ylabel: str, lines: list[dict],
          zero_line: bool = False) -> None:
  """One log-x figure; `lines` are {'x', 'y', 'label', 'color', 'style'} and optionally
  'yerr' (error bars, one per point, with a band between them; a label starting with '_'
  stays out of the legend)."""
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.subplots()
  for line in lines:
    alpha = 0.6 if line['style'] == '--' else 1.
    if line.get('yerr') is not None:
      y, err = np.asarray(line['y'], float), np.asarray(line['yerr'], float)
      ax.errorbar(line['x'], y, yerr=err, fmt=line['style'], color=line['color'],
                  label=line['label'], capsize=3, alpha=alpha)
      ax.fill_between(line['x'], y - err, y + err, color=line['color'], alpha=0.15,
                      linewidth=0)
    else:
      ax.plot(line['x'], line['y'], line['style'], color=line['color'], label=line['label'],
              alpha=alpha)
  if zero_line:
    ax.axhline(0, color='black', linewidth=0.8)
  ax.set(xscale='log', xlabel=xlabel, ylabel=ylabel, title=title)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize='small')
  fig.tight_layout()
  _save_figure(fig, path)


def _bars(spreads: list[float | None]) -> list[float] | None:
  """Error bars in points from accuracy spreads; NaN (no bar) where a point has one seed,
  None when no point has more."""
  if all(s is None for s in spreads):
    return None
  return [np.nan if s is None else 100 * s for s in spreads]


def accuracy_title(title: str, lines: list[dict]) -> str:
  """The accuracy-vs-data figure's title, with a key for the error bars and the dashed fit
  lines among `lines` (only those drawn)."""
  key = (['bars: std over seeds'] * any(l['yerr'] is not None for l in lines) +
         ['dashed: power-law fits'] * any(l['style'] == '--' for l in lines))
  return f'{title}: test accuracy vs data' + (f'\n({"; ".join(key)})' if key else '')


def write_figures(sweep_dir: str, title: str, curves: dict[str, list[dict]],
             fits: dict[str, dict]) -> dict[str, str]:
  """Writes the figures that have something to show; returns {name: path}."""
  colors = {label: f'C{i % 10}' for i, label in enumerate(curves)}

  def line(model, x, y, style='o-', label=None, yerr=None):
    return {'x': x, 'y': y, 'color': colors[model], 'style': style, 'label': label or model,
            'yerr': yerr}

  def std(points):  # error bars: the seeds' standard deviation
    return _bars([p.get('test_std') for p in points])

  accuracy = lambda label, points, key: line(label, [p[key] for p in points],
                                             [100 * p['test_accuracy'] for p in points],
                                             yerr=std(points))
  data = [accuracy(label, c, 'train_size') for label, c in curves.items()]
  for label, fit in fits.items():
    if 'error' not in fit:
      d = np.geomspace(curves[label][0]['train_size'], curves[label][-1]['train_size'], 100)
      data.append(line(label, d, 100 * (1 - powerlaw.predict_error(fit, d)), '--', '_nolegend_'))
  ref = results.reference(curves)
  gaps = {label: results.gaps(c, curves[ref]) for label, c in curves.items()
          if ref and label != ref}
  gap_errors = {label: results.gap_errors(curves[label], curves[ref]) for label in gaps}

  def gap_err(label, g):  # error bars: the gap's standard error
    return _bars([gap_errors[label][s] for s, _ in g])

  compute = {label: [p for p in c if p['train_flops']] for label, c in curves.items()}
  specs = {
      'accuracy_vs_data': (accuracy_title(title, data), 'Training-set size (images)',
                           'Test accuracy (%)', data),
      'gap_vs_data': (f'{title}: accuracy gap to {ref}', 'Training-set size (images)',
                      f'Test accuracy minus {ref} (points)',
                      [line(label, [s for s, _ in g], [100 * d for _, d in g], 'o-',
                            f'{label} - {ref}', gap_err(label, g))
                       for label, g in gaps.items() if g]),
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
