"""`write_report`: the figures, `REPORT.md` and `report.json` of a sweep's `results.csv`,
all written atomically."""
import os

from vit_jax import files
from vit_jax.scaling import figures, findings, powerlaw, results, tables

def _setup_line(rows: list[dict], curves: dict[str, list[dict]]) -> str:
  failed = sum(row['status'] == 'failed' for row in rows)
  unfinished = sum(row['status'] == 'unfinished' for row in rows)
  tally = f'{failed} failed' + (f', {unfinished} not finished (the sweep stopped before them: '
                                'rerun it to continue)' if unfinished else '')
  if not curves:
    return f'No point finished: {tally}.' if unfinished else (
        f'No point finished: all {failed} runs failed.')
  models = f'{len(curves)} model' + ('s' if len(curves) > 1 else '')
  return (f'Setup: {models} ({", ".join(curves)}); training sizes '
          f'{", ".join(f"{s:,}" for s in results.sizes(curves))}; '
          f'{sum(map(len, curves.values()))} finished points{_seed_note(curves)}, {tally}.')


def _seed_note(curves: dict[str, list[dict]]) -> str:
  seeds = [p['seeds'] for c in curves.values() for p in c]
  return '' if max(seeds) == 1 else f' ({sum(seeds)} runs over {min(seeds)}-{max(seeds)} seeds)'


def _run_name(row: dict) -> str:
  """Which run of its (model, size) a row is: 'seed 1, study'; a grid run adds its setting,
  'seed 0, grid (lr 0.001, weight decay 0.0001)'."""
  setting = (f' (lr {row["lr"]:g}, weight decay {row["weight_decay"]:g})'
             if row['role'] == 'grid' else '')
  return f'seed {row["seed"]}, {row["role"]}{setting}'


def _failed_section(rows: list[dict]) -> list[str]:
  failed = [[r['model'], tables.number(r['train_size'], ','), _run_name(r),
             r['error'] or tables.DASH] for r in rows if r['status'] == 'failed']
  if not failed:
    return []
  return ['## Failed runs', '',
          tables.markdown_table(['model', 'train size', 'run', 'error'], failed), '']


CONVERGED = 0.01  # twice the budget must change test accuracy by less than one point


def _own_floors(sweep: dict) -> str:
  """' (Hybrid: 8,000; ViT-12, ViT-24: 4,000)': the models whose entries set their own budget
  floor ('' when none does)."""
  floors = {}
  for label, entry in (sweep.get('models') or {}).items():
    if (entry or {}).get('min_steps'):
      floors.setdefault(entry['min_steps'], []).append(label)
  listed = '; '.join(f'{", ".join(labels)}: {floor:,}' for floor, labels in floors.items())
  return f' ({listed})' if listed else ''


def _epochs(value: float | None) -> str:
  """An epoch count as a table cell: three significant digits, whole from 1,000 up."""
  return tables.number(value, ',.0f' if value is not None and value >= 1_000 else '.3g')


def _budget_section(rows: list[dict], sweep: dict) -> list[str]:
  """The budget rule (from the sweep's config) and each size's budget: steps, epochs and the
  steps the study's runs actually trained (early stopping ends some sooner); one line per
  budget, naming its models, where models have budgets of their own."""
  study = [r for r in rows if r['role'] == 'study' and r['budget_steps'] is not None]
  if not study:
    return []
  budget, base = sweep.get('budget') or {}, sweep.get('base') or {}
  evaluation = base.get('eval') or {}
  if budget.get('epochs') is not None:
    rule = (f'Budget rule: {budget["epochs"]:g} epochs over each subset\'s training images, at '
            f'least {budget.get("min_steps", 1):,}{_own_floors(sweep)} and at most '
            f'{budget.get("max_steps"):,} steps of batch {base.get("batch_size")}, '
            f'{budget.get("evals", 1)} evaluations per run')
  else:
    rule = f'Budget: the same {base.get("total_steps", "?")} steps for every point (no rule)'
  if evaluation.get('patience'):
    held_out = (f'a fixed validation set of {evaluation["val_size"]:,} training images outside '
                'every subset' if evaluation.get('val_size') else
                f'{100 * evaluation.get("val_fraction", 0):g}% of each subset held out')
    rule += (f'; early stopping after {evaluation["patience"]} evaluations without a better '
             f'validation accuracy ({held_out})')
  rule += '. A point\'s result is the test accuracy at its best validation step.'
  budgets = sorted({(r['train_size'], r['budget_steps']) for r in study
                    if r['train_size'] is not None})
  by_model = len(budgets) > len({size for size, _ in budgets})  # a size has several budgets
  body = []
  for size, steps in budgets:
    at = [r for r in study if (r['train_size'], r['budget_steps']) == (size, steps)]
    ran = [r['steps'] for r in at if r['steps'] is not None]
    models = [', '.join(dict.fromkeys(r['model'] for r in at))] if by_model else []
    body.append([f'{size:,}', *models, f'{steps:,}', _epochs(at[0]['budget_epochs']),
                 f'{min(ran):,}-{max(ran):,}' if ran else tables.DASH,
                 f'{sum(s < steps for s in ran)} of {len(at)}'])
  header = ['train size', *(['models'] if by_model else []), 'budget (steps)', 'epochs',
            'steps trained', 'stopped early']
  return ['## Budget', '', rule, '', tables.markdown_table(header, body), '']


def _grid_section(rows: list[dict]) -> list[str]:
  """The learning-rate x weight-decay grid: every run's validation accuracy, the pick per
  family marked (chosen by validation accuracy, never test)."""
  grid = results.grid(rows)
  if not grid:
    return []
  best = results.grid_picks(grid)
  body = [[r['family'], r['model'], f'{r["lr"]:g}', f'{r["weight_decay"]:g}',
           tables.percent(r['val_accuracy']), 'chosen' if best.get(r['family']) is r else '']
          for r in grid]
  lines = ['## Learning-rate grid', '', f'At {grid[0]["train_size"]:,} images, one model per '
           'family; picked by validation accuracy (test accuracy is not looked at).', '',
           tables.markdown_table(['family', 'model', 'lr', 'weight decay', 'val accuracy (%)',
                                  ''], body), '']
  edges = _grid_edges(grid, best)
  if edges:
    lines += [f'Picked at an edge of the grid ({"; ".join(edges)}): a value beyond it may do '
              'better, which this grid cannot tell (widen `grid.lr` / `grid.weight_decay` to '
              'see).', '']
  return lines


def _grid_edges(grid: list[dict], best: dict[str, dict]) -> list[str]:
  """'resnet: the largest learning rate tried (0.004)' for every family whose pick is the
  largest or smallest of two or more values tried on a grid axis."""
  edges = []
  for family, pick in best.items():
    for key, name in (('lr', 'learning rate'), ('weight_decay', 'weight decay')):
      tried = sorted({r[key] for r in grid if r['family'] == family})
      if len(tried) > 1 and pick[key] in (tried[0], tried[-1]):
        end = 'largest' if pick[key] == tried[-1] else 'smallest'
        edges.append(f'{family}: the {end} {name} tried ({pick[key]:g})')
  return edges


def _convergence_section(checks: list[dict]) -> tuple[list[str], str | None]:
  """The twice-the-budget reruns against their study runs (`results.convergence`), and the
  sentence for the findings (None without reruns): every model and size whose difference
  (the mean over its seeds rerun) reaches the 1-point target is named, with the standard error
  of that mean, or for a single rerun its point's seed spread for scale (one rerun cannot tell
  a longer budget from seed noise)."""
  if not checks:
    return [], None
  body = [[c['model'], f'{c["train_size"]:,}', str(c['seed']), f'{c["steps"]:,}',
           f'{c["steps_x2"]:,}', tables.percent(c['test_accuracy']),
           tables.percent(c['test_accuracy_x2']), f'{100 * c["difference"]:+.1f}',
           tables.DASH if c['test_std'] is None else f'{100 * c["test_std"]:.1f}']
          for c in checks]
  means = results.convergence_means(checks)
  over = [m for m in means if abs(m['difference']) >= CONVERGED]
  if not over:
    worst = max(means, key=lambda m: abs(m['difference']))
    sentence = (f'Convergence check: twice the budget changes test accuracy by at most '
                f'{tables.points(worst["difference"])} ({worst["model"]} at '
                f'{worst["train_size"]:,} images{_seeds(worst)}), under the 1-point '
                'target: the budget is enough.')
  else:
    named = '; '.join(
        f'{m["model"]} at {m["train_size"]:,} images: {100 * m["difference"]:+.1f} points'
        f'{_scale(m)}' for m in over)
    sentence = (f'Convergence check: twice the budget changes test accuracy by more than the '
                f'1-point target at {len(over)} of {len(means)} checked points ({named}): the '
                'budget is too small there, and the comparisons at those sizes may reflect '
                'training speed, not data.')
  return ['## Convergence check', '', 'Reruns with twice the budget at the smallest and '
          'largest size against the study run of the same seed (steps trained; early stopping '
          'may end either sooner); the last column is the spread of that point\'s seeds, the '
          'scale of seed noise. Where several seeds reran, their mean difference is judged.',
          '', tables.markdown_table(['model', 'train size', 'seed', 'steps', 'steps (x2)',
                                     'test (%)', 'test x2 (%)', 'difference (points)',
                                     'seeds\' sd (points)'], body), '',
          sentence, ''], sentence


def _seeds(mean: dict) -> str:
  """', mean of 3 seeds' for a point that reran several seeds, else ''."""
  return '' if mean['reruns'] == 1 else f', mean of {mean["reruns"]} seeds'


def _scale(mean: dict) -> str:
  """The noise scale of a point's difference: ' (mean of 3 seeds, SE 0.4 points)', for one
  rerun ' (its seeds spread by 1.3 points)', or '' without either."""
  if mean['difference_se'] is not None:
    return f' (mean of {mean["reruns"]} seeds, SE {100 * mean["difference_se"]:.1f} points)'
  if mean['test_std'] is None:
    return ''
  return f' (its seeds spread by {100 * mean["test_std"]:.1f} points)'


_INSIDE = 'analysis/sweep.png'  # written by `python -m vit_jax.analyze --sweep`


def _markdown(sweep_dir: str, title: str, rows: list[dict], curves: dict[str, list[dict]],
              fits: dict[str, dict], crossings: list[dict], figure_paths: dict[str, str],
              sentences: list[str], sweep: dict, convergence: list[str]) -> str:
  lines = [f'# {title}', '', _setup_line(rows, curves), '']
  lines += _budget_section(rows, sweep) + _grid_section(rows)
  if curves:
    lines += ['## Results', '', 'Test accuracy (%) by training-set size (with several seeds: '
              'mean +- standard deviation (seeds)); few-shot accuracy (%) at the largest size. '
              'Fits use every seed\'s run.', '',
              tables.markdown_table(*tables.results_cells(curves)), '',
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
  lines += convergence
  lines += _failed_section(rows)
  if sentences:
    lines += ['## Findings', '', *(f'- {sentence}' for sentence in sentences), '']
  return '\n'.join(lines)


def write_report(sweep_dir: str, title: str | None = None) -> dict:
  """Writes the figures, `REPORT.md` and `report.json` for `<sweep_dir>/results.csv`.

  REPORT.md: setup, the budget (rule from `sweep_config.json`, per size), the grid (if any),
  test accuracy per point (mean +- std over seeds), fits, crossings (one the measured gaps do
  not back says why: report.json's 'unsupported'), figures, the convergence check (if any),
  failed runs and the findings; the runs of a stopped sweep not finished yet are counted in
  the setup line and report.json's 'unfinished'. The title defaults to the sweep's preset name
  (from `sweep_config.json`). Returns
  {'report': REPORT.md path, 'json': report.json path, 'findings': [sentences]} plus
  {figure name: png path} for 'accuracy_vs_data', 'gap_vs_data' (not without a ResNet) and
  'accuracy_vs_compute' (not without FLOPs). With no finished point only the two text files
  are written.
  """
  rows = results.read_results(os.path.join(sweep_dir, 'results.csv'))
  config_path = os.path.join(sweep_dir, 'sweep_config.json')
  sweep = files.read_json(config_path) if files.exists(config_path) else {}
  if title is None:  # the sweep's preset name, else the directory's
    name = sweep.get('name')
    title = f'Data scaling: {name or os.path.basename(files.absolute(sweep_dir).rstrip("/"))}'
  curves = results.curves(rows)
  fits = powerlaw.fit_curves(curves)
  crossings = [{**entry, 'unsupported': findings.crossing_support(curves, entry)}
               for entry in powerlaw.crossings(curves, fits)]
  figure_paths = figures.write_figures(sweep_dir, title, curves, fits) if curves else {}
  sentences = findings.findings(curves, crossings) if curves else []
  checks = results.convergence(rows, curves)
  convergence_lines, convergence = _convergence_section(checks)
  if convergence:
    sentences.append(convergence)
  paths = {'report': os.path.join(sweep_dir, 'REPORT.md'),
           'json': os.path.join(sweep_dir, 'report.json')}
  with files.atomic_open(paths['report']) as f:
    f.write(_markdown(sweep_dir, title, rows, curves, fits, crossings, figure_paths, sentences,
                      sweep, convergence_lines))
  failed = [{key: r[key] for key in ('model', 'train_size', 'seed', 'role', 'error', 'workdir')}
            for r in rows if r['status'] == 'failed']
  files.write_json(paths['json'], {'title': title, 'sizes': results.sizes(curves), 'fits': fits,
                                   'crossings': crossings, 'findings': sentences,
                                   'convergence': checks, 'failed': failed,
                                   'unfinished': sum(r['status'] == 'unfinished' for r in rows)})
  return {**figure_paths, **paths, 'findings': sentences}
