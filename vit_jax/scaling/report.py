"""`write_report`: the figures, `REPORT.md` and `report.json` of a sweep's `results.csv`,
all written atomically."""
import os

from vit_jax import files
from vit_jax.scaling import figures, findings, powerlaw, results, tables

def _setup_line(rows: list[dict], curves: dict[str, list[dict]]) -> str:
  failed = sum(row['status'] != 'done' for row in rows)
  if not curves:
    return f'No point finished: all {failed} runs failed (or did not finish).'
  return (f'Setup: {len(curves)} models ({", ".join(curves)}); training sizes '
          f'{", ".join(f"{s:,}" for s in results.sizes(curves))}; '
          f'{sum(map(len, curves.values()))} finished points, {failed} failed.')


def _failed_section(rows: list[dict]) -> list[str]:
  failed = [[r['model'], tables.number(r['train_size'], ','), r['status'],
             r['error'] or tables.DASH] for r in rows if r['status'] != 'done']
  if not failed:
    return []
  return ['## Failed runs', '',
          tables.markdown_table(['model', 'train size', 'status', 'error'], failed), '']


_INSIDE = 'analysis/sweep.png'  # written by `python -m vit_jax.analyze --sweep`


def _markdown(sweep_dir: str, title: str, rows: list[dict], curves: dict[str, list[dict]],
              fits: dict[str, dict], crossings: list[dict], figure_paths: dict[str, str],
              sentences: list[str]) -> str:
  lines = [f'# {title}', '', _setup_line(rows, curves), '']
  if curves:
    lines += ['## Results', '', 'Test accuracy (%) by training-set size; few-shot accuracy (%) '
              'at the largest size.', '', tables.markdown_table(*tables.results_cells(curves)), '',
              '## Power-law fits', '', 'Test error err(D) = a * D^-b + c over training-set size '
              'D; asymptotic accuracy 1 - c.', '',
              tables.markdown_table(*tables.fit_cells(fits)), '']
  if crossings:
    lines += ['## Crossings of the fitted curves', '', tables.markdown_table(
        ['pair', 'crossing'],
        [[' vs '.join(e['models']), tables.crossing_text(e)] for e in crossings]),
              '']
  if figure_paths:
    lines += ['## Figures', '']
    lines += [f'![{name}]({os.path.basename(path)})\n' for name, path in figure_paths.items()]
  if files.exists(os.path.join(sweep_dir, _INSIDE)):
    lines += ['## Inside the models', '', 'Mean attention distance of the first layer and the '
              'high-frequency content of the last block by training-set size '
              '(`python -m vit_jax.analyze --sweep`; numbers in `analysis/sweep.csv`).', '',
              f'![inside the models]({_INSIDE})', '']
  lines += _failed_section(rows)
  if sentences:
    lines += ['## Findings', '', *(f'- {sentence}' for sentence in sentences), '']
  return '\n'.join(lines)


def write_report(sweep_dir: str, title: str | None = None) -> dict:
  """Writes the figures, `REPORT.md` and `report.json` for `<sweep_dir>/results.csv`.

  The title defaults to the sweep's preset name (from `sweep_config.json`). Returns
  {'report': REPORT.md path, 'json': report.json path, 'findings': [sentences]} plus
  {figure name: png path} for 'accuracy_vs_data', 'gap_vs_data' (not without a ResNet) and
  'accuracy_vs_compute' (not without FLOPs). With no finished point only the two text files
  are written.
  """
  rows = results.read_results(os.path.join(sweep_dir, 'results.csv'))
  if title is None:  # the sweep's preset name, else the directory's
    config_path = os.path.join(sweep_dir, 'sweep_config.json')
    name = files.read_json(config_path).get('name') if files.exists(config_path) else None
    title = f'Data scaling: {name or os.path.basename(files.absolute(sweep_dir).rstrip("/"))}'
  curves = results.curves(rows)
  fits = powerlaw.fit_curves(curves)
  crossings = powerlaw.crossings(curves, fits)
  figure_paths = figures.write_figures(sweep_dir, title, curves, fits) if curves else {}
  sentences = findings.findings(curves, crossings) if curves else []
  paths = {'report': os.path.join(sweep_dir, 'REPORT.md'),
           'json': os.path.join(sweep_dir, 'report.json')}
  with files.atomic_open(paths['report']) as f:
    f.write(_markdown(sweep_dir, title, rows, curves, fits, crossings, figure_paths, sentences))
  failed = [{key: r[key] for key in ('model', 'train_size', 'status', 'error', 'workdir')}
            for r in rows if r['status'] != 'done']
  files.write_json(paths['json'], {'title': title, 'sizes': results.sizes(curves), 'fits': fits,
                                   'crossings': crossings, 'findings': sentences,
                                   'failed': failed})
  return {**figure_paths, **paths, 'findings': sentences}
