"""Sweep report: power-law fits, crossings, and the figures, REPORT.md and report.json written
from synthetic results.csv files."""
import csv
import json
import re

import numpy as np
import pytest

from vit_jax.scaling import __main__ as scaling_command
from vit_jax.scaling import figures, powerlaw, report, results, tables

SIZES = (1_000, 3_000, 10_000, 30_000, 100_000)
# True error curves err(D) = a * D^-b + c: the ResNet is better on little data, the ViTs pass it
# near 6,000-7,000 images, and ViT-24 is behind ViT-12 at 3,000 images but ahead from 10,000 on.
CURVES = {'ResNet': ('resnet', 26, dict(a=2., b=0.3, c=0.15)),
          'ViT-12': ('vit', 12, dict(a=20., b=0.5, c=0.05)),
          'ViT-24': ('vit', 24, dict(a=50., b=0.6, c=0.03))}


def true_error(d, a, b, c):
  return a * np.asarray(d, np.float64) ** -b + c


def dense_crossing(first, second, lo, hi):
  """Independent reference: the first sign change of the difference on a fine log grid."""
  d = np.geomspace(lo, hi, 1_000_000)
  diff = true_error(d, **first) - true_error(d, **second)
  i = np.flatnonzero(np.sign(diff[:-1]) != np.sign(diff[1:]))
  return d[i[0]] if len(i) else None


def result_row(model, family, depth, train_size, accuracy, **fields):
  row = dict.fromkeys(results.COLUMNS, '')
  row.update(model=model, family=family, depth=depth, width=192, params=5_000_000 * depth,
             train_size=train_size, seed=0, role='study', steps=1000, examples_seen=512_000,
             best_step=900, train_accuracy=min(1., accuracy + 0.1), val_accuracy=accuracy,
             test_accuracy=accuracy, fewshot_accuracy=accuracy / 2,
             train_flops=1e12 * depth * train_size, wall_time_sec=60.,
             status='done', workdir=f'/sweeps/s/{model}_{train_size}')
  row.update(fields)
  return row


def failed_row(model, family, depth, train_size, error):
  return {**dict.fromkeys(results.COLUMNS, ''), 'model': model, 'family': family, 'depth': depth,
          'train_size': train_size, 'seed': 0, 'role': 'study', 'status': 'failed',
          'error': error, 'workdir': f'/sweeps/s/{model}_{train_size}'}


def write_csv(directory, rows):
  with open(directory / 'results.csv', 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=results.COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
  return str(directory)


def synthetic_rows(curves=CURVES, sizes=SIZES):
  return [result_row(model, family, depth, d, float(1 - true_error(d, **law)))
          for model, (family, depth, law) in curves.items() for d in sizes]


def assert_png(path):
  with open(path, 'rb') as f:
    data = f.read()
  assert data[:8] == b'\x89PNG\r\n\x1a\n'
  assert len(data) > 10_000


@pytest.mark.parametrize('noise', [0., 0.003])
def test_fit_power_law_recovers_known_parameters(noise):
  sizes = np.geomspace(100, 50_000, 10)
  errors = true_error(sizes, a=3., b=0.5, c=0.05)
  errors += np.random.default_rng(0).normal(0, noise, sizes.shape)
  fit = powerlaw.fit_power_law(sizes, errors)
  tolerance = 1e-4 if noise == 0 else 0.03  # with noise: what 10 noisy points pin down
  assert fit['n'] == 10
  assert fit['b'] == pytest.approx(0.5, abs=tolerance)
  assert fit['c'] == pytest.approx(0.05, abs=tolerance / 5)
  assert fit['a'] == pytest.approx(3., rel=5 * tolerance)
  assert fit['r2'] > 0.995
  assert fit['rmse'] < 2 * noise + 1e-6
  # The least-squares optimum itself, found independently: for every b on a fine grid, a and c
  # solve a 2x2 linear least-squares problem in closed form; the best b wins.
  a, b, c = profile_least_squares(sizes, errors)
  assert fit['b'] == pytest.approx(b, abs=2e-5)
  assert fit['a'] == pytest.approx(a, rel=1e-4)
  assert fit['c'] == pytest.approx(c, abs=1e-5)


def profile_least_squares(sizes, errors):
  """(a, b, c) minimising sum (a D^-b + c - err)^2, b on a grid of step 1e-5 in [0.01, 3]."""
  b = np.linspace(0.01, 3, 299_001)
  x = sizes[None, :] ** -b[:, None]
  n, sx, sxx = len(sizes), x.sum(1), (x**2).sum(1)
  sy, sxy = errors.sum(), (x * errors).sum(1)
  a = (n * sxy - sx * sy) / (n * sxx - sx**2)
  c = (sy - a * sx) / n
  best = np.argmin(((a[:, None] * x + c[:, None] - errors)**2).sum(1))
  return a[best], b[best], c[best]


def test_fit_power_law_needs_three_valid_points():
  with pytest.raises(ValueError, match='only 2 points'):
    powerlaw.fit_power_law(np.array([100., 1000.]), np.array([0.5, 0.3]))
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    powerlaw.fit_power_law(np.array([1., 2., 3.]), np.array([0.5, 0.3, 1.5]))


def test_crossing_matches_a_dense_grid_and_none_without_a_crossing():
  resnet, vit = CURVES['ResNet'][2], CURVES['ViT-12'][2]
  found = powerlaw.crossing(resnet, vit, 1_000, 100_000)
  assert found == pytest.approx(dense_crossing(resnet, vit, 10, 1e7), rel=1e-4)
  assert 5_000 < found < 10_000
  assert powerlaw.crossing(vit, resnet, 1_000, 100_000) == pytest.approx(found)
  parallel = dict(resnet, c=resnet['c'] + 0.1)  # the same curve shifted up never meets it
  assert powerlaw.crossing(resnet, parallel, 1_000, 100_000) is None
  # Equal exponents: (2 - 1) * D^-0.5 = 0.151 - 0.15 at D = 1e6 exactly, found only when the
  # search (up to hi * 100) reaches it.
  first, second = dict(a=2., b=0.5, c=0.15), dict(a=1., b=0.5, c=0.151)
  assert powerlaw.crossing(first, second, 1_000, 100_000) == pytest.approx(1e6, rel=1e-6)
  assert powerlaw.crossing(first, second, 1_000, 5_000) is None


def test_read_results_converts_numbers_and_names_bad_ones(tmp_path):
  write_csv(tmp_path, [result_row('ViT-12', 'vit', 12, 1000, 0.5),
                       failed_row('ViT-24', 'vit', 24, 1000, 'boom')])
  done, failed = results.read_results(str(tmp_path / 'results.csv'))
  assert (done['train_size'], done['test_accuracy'], done['status']) == (1000, 0.5, 'done')
  assert isinstance(done['params'], int) and isinstance(done['train_flops'], float)
  assert failed['test_accuracy'] is None and failed['error'] == 'boom'
  path = tmp_path / 'results.csv'  # saved again by a spreadsheet: a BOM, CRLF line ends
  path.write_bytes(b'\xef\xbb\xbf' + path.read_bytes().replace(b'\r\n', b'\n').replace(
      b'\n', b'\r\n'))
  assert results.read_results(str(path)) == [done, failed]
  write_csv(tmp_path, [result_row('ViT-12', 'vit', 12, 1000, 0.5, seed='', role='')])
  empty, = results.read_results(str(tmp_path / 'results.csv'))
  assert (empty['seed'], empty['role']) == (0, 'study')  # as when the columns are absent
  write_csv(tmp_path, [result_row('ViT-12', 'vit', 12, 1000, 0.5, steps='lots')])
  with pytest.raises(ValueError, match="line 2: column 'steps' holds 'lots'"):
    results.read_results(str(tmp_path / 'results.csv'))
  write_csv(tmp_path, [result_row('ViT-12', 'vit', 12, 1000, 0.5, status='')])
  with pytest.raises(ValueError, match="line 2: column 'status' holds '', not one of done, "):
    results.read_results(str(tmp_path / 'results.csv'))


def test_read_results_refuses_a_damaged_file(tmp_path):
  path = write_csv(tmp_path, [result_row('ViT-12', 'vit', 12, 1000, 0.5),
                              result_row('ViT-24', 'vit', 24, 1000, 0.6)]) + '/results.csv'
  text = open(path).read()
  with open(path, 'w') as f:  # cut in the middle of the last row
    f.write(text[:text.rindex('\n', 0, -1) + 40])
  with pytest.raises(ValueError, match=re.escape(
      f'{path} line 3 does not have one cell per column of the header (the file is damaged or '
      'cut short).')):
    results.read_results(path)
  with open(path, 'w') as f:  # a row with a cell too many
    f.write(text.rstrip('\r\n') + ',extra\r\n')
  with pytest.raises(ValueError, match='line 3 does not have one cell per column'):
    results.read_results(path)
  with open(path, 'w') as f:
    f.write('model,train_size\nViT-12,1000\n')
  with pytest.raises(ValueError, match=r"lacks the columns \['family', 'depth'"):
    results.read_results(path)
  with pytest.raises(FileNotFoundError, match=r'Sweep results not found: \S+elsewhere.csv$'):
    results.read_results(str(tmp_path / 'elsewhere.csv'))
  (tmp_path / 'run').mkdir()  # a training run's folder given for a sweep's
  (tmp_path / 'run' / 'config.json').write_text('{}')
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"{tmp_path / 'run' / 'results.csv'} (that folder is one training run, not a sweep)")):
    results.read_results(str(tmp_path / 'run' / 'results.csv'))


def test_write_report_on_a_sweep_where_vit_catches_up(tmp_path):
  rows = synthetic_rows() + [failed_row('ViT-24', 'vit', 24, 300_000,
                                        'RESOURCE_EXHAUSTED: out of memory')]
  result = report.write_report(write_csv(tmp_path, rows), title='Synthetic sweep')

  figures = ('accuracy_vs_data', 'gap_vs_data', 'accuracy_vs_compute')
  assert result['report'] == str(tmp_path / 'REPORT.md')
  assert result['json'] == str(tmp_path / 'report.json')
  for name in figures:
    assert result[name] == str(tmp_path / f'{name}.png')
    assert_png(result[name])
  text = (tmp_path / 'REPORT.md').read_text()
  assert text.startswith('# Synthetic sweep')
  assert 'Setup: 3 models (ResNet, ViT-12, ViT-24)' in text
  assert '15 finished points, 1 failed' in text
  resnet_1000 = 100 * (1 - true_error(1000, **CURVES['ResNet'][2]))
  assert f'| ViT-12 | 60.0M | {100 * (1 - true_error(1000, **CURVES["ViT-12"][2])):.1f} |' in text
  assert f'| ResNet | 130.0M | {resnet_1000:.1f} |' in text
  assert '| ViT-24 | 5 | ' in text and '| 0.600 | 0.030 | 1.000 | 97.0 |' in text  # fit row
  assert 'RESOURCE_EXHAUSTED: out of memory' in text
  for name in figures:
    assert f'![{name}]({name}.png)' in text

  crossing = dense_crossing(CURVES['ViT-12'][2], CURVES['ResNet'][2], 10, 1e7)
  assert f'| ViT-12 vs ResNet | about {float(f"{crossing:.3g}"):,.0f} images (measured range) |' \
      in text
  findings = result['findings']
  assert findings[0].startswith('At the smallest training size (1,000 images), ResNet is best')
  assert findings[1].startswith('At the largest training size (100,000 images), ViT-24 is best')
  vit12 = next(f for f in findings if f.startswith('ViT-12 loses to ResNet'))
  assert 'at 1,000 images and beats ResNet' in vit12 and 'ViT-12 overtakes ResNet' in vit12
  assert 'measured range' in vit12 and 'extrapolated' not in vit12
  assert any(f.startswith('ViT-24 overtakes ViT-12 from') for f in findings)
  assert 'this sweep agrees' in findings[-1]
  assert all(f'- {sentence}' in text for sentence in findings)

  saved = json.loads((tmp_path / 'report.json').read_text())
  assert saved['fits']['ViT-12']['b'] == pytest.approx(0.5, abs=1e-3)
  assert saved['fits']['ResNet']['c'] == pytest.approx(0.15, abs=1e-3)
  assert saved['crossings'][0]['size'] == pytest.approx(crossing, rel=1e-3)
  assert saved['findings'] == findings and saved['failed'][0]['train_size'] == 300_000


def test_findings_say_about_equal_and_disagree_with_the_paper(tmp_path):
  sizes = (1_000, 3_000, 10_000)
  rows = [result_row('ResNet', 'resnet', 26, d, acc) for d, acc in zip(sizes, (0.6, 0.7, 0.8))]
  rows += [result_row('ViT-12', 'vit', 12, d, acc) for d, acc in zip(sizes, (0.603, 0.69, 0.75))]
  findings = report.write_report(write_csv(tmp_path, rows))['findings']
  assert findings[0] == ('At the smallest training size (1,000 images), ViT-12 and ResNet are '
                         'about equal (60.3% vs 60.0% test accuracy).')
  assert findings[2].startswith(
      'ViT-12 is about equal to ResNet (+0.3 points) at 1,000 images and loses to ResNet by 5.0 '
      'points at 10,000 images; the gap widens as data grows, from 0.3 points to 5.0 points.')
  assert findings[3].startswith('Fewer than two ViT depths finished')
  assert 'this sweep disagrees' in findings[-1]
  # Three points pin the ResNet's c to its bound 0: the table must not claim 100% accuracy.
  assert '| 100.0 (c at its bound: not determined) |' in (tmp_path / 'REPORT.md').read_text()


def test_results_table_lists_every_model_and_size():
  table = tables.results_table(synthetic_rows())
  lines = table.splitlines()
  assert lines[0] == 'Test accuracy (%) by training-set size:'
  assert lines[1].split() == ['model', 'params', '1,000', '3,000', '10,000', '30,000',
                              '100,000', 'few-shot', '@', '100,000']
  assert [line.split()[0] for line in lines[3:]] == ['ResNet', 'ViT-12', 'ViT-24']
  assert tables.results_table([failed_row('ViT-12', 'vit', 12, 100, 'x')]) == 'No point finished.'


def test_a_model_with_two_points_is_reported_without_a_fit(tmp_path):
  rows = synthetic_rows() + synthetic_rows({'ViT-36': ('vit', 36, dict(a=60., b=0.6, c=0.02))},
                                           SIZES[-2:])
  result = report.write_report(write_csv(tmp_path, rows))
  text = (tmp_path / 'REPORT.md').read_text()
  assert '| ViT-36 | 2 | - | - | - | - | no fit: only 2 points; a power-law fit needs 3. |' in text
  assert '| ViT-36 vs ResNet | no fit for ViT-36 |' in text
  assert json.loads((tmp_path / 'report.json').read_text())['fits']['ViT-36']['n'] == 2
  assert any(f.startswith('ViT-36 beats ResNet') for f in result['findings'])


def test_a_stopped_sweeps_report_counts_its_unfinished_runs_apart_from_failed_ones(tmp_path):
  """Rows 'unfinished' (a sweep stopped by a signal or its time limit) are counted in the setup
  line and report.json, not listed as failures; the failed run is listed with its error."""
  unfinished = lambda model, depth, size: {
      **failed_row(model, 'vit', depth, size, ''), 'status': 'unfinished'}
  grid_failure = {**failed_row('ResNet', 'resnet', 26, 1_000, 'out of memory'), 'seed': 1,
                  'role': 'grid', 'lr': 0.003, 'weight_decay': 0.0001}
  rows = (synthetic_rows() + [failed_row('ViT-12', 'vit', 12, 300_000, 'NaN loss at 7')]
          + [unfinished('ViT-48', 48, d) for d in SIZES[:3]] + [grid_failure])
  report.write_report(write_csv(tmp_path, rows))
  text = (tmp_path / 'REPORT.md').read_text()
  assert (f'{len(synthetic_rows())} finished points, 2 failed, 3 not finished (the sweep '
          'stopped before them: rerun it to continue).') in text
  failed_section = text[text.index('## Failed runs'):].split('\n## ')[0]
  assert '| model | train size | run | error |' in failed_section  # each run named, no status
  assert '| ViT-12 | 300,000 | seed 0, study | NaN loss at 7 |' in failed_section
  assert ('| ResNet | 1,000 | seed 1, grid (lr 0.003, weight decay 0.0001) | out of memory |'
          in failed_section)
  assert 'ViT-48' not in text
  saved = json.loads((tmp_path / 'report.json').read_text())
  assert [(r['model'], r['seed'], r['role']) for r in saved['failed']] == [
      ('ViT-12', 0, 'study'), ('ResNet', 1, 'grid')] and saved['unfinished'] == 3
  resnet = [r for r in synthetic_rows() if r['model'] == 'ResNet']
  report.write_report(write_csv(tmp_path, resnet + [unfinished('ViT-48', 48, SIZES[0])]))
  assert (f'Setup: 1 model (ResNet); training sizes 1,000, 3,000, 10,000, 30,000, 100,000; '
          f'{len(resnet)} finished points, 0 failed, 1 not finished') in (
              tmp_path / 'REPORT.md').read_text()
  report.write_report(write_csv(tmp_path, [unfinished('ViT-48', 48, d) for d in SIZES[:2]]))
  assert ('No point finished: 0 failed, 2 not finished (the sweep stopped before them: rerun '
          'it to continue).') in (tmp_path / 'REPORT.md').read_text()


def test_only_failed_rows_give_a_report_saying_nothing_finished(tmp_path):
  rows = [failed_row('ViT-12', 'vit', 12, d, f'NaN loss at {d}') for d in (100, 1000)]
  result = report.write_report(write_csv(tmp_path, rows))
  text = (tmp_path / 'REPORT.md').read_text()
  assert 'No point finished: all 2 runs failed' in text and 'NaN loss at 1000' in text
  assert sorted(result) == ['findings', 'json', 'report'] and result['findings'] == []
  assert not list(tmp_path.glob('*.png'))
  assert json.loads((tmp_path / 'report.json').read_text())['fits'] == {}


def test_missing_results_csv_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'results.csv')):
    report.write_report(str(tmp_path))


@pytest.mark.parametrize('argv,message', [
    ([], 'Error: the sweep workdir is required: python -m vit_jax.scaling <dir> (or '
     '--workdir=<dir>).'),
    (['a', 'b', 'c'], 'Error: unrecognized arguments: c'),
    (['{}', 'x', '--title=x'], 'Error: the title is given twice: as an argument and as --title.'),
    (['{}', '--workdir={}'], 'Error: the workdir is given twice: as an argument and as --workdir.'),
    (['{}'], 'Error: Sweep results not found: {}/results.csv'),
    (['--workdir={}'], 'Error: Sweep results not found: {}/results.csv'),  # as the others take it
])
def test_the_report_command_ends_bad_input_in_one_error_line(tmp_path, argv, message):
  argv = [a.format(tmp_path) for a in argv]
  with pytest.raises(SystemExit) as e:
    scaling_command.main(['python -m vit_jax.scaling', *argv])
  assert str(e.value).splitlines()[0] == message.format(tmp_path)
  assert not (tmp_path / 'REPORT.md').exists()


def test_the_report_command_takes_its_folder_and_title_as_arguments_or_flags(tmp_path, capsys):
  for name, argv in (('args', ['{}', 'Mine']), ('flags', ['--title=Mine', '--workdir={}'])):
    folder = tmp_path / name
    folder.mkdir()
    write_csv(folder, synthetic_rows())
    scaling_command.main(['python -m vit_jax.scaling', *[a.format(folder) for a in argv]])
    assert (folder / 'REPORT.md').read_text().startswith('# Mine\n')
  out = capsys.readouterr().out
  assert out.count(f"Wrote {tmp_path / 'flags' / 'REPORT.md'}") == 1


def test_the_report_command_answers_help_without_reading_a_folder(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(SystemExit) as e:
    scaling_command.main(['python -m vit_jax.scaling', '--help'])
  assert e.value.code == 0
  assert capsys.readouterr().out.startswith(
      'usage: python -m vit_jax.scaling [-h] [--workdir WORKDIR] [--title TITLE]')
  assert not list(tmp_path.iterdir())


def test_the_accuracy_figure_title_keys_only_what_is_drawn():
  point = {'x': [1, 2], 'y': [50.0, 60.0], 'style': 'o-', 'yerr': None}
  fit, seeds = dict(point, style='--'), dict(point, yerr=[0.5, float('nan')])
  assert figures.accuracy_title('T', [point]) == 'T: test accuracy vs data'
  assert figures.accuracy_title('T', [point, fit]) == (
      'T: test accuracy vs data\n(dashed: power-law fits)')
  assert figures.accuracy_title('T', [seeds, fit]) == (
      'T: test accuracy vs data\n(bars: std over seeds; dashed: power-law fits)')
