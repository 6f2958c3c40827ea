"""The sweep's failure branches: a point killed by a signal, the error line picked from a failed
point's output, error.txt removed by a later success, --dry_run, and the environment of
a point's processes."""
import csv
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import pytest

from configs import data_scaling
from conftest import FAST_COMPILE, ROOT
from imagenet_tree import make_tree
from test_study import smoke
from vit_jax import sweep
from vit_jax.data import prepare


@pytest.mark.parametrize('output,returncode,want', [
    ('loading\nError: train_size=5000 must be between 1 and 1438\n', 1,
     'Error: train_size=5000 must be between 1 and 1438'),
    ('Traceback (most recent call last):\n  File "x.py", line 1\nValueError: bad shape\n', 1,
     'ValueError: bad shape'),
    ('jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: out of memory\nsome cleanup\n', 1,
     'jax.errors.JaxRuntimeError: RESOURCE_EXHAUSTED: out of memory'),
    ('step 10\nstep 20\n', 3, 'exited with status 3: step 20'),
    ('', -9, 'exited with status -9'),
])
def test_error_message_is_the_informative_line(output, returncode, want):
  assert sweep._error_message(output, returncode) == want


def test_a_long_error_line_is_cut():
  assert sweep._error_message('Error: ' + 'x' * 1000, 1) == ('Error: ' + 'x' * 1000)[:500]


@pytest.mark.parametrize('text,problem', [
    ('{"num_params": 5', 'not readable JSON: '),       # cut short
    ('[1, 2]', 'not a JSON object'),
    ('{"best_val_accuracy": 0.5}', "no field 'num_params'"),
])
def test_a_damaged_result_json_is_named_and_nothing_is_written(tmp_path, text, problem):
  points = sweep.expand(data_scaling.get_config('smoke'), str(tmp_path))
  os.makedirs(points[0].workdir)
  result = os.path.join(points[0].workdir, 'result.json')
  with open(result, 'w') as f:
    f.write(text)
  with pytest.raises(ValueError) as e:
    sweep.write_results(points, str(tmp_path / 'results.csv'))
  assert str(e.value).startswith(f'{result} is damaged ({problem}')
  assert str(e.value).endswith(f'; delete {points[0].workdir} and rerun the sweep to run that '
                               'point again.')
  assert not (tmp_path / 'results.csv').exists()


def smoke_sweep(workdir, *flags: str) -> subprocess.CompletedProcess:
  """`python -m vit_jax.sweep` on the smoke preset in `workdir`, with `flags`."""
  return subprocess.run(
      [sys.executable, '-m', 'vit_jax.sweep', '--config=configs/data_scaling.py:smoke',
       f'--workdir={workdir}', *flags], cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.slow
def test_dry_run_lists_the_points_and_writes_nothing(tmp_path):
  workdir = tmp_path / 'sweep'
  proc = smoke_sweep(workdir, '--dry_run', '--config.train_sizes=(60, 90, 120)')
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  points = [l for l in lines if l.startswith('[')]
  assert [l.split(':')[0] for l in points] == [
      '[0] ResNet', '[1] ResNet', '[2] ResNet', '[3] ViT-1', '[4] ViT-1', '[5] ViT-1']
  assert 'train_size=90 seed=0 role=study steps=4 eval_every=1 batch=64' in points[1]
  assert f'    workdir={workdir / "ViT-1_n120"}' in lines
  # With --point, that point alone, as the launcher's child would run it.
  one = smoke_sweep(workdir, '--dry_run', '--point=4', '--config.train_sizes=(60, 90, 120)')
  assert one.returncode == 0, one.stderr[-3000:]
  assert one.stdout.splitlines() == lines[8:10]
  # A model's own field, its label quoted (not a Python name).
  tuned = smoke_sweep(workdir, '--dry_run', '--point=4', "--config.models['ViT-1'].lr=0.5",
                      '--config.train_sizes=(60, 90, 120)')
  assert ' lr=0.5 ' not in lines[8]
  assert tuned.stdout.splitlines()[0] == re.sub(r' lr=\S+ ', ' lr=0.5 ', lines[8])
  assert not workdir.exists()


@pytest.mark.slow
def test_a_killed_point_is_recorded_and_a_later_success_clears_its_error(tmp_path, monkeypatch):
  """The child of a point is killed (SIGKILL): the point is 'failed' with 'exited with status
  -9' in error.txt and results.csv. Run again to the end, it is 'done' and error.txt is gone."""
  monkeypatch.chdir(ROOT)
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  monkeypatch.setenv('XLA_FLAGS', FAST_COMPILE)
  argv = ['sweep', '--config=configs/data_scaling.py:smoke', f'--workdir={tmp_path}',
          '--config.train_sizes=(60,)']
  config = data_scaling.get_config('smoke')
  config.train_sizes = (60,)
  points = sweep.expand(config, str(tmp_path))
  index = 1
  point = points[index]
  assert point.label == 'ViT-1'
  error_path = os.path.join(point.workdir, 'error.txt')

  command = sweep.point_command(index, point, argv, launcher=None, num_processes=1)
  running = sweep.start_point(index, point, command, sweep.point_env())
  time.sleep(1)  # started, not finished: the point trains for much longer
  assert running.proc.poll() is None
  running.proc.send_signal(signal.SIGKILL)
  running.proc.wait()
  status, error = sweep.finish_point(point, running, stopping=False)
  assert status == 'failed' and error.startswith('exited with status -9'), error
  with open(error_path) as f:
    assert f.read() == error + '\n'
  rows = sweep.write_results(points, str(tmp_path / 'results.csv'))
  assert (rows[index]['status'], rows[index]['error']) == ('failed', error)
  assert (rows[0]['status'], rows[0]['error']) == ('unfinished', '')   # not run yet

  running = sweep.start_point(index, point, command, sweep.point_env())
  running.proc.wait()
  status, error = sweep.finish_point(point, running, stopping=False)
  assert (status, error) == ('done', '')
  assert not os.path.exists(error_path)
  assert os.path.exists(os.path.join(point.workdir, 'result.json'))
  row = sweep.write_results(points, str(tmp_path / 'results.csv'))[index]
  assert row['status'] == 'done' and row['error'] == '' and row['steps'] == 4


def test_points_share_a_compilation_cache_and_split_accelerator_memory(tmp_path, monkeypatch):
  """A point's processes get the sweep's JAX compilation cache (in the temp directory) where
  the user set none, and keep the user's where they did; points run side by side split JAX's
  default 75% of accelerator memory unless the user chose a fraction."""
  point = sweep.Point('ResNet', 60, data_scaling.get_config('smoke').base, str(tmp_path / 'p'))
  names = ('JAX_COMPILATION_CACHE_DIR', 'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS',
           'XLA_PYTHON_CLIENT_MEM_FRACTION')
  command = [sys.executable, '-c',
             f'import os; print(*(os.environ.get(n, "unset") for n in {names}))']
  for name in names:
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(sweep.tempfile, 'tempdir', str(tmp_path / 'tmp'))
  default_cache = str(tmp_path / 'tmp' / 'vit_jax_compilation_cache')

  def child_sees(parallel):
    running = sweep.start_point(0, point, command, sweep.point_env(parallel))
    running.proc.wait()
    running.log.seek(running.start)
    output = running.log.read().split()
    running.log.close()
    return output

  assert child_sees(1) == [default_cache, '0', 'unset']
  assert child_sees(3) == [default_cache, '0', '0.250']
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'mine'))
  monkeypatch.setenv('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.9')
  assert child_sees(2) == [str(tmp_path / 'mine'), '0', '0.9']


def test_a_sweep_started_with_sigint_ignored_keeps_ignoring_it():
  """A shell script's background job inherits SIGINT ignored: the script's Ctrl-C must not
  stop it. SIGTERM still does."""
  before = signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    with sweep._forward_stop_signals([]) as stop:
      assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
      os.kill(os.getpid(), signal.SIGINT)
      os.kill(os.getpid(), signal.SIGTERM)
      assert stop == ['SIGTERM']
    assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, before)
  with sweep._forward_stop_signals([]) as stop:
    os.kill(os.getpid(), signal.SIGINT)
    assert stop == ['Ctrl-C']


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_point_stopped_by_a_signal_while_starting_is_stopped_not_failed(tmp_path, signum):
  """SIGTERM or SIGINT before a point installed its handler (the sweep was stopped while the
  point was importing) ends it 'stopped', with no error.txt: nothing trained is lost."""
  point = sweep.Point('ResNet', 60, data_scaling.get_config('smoke').base, str(tmp_path / 'p'))
  running = sweep.start_point(0, point, [sys.executable, '-c', 'import time; time.sleep(60)'],
                              sweep.point_env())
  running.proc.send_signal(signum)
  running.proc.wait()
  assert sweep.finish_point(point, running, stopping=True) == ('stopped', '')
  assert not os.path.exists(os.path.join(point.workdir, 'error.txt'))


@pytest.mark.slow
def test_a_launcher_that_exits_without_running_the_point_fails_it(tmp_path):
  """A launcher that returns at once with status 0 (an asynchronous submit, such as sbatch)
  never runs the point: the sweep records that as the point's error, not as a stop."""
  proc = smoke_sweep(tmp_path, '--config.train_sizes=(60,)', '--launcher=true {point_flags}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  error = ('the command exited 0 without running the point (no config.json in '
           f'{tmp_path}/ViT-1_n60); a --launcher command must run it and wait for its end '
           '(srun, not sbatch)')
  assert f'[2/2] ViT-1 train_size=60 seed=0 (study): failed ({error})' in proc.stdout
  assert (tmp_path / 'ViT-1_n60' / 'error.txt').read_text() == error + '\n'
  with open(tmp_path / 'results.csv') as f:
    assert [(r['status'], r['error']) for r in csv.DictReader(f)] == [
        ('failed', error.replace('ViT-1', 'ResNet')), ('failed', error)]


def test_an_exit_without_config_json_is_a_stop_while_the_sweep_stops(tmp_path):
  point = sweep.Point('ResNet', 60, data_scaling.get_config('smoke').base, str(tmp_path / 'p'))
  for stopping, want in ((True, 'stopped'), (False, 'failed')):
    running = sweep.start_point(0, point, [sys.executable, '-c', 'pass'], sweep.point_env())
    running.proc.wait()
    assert sweep.finish_point(point, running, stopping)[0] == want
  assert (tmp_path / 'p' / 'error.txt').read_text().startswith('the command exited 0 without')


@pytest.mark.parametrize('field,dataset,message', [
    ('dataset', 'folder:{tmp}/mnist.tar.gz',
     "config.dataset='folder:{tmp}/mnist.tar.gz': {tmp}/mnist.tar.gz does not exist."),
    ('fewshot_dataset', 'records:{tmp}/prepared',
     "config.eval.fewshot_dataset='records:{tmp}/prepared': {tmp}/prepared does not exist."),
    ('dataset', 'tfds:mnist',  # a catalog dataset, not prepared in data.tfds_dir
     "config.dataset='tfds:mnist' has no ArrayRecord build in {tmp}/tfds (random access reads "
     'only that format): prepare it with `tfds build mnist --file_format=array_record`, or set '
     'data.tfds_dir to where it is.'),
])
def test_a_missing_dataset_fails_the_sweep_before_any_point_runs(tmp_path, field, dataset,
                                                                  message):
  config = data_scaling.get_config('smoke')
  section = config.base if field == 'dataset' else config.base.eval
  section[field] = dataset.format(tmp=tmp_path)
  config.base.data.tfds_dir = str(tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError) as e:
    sweep.run_sweep(config, str(tmp_path / 'sweep'), argv=[])
  assert str(e.value) == message.format(tmp=tmp_path)
  assert not (tmp_path / 'sweep').exists()  # nothing written, no point started


def _dataset(tmp_path, kind: str) -> str:
  """config.dataset of kind 'digits', or of the tree at tmp_path/tree as it is ('folder'),
  packed as tree.tar.gz ('archive') or prepared as records ('records')."""
  if kind == 'archive':
    with tarfile.open(tmp_path / 'tree.tar.gz', 'w:gz') as tar:
      tar.add(tmp_path / 'tree', arcname='tree')
  if kind == 'records':
    prepare.prepare(str(tmp_path / 'tree'), str(tmp_path / 'prepared'), workers=1,
                    progress=False)
  return {'digits': 'digits', 'folder': f'folder:{tmp_path}/tree',
          'archive': f'folder:{tmp_path}/tree.tar.gz',
          'records': f'records:{tmp_path}/prepared'}[kind]


@pytest.mark.parametrize('dataset,holds,change,message', [
    ('digits', 1438, {'train_sizes': (60, 5000)},  # the embedded digits' 1,438 training images
     "train_sizes asks for 5,000 training images but config.dataset='digits' has 1,438 in "
     "data.train_split='train': lower train_sizes or use a larger training split."),
    ('folder', 12, {'train_sizes': (6, 13)},  # 3 classes x 4 training images
     "train_sizes asks for 13 training images but config.dataset='folder:{tmp}/tree' has 12 in "
     "data.train_split='train': lower train_sizes or use a larger training split."),
    ('folder', 10, {'train_sizes': (6, 12), 'base.eval.val_size': 2},
     "train_sizes asks for 12 training images but config.dataset='folder:{tmp}/tree' has 10 in "
     "data.train_split='train' less the eval.val_size=2 held out: lower train_sizes or use a "
     'larger training split.'),
    ('folder', None, {'train_sizes': (6,), 'base.eval.val_size': 12},
     "eval.val_size=12 leaves none of the 12 training images of config.dataset='folder:{tmp}/"
     "tree' (data.train_split='train') to train on: lower eval.val_size."),
    ('records', 3, {'train_sizes': (6,), 'base.data.train_split': 'train[:25%]'},  # of 12
     "train_sizes asks for 6 training images but config.dataset='records:{tmp}/prepared' has 3 "
     "in data.train_split='train[:25%]': lower train_sizes or use a larger training split."),
    ('records', 12, {'train_sizes': (6,), 'grid.size': 20, 'grid.lr': (1e-3,)},
     "grid.size asks for 20 training images but config.dataset='records:{tmp}/prepared' has 12 "
     "in data.train_split='train': lower grid.size or use a larger training split."),
])
def test_train_sizes_beyond_the_training_split_fail_the_sweep_before_any_point_runs(
    tmp_path, dataset, holds, change, message):
  make_tree(tmp_path / 'tree', classes=3, per_class={'train': 4, 'test': 1}, sizes=(8, 12))
  config = smoke(**{'base.eval.val_fraction': 0., **change,
                    'base.dataset': _dataset(tmp_path, dataset)})
  with pytest.raises(ValueError) as e:
    sweep.run_sweep(config, str(tmp_path / 'sweep'), argv=[])
  assert str(e.value) == message.format(tmp=tmp_path)
  assert not (tmp_path / 'sweep').exists()  # nothing written, no point started
  if holds:  # as many images as it holds pass
    config.train_sizes, config.grid.size = (holds,), config.grid.size and holds
    sweep.check_data(sweep.grid_points(config, 'g') + sweep.expand(config, 's'))


@pytest.mark.parametrize('dataset,splits,change,message', [
    ('folder', ('train', 'test'), {'base.data.eval_split': 'val'},
     "data.eval_split='val': {tmp}/tree has no 'val' folder; it holds ['test', 'train']."),
    ('folder', ('train', 'val'), {},  # ImageNet's layout, the default 'test' asked for
     "{tmp}/tree has no 'test' folder; it holds ['train', 'val']; set data.eval_split='val' to "
     'evaluate on it.'),
    ('archive', ('train', 'test'), {'base.data.train_split': 'training'},
     "data.train_split='training': {tmp}/tree.tar.gz/tree has no 'training' folder; it holds "
     "['test', 'train']."),
    ('records', ('train', 'test'), {'base.data.eval_split': 'validation[:50%]'},
     "data.eval_split='validation[:50%]': config.dataset='records:{tmp}/prepared' has no "
     "'validation' split; it has ['test', 'train']."),
])
def test_a_missing_split_fails_the_sweep_before_any_point_runs(tmp_path, dataset, splits,
                                                                change, message):
  make_tree(tmp_path / 'tree', classes=2, per_class=dict.fromkeys(splits, 1), sizes=(8, 12))
  fields = {'base.dataset': _dataset(tmp_path, dataset), 'train_sizes': (2,),
            'base.eval.val_fraction': 0.}
  named = smoke(**fields, **{'base.data.train_split': splits[0],
                             'base.data.eval_split': splits[1]})
  sweep.check_data(sweep.expand(named, 's'))  # the splits it has: present
  config = smoke(**fields, **change)
  with pytest.raises((FileNotFoundError, ValueError)) as e:
    sweep.run_sweep(config, str(tmp_path / 'sweep'), argv=[])
  assert str(e.value) == message.format(tmp=tmp_path)
  assert not (tmp_path / 'sweep').exists()  # nothing written, no point started


def test_a_few_shot_folder_without_an_evaluation_folder_fails_the_sweep_before_any_point_runs(
    tmp_path):
  make_tree(tmp_path / 'tree', classes=2, per_class={'train': 2}, sizes=(8, 12))
  config = smoke(**{'base.eval.fewshot_dataset': f'folder:{tmp_path}/tree', 'train_sizes': (2,),
                    'base.eval.val_fraction': 0.})
  with pytest.raises(FileNotFoundError) as e:
    sweep.run_sweep(config, str(tmp_path / 'sweep'), argv=[])
  assert str(e.value) == (
      f"config.eval.fewshot_dataset='folder:{tmp_path}/tree': {tmp_path}/tree has no split to "
      "evaluate the probe on, none of ['test', 'validation', 'val']; it holds ['train'].")
  assert not (tmp_path / 'sweep').exists()  # nothing written, no point started
  make_tree(tmp_path / 'tree', classes=2, per_class={'val': 1}, sizes=(8, 12))  # ImageNet's
  sweep.check_data(sweep.expand(config, 's'))  # layout: the probe evaluates on val/


def test_with_a_launcher_the_data_is_left_to_the_points_hosts(tmp_path, capsys):
  config = data_scaling.get_config('smoke')
  config.base.dataset = f'folder:{tmp_path}/on-the-pod-hosts-only.tar.gz'
  launcher = '{python} -c "import sys; sys.exit(3)" {index}'  # each point's job, failing
  sweep.run_sweep(config, str(tmp_path / 'sweep'), argv=[], launcher=launcher)
  out = capsys.readouterr().out
  assert out.count('(study): failed (exited with status 3)') == len(
      sweep.expand(config, str(tmp_path / 'sweep')))
