"""Training end to end: workdir files, sharded = unsharded, exact resume, fine-tuning, errors."""
import errno
import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import recounted_test_accuracy
from configs import finetune, quickstart
from vit_jax import checkpoint, data, files, flops, metrics, pretrained, train
from vit_jax import workdir as run_dir
from vit_jax.data.split import LUMA
from vit_jax.models import get_model

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = ['--config.total_steps=6', '--config.batch_size=32', '--config.log_every=2',
         '--config.eval_every=3', '--config.checkpoint_every=3', '--config.model.num_layers=1',
         '--config.eval.fewshot_shots=(1, 2)', '--config.eval.fewshot_seeds=1']


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory):
  """A finished 3-step run's workdir (copy it before changing it)."""
  workdir = tmp_path_factory.mktemp('finished')
  train.train_and_evaluate(smoke_config(total_steps=3, checkpoint_every=3, eval_every=3),
                           str(workdir))
  return workdir


def smoke_config(**changes):
  config = quickstart.get_config()
  config.total_steps, config.batch_size, config.log_every = 6, 32, 2
  config.eval_every = config.checkpoint_every = 3
  config.model.num_layers = 1
  config.eval.fewshot_shots, config.eval.fewshot_seeds = (1, 2), 1
  for key, value in changes.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def run_cli(workdir, *overrides, devices=1, check=True, wait=True):
  """Runs `python -m vit_jax.main` on the quickstart config in a subprocess."""
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu')
  cmd = [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
         f'--workdir={workdir}', *SMOKE, *overrides]
  if not wait:
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  if check:
    assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def losses(workdir):
  return {r['step']: r['loss'] for r in metrics.read_jsonl(f'{workdir}/metrics.jsonl')
          if 'loss' in r}


def test_quickstart_smoke_writes_every_workdir_file(tmp_path):
  result = train.train_and_evaluate(smoke_config(), str(tmp_path))
  files = set(os.listdir(tmp_path))
  assert {'config.json', 'metrics.jsonl', 'result.json', 'checkpoints'} <= files
  assert any(f.startswith('events.out.tfevents') for f in files)
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']
  config = json.loads((tmp_path / 'config.json').read_text())
  assert config['model']['name'] == 'ViT-Nano_2' and config['total_steps'] == 6
  records = metrics.read_jsonl(str(tmp_path / 'metrics.jsonl'))
  assert [r['step'] for r in records if 'loss' in r] == [2, 4, 6]
  assert [r['step'] for r in records if 'test_accuracy' in r] == [3, 6]
  train_record = records[0]
  assert {'loss', 'accuracy', 'grad_norm', 'lr', 'images_per_sec'} <= set(train_record)
  saved = json.loads((tmp_path / 'result.json').read_text())
  assert saved == pytest.approx(result)
  assert saved['step'] == 6 and saved['examples_seen'] == 6 * 32
  assert {'fewshot_1shot', 'fewshot_2shot'} <= set(saved)
  # The reported test accuracy is a direct count of the final model's right answers.
  assert saved['test_accuracy'] == pytest.approx(recounted_test_accuracy(tmp_path), abs=1e-9)
  assert saved['train_size'] == len(data.load_split('digits', 'train').labels)
  assert saved['num_params'] == sum(
      a.size for a in jax.tree_util.tree_leaves(checkpoint.read_params(str(tmp_path))))
  # A rerun of a finished run does nothing and returns the same result.
  assert train.train_and_evaluate(smoke_config(), str(tmp_path)) == saved


def test_learns_digits(tmp_path):
  config = smoke_config(total_steps=200, batch_size=64, log_every=50, eval_every=200,
                        checkpoint_every=200)
  config.optim.lr, config.schedule.warmup_steps = 3e-3, 20
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['test_accuracy'] > 0.4  # chance is 0.1; about 0.58 reached


def test_gradient_accumulation_matches_full_batch(tmp_path):
  runs = []
  for accum in (1, 4):
    config = smoke_config(total_steps=4, log_every=1)
    config.optim.grad_accum_steps = accum
    config.model.dropout_rate = 0.0
    train.train_and_evaluate(config, str(tmp_path / str(accum)))
    runs.append(losses(tmp_path / str(accum)))
  assert runs[0].keys() == runs[1].keys() == {1, 2, 3, 4}
  for step in runs[0]:
    assert runs[1][step] == pytest.approx(runs[0][step], rel=1e-4)


@pytest.mark.parametrize('mesh', ["(('data', 8),)", "(('fsdp', 4), ('model', 2))"])
def test_sharded_loss_equals_single_device(tmp_path, mesh):
  run_cli(tmp_path / 'one')
  run_cli(tmp_path / 'eight', f'--config.mesh={mesh}', devices=8)
  one, eight = losses(tmp_path / 'one'), losses(tmp_path / 'eight')
  assert one.keys() == eight.keys() == {2, 4, 6}
  for step in one:
    assert abs(eight[step] - one[step]) / abs(one[step]) < 1e-4


# Runs vit_jax.main with one function wrapped so that the process SIGKILLs itself at a chosen
# moment: argv[1] names the moment, argv[2] its step (or call number); the rest are the flags.
KILLER = """
import os, re, runpy, signal, sys, threading
import orbax.checkpoint as ocp
from vit_jax import evaluate, files, metrics, train

moment, at = sys.argv.pop(1), int(sys.argv.pop(1))
calls = []

def die():
  print(f'SIGKILL {moment} {at} in {threading.current_thread().name}', file=sys.stderr,
        flush=True)
  os.kill(os.getpid(), signal.SIGKILL)

def kill_when(owner, name, condition, after=False):
  original = getattr(owner, name)
  def wrapper(*args, **kwargs):
    hit = condition(*args, **kwargs)
    if hit and not after:
      die()
    out = original(*args, **kwargs)
    if hit:
      die()
    return out
  setattr(owner, name, wrapper)

ckpt_step = lambda directory: int(re.search(r'/(\\d+)[^/]*/[^/]*$', str(directory)).group(1))
if moment == 'step':  # the step is dispatched, then the process dies while it runs
  make = train.make_train_step
  def make_killing_step(*args, **kwargs):
    step = make(*args, **kwargs)
    def killing_step(state, *batch):
      number = int(state.step) + 1  # read before the call: the state is donated
      out = step(state, *batch)
      if number == at:
        die()
      return out
    return killing_step
  train.make_train_step = make_killing_step
elif moment == 'checkpoint-arrays':  # arrays written in the background, step not committed
  kill_when(ocp.StandardCheckpointHandler, 'finalize', lambda self, d: ckpt_step(d) == at)
elif moment == 'checkpoint-json':  # the data-iterator item of the checkpoint being written
  kill_when(ocp.JsonCheckpointHandler, 'async_save', lambda self, d, *a, **k: ckpt_step(d) == at)
elif moment == 'evaluation':  # the at-th pass over an evaluation split in this process
  kill_when(evaluate, 'features_and_metrics', lambda *a, **k: calls.append(1) or len(calls) == at)
elif moment == 'metrics':
  kill_when(metrics.MetricsWriter, 'write', lambda self, step, values: step == at)
elif moment == 'result':  # the final checkpoint is saved; result.json is being written
  kill_when(files, 'write_json', lambda path, obj: path.endswith('result.json'))
sys.argv[0] = 'vit_jax.main'
runpy.run_module('vit_jax.main', run_name='__main__')
"""


TIMINGS = ('images_per_sec', 'train_images_per_sec', 'wall_time_sec')  # differ between runs


def without_timings(record: dict) -> dict:
  return {k: v for k, v in record.items() if k not in TIMINGS}


def checkpoint_steps(workdir) -> list[int]:
  """The complete checkpoints (orbax writes a step under a temporary name first)."""
  directory = workdir / 'checkpoints'
  return sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if directory.exists() else []


def test_resume_after_sigkill_at_any_moment_matches_uninterrupted_run(tmp_path):
  """One run killed at seven moments in turn (each rerun resumes and is killed at the next),
  then finished: parameters, every metrics.jsonl record and every result.json field (timings
  aside) equal an uninterrupted run's, bitwise. Checkpoints are written asynchronously: a kill
  during a write leaves the previous checkpoint, from which the rerun resumes."""
  # Log lines (every 3 steps) straddle checkpoints (every 4): the checkpoint holds the metrics
  # of the steps since the last line.
  flags = ['--config.total_steps=12', '--config.checkpoint_every=4', '--config.eval_every=6',
           '--config.log_every=3', '--config.eval.val_fraction=0.1']
  run_cli(tmp_path / 'straight', *flags)
  killed = tmp_path / 'killed'
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  for moment, at in [
      ('step', 3),                # in a training step, before any checkpoint
      ('checkpoint-arrays', 4),   # writing the first checkpoint (in orbax's background thread)
      ('metrics', 6),             # writing a progress line (checkpoint 4 may still be written)
      ('evaluation', 2),          # in the evaluation at step 6 (its test split)
      ('checkpoint-json', 8),     # writing checkpoint 8's data-iterator state
      ('step', 10),               # in a training step after checkpoint 8
      ('result', 0),              # writing result.json after the final checkpoint
  ]:
    before = checkpoint_steps(killed)
    cmd = [sys.executable, '-c', KILLER, moment, str(at), '--config=configs/quickstart.py',
           f'--workdir={killed}', *SMOKE, *flags]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, (moment, at, proc.stderr[-3000:])
    assert f'SIGKILL {moment} {at} in ' in proc.stderr
    if moment == 'checkpoint-arrays':  # while the main thread goes on training
      assert f'SIGKILL {moment} {at} in MainThread' not in proc.stderr
    if before:  # the newest complete checkpoint is intact and resumed from
      assert f'Resumed from step {before[-1]} ' in proc.stderr, (moment, proc.stderr[-3000:])
    else:
      assert 'Resumed from step' not in proc.stderr
    assert 'cannot be read' not in proc.stderr
    assert not (killed / 'result.json').exists()
  # The final one was complete before the kill; 6 is the best by validation (its first
  # evaluation), saved then and kept besides the last three, which drops 4.
  assert checkpoint_steps(killed) == [6, 8, 12]
  assert 'Resumed from step 12 ' in run_cli(killed, *flags).stderr
  a = pretrained.flatten(checkpoint.read_params(str(killed)))
  b = pretrained.flatten(checkpoint.read_params(str(tmp_path / 'straight')))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  got, want = ([without_timings(r) for r in metrics.read_jsonl(f'{d}/metrics.jsonl')]
               for d in (killed, tmp_path / 'straight'))
  assert [r['step'] for r in want] == [3, 6, 6, 9, 12, 12]  # train and eval records
  assert got == want
  got, want = (without_timings(files.read_json(f'{d}/result.json'))
               for d in (killed, tmp_path / 'straight'))
  for key in ('train_loss', 'test_accuracy', 'test_loss', 'best_step', 'best_val_accuracy',
              'fewshot_1shot'):
    assert want.get(key) is not None, key
  assert got == want


def test_the_best_checkpoint_by_validation_is_kept_besides_the_last(tmp_path):
  config = smoke_config(total_steps=6, eval_every=2, checkpoint_every=6, log_every=2)
  config.eval.val_fraction, config.checkpoint.keep = 0.2, 1
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['best_step'] in (2, 4, 6)
  assert checkpoint.resolve_step(str(tmp_path), 'best') == result['best_step']
  steps = sorted(int(s) for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit())
  assert steps == sorted({result['best_step'], 6})  # saved at its evaluation, kept
  best = pretrained.flatten(checkpoint.read_params(str(tmp_path), 'best'))
  manager = checkpoint.CheckpointManager(str(tmp_path / 'checkpoints'))
  want = pretrained.flatten(manager.restore_params(result['best_step']))
  manager.close()
  for key in want:
    np.testing.assert_array_equal(best[key], want[key], err_msg=key)


def test_profile_steps_write_a_trace_and_the_start_logs_the_parameter_table(tmp_path):
  proc = run_cli(tmp_path, '--config.total_steps=3', '--config.profile_steps=(2, 3)',
                 '--config.model.num_layers=3')
  traces = [os.path.join(root, name) for root, _, names in os.walk(tmp_path / 'profile')
            for name in names if name.endswith('.xplane.pb')]
  assert traces and all(os.path.getsize(t) > 0 for t in traces), traces
  assert all('/plugins/profile/' in t for t in traces)  # where TensorBoard looks
  params = pretrained.flatten(checkpoint.read_params(str(tmp_path)))
  lines = proc.stderr.split('Parameters:\n', 1)[1].splitlines()
  assert lines[0].split() == ['name', '|', 'shape', '|', 'size', '|', 'sharding']
  rows = {}
  for line in lines[2:]:
    name, shape, size, placement = (c.strip() for c in line.split(' | '))
    if name == 'total':
      total = (shape, size, placement)
      break
    # The blocks that agree are one row, 'encoderblock_0..3/<name>' of shape '4 x (...)'.
    blocks = re.fullmatch(r'(.*encoderblock_)0\.\.(\d+)(/.*)', name)
    count = int(blocks[2]) + 1 if blocks else 1
    for key in [f'{blocks[1]}{i}{blocks[3]}' for i in range(count)] if blocks else [name]:
      rows[key] = (shape.split(' x ')[-1], f'{int(size.replace(",", "")) // count:,}', placement)
  assert any('encoderblock_0..' in line for line in lines)
  assert rows == {k: (str(v.shape), f'{v.size:,}', 'replicated') for k, v in params.items()}
  assert total == ('', f'{sum(v.size for v in params.values()):,}', f'{len(params)} arrays')


def finetune_on_digits(tmp_path, preset: str, params, **model) -> dict:
  """The parameters of a 2-step run of the finetune preset `preset` (on the digits) with the
  model overrides `model`, initialised from `params` saved as .npz, at a learning rate that
  keeps the loaded weights (up to a negligible step) to compare them."""
  checkpoint.save_npz(str(tmp_path / 'pre.npz'), params)
  config = finetune.get_config(preset)
  config.model.update(model)
  config.batch_size, config.total_steps = 32, 2
  config.log_every = config.eval_every = config.checkpoint_every = 2
  config.eval.fewshot_shots = (1,)
  config.checkpoint.init_from = str(tmp_path / 'pre.npz')
  config.optim.lr = 1e-12
  assert train.train_and_evaluate(config, str(tmp_path / 'ft'))['step'] == 2
  return checkpoint.read_params(str(tmp_path / 'ft'))


@pytest.mark.parametrize('channels', [1, 3])  # 3: colour, as the published checkpoints
def test_finetune_from_npz_at_another_resolution(tmp_path, channels):
  source = get_model('ViT-Nano_2', num_classes=10, num_layers=1)
  params = jax.jit(source.init)(jax.random.PRNGKey(3), np.zeros((1, 8, 8, channels)))['params']
  # a 4x4 grid at 8 px to a 16x16 grid at 32 px
  tuned = finetune_on_digits(tmp_path, 'Nano_2,digits', params, num_layers=1)
  posemb = tuned['Transformer']['posembed_input']['pos_embedding']
  assert posemb.shape == (1, 1 + 16 * 16, 64)
  want = pretrained.resize_posemb(np.asarray(params['Transformer']['posembed_input']
                                             ['pos_embedding']), 1 + 16 * 16, 1)
  np.testing.assert_allclose(posemb, want, atol=1e-6)
  # The preset reads the digits as colour: a grayscale kernel becomes luma-weighted copies.
  kernel = params['embedding']['kernel']
  np.testing.assert_allclose(tuned['embedding']['kernel'],
                             kernel if channels == 3 else kernel * np.array(LUMA)[:, None],
                             atol=1e-6)


def test_a_colour_hybrid_checkpoint_finetunes_on_the_digits(tmp_path):
  """The finetune preset reads the grayscale digits as colour, so a colour hybrid checkpoint
  (whose weight-standardised root has no exact adaptation to grayscale) loads as it is."""
  model = dict(hidden_size=32, mlp_dim=32, num_heads=2, num_layers=1, resnet_width=16,
               resnet_layers=(1,))
  source = get_model('R50+ViT-B_16', num_classes=10, **model)
  params = jax.jit(source.init)(jax.random.PRNGKey(3), np.zeros((1, 32, 32, 3)))['params']
  tuned = finetune_on_digits(tmp_path, 'R50+B_16,digits', params, **model)
  np.testing.assert_allclose(tuned['conv_root']['kernel'], params['conv_root']['kernel'],
                             atol=1e-6)


def test_train_flops_are_the_same_scanned_and_unrolled(tmp_path):
  changes = {'model.num_layers': 2, 'total_steps': 2, 'log_every': 2, 'eval_every': 2,
             'checkpoint_every': 2, 'eval.fewshot_shots': ()}
  results = {scan: train.train_and_evaluate(smoke_config(**changes, **{'model.scan': scan}),
                                            str(tmp_path / f'scan_{scan}'))
             for scan in (False, True)}
  # XLA's count of the whole unrolled model, independently of vit_jax.flops' extrapolation.
  model = get_model('ViT-Nano_2', num_classes=10, num_layers=2, dropout_rate=0.1)
  forward = flops.xla_forward_flops(model, (8, 8, 1))
  for result in results.values():
    np.testing.assert_allclose(result['train_flops'], 3 * forward * 2 * 32, rtol=1e-6)
  assert results[True]['train_flops'] == results[False]['train_flops']


def test_training_path_imports_neither_tensorflow_nor_torch(tmp_path):
  import torch  # pylint: disable=g-import-not-at-top,unused-import (installed: [export] extra)
  code = ('import sys, runpy\n'
          f'sys.argv = ["main", "--config=configs/quickstart.py", "--workdir={tmp_path}", '
          + ', '.join(repr(a) for a in SMOKE) + ']\n'
          'try:\n  runpy.run_module("vit_jax.main", run_name="__main__")\n'
          'except SystemExit as e:\n  assert not e.code, e.code\n'
          'print(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "torch"}))\n'
          'import torch\n')  # still importable afterwards
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.strip().splitlines()[-1] == '[]'
  assert os.path.exists(tmp_path / 'result.json')
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))


@pytest.mark.parametrize('changes,message', [
    ({'dataset': 'imagenet'}, 'imagenet'),
    ({'dataset': 'folder:/no/such/dir'}, '/no/such/dir'),
    ({'mesh': (('data', 2),)}, r"mesh=\(\('data', 2\),\) spans 2 devices but 1 is available"),
    ({'mesh': (('batch', -1),)}, 'unknown: .*batch'),
    ({'optim.grad_accum_steps': 3}, 'batch_size=32 is not divisible by optim.grad_accum_steps=3'),
    ({'optim.name': 'lamb'}, "optim.name='lamb' must be one of"),
    ({'model.name': 'ViT-X_4'}, "Unknown model name 'ViT-X_4'"),
    ({'total_steps': 0}, 'config.total_steps=0 must be a positive integer'),
    ({'eval.batch_size': 0}, 'eval.batch_size=0 must be a positive integer'),
    ({'checkpoint.keep': 0}, 'checkpoint.keep=0 must be a positive integer'),
    ({'eval.fewshot_shots': (0, 2)}, r'eval.fewshot_shots=\(0, 2\) must be positive integers'),
    ({'train_size': 15}, r'class \d has only 1 training examples .*fewer than 2 shots'),
    ({'checkpoint.init_from': '/no/such.npz'}, r"checkpoint.init_from='/no/such.npz' does not "
     r'exist\.$'),
    ({'checkpoint.init_from': 'R50+ViT-B_16.npz'}, re.escape(  # the finetune preset's default
        "checkpoint.init_from='R50+ViT-B_16.npz' does not exist; the published checkpoint "
        'downloads from https://storage.googleapis.com/vit_models/imagenet21k/'
        'R50%2BViT-B_16.npz.')),
    ({'model.patch_size': 0}, r'patch_size=0 must be positive \(ViT-Nano_2\)'),
    ({'model.num_layers': 0}, 'num_layers=0 must be a positive integer'),
    ({'model.dropout_rate': 1.5}, r'dropout_rate=1.5 must be in \[0, 1\)'),
    ({'model.dtype': 'float8'}, "dtype='float8' must be one of"),
    ({'data.corrupt_images': 'drop'}, "data.corrupt_images='drop' must be one of"),
    ({'profile_steps': (3, 2)}, r'profile_steps=\(3, 2\) must be a pair of steps \(a, b\) with'),
    ({'profile_steps': (2, 7)}, r'profile_steps=\(2, 7\) must end by total_steps=6'),
])
def test_bad_input_names_the_field_and_keeps_the_workdir(finished_run, tmp_path, changes,
                                                        message):
  tmp_path = tmp_path / 'run'
  shutil.copytree(finished_run, tmp_path)
  before = {p: (tmp_path / p).read_bytes() for p in ('config.json', 'metrics.jsonl',
                                                     'result.json')}
  with pytest.raises((ValueError, FileNotFoundError), match=message):
    train.train_and_evaluate(smoke_config(**changes), str(tmp_path))
  assert {p: (tmp_path / p).read_bytes() for p in before} == before
  assert os.listdir(tmp_path / 'checkpoints') == ['3']


def test_unknown_config_field(tmp_path):
  config = smoke_config()
  config.unlock()
  config.optim.beta3 = 0.5
  with pytest.raises(ValueError, match=r"Unknown config field\(s\) \['optim.beta3'\]"):
    train.train_and_evaluate(config, str(tmp_path))
  proc = run_cli(tmp_path, '--config.optim.beta3=0.5', check=False)
  assert proc.returncode != 0 and 'beta3' in proc.stderr and 'Traceback' not in proc.stderr


def test_batch_not_divisible_by_data_parallel_size(tmp_path):
  proc = run_cli(tmp_path, '--config.batch_size=36', "--config.mesh=(('data', 8),)", devices=8,
                 check=False)
  assert proc.returncode != 0
  assert 'batch_size=36 is not divisible by the data-parallel size 8' in proc.stderr
  assert 'Traceback' not in proc.stderr


def test_sigterm_saves_a_checkpoint_and_the_rerun_continues_exactly(tmp_path):
  long = ['--config.total_steps=300', '--config.checkpoint_every=100', '--config.eval_every=300',
          '--config.log_every=10']
  run_cli(tmp_path / 'straight', *long)
  stopped = tmp_path / 'stopped'
  proc = run_cli(stopped, *long, wait=False)
  deadline = time.time() + 300
  while not (stopped / 'metrics.jsonl').exists() or not losses(stopped):
    if time.time() > deadline:  # a hung child, not a speed check
      pytest.fail('the run wrote no progress line within 300 s')
    time.sleep(0.02)  # wait until training has started: the first progress line is written
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 0
  steps = sorted(int(s) for s in os.listdir(stopped / 'checkpoints') if s.isdigit())
  assert steps and steps[-1] < 300 and steps[-1] % 100, steps  # saved at the current step
  assert not (stopped / 'result.json').exists()
  run_cli(stopped, *long)
  a = pretrained.flatten(checkpoint.read_params(str(stopped)))
  b = pretrained.flatten(checkpoint.read_params(str(tmp_path / 'straight')))
  for key in b:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _main_signalled_during_setup(workdir, *signums):
  """`python -m vit_jax.main` (smoke size) that sends itself `signums` while its data loads."""
  code = ('import os, runpy, signal, sys\n'
          'from vit_jax import data\n'
          'load = data.load_data\n'
          'def load_and_signal(config):\n'
          f'  for signum in {[int(s) for s in signums]}:\n'
          '    os.kill(os.getpid(), signum)\n'
          '  return load(config)\n'
          'data.load_data = load_and_signal\n'
          'sys.argv[0] = "vit_jax.main"\n'
          'runpy.run_module("vit_jax.main", run_name="__main__")\n')
  return subprocess.run([sys.executable, '-c', code, '--config=configs/quickstart.py',
                         f'--workdir={workdir}', *SMOKE], cwd=ROOT, capture_output=True,
                        text=True, timeout=600, env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.parametrize('signum,name', [(signal.SIGTERM, 'SIGTERM'), (signal.SIGINT, 'Ctrl-C')])
def test_a_stop_signal_during_setup_stops_after_one_step_with_a_checkpoint(tmp_path, signum,
                                                                          name):
  proc = _main_signalled_during_setup(tmp_path, signum)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'Stopped by {name} at step 1 with a checkpoint' in proc.stdout
  assert f'{name}: saved a checkpoint at step 1;' in proc.stderr
  assert os.listdir(tmp_path / 'checkpoints') == ['1'] and not (tmp_path / 'result.json').exists()


def test_a_second_ctrl_c_stops_at_once_with_one_line(tmp_path):
  proc = _main_signalled_during_setup(tmp_path, signal.SIGINT, signal.SIGINT)
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert 'Traceback' not in proc.stderr and not proc.stdout
  assert proc.stderr.splitlines()[-1] == (
      'Stopped at once by Ctrl-C, without a checkpoint of the current step; rerun the same '
      'command to continue from the latest checkpoint.')
  assert not (tmp_path / 'checkpoints').exists() or not os.listdir(tmp_path / 'checkpoints')


def test_stop_flag_names_the_signals_and_a_second_ctrl_c_raises():
  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with run_dir.stop_flag() as flag:
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    assert flag == ['SIGTERM', 'Ctrl-C']
    with pytest.raises(KeyboardInterrupt):
      os.kill(os.getpid(), signal.SIGINT)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a shell script
  try:
    with run_dir.stop_flag() as flag:
      os.kill(os.getpid(), signal.SIGINT)
      assert flag == [] and signal.getsignal(signal.SIGINT) == signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, before[0])


def test_nonfinite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
  config = smoke_config(total_steps=6, checkpoint_every=2, eval_every=6, log_every=3)
  train.train_and_evaluate(smoke_config(total_steps=2, checkpoint_every=2, eval_every=2),
                           str(tmp_path))
  good = pretrained.flatten(checkpoint.read_params(str(tmp_path)))
  config.optim.lr = float('inf')  # the first update makes every parameter non-finite
  config.profile_steps = (3, 5)  # the error comes inside the traced steps
  with pytest.raises(FloatingPointError, match=r'Non-finite loss or gradient at step 3 .*'
                     r'last good checkpoint is step 2'):
    train.train_and_evaluate(config, str(tmp_path))
  jax.profiler.start_trace(str(tmp_path / 'again'))  # raises if the run left its trace running
  jax.profiler.stop_trace()
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['2']
  after = pretrained.flatten(checkpoint.read_params(str(tmp_path)))
  for key in good:
    np.testing.assert_array_equal(after[key], good[key])


def test_skip_nonfinite_skips_and_counts(tmp_path):
  config = smoke_config(total_steps=4, checkpoint_every=4, eval_every=4, log_every=4)
  config.optim.skip_nonfinite = True
  config.optim.lr = float('inf')
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result['train_skipped_steps'] == 4 and result['step'] == 4
  params = pretrained.flatten(checkpoint.read_params(str(tmp_path)))
  assert all(np.all(np.isfinite(v)) for v in params.values())


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  config = smoke_config()  # checkpoints at steps 3 and 6
  train.train_and_evaluate(config, str(tmp_path))
  want = pretrained.flatten(checkpoint.read_params(str(tmp_path)))
  for root, _, names in os.walk(tmp_path / 'checkpoints' / '6' / 'state'):
    for name in names:
      if root.endswith(os.sep + 'd'):  # the array data files
        (tmp_path / root / name).write_bytes(b'damaged')
  os.remove(tmp_path / 'result.json')
  result = train.train_and_evaluate(config, str(tmp_path))
  assert 'Checkpoint 6' in caplog.text and 'cannot be read' in caplog.text
  assert (tmp_path / 'checkpoints' / 'corrupt-6').is_dir()
  assert result['step'] == 6
  got = pretrained.flatten(checkpoint.read_params(str(tmp_path)))
  for key in want:  # resumed from step 3 and reached the same step 6
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)


@pytest.mark.parametrize('field,value,example', [
    ('image_size', 16, 'params/Transformer/posembed_input/pos_embedding is (1, 17, 64) there '
     'and (1, 65, 64) here'),
    ('model.num_layers', 2, 'params/Transformer/encoderblock_1/LayerNorm_0/bias is absent there '
     'and (64,) here'),
    ('optim.name', 'sgd', 'opt_state/1/0/count is () there and absent here'),
])
def test_a_checkpoint_of_another_config_is_an_error_that_changes_nothing(tmp_path, field, value,
                                                                         example):
  # Not damage: the checkpoint stays where it is, as do the run's config and result.
  train.train_and_evaluate(smoke_config(total_steps=3), str(tmp_path))
  before = {name: (tmp_path / name).read_bytes() for name in ('config.json', 'result.json')}
  with pytest.raises(ValueError, match=re.escape(
      f'Checkpoint 3 in {tmp_path / "checkpoints"} does not fit this config: ') +
      r'\d+ arrays differ, e\.g\. ' + re.escape(example)):
    train.train_and_evaluate(smoke_config(total_steps=6, **{field: value}), str(tmp_path))
  assert os.listdir(tmp_path / 'checkpoints') == ['3']
  assert {name: (tmp_path / name).read_bytes() for name in before} == before
  assert train.train_and_evaluate(smoke_config(total_steps=6), str(tmp_path))['step'] == 6


def test_full_disk_at_a_checkpoint_keeps_the_previous_one_and_the_rerun_continues(
    tmp_path, monkeypatch):
  train.train_and_evaluate(smoke_config(), str(tmp_path / 'straight'))
  run = tmp_path / 'run'
  save = checkpoint.CheckpointManager.save
  def full_at_6(self, step, *args):
    if step == 6:
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(run / 'checkpoints' / '6'))
    return save(self, step, *args)
  monkeypatch.setattr(checkpoint.CheckpointManager, 'save', full_at_6)
  with pytest.raises(OSError, match=rf'Cannot write in the workdir {run} \(.*/checkpoints/6: '
                     r'No space left on device\)\. Everything written there before is intact'):
    train.train_and_evaluate(smoke_config(), str(run))
  assert os.listdir(run / 'checkpoints') == ['3'] and not (run / 'result.json').exists()
  monkeypatch.setattr(checkpoint.CheckpointManager, 'save', save)  # space freed
  assert train.train_and_evaluate(smoke_config(), str(run))['step'] == 6
  a = pretrained.flatten(checkpoint.read_params(str(run)))
  b = pretrained.flatten(checkpoint.read_params(str(tmp_path / 'straight')))
  for key in b:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_a_file_size_limit_during_a_checkpoint_write_is_one_error_line(tmp_path):
  """A real failed write (RLIMIT_FSIZE: tensorstore's error when the checkpoint exceeds it)
  ends the run with one 'Error:' line naming the workdir (orbax's threads may log their own
  noise around it); the rerun without the limit completes."""
  limited = ('import resource, runpy, signal, sys\n'
             'signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n'  # fail the write, do not die
             'resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))\n'  # arrays do not fit
             'sys.argv[0] = "vit_jax.main"\n'
             'runpy.run_module("vit_jax.main", run_name="__main__")\n')
  cmd = [sys.executable, '-c', limited, '--config=configs/quickstart.py',
         f'--workdir={tmp_path}', *SMOKE]
  proc = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), text=True,
                        capture_output=True, timeout=600)
  assert proc.returncode == 1
  [error] = [l for l in proc.stderr.splitlines() if l.startswith('Error:')]
  assert error.startswith(f'Error: [Errno {errno.EFBIG}] Cannot write in the workdir {tmp_path} '
                          '(writing checkpoint 3 failed, File too large: '), error
  assert 'rerun the same command' in error
  assert not [s for s in os.listdir(tmp_path / 'checkpoints') if s.isdigit()]
  assert run_cli(tmp_path).returncode == 0 and (tmp_path / 'result.json').exists()


def test_an_unwritable_workdir_is_reported_before_training(tmp_path, monkeypatch, finished_run):
  def read_only(path, *args, **kwargs):
    raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
  monkeypatch.setattr(files, 'open', read_only, raising=False)  # the lock file is written first
  with pytest.raises(OSError, match=rf'Cannot write in the workdir {finished_run} \('
                     rf'{finished_run}/.lock: Read-only file system\)'):
    train.train_and_evaluate(smoke_config(), str(finished_run))
  blocked = tmp_path / 'a-file'
  blocked.write_text('not a directory')
  with pytest.raises(FileExistsError, match=rf'^{blocked}/run cannot be made a folder: '
                     rf'{blocked} is a file\.$'):
    train.train_and_evaluate(smoke_config(), str(blocked / 'run'))
  with pytest.raises(FileExistsError, match=rf'^{blocked} is a file, not a folder\.$'):
    train.train_and_evaluate(smoke_config(), str(blocked))
  assert blocked.read_text() == 'not a directory'


def test_the_python_api_refuses_a_workdir_in_use(tmp_path):
  with files.exclusive_lock(str(tmp_path), 'training run'):
    with pytest.raises(files.LockedError, match=f'Another training run is running in {tmp_path} '
                       rf'\(pid {os.getpid()}\)'):
      train.train_and_evaluate(smoke_config(), str(tmp_path))
  assert os.listdir(tmp_path) == ['.lock']


def test_the_refusal_names_what_holds_the_workdir(tmp_path):
  with files.exclusive_lock(str(tmp_path), 'sweep'):  # e.g. a sweep running in that folder
    with pytest.raises(files.LockedError, match=re.escape(
        f'A sweep is running in {tmp_path} (pid {os.getpid()}); wait for it to finish')):
      train.train_and_evaluate(smoke_config(), str(tmp_path))
  (tmp_path / '.lock').write_text('pid 1')  # a lock file of an earlier version: its own kind
  with open(tmp_path / '.lock') as f:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(files.LockedError, match=re.escape(
        f'Another training run is running in {tmp_path} (pid 1)')):
      train.train_and_evaluate(smoke_config(), str(tmp_path))


def test_a_second_run_on_the_same_workdir_is_refused(tmp_path):
  with files.exclusive_lock(str(tmp_path), 'training run'):
    proc = run_cli(tmp_path, check=False)
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  assert f'Another training run is running in {tmp_path} (pid {os.getpid()})' in proc.stderr
  assert not (tmp_path / 'checkpoints').exists()
