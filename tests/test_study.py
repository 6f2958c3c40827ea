"""The study protocol without training: the budget rule, seeds, the grid's pick, spreads in the
report and findings, and the convergence check, on hand-made configs and results."""
import csv
import json
import math
import os

import numpy as np
import pytest

from configs import data_scaling
from vit_jax import files, sweep
from vit_jax.scaling import figures, findings, powerlaw, report, results

from test_scaling import result_row, write_csv


def smoke(**fields):
  config = data_scaling.get_config('smoke')
  for key, value in fields.items():
    *parents, leaf = key.split('.')
    node = config
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def test_budget_rule_follows_the_training_images_within_floor_and_cap(tmp_path):
  config = smoke(**{'budget.epochs': 3.0, 'budget.min_steps': 5, 'budget.max_steps': 40,
                    'budget.evals': 4, 'train_sizes': (60, 200, 2000)})
  # Reference: ceil(epochs * (size - 10% hold-out) / batch 64), clipped to [5, 40].
  expected = {n: min(max(math.ceil(3 * (n - round(0.1 * n)) / 64), 5), 40)
              for n in (60, 200, 2000)}
  assert expected == {60: 5, 200: 9, 2000: 40}
  points = sweep.expand(config, str(tmp_path))
  for p in points:
    assert p.config.total_steps == expected[p.train_size]
    assert p.config.eval_every == p.config.checkpoint_every == max(expected[p.train_size] // 4, 1)
  assert sweep.budget_steps(config, 200) == 9


def test_a_model_with_its_own_floor_trains_longer_in_the_grid_study_and_reruns(tmp_path):
  config = smoke(**{'budget.epochs': 3.0, 'budget.min_steps': 5, 'budget.max_steps': 40,
                    'train_sizes': (60, 2000), 'grid.size': 200, 'convergence_check': True})
  config.models['ViT-1'].min_steps = 12
  # Reference: ceil(3 * (size - 10% hold-out) / 64) clipped to [floor, 40]: 3 and 85 images.
  floor = {'ResNet': 5, 'ViT-1': 12}
  expected = {(m, n): min(max(math.ceil(3 * (n - round(0.1 * n)) / 64), floor[m]), 40)
              for m in floor for n in (60, 200, 2000)}
  assert expected == {('ResNet', 60): 5, ('ResNet', 200): 9, ('ResNet', 2000): 40,
                      ('ViT-1', 60): 12, ('ViT-1', 200): 12, ('ViT-1', 2000): 40}
  points = sweep.all_points(config, str(tmp_path))
  assert {p.role for p in points} == {'grid', 'study', 'convergence'}
  for p in points:
    factor = 2 if p.role == 'convergence' else 1
    assert p.config.total_steps == factor * expected[(p.label, p.train_size)], p.workdir


def test_a_model_with_its_own_weight_decay_runs_the_grid_over_learning_rates_only(tmp_path):
  config = smoke(**{'grid.size': 120, 'grid.lr': (1e-3, 3e-3), 'grid.weight_decay': (0.0, 0.1)})
  config.models['ViT-1'].weight_decay = 0.3
  grid = sweep.grid_points(config, str(tmp_path))
  vit = sorted((os.path.basename(p.workdir), p.config.optim.weight_decay)
               for p in grid if p.label == 'ViT-1')
  assert vit == [('ViT-1_n120_lr0.001_wd0.3', 0.3), ('ViT-1_n120_lr0.003_wd0.3', 0.3)]
  resnet = sorted(p.config.optim.weight_decay for p in grid if p.label == 'ResNet')
  assert resnet == [0.0, 0.0, 0.1, 0.1]


def test_without_a_rule_every_point_keeps_the_base_steps(tmp_path):
  config = smoke()
  assert {p.config.total_steps for p in sweep.expand(config, str(tmp_path))} == {4}
  assert {p.config.eval_every for p in sweep.expand(config, str(tmp_path))} == {1}


def test_seeds_more_at_small_sizes_vary_init_and_optionally_the_subset(tmp_path):
  config = smoke(seeds=2, small_seeds=3, small_size=60)
  points = sweep.expand(config, str(tmp_path))
  per = {(p.label, p.train_size): sorted(q.seed for q in points
                                         if (q.label, q.train_size) == (p.label, p.train_size))
         for p in points}
  assert per[('ResNet', 60)] == [0, 1, 2] and per[('ResNet', 120)] == [0, 1]
  assert len({p.workdir for p in points}) == len(points) == 2 * (3 + 2)
  assert {p.config.seed for p in points} == {0, 1, 2}
  assert {p.config.data.subset_seed for p in points} == {0}   # subset fixed
  varied = sweep.expand(smoke(seeds=2, vary_subset=True), str(tmp_path))
  assert sorted({p.config.data.subset_seed for p in varied}) == [0, 1]
  # Seed 0 keeps the single-seed sweep's workdir, so an existing sweep resumes.
  assert os.path.basename(points[0].workdir) == 'ResNet_n60'
  assert os.path.basename(points[1].workdir) == 'ResNet_n60_s1'


def test_convergence_reruns_double_the_budget_at_the_smallest_and_largest_size(tmp_path):
  config = smoke(**{'convergence_check': True, 'budget.epochs': 2.0, 'budget.max_steps': 100,
                    'train_sizes': (120, 60, 240)})
  points = sweep.expand(config, str(tmp_path))
  reruns = [p for p in points if p.role == 'convergence']
  assert sorted((p.label, p.train_size) for p in reruns) == [
      ('ResNet', 60), ('ResNet', 240), ('ViT-1', 60), ('ViT-1', 240)]
  study = {(p.label, p.train_size): p for p in points if p.role == 'study'}
  for p in reruns:
    assert p.config.total_steps == 2 * study[(p.label, p.train_size)].config.total_steps
    assert p.seed == 0 and p.workdir.endswith(f'_n{p.train_size}_x2')


def test_convergence_reruns_several_seeds_at_the_smallest_size_only(tmp_path):
  config = smoke(**{'convergence_check': True, 'convergence_seeds': 2, 'seeds': 2,
                    'small_seeds': 3, 'small_size': 60, 'train_sizes': (60, 120)})
  reruns = [p for p in sweep.expand(config, str(tmp_path)) if p.role == 'convergence']
  assert sorted((p.label, p.train_size, p.seed, os.path.basename(p.workdir)) for p in reruns) == [
      ('ResNet', 60, 0, 'ResNet_n60_x2'), ('ResNet', 60, 1, 'ResNet_n60_s1_x2'),
      ('ResNet', 120, 0, 'ResNet_n120_x2'),
      ('ViT-1', 60, 0, 'ViT-1_n60_x2'), ('ViT-1', 60, 1, 'ViT-1_n60_s1_x2'),
      ('ViT-1', 120, 0, 'ViT-1_n120_x2')]
  assert [p.config.seed for p in reruns if p.train_size == 60] == [0, 1, 0, 1]
  # No more seeds rerun than the point has.
  config.convergence_seeds = 5
  reruns = [p for p in sweep.expand(config, str(tmp_path)) if p.role == 'convergence']
  assert sorted(p.seed for p in reruns if p.label == 'ResNet') == [0, 0, 1, 2]


def test_grid_picks_by_validation_accuracy_and_feeds_the_study(tmp_path):
  config = smoke(**{'grid.size': 120, 'grid.lr': (1e-3, 3e-3), 'grid.weight_decay': (0.0, 0.1)})
  grid = sweep.grid_points(config, str(tmp_path))
  assert len(grid) == 2 * 4 and {p.role for p in grid} == {'grid'}
  # Validation decides; the pick with the best test accuracy must not win.
  scores = {('ResNet', 3e-3, 0.1): (0.9, 0.5), ('ResNet', 1e-3, 0.0): (0.8, 0.99),
            ('ViT-1', 1e-3, 0.1): (0.7, 0.1)}
  for p in grid:
    val, test = scores.get((p.label, p.config.optim.lr, p.config.optim.weight_decay), (0.1, 0.9))
    os.makedirs(p.workdir)
    files.write_json(os.path.join(p.workdir, 'result.json'),
                     {'best_val_accuracy': val, 'best_test_accuracy': test})
  chosen = sweep.choose_hparams(grid)
  assert (chosen['resnet']['lr'], chosen['resnet']['weight_decay']) == (3e-3, 0.1)
  assert (chosen['vit']['lr'], chosen['vit']['weight_decay']) == (1e-3, 0.1)
  study = sweep.all_points(config, str(tmp_path))[len(grid):]
  assert {(p.label, p.config.optim.lr, p.config.optim.weight_decay) for p in study} == {
      ('ResNet', 3e-3, 0.1), ('ViT-1', 1e-3, 0.1)}


def seeded_rows(accuracies):
  """{(model, size): [accuracy per seed]} -> results rows (ResNet family 'resnet')."""
  return [result_row(model, 'resnet' if model == 'ResNet' else 'vit',
                     26 if model == 'ResNet' else int(model.split('-')[1]), size, acc,
                     seed=seed, role='study', budget_steps=100, budget_epochs=6.4, steps=100)
          for (model, size), accs in accuracies.items() for seed, acc in enumerate(accs)]


SIZES = (1_000, 3_000, 10_000, 30_000)


def test_curves_give_mean_and_spread_and_fits_use_every_seed(tmp_path):
  rng = np.random.default_rng(0)
  accs = {('ViT-12', n): list(0.9 - 3 / np.sqrt(n) + rng.normal(0, 0.01, 3)) for n in SIZES}
  curve = results.curves(results.read_results(os.path.join(
      write_csv(tmp_path, seeded_rows(accs)), 'results.csv')))['ViT-12']
  for point in curve:
    got = accs[('ViT-12', point['train_size'])]
    assert point['test_accuracy'] == pytest.approx(np.mean(got))
    assert point['test_std'] == pytest.approx(np.std(got, ddof=1))
    assert point['seeds'] == 3
  fit = powerlaw.fit_curves({'ViT-12': curve})['ViT-12']
  assert fit['n'] == 12   # every run, not the 4 means
  reference = powerlaw.fit_power_law(np.repeat(SIZES, 3),
                                     1 - np.array([a for n in SIZES for a in accs[('ViT-12', n)]]))
  assert fit['b'] == pytest.approx(reference['b'])


def gap_rows(noise):
  """ResNet vs ViT-12: the ViT is 6 points behind at 1k and 1 point behind at 30k; every seed
  is the mean -/+ `noise`."""
  means = {'ResNet': [0.80, 0.85, 0.88, 0.90], 'ViT-12': [0.74, 0.81, 0.86, 0.89]}
  return seeded_rows({(m, n): [v - noise, v + noise]
                      for m, vs in means.items() for n, v in zip(SIZES, vs)})


def test_gap_shrinks_only_when_the_spread_allows(tmp_path):
  tight = findings.findings(results.curves(gap_rows(0.002)), [
      {'models': ['ViT-12', 'ResNet'], 'size': None, 'reason': 'no crossing'}])
  text = ' '.join(tight)
  assert 'the gap shrinks as data grows, from 6.0 points to 1.0 points' in text
  assert 'How sure: 2 seeds per point' in tight[-1]
  # Seeds 20 points apart: a standard error of 10 points per mean hides every difference.
  loose = findings.findings(results.curves(gap_rows(0.10)), [
      {'models': ['ViT-12', 'ResNet'], 'size': None, 'reason': 'no crossing'}])
  text = ' '.join(loose)
  assert 'shrinks' not in text and 'within the spread of the seeds' in text
  assert 'is about equal to ResNet (-6.0 +- 14.1 points)' in text  # SE hypot(0.1, 0.1)
  assert 'every ViT gaining on the ResNet as data grows: no' in loose[-1]


def test_a_shrinking_gap_says_where_it_stops_shrinking():
  # ViT-12 - ResNet: -6, -2.0, -1.8, -1.6 points at 1k, 3k, 10k, 30k; every point's seeds
  # +-0.2 points, so each gap's SE is hypot(0.14, 0.14) = 0.2 and a change of gaps counts
  # beyond max(0.5, 2 * hypot(0.2, 0.2)) = 0.57 points: 3k -> 30k (0.4) does not.
  means = {'ResNet': [0.80, 0.85, 0.88, 0.90], 'ViT-12': [0.74, 0.83, 0.862, 0.884]}
  curves = results.curves(seeded_rows({(m, n): [v - 0.002, v + 0.002]
                                       for m, vs in means.items() for n, v in zip(SIZES, vs)}))
  gaps = dict(results.gaps(curves['ViT-12'], curves['ResNet']))
  errors = results.gap_errors(curves['ViT-12'], curves['ResNet'])
  change = abs(gaps[3_000]) - abs(gaps[30_000])
  assert change < findings.threshold(np.hypot(errors[3_000], errors[30_000])) < abs(
      gaps[1_000]) - abs(gaps[30_000])
  text = ' '.join(findings.findings(curves, [
      {'models': ['ViT-12', 'ResNet'], 'size': None, 'reason': 'no crossing'}]))
  assert ('the gap shrinks as data grows, from 6.0 points to 1.6 points, but from 3,000 '
          'images on (2.0 points there) not beyond the spread of the seeds') in text
  # One seed per point: a change counts beyond half a point, so 3k -> 30k (0.4) does not.
  single = results.curves(seeded_rows({(m, n): [v] for m, vs in means.items()
                                       for n, v in zip(SIZES, vs)}))
  assert ('from 6.0 points to 1.6 points, but from 3,000 images on (2.0 points there) by '
          'under 0.5 points') in ' '.join(findings.findings(single, [
              {'models': ['ViT-12', 'ResNet'], 'size': None, 'reason': 'no crossing'}]))
  # A gap that keeps shrinking to the end gets no such clause (gap_rows: 6, 4, 2, 1 points).
  steady = ' '.join(findings.findings(results.curves(gap_rows(0.002)), [
      {'models': ['ViT-12', 'ResNet'], 'size': None, 'reason': 'no crossing'}]))
  assert 'from 6.0 points to 1.0 points.' in steady and 'spread of the seeds' not in steady


def law_rows(vit_law, noise):
  """ResNet err(D) = D^-0.5 + 0.01 and ViT-12 err(D) = a D^-0.5 + c (`vit_law` = (a, c)) at
  SIZES, two seeds each at the exact accuracy -/+ `noise`: least squares over such pairs fits
  the exact laws, so the fitted curves cross where the laws do."""
  laws = {'ResNet': (1., 0.01), 'ViT-12': vit_law}
  return seeded_rows({(m, n): [1 - a / np.sqrt(n) - c - noise, 1 - a / np.sqrt(n) - c + noise]
                      for m, (a, c) in laws.items() for n in SIZES})


def crossing_row(tmp_path, rows):
  report.write_report(write_csv(tmp_path, rows))
  return next(line for line in (tmp_path / 'REPORT.md').read_text().splitlines()
              if line.startswith('| ViT-12 vs ResNet |'))


def test_a_fitted_crossing_is_claimed_only_when_the_spread_allows(tmp_path):
  # 0.5 D^-0.5 = 0.002 at D = 62,500: the ViT, 1.4 points behind at 1k and 0.1 at 30k,
  # closes in on the crossing beyond its seeds' spread (+-0.1 points).
  closing = crossing_row(tmp_path, law_rows((1.5, 0.008), 0.001))
  assert closing == ('| ViT-12 vs ResNet | about 62,500 images (extrapolated, outside the '
                     'measured 1,000-30,000) |')
  # The same curves with seeds 2 points apart: the same fitted crossing, every gap within the
  # spread (a standard error of 1.4 points), so no crossing is claimed.
  noisy = crossing_row(tmp_path, law_rows((1.5, 0.008), 0.01))
  assert noisy == ('| ViT-12 vs ResNet | about 62,500 images (extrapolated, outside the '
                   'measured 1,000-30,000); not supported by the measured gaps: the two are '
                   'within the spread at every measured size |')
  # Nearly parallel curves 0.2-0.4 points apart meet at 0.1 D^-0.5 = 0.005, D = 400, where
  # nothing was measured: the fit says so, the seeds do not.
  parallel = crossing_row(tmp_path, law_rows((0.9, 0.015), 0.001))
  assert parallel.startswith('| ViT-12 vs ResNet | about 400 images (extrapolated')
  assert 'not supported by the measured gaps: the two are within the spread' in parallel
  sentence = next(f for f in json.loads((tmp_path / 'report.json').read_text())['findings']
                  if f.startswith('ViT-12 is about equal to ResNet'))
  assert sentence.endswith('Their fitted curves cross at about 400 images (extrapolated, '
                           'outside the measured 1,000-30,000); not supported by the measured '
                           'gaps: the two are within the spread at every measured size.')


def test_crossing_support_needs_the_lead_to_change_or_the_gap_to_close_towards_it():
  def support(vit_means, size):
    curves = results.curves(seeded_rows({
        (m, n): [v - 0.002, v + 0.002] for m, vs in (('ResNet', [0.80, 0.85, 0.88, 0.90]),
                                                     ('ViT-12', vit_means))
        for n, v in zip(SIZES, vs)}))
    return findings.crossing_support(curves, {
        'models': ['ViT-12', 'ResNet'], 'size': size, 'lo': 1_000, 'hi': 30_000,
        'extrapolated': size is not None and not 1_000 <= size <= 30_000})

  # Inside the range: behind by 6 points, then level within the spread (+0.2), then ahead by 2.
  assert support([0.74, 0.83, 0.878, 0.902], 20_000) == (
      'the lead never changes hands beyond the spread')
  assert support([0.74, 0.83, 0.878, 0.92], 20_000) is None
  # Outside it: the gap must close towards the crossing's end (6 -> 1 points: above, not below).
  shrinking = [0.74, 0.81, 0.86, 0.89]
  assert support(shrinking, 100_000) is None
  assert support(shrinking, 300) == 'the measured gap does not narrow towards it beyond the spread'
  assert support([0.78, 0.83, 0.86, 0.88], 100_000) == (
      'the measured gap does not narrow towards it beyond the spread')   # 2 points throughout
  assert support(shrinking, None) is None   # no crossing, nothing to support
  apart = results.curves(seeded_rows({('ResNet', 1_000): [0.8, 0.8], ('ViT-12', 3_000): [0.9]}))
  assert findings.crossing_support(apart, {'models': ['ViT-12', 'ResNet'], 'size': 2_000,
                                           'lo': 1_000, 'hi': 3_000, 'extrapolated': False}) == (
      'the two share no measured size')


def grid_report(tmp_path, val):
  """REPORT.md of a sweep with grid runs {(model, lr, weight decay): val accuracy} at 3,000
  images and the study runs of gap_rows."""
  grid = [result_row(model, 'resnet' if model == 'ResNet' else 'vit', 12, 3_000, acc,
                     role='grid', lr=lr, weight_decay=wd, val_accuracy=acc)
          for (model, lr, wd), acc in val.items()]
  report.write_report(write_csv(tmp_path, grid + gap_rows(0.002)))
  return (tmp_path / 'REPORT.md').read_text()


def test_report_says_when_the_grid_picks_at_its_edge(tmp_path):
  # ResNet: best at the largest of three learning rates (one weight decay: no axis to judge);
  # ViT-12: best at the middle learning rate and the larger of two weight decays.
  text = grid_report(tmp_path, {
      ('ResNet', 1e-3, 0.05): 0.90, ('ResNet', 2e-3, 0.05): 0.91, ('ResNet', 4e-3, 0.05): 0.92,
      ('ViT-12', 1e-3, 0.1): 0.80, ('ViT-12', 2e-3, 0.1): 0.82, ('ViT-12', 4e-3, 0.1): 0.81,
      ('ViT-12', 1e-3, 0.3): 0.83, ('ViT-12', 2e-3, 0.3): 0.86, ('ViT-12', 4e-3, 0.3): 0.84})
  assert '| resnet | ResNet | 0.004 | 0.05 | 92.0 | chosen |' in text
  assert '| vit | ViT-12 | 0.002 | 0.3 | 86.0 | chosen |' in text
  assert ('Picked at an edge of the grid (resnet: the largest learning rate tried (0.004); vit: '
          'the largest weight decay tried (0.3)): a value beyond it may do better') in text
  # Picks inside every axis of two or more values get no such line.
  text = grid_report(tmp_path, {
      ('ResNet', 1e-3, 0.05): 0.90, ('ResNet', 2e-3, 0.05): 0.93, ('ResNet', 4e-3, 0.05): 0.92,
      ('ViT-12', 1e-3, 0.1): 0.80, ('ViT-12', 2e-3, 0.1): 0.82, ('ViT-12', 4e-3, 0.1): 0.81})
  assert '| resnet | ResNet | 0.002 | 0.05 | 93.0 | chosen |' in text
  assert '| vit | ViT-12 | 0.002 | 0.1 | 82.0 | chosen |' in text
  assert 'edge of the grid' not in text


def test_figures_draw_error_bars_where_a_point_has_seeds(tmp_path, monkeypatch):
  # A partial sweep: ViT-12 has one seed at 30k so far, two elsewhere.
  rows = [r for r in gap_rows(0.002) if not (r['model'] == 'ViT-12' and
                                             r['train_size'] == 30_000 and r['seed'] == 1)]
  drawn = {}
  monkeypatch.setattr(figures, '_draw', lambda path, title, x, y, lines, zero_line=False:
                      drawn.setdefault(os.path.basename(path), lines))
  figures.write_figures(str(tmp_path), 't', results.curves(rows), {})
  bars = {line['label']: line['yerr'] for line in drawn['accuracy_vs_data.png']}
  # std([a - 0.002, a + 0.002], ddof=1) = 0.28 points; no bar for the single run.
  np.testing.assert_allclose(bars['ResNet'], [0.2828] * 4, atol=1e-4)
  np.testing.assert_allclose(bars['ViT-12'], [0.2828] * 3 + [np.nan], atol=1e-4)
  # The gap's SE: hypot(0.2, 0.2) where both have seeds.
  (gap_bars,) = [line['yerr'] for line in drawn['gap_vs_data.png']]
  np.testing.assert_allclose(gap_bars, [0.2828] * 3 + [np.nan], atol=1e-4)


def test_report_shows_spread_budget_and_convergence(tmp_path):
  rows = gap_rows(0.002) + [
      result_row('ResNet', 'resnet', 26, 1_000, 0.803, seed=0, role='convergence',
                 steps=200, budget_steps=200),
      result_row('ViT-12', 'vit', 12, 30_000, 0.86, seed=0, role='convergence', steps=200,
                 budget_steps=200)]
  files.write_json(str(tmp_path / 'sweep_config.json'), {
      'name': 'hand', 'base': {'batch_size': 64, 'eval': {'patience': 2, 'val_fraction': 0.1}},
      'budget': {'epochs': 10.0, 'min_steps': 100, 'max_steps': 1000, 'evals': 5}})
  result = report.write_report(write_csv(tmp_path, rows))
  text = (tmp_path / 'REPORT.md').read_text()
  assert 'Budget rule: 10 epochs' in text and 'at most 1,000 steps of batch 64' in text
  assert 'early stopping after 2 evaluations' in text
  assert '| 1,000 | 100 | 6.4 | 100-100 | 0 of 4 |' in text
  # Seed 0 vs its x2, and the seeds' sample sd: std([0.798, 0.802], ddof=1) = 0.28 points.
  assert '| ResNet | 1,000 | 0 | 100 | 200 | 79.8 | 80.3 | +0.5 | 0.3 |' in text
  # ViT-12 at 30k: seed 0 has 88.8, twice the budget 86.0: 2.8 points, over the target.
  assert '| ViT-12 | 30,000 | 0 | 100 | 200 | 88.8 | 86.0 | -2.8 | 0.3 |' in text
  assert ('more than the 1-point target at 1 of 2 checked points (ViT-12 at 30,000 images: '
          '-2.8 points '
          '(its seeds spread by 0.3 points)): the budget is too small there'
          ) in result['findings'][-1]
  assert '| ResNet | 130.0M | 80.0 +- 0.3 (2) |' in text   # mean +- std (seeds)
  files.write_json(str(tmp_path / 'sweep_config.json'), {
      'name': 'hand', 'base': {'batch_size': 64, 'eval': {'patience': 2, 'val_size': 1000}},
      'budget': {'epochs': 10.0, 'min_steps': 100, 'max_steps': 1000, 'evals': 5}})
  report.write_report(str(tmp_path))
  assert ('early stopping after 2 evaluations without a better validation accuracy (a fixed '
          'validation set of 1,000 training images outside every subset)'
          ) in (tmp_path / 'REPORT.md').read_text()
  assert (tmp_path / 'accuracy_vs_data.png').read_bytes()[:4] == b'\x89PNG'


def test_convergence_check_judges_the_mean_over_the_seeds_rerun(tmp_path):
  # ViT-12 at 1,000 images: seeds 73.8 and 74.2; their reruns gain +1.4 and -0.4 points, one
  # over the target alone, their mean (+0.5) under it.
  rerun = lambda seed, accuracy: result_row('ViT-12', 'vit', 12, 1_000, accuracy, seed=seed,
                                            role='convergence', steps=200, budget_steps=200)
  write_csv(tmp_path, gap_rows(0.002) + [rerun(0, 0.752), rerun(1, 0.738)])
  result = report.write_report(str(tmp_path))
  assert ('twice the budget changes test accuracy by at most 0.5 points (ViT-12 at 1,000 '
          'images, mean of 2 seeds), under the 1-point target') in result['findings'][-1]
  assert '| ViT-12 | 1,000 | 1 | 100 | 200 | 74.2 | 73.8 | -0.4 | 0.3 |' in (
      tmp_path / 'REPORT.md').read_text()
  # +2.2 and +0.2: mean +1.2 over the target, SE std([2.2, 0.2], ddof=1) / sqrt(2) = 1.0.
  write_csv(tmp_path, gap_rows(0.002) + [rerun(0, 0.760), rerun(1, 0.744)])
  differences = np.array([0.760 - 0.738, 0.744 - 0.742])
  se = differences.std(ddof=1) / np.sqrt(2)
  assert round(100 * se, 1) == 1.0
  rows = results.read_results(str(tmp_path / 'results.csv'))
  means = results.convergence_means(results.convergence(rows, results.curves(rows)))
  assert len(means) == 1 and means[0]['reruns'] == 2
  assert means[0]['difference'] == pytest.approx(differences.mean())
  assert means[0]['difference_se'] == pytest.approx(se)
  assert ('more than the 1-point target at 1 of 1 checked points (ViT-12 at 1,000 images: '
          '+1.2 points (mean of 2 seeds, SE 1.0 points))'
          ) in report.write_report(str(tmp_path))['findings'][-1]


def test_report_names_the_models_of_each_budget_when_they_differ(tmp_path):
  rows = [dict(r, budget_steps=400, steps=390) if r['model'] == 'ViT-12' else r
          for r in gap_rows(0.002)]
  files.write_json(str(tmp_path / 'sweep_config.json'), {
      'name': 'hand', 'base': {'batch_size': 64, 'eval': {}},
      'budget': {'epochs': 10.0, 'min_steps': 100, 'max_steps': 1000, 'evals': 5},
      'models': {'ResNet': {'min_steps': None}, 'ViT-12': {'min_steps': 400},
                 'ViT-24': {'min_steps': 800}, 'ViT-36': {'min_steps': 400}}})
  report.write_report(write_csv(tmp_path, rows))
  text = (tmp_path / 'REPORT.md').read_text()
  assert 'at least 100 (ViT-12, ViT-36: 400; ViT-24: 800) and at most 1,000 steps' in text
  assert '| train size | models | budget (steps) |' in text
  assert '| 1,000 | ResNet | 100 | 6.4 | 100-100 | 0 of 2 |' in text
  assert '| 1,000 | ViT-12 | 400 | 6.4 | 390-390 | 2 of 2 |' in text


def test_report_writes_epoch_counts_from_1000_up_as_whole_numbers(tmp_path):
  # 16,000 steps of batch 64 over each subset less its 10% hold-out.
  rows = [dict(r, budget_steps=16_000, steps=16_000,
               budget_epochs=16_000 * 64 / (0.9 * r['train_size'])) for r in gap_rows(0.002)]
  files.write_json(str(tmp_path / 'sweep_config.json'), {
      'name': 'hand', 'base': {'batch_size': 64, 'eval': {}},
      'budget': {'epochs': 10.0, 'min_steps': 16_000, 'max_steps': 20_000, 'evals': 5}})
  report.write_report(write_csv(tmp_path, rows))
  text = (tmp_path / 'REPORT.md').read_text()
  assert '| 1,000 | 16,000 | 1,138 | 16,000-16,000 | 0 of 4 |' in text   # 1,137.8 epochs
  assert '| 30,000 | 16,000 | 37.9 | 16,000-16,000 | 0 of 4 |' in text


def test_a_results_csv_without_the_seed_columns_still_reads(tmp_path):
  old = [c for c in results.COLUMNS if c not in results.OPTIONAL]
  with open(tmp_path / 'results.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=old, extrasaction='ignore')
    writer.writeheader()
    writer.writerow(result_row('ResNet', 'resnet', 26, 1_000, 0.8))
  rows = results.read_results(str(tmp_path / 'results.csv'))
  assert rows[0]['seed'] == 0 and rows[0]['role'] == 'study'
  assert results.curves(rows)['ResNet'][0]['seeds'] == 1


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_keeps_the_best_step(tmp_path):
  from configs import quickstart
  from vit_jax import train
  config = quickstart.get_config()
  config.model.num_layers, config.batch_size, config.train_size = 1, 32, 200
  config.total_steps, config.log_every = 30, 1
  config.eval_every = config.checkpoint_every = 1
  config.eval.val_fraction, config.eval.patience, config.eval.fewshot_shots = 0.1, 1, ()
  config.optim.lr, config.schedule.warmup_steps = 1e-9, 0  # nothing changes: no improvement
  result = train.train_and_evaluate(config, str(tmp_path))
  # Best at the first evaluation (step 1); one evaluation without improvement ends the run.
  assert (result['best_step'], result['step'], result['budget_steps']) == (1, 2, 30)
  assert result['early_stopped'] is True
  from vit_jax import metrics
  evals = {r['step']: r for r in metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
           if 'test_accuracy' in r}
  assert sorted(evals) == [1, 2]   # no evaluation after the stop
  assert result['best_test_accuracy'] == evals[1]['test_accuracy']   # the best step's result
  assert evals[2]['val_accuracy'] <= evals[1]['val_accuracy']
  assert files.read_json(str(tmp_path / 'result.json'))['step'] == 2
  assert train.train_and_evaluate(config, str(tmp_path)) == files.read_json(
      str(tmp_path / 'result.json'))   # a rerun finds the run finished
  # Stopped before result.json was written (killed): the rerun writes it without training on.
  os.remove(tmp_path / 'result.json')
  again = train.train_and_evaluate(config, str(tmp_path))
  assert (again['step'], again['best_step'], again['early_stopped']) == (2, 1, True)
  assert again['best_test_accuracy'] == result['best_test_accuracy']
  assert sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())[-1] == 2


@pytest.mark.slow
def test_smoke_study_with_grid_budget_and_convergence_end_to_end(tmp_path):
  from test_sweep import read_rows, run_sweep
  # A fixed validation set of 20 images outside the subsets (early stopping on it): the whole
  # subset of 60 trains.
  out = run_sweep(tmp_path, '--config.budget.epochs=2.0', '--config.train_sizes=(60,)',
                  '--config.convergence_check=True', '--config.grid.size=60',
                  '--config.grid.weight_decay=(0.0, 0.1)', '--config.base.eval.val_fraction=0.0',
                  '--config.base.eval.val_size=20', '--config.base.eval.patience=1')
  assert 'Grid: 4 points' in out and 'Chosen by validation accuracy' in out
  rows = read_rows(tmp_path)
  assert all(r['status'] == 'done' for r in rows)
  assert sorted((r['model'], r['role'], r['train_size'], r['seed']) for r in rows) == sorted(
      [(m, role, '60', '0') for m in ('ResNet', 'ViT-1')
       for role in ('grid', 'grid', 'study', 'convergence')])
  chosen = files.read_json(str(tmp_path / 'grid.json'))
  for r in rows:
    # Budget: ceil(2 epochs x size / 64) clipped to [4, 8]; doubled for the reruns.
    size = int(r['train_size'])
    assert size == 60 and files.read_json(os.path.join(r['workdir'], 'result.json'))[
        'val_size'] == 20
    budget = min(max(math.ceil(2 * size / 64), 4), 8)
    assert int(r['budget_steps']) == budget * (2 if r['role'] == 'convergence' else 1)
    assert int(r['steps']) <= int(r['budget_steps'])
    if r['role'] != 'grid':
      assert float(r['weight_decay']) == chosen[r['family']]['weight_decay']
  text = (tmp_path / 'REPORT.md').read_text()
  assert '## Budget' in text and '## Learning-rate grid' in text
  assert 'a fixed validation set of 20 training images outside every subset' in text
  assert '## Convergence check' in text and 'Convergence check: twice the budget' in text


@pytest.mark.slow
def test_gpu_study_script_runs_end_to_end_at_smoke_size(tmp_path):
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = tmp_path / 'out'
  run = lambda **env: subprocess.run(
      ['experiments/data_scaling/gpu_study.sh', str(out), '--config.train_sizes=(60,)',
       '--config.seeds=2'], cwd=root,
      capture_output=True, text=True, timeout=900,
      env=dict(os.environ, PRESET='smoke', WORK=str(tmp_path / 'work'), PYTHON=sys.executable,
               JAX_PLATFORMS='cpu', **env))
  # Out of time before any point finished: the results still come back, saying so.
  proc = run(TIME_LIMIT='0.5')
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert 'Stopped by the time limit; 0 of 4 points finished' in (out / 'sweep.log').read_text()
  assert {r['status'] for r in results.read_results(str(out / 'results.csv'))} == {'unfinished'}
  assert 'No point finished: 0 failed, 4 not finished' in (out / 'REPORT.md').read_text()
  proc = run()   # the default limit (510 s) leaves the smoke study time to finish
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  rows = results.read_results(str(out / 'results.csv'))
  assert len(rows) == 2 * 2 and {r['status'] for r in rows} == {'done'}   # 2 models x 2 seeds
  assert sorted({r['seed'] for r in rows}) == [0, 1]
  assert (out / 'REPORT.md').read_text().startswith('# Data scaling: smoke')
  assert (out / 'accuracy_vs_data.png').read_bytes()[:4] == b'\x89PNG'
  assert 'devices:' in (out / 'device.txt').read_text()
  assert (out / 'points' / 'ResNet_n60_s1' / 'log.txt').exists()
  assert not list(out.rglob('checkpoints'))   # checkpoints stay in WORK
