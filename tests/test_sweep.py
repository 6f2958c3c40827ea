"""The data-scaling sweep: smoke preset end to end, resume, failed points, time limit, dry
runs."""
import csv
import json
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

from flax import traverse_util
import numpy as np
import pytest

from conftest import child_env, recounted_test_accuracy
from configs import data_scaling
from vit_jax import files, sweep
from vit_jax.analysis import run as analysis_run

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_sweep(workdir, *overrides, env=None):
  cmd = [sys.executable, '-m', 'vit_jax.sweep', '--config=configs/data_scaling.py:smoke',
         f'--workdir={workdir}', *overrides]
  proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900,
                        env=env or dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return proc.stdout


def read_rows(workdir):
  with open(os.path.join(workdir, 'results.csv')) as f:
    return list(csv.DictReader(f))


def test_smoke_sweep_end_to_end_resume_failures_and_analysis_view(tmp_path):
  # 60 and 120 images train; 10 fail alone, when they start: the validation hold-out takes one
  # image of each of the 10 classes, all 10.
  out = run_sweep(tmp_path, '--config.train_sizes=(60, 120, 10)')
  assert '6 points, 0 already finished, 6 to run' in out
  rows = read_rows(tmp_path)
  assert [r['status'] for r in rows] == ['done', 'done', 'failed'] * 2
  assert [r['model'] for r in rows] == ['ResNet'] * 3 + ['ViT-1'] * 3
  done = [r for r in rows if r['status'] == 'done']
  assert {int(r['train_size']) for r in done} == {60, 120}
  for r in done:  # each run's test accuracy at its best validation step, counted directly
    assert float(r['test_accuracy']) == pytest.approx(
        recounted_test_accuracy(r['workdir'], int(r['best_step'])), abs=1e-6)
    assert int(r['steps']) == 4
    assert int(r['examples_seen']) == 4 * 64 and float(r['train_flops']) > 0
    assert int(r['params']) > 0 and r['best_step'] and r['fewshot_accuracy']
  assert rows[3]['family'] == 'vit' and rows[3]['depth'] == '1' and rows[3]['width'] == '64'
  assert rows[0]['family'] == 'resnet' and rows[0]['depth'] == '14'
  failed = [r for r in rows if r['status'] == 'failed']
  assert all(r['error'] == 'Error: eval.val_fraction=0.1 leaves no training examples out of 10.'
             for r in failed)
  for name in ('accuracy_vs_data.png', 'gap_vs_data.png', 'accuracy_vs_compute.png'):
    assert (tmp_path / name).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  report_text = (tmp_path / 'REPORT.md').read_text()
  assert 'ViT-1' in report_text and 'ResNet' in report_text and 'out of 10.' in report_text
  assert 'REPORT.md' in out and 'accuracy_vs_data.png' in out

  # Rerun after losing one finished point: only it and the failed ones run again.
  finished = tmp_path / 'ViT-1_n120' / 'result.json'
  kept = tmp_path / 'ResNet_n60' / 'result.json'
  stamp = kept.stat().st_mtime_ns
  os.remove(finished)
  # --time_limit: three seconds, all three started at once after the data check (a second,
  # loading the digits), so each is stopped while it starts (a point takes seconds to import
  # JAX); results.csv and the report say what finished.
  out = run_sweep(tmp_path, '--config.train_sizes=(60, 120, 10)', '--time_limit=3',
                  '--max_parallel=3')
  stopped = re.findall(r'^(.*) seed=0 \(study\): stopped by the time limit; the rerun resumes '
                       r'it\.$', out, re.MULTILINE)
  assert sorted(stopped) == ['ResNet train_size=10', 'ViT-1 train_size=10',
                             'ViT-1 train_size=120'], out
  assert 'Stopped by the time limit; 3 of 6 points finished. Rerun the same command' in out
  assert [r['status'] for r in read_rows(tmp_path)] == ['done', 'done', 'failed', 'done',
                                                       'unfinished', 'failed']
  assert ('3 finished points, 2 failed, 1 not finished (the sweep stopped before them: rerun '
          'it to continue).') in (tmp_path / 'REPORT.md').read_text()
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.sweep', '--config=configs/data_scaling.py:smoke',
       f'--workdir={tmp_path}', '--time_limit=0'], cwd=ROOT, capture_output=True, text=True,
      timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert 'Error: --time_limit=0.0 must be a positive number of seconds.' in proc.stderr
  out = run_sweep(tmp_path, '--config.train_sizes=(60, 120, 10)')
  assert '6 points, 3 already finished, 3 to run' in out
  assert finished.exists() and kept.stat().st_mtime_ns == stamp
  assert [r['status'] for r in read_rows(tmp_path)] == ['done', 'done', 'failed'] * 2

  # The sweep view of the analyses: every finished study point (a grid row is left out: its
  # workdir does not exist), and the report includes it.
  with open(tmp_path / 'results.csv') as f:
    table = list(csv.DictReader(f))
  grid_row = dict(table[0], role='grid', workdir=str(tmp_path / 'grid' / 'missing'))
  with open(tmp_path / 'results.csv', 'a', newline='') as f:
    csv.DictWriter(f, fieldnames=list(table[0])).writerow(grid_row)
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.analyze', f'--sweep={tmp_path}', '--images=8'], cwd=ROOT,
      capture_output=True, text=True, timeout=900, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'Analysed 4 points' in proc.stdout
  with open(tmp_path / 'analysis' / 'sweep.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['model'], r['train_size']) for r in rows] == [
      ('ResNet', '60'), ('ResNet', '120'), ('ViT-1', '60'), ('ViT-1', '120')]
  for r in rows:  # ResNets have no attention; both families have Fourier curves
    assert (r['distance_first_layer'] == '') == (r['family'] == 'resnet')
    assert float(r['log_amplitude_pi_last']) < 10
  vit = json.loads((tmp_path / 'analysis' / 'ViT-1_n60' / 'analysis.json').read_text())
  assert float(rows[2]['distance_first_layer']) == pytest.approx(
      np.mean(vit['distance']['pixels'][0]))
  assert (tmp_path / 'analysis' / 'sweep.png').read_bytes()[:4] == b'\x89PNG'
  report_text = (tmp_path / 'REPORT.md').read_text()
  assert report_text.startswith('# Data scaling: smoke')
  assert '## Inside the models' in report_text and '](analysis/sweep.png)' in report_text
  # Adding the Hessian later keeps the other analyses' columns.
  with_hessian = analysis_run.analyze_sweep(str(tmp_path), ['hessian'], num_images=8,
                                            hessian_batches=1)
  assert with_hessian[1] == []
  with open(tmp_path / 'analysis' / 'sweep.csv') as f:
    added = list(csv.DictReader(f))
  for before, after in zip(rows, added, strict=True):
    assert after == dict(before, hessian_top=after['hessian_top']) and after['hessian_top']
  # A rerun with the same analyses and settings (after a Ctrl-C, say) keeps every point's
  # analyses as they are; other --images analyse again, and the setting is recorded.
  saved = sorted((tmp_path / 'analysis').glob('*/analysis.json'))
  stamps = [f.stat().st_mtime_ns for f in saved]
  assert analysis_run.analyze_sweep(str(tmp_path), ['hessian'], num_images=8,
                                    hessian_batches=1) == with_hessian
  assert [f.stat().st_mtime_ns for f in saved] == stamps
  analysis_run.analyze_sweep(str(tmp_path), num_images=6)
  assert all(f.stat().st_mtime_ns != t for f, t in zip(saved, stamps))
  again = json.loads((tmp_path / 'analysis' / 'ViT-1_n60' / 'analysis.json').read_text())
  assert again['distance']['images'] == 6 and again['hessian']['batches'] == 1
  stamps = [f.stat().st_mtime_ns for f in saved]  # each analysis is judged on its own setting
  analysis_run.analyze_sweep(str(tmp_path), ['distance', 'fourier', 'hessian'], num_images=6,
                             hessian_batches=1)
  assert [f.stat().st_mtime_ns for f in saved] == stamps
  analysis_run.analyze_sweep(str(tmp_path), num_images=8)  # back to the numbers of `added`
  # Checkpoints deleted after the sweep: a point analysed before keeps its numbers, one never
  # analysed is left out (an empty row), and the others are analysed as before.
  for point in ('ViT-1_n60', 'ViT-1_n120'):
    shutil.rmtree(tmp_path / point / 'checkpoints')
  shutil.rmtree(tmp_path / 'analysis' / 'ViT-1_n120')
  summaries, left_out = analysis_run.analyze_sweep(str(tmp_path), num_images=8)
  assert left_out == ['ViT-1_n120']
  with open(tmp_path / 'analysis' / 'sweep.csv') as f:
    pruned = list(csv.DictReader(f))
  assert pruned[:3] == added[:3] and len(summaries) == 4
  assert pruned[3] == dict.fromkeys(added[3], '') | {k: added[3][k] for k in (
      'model', 'family', 'depth', 'train_size')}
  # Every point pruned and never analysed (a committed study copied without its analysis/):
  # refused, nothing written, the report left as it was.
  for point in ('ResNet_n60', 'ResNet_n120'):
    shutil.rmtree(tmp_path / point / 'checkpoints')
  shutil.rmtree(tmp_path / 'analysis')
  with pytest.raises(ValueError, match=re.escape(
      f'No point of {tmp_path} can be analysed: the checkpoints/ of every one is gone')):
    analysis_run.analyze_sweep(str(tmp_path), num_images=8)
  assert not (tmp_path / 'analysis' / 'sweep.csv').exists()


@pytest.mark.parametrize('preset', ['digits', 'smoke', 'mnist', 'mnist_fixed_val',
                                    'mnist_8k', 'cifar10', 'cifar10_cpu', 'paper'])
def test_every_preset_expands(preset, tmp_path):
  config = data_scaling.get_config(preset)
  points = sweep.all_points(config, str(tmp_path))
  runs = sum(sweep.seeds_at(config, size) for size in config.train_sizes)
  smallest = min(config.train_sizes, key=lambda n: n or math.inf)
  checks = config.convergence_check * (
      1 + min(config.convergence_seeds, sweep.seeds_at(config, smallest)))
  grid = (len({sweep.family(e.model) for e in config.models.values()}) * len(config.grid.lr) *
          len(config.grid.weight_decay)) if config.grid.size else 0
  assert len(points) == len(config.models) * (runs + checks) + grid
  assert len({p.workdir for p in points}) == len(points)
  listing = sweep.describe(points)
  assert listing.count('workdir=') == len(points)
  steps = [int(re.search(r' steps=(\d+) ', line)[1]) for line in listing.splitlines()
           if line.startswith('[')]
  roles = {role: sum(p.role == role for p in points) for role in ('grid', 'study', 'convergence')}
  want = ', '.join(f'{n} {role}' for role, n in roles.items() if n)
  os.makedirs(points[-1].workdir)
  open(os.path.join(points[-1].workdir, 'result.json'), 'w').close()
  assert sweep.summarize(points) == (f'{len(points)} points ({want}), {sum(steps):,} training '
                                     'steps at most; 1 finished already.')
  for point in points:
    family, depth, width = sweep._family_depth_width(point.config)
    assert family in ('vit', 'hybrid', 'resnet') and depth > 0 and width > 0


def test_mnist_fixed_val_changes_only_the_validation_set_budget_grid_and_transformers():
  first, second = (data_scaling.get_config(p) for p in ('mnist', 'mnist_fixed_val'))
  flat = [traverse_util.flatten_dict(c.to_dict(), sep='.') for c in (first, second)]
  floors = {'ResNet': None, 'Hybrid': 8_000, 'ViT-12': 4_000, 'ViT-24': 4_000, 'ViT-36': 4_000}
  assert {k for k in flat[0] if flat[0][k] != flat[1][k]} == {
      'name', 'budget.min_steps', 'budget.max_steps', 'grid.weight_decay',
      'base.eval.val_fraction', 'base.eval.val_size',
      *(f'models.{m}.{field}' for m, f in floors.items() if f
        for field in ('weight_decay', 'min_steps'))}
  assert (second.base.eval.val_fraction, second.base.eval.val_size) == (0.0, 1_000)
  assert tuple(second.grid.weight_decay) == (0.05,)
  # 30 epochs of the whole subset (nothing held out of it), at least 2,000 steps (the
  # transformers, at weight decay 0.3: their own floor); the cap of 8,000 binds no size.
  for label, entry in second.models.items():
    floor = floors[label] or 2_000
    assert entry.weight_decay == (0.3 if floors[label] else None)
    assert [sweep.budget_steps(second, n, entry) for n in second.train_sizes] == [
        max(floor, math.ceil(30 * n / 64)) for n in second.train_sizes]
  assert sweep.budget_steps(second, 10_000, second.models.ResNet) == 4_688


def test_mnist_8k_changes_only_the_budget_and_the_seeds_rerun(tmp_path):
  second, third = (data_scaling.get_config(p) for p in ('mnist_fixed_val', 'mnist_8k'))
  flat = [traverse_util.flatten_dict(c.to_dict(), sep='.') for c in (second, third)]
  assert {k for k in flat[0] if flat[0][k] != flat[1][k]} == {
      'name', 'convergence_seeds', 'budget.max_steps', 'models.ResNet.min_steps',
      *(f'models.ViT-{d}.min_steps' for d in (12, 24, 36))}
  for label, entry in third.models.items():  # the floor binds at every size
    steps = 16_000 if label == 'ViT-36' else 8_000
    assert [sweep.budget_steps(third, n, entry) for n in third.train_sizes] == [steps] * 6
  hybrid = third.models.Hybrid
  assert ([sweep.budget_steps(third, n, hybrid) for n in third.train_sizes] ==
          [sweep.budget_steps(second, n, hybrid) for n in second.train_sizes])
  assert [p.config.total_steps for p in sweep.grid_points(third, str(tmp_path))] == [8_000] * 9
  reruns = [p for p in sweep.expand(third, str(tmp_path)) if p.role == 'convergence']
  assert sorted((p.train_size, p.seed) for p in reruns if p.label == 'ResNet') == [
      (200, 0), (200, 1), (200, 2), (10_000, 0)]
  assert {(p.label == 'ViT-36', p.config.total_steps) for p in reruns} == {
      (False, 16_000), (True, 32_000)}


def test_paper_preset_uses_the_papers_models_and_subsets(tmp_path):
  points = sweep.expand(data_scaling.get_config('paper'), str(tmp_path))
  assert {p.label for p in points} == {'ResNet50x1', 'ResNet152x2', 'ViT-b/32', 'ViT-B/32',
                                        'ViT-L/32', 'ViT-L/16'}
  assert sorted({p.train_size for p in points}) == [9_000_000, 30_000_000, 90_000_000,
                                                   300_000_000]
  assert {p.config.total_steps for p in points} == {303_000_000 * 7 // 4096}
  assert {p.config.optim.lr for p in points if p.label == 'ViT-L/16'} == {4e-4}


def test_unknown_preset_is_named():
  with pytest.raises(ValueError, match="Unknown data_scaling preset 'huge'"):
    data_scaling.get_config('huge')


def test_labels_that_would_share_folders_are_refused_before_anything_is_written(tmp_path):
  config = data_scaling.get_config('smoke')
  config.models['ViT/1'] = config.models['ViT-1']
  message = ("config.models: the labels 'ViT-1' and 'ViT/1' would train in the same folders "
             "(ViT-1_n...: '/' is written '-'); rename one.")
  with pytest.raises(ValueError, match=re.escape(message)):
    sweep.expand(config, str(tmp_path))
  config.grid.size = 60
  with pytest.raises(ValueError, match=re.escape(message)):
    sweep.run_sweep(config, str(tmp_path / 'sweep'), argv=[])
  assert not (tmp_path / 'sweep').exists()


def test_config_check_compares_a_folder_dataset_by_name_not_directory(tmp_path):
  """A committed study resumes where its archive (its few-shot probe's archive, its prepared
  records) lies elsewhere, or with settings that do not change what it computes; another
  archive or hyperparameter is refused."""
  point = sweep.expand(data_scaling.get_config('smoke'), str(tmp_path))[0]
  os.makedirs(point.workdir)
  then = json.loads(point.config.to_json_best_effort())
  then['dataset'] = 'folder:/home/someone/datasets/mnist.tar.gz'
  then['eval']['fewshot_dataset'] = 'records:/data/cifar10/'
  files.write_json(os.path.join(point.workdir, 'config.json'), then)
  point.config.dataset = f'folder:{tmp_path}/data/mnist.tar.gz'
  point.config.eval.fewshot_dataset = f'records:{tmp_path}/cifar10'
  # Nor do the fields that change where or how it computes, not what: fewer checkpoints kept
  # to save space, another cache folder, more data workers.
  point.config.checkpoint.keep, point.config.data.workers = 1, 4
  point.config.data.cache_dir = str(tmp_path / 'cache')
  sweep.check_configs([point])
  point.config.checkpoint.keep, point.config.data.workers, point.config.data.cache_dir = (
      then['checkpoint']['keep'], then['data']['workers'], then['data']['cache_dir'])
  point.config.optim.weight_decay = 0.5  # what it computes: refused
  with pytest.raises(ValueError, match='optim.weight_decay: '):
    sweep.check_configs([point])
  point.config.optim.weight_decay = then['optim']['weight_decay']
  point.config.dataset = f'folder:{tmp_path}/data/mnist/'  # a directory, trailing slash
  with pytest.raises(ValueError, match=re.escape(
      "(dataset: 'folder:mnist.tar.gz' then, 'folder:mnist' now)")):
    sweep.check_configs([point])


def test_a_changed_sweep_config_is_named_and_the_earlier_one_kept(tmp_path, capsys):
  """Rerun with fewer (or more) seeds or sizes, the sweep's results.csv and report cover
  the new config's points: a warning names the changed fields and the earlier file is kept.
  The same config, or one whose archive lies in another directory, is no change."""
  config = data_scaling.get_config('mnist')
  path = tmp_path / 'sweep_config.json'
  sweep.write_sweep_config(config, str(tmp_path))
  first = path.read_text()
  moved = data_scaling.get_config('mnist')
  moved.base.dataset = 'folder:/elsewhere/mnist.tar.gz'
  for same in (config, moved):
    sweep.write_sweep_config(same, str(tmp_path))
  assert os.listdir(tmp_path) == ['sweep_config.json'] and not capsys.readouterr().out
  written = path.read_text()
  assert written != first and json.loads(written)['base']['dataset'] == moved.base.dataset
  config.seeds, config.train_sizes = 3, (200, 500)
  sweep.write_sweep_config(config, str(tmp_path))
  [backup] = [n for n in os.listdir(tmp_path) if n != 'sweep_config.json']
  assert (tmp_path / backup).read_text() == written
  assert json.loads(path.read_text())['seeds'] == 3
  assert capsys.readouterr().out == (
      f'Warning: this sweep config differs from the last one run in {tmp_path} (seeds: 2 then, '
      '3 now, train_sizes: [200, 500, 1000, 2000, 5000, 10000] then, [200, 500] now); '
      'results.csv and the report now cover '
      "this config's points (the folders of the others stay), and the earlier config is kept "
      f'as {tmp_path / backup}.\n')
  os.remove(tmp_path / backup)
  path.write_text('{"seeds": 3, "train_s')  # damaged: kept aside, never in the way
  sweep.write_sweep_config(config, str(tmp_path))
  [backup] = [n for n in os.listdir(tmp_path) if n != 'sweep_config.json']
  assert (tmp_path / backup).read_text() == '{"seeds": 3, "train_s'
  assert json.loads(path.read_text())['seeds'] == 3
  assert f'({path} is not readable JSON' in capsys.readouterr().out


def test_a_second_sweep_on_the_same_workdir_is_refused(tmp_path):
  with files.exclusive_lock(str(tmp_path), 'sweep'):
    proc = subprocess.run(
        [sys.executable, '-m', 'vit_jax.sweep', '--config=configs/data_scaling.py:smoke',
         f'--workdir={tmp_path}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert f'Another sweep is running in {tmp_path} (pid {os.getpid()})' in proc.stderr
  assert 'Traceback' not in proc.stderr and not (tmp_path / 'results.csv').exists()


def test_a_launcher_template_is_filled_in_with_the_points_flags(tmp_path):
  sweep_dir = f'{tmp_path}/my sweep'
  points = sweep.expand(data_scaling.get_config('smoke'), sweep_dir)
  argv = ['vit_jax.sweep', '--config=configs/data_scaling.py:smoke', f'--workdir={sweep_dir}',
          '--launcher=ignored', '--max_parallel=3', '--num_processes=2',
          '--config.train_sizes=(60,)']
  template = ('srun -n {num_processes} {python} -m vit_jax.sweep {point_flags} @ {workdir} '
              '{index} {coordinator}')
  words = shlex.split(sweep.point_command(1, points[1], argv, template, 2))
  assert words[:-1] == ['srun', '-n', '2', sys.executable, '-m', 'vit_jax.sweep',
                        '--config=configs/data_scaling.py:smoke', f'--workdir={sweep_dir}',
                        '--config.train_sizes=(60,)', '--point=1', '@', points[1].workdir, '1']
  assert re.fullmatch(r'127\.0\.0\.1:\d+', words[-1])
  assert sweep.point_command(0, points[0], argv, None, 1)[3:] == argv[1:3] + argv[-1:] + [
      '--point=0']
  spaced = ['vit_jax.sweep', '--config', 'configs/data_scaling.py:smoke', '--workdir', sweep_dir,
            '--launcher', 'ignored', '--max_parallel', '3', '--nodry_run', '--time_limit', '60',
            '--config.train_sizes', '(60,)']  # absl's `--flag value` form
  assert sweep.point_command(0, points[0], spaced, None, 1)[3:] == [
      *spaced[1:5], *spaced[-2:], '--point=0']
  with pytest.raises(ValueError, match=r'--launcher=.*\{nodes\}.*placeholders are'):
    sweep.point_command(0, points[0], argv, 'srun -N {nodes} {point_flags}', 2)
  for bad in ('srun -N {nodes} {point_flags}', 'srun {point_flags'):  # refused, nothing written
    with pytest.raises(ValueError, match='cannot be filled in'):
      sweep.run_sweep(data_scaling.get_config('smoke'), sweep_dir, argv, bad, 2)
    assert not os.path.exists(sweep_dir)


# Every point as one job of two processes of 4 CPU devices each (gloo collectives).
LOCAL_LAUNCHER = ('experiments/pod/local_processes.sh {num_processes} {coordinator} {python} '
                  '-m vit_jax.sweep {point_flags}')


def test_points_run_as_two_process_jobs_through_a_launcher(tmp_path):
  env = dict(child_env(4), JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  flags = ['--config.train_sizes=(60, 5000)', f'--launcher={LOCAL_LAUNCHER}',
           '--num_processes=2', '--max_parallel=2']
  out = run_sweep(tmp_path, *flags, env=env)
  assert '4 points, 0 already finished, 4 to run' in out
  rows = read_rows(tmp_path)
  assert [(r['model'], r['status']) for r in rows] == [
      ('ResNet', 'done'), ('ResNet', 'failed'), ('ViT-1', 'done'), ('ViT-1', 'failed')]
  for row in rows:
    log = (tmp_path / os.path.basename(row['workdir']) / 'log.txt').read_text()
    assert 'Process 0 of 2' in log and 'Process 1 of 2' in log, log[-3000:]
    if row['status'] == 'done':
      result = files.read_json(os.path.join(row['workdir'], 'result.json'))
      assert result['devices'] == 8 and result['step'] == int(row['steps'])
    else:
      assert 'train_size=5000' in row['error']
  # The rerun tells finished points by their files: only the failed ones run (and fail) again.
  out = run_sweep(tmp_path, *flags, env=env)
  assert '4 points, 2 already finished, 2 to run' in out
  assert [r['status'] for r in read_rows(tmp_path)] == ['done', 'failed'] * 2


def wait_for(condition, what, timeout=300):
  """Polls `condition` until true; fails the test (a hung child, not a speed check) after
  `timeout` seconds."""
  deadline = time.time() + timeout
  while not condition():
    if time.time() > deadline:
      pytest.fail(f'timed out waiting for {what}')
    time.sleep(0.05)


def checkpoints(point):
  folder = point / 'checkpoints'
  return sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if folder.exists() else []


def test_stopping_or_killing_the_sweep_stops_its_point_at_a_checkpoint(tmp_path):
  """SIGKILL of the sweep process: its running point gets SIGTERM, checkpoints and exits.
  SIGINT (Ctrl-C) or SIGTERM of the sweep: the point checkpoints, the sweep says so and exits
  0. The rerun continues the point from its checkpoint; a rerun with another config is
  refused."""
  flags = ['--config.train_sizes=(60,)', '--config.base.total_steps=20000',
           '--config.base.log_every=10', '--config.base.eval_every=20000',
           '--config.base.checkpoint_every=20000']
  cmd = [sys.executable, '-m', 'vit_jax.sweep', '--config=configs/data_scaling.py:smoke',
         f'--workdir={tmp_path}', *flags]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  point = tmp_path / 'ResNet_n60'
  for signum in (signal.SIGKILL, signal.SIGINT, signal.SIGTERM):
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    before = checkpoints(point)
    metrics_file = point / 'metrics.jsonl'
    lines = lambda: metrics_file.read_text().count('\n') if metrics_file.exists() else 0
    seen = lines()
    wait_for(lambda: lines() > seen + 1, 'the point to make progress')
    child = int((point / '.lock').read_text().rsplit('pid ', 1)[1])  # 'training run: pid N'
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    wait_for(lambda: not os.path.exists(f'/proc/{child}') or
             open(f'/proc/{child}/stat').read().split()[2] == 'Z', 'the point process to exit')
    after = checkpoints(point)
    assert after and after[-1] not in before and after[-1] < 20000, (before, after)
    assert not (point / 'result.json').exists()
    if signum != signal.SIGKILL:
      assert proc.returncode == 0
      name = {signal.SIGINT: 'Ctrl-C', signal.SIGTERM: 'SIGTERM'}[signum]
      assert (f'ResNet train_size=60 seed=0 (study): stopped by {name}; the rerun resumes '
              'it.') in out
      assert re.search(rf'Stopped by {name}; 0 of \d+ points finished\. Rerun the same', out)
  log = (point / 'log.txt').read_text()  # appended by both runs: the second resumed
  assert f'Resumed from step {checkpoints(point)[0]} ' in log
  # A changed config is refused rather than mixed with the results already there.
  proc = subprocess.run(cmd + ['--config.base.optim.lr=0.1'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert (f'{point} was run with another config than this sweep gives it (optim.lr: 0.002 '
          'then, 0.1 now); use a new --workdir') in proc.stderr
