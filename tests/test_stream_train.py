"""Training on a prepared record dataset through the streaming pipeline: a real run with its
evaluation, data-scaling subsets and hold-out over records, and exact resume after SIGKILL;
data.kind='auto' choosing memory or the stream by decoded size."""
import importlib
import logging
import os
import re
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from conftest import TINY_VIT, init, randomize, with_site_hook
from imagenet_tree import make_tree
from test_train import KILLER, ROOT, SMOKE, checkpoint_steps, losses, smoke_config
from vit_jax import checkpoint, data, evaluate, files, pretrained, sharding, train
from vit_jax.models import get_model
from vit_jax.data import prepare, records

STREAM = {'dataset': None, 'image_size': 16, 'batch_size': 8, 'eval.batch_size': 8,
          'model.patch_size': 4, 'augment.crop_scale': (0.25, 1.), 'augment.flip': True}


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('imagenet')
  make_tree(root / 'src', classes=3, per_class={'train': 6, 'val': 3})
  prepare.prepare(str(root / 'src'), str(root / 'out'), workers=1, shard_size=5,
                  progress=False)
  return str(root / 'out')


def stream_config(prepared, **changes):
  return smoke_config(**{**STREAM, 'dataset': f'records:{prepared}', **changes})


def cli_flags(prepared):
  """`STREAM` as command-line overrides of the quickstart config."""
  return [f'--config.dataset=records:{prepared}', '--config.image_size=16',
          '--config.batch_size=8', '--config.eval.batch_size=8', '--config.model.patch_size=4',
          '--config.augment.flip=True', '--config.augment.crop_scale=(0.25, 1.0)']


def cli_env():
  """The environment of a `python -m vit_jax.main` child (KILLER imports from the root)."""
  return dict(os.environ, JAX_PLATFORMS='cpu',
              PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))


@pytest.fixture(scope='module')
def records_run(prepared, tmp_path_factory):
  """(workdir, result) of a finished 6-step run on the prepared records."""
  workdir = str(tmp_path_factory.mktemp('records_run'))
  return workdir, train.train_and_evaluate(stream_config(prepared), workdir)


@pytest.mark.slow
def test_a_run_on_prepared_records_trains_and_evaluates_the_val_split(records_run):
  _, result = records_run
  assert result['step'] == 6 and result['train_size'] == 18 and result['dataset'].startswith(
      'records:')
  # 9 validation images, each counted once: accuracy is a multiple of 1/9.
  assert abs(result['test_accuracy'] * 9 - round(result['test_accuracy'] * 9)) < 1e-9
  assert 0 <= result['fewshot_1shot'] <= 1
  assert np.isfinite(result['test_loss'])


@pytest.mark.slow
def test_analyze_and_export_a_run_on_prepared_records(prepared, records_run, tmp_path):
  """The analysis entry point and an ONNX export read their images from the run's records
  (the 9-image val split, decoded and centre-cropped as evaluation does; the Hessian's from
  the training stream)."""
  workdir, result = records_run
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get('PYTHONPATH')])))
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.analyze', f'--workdir={workdir}',
                         f'--out={tmp_path / "analysis"}', '--only=distance,noise,hessian',
                         '--images=4', '--hessian_batches=1'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  saved = files.read_json(str(tmp_path / 'analysis' / 'analysis.json'))
  distance = np.array(saved['distance']['pixels'])  # (1 layer, heads), in pixels of 16
  assert distance.shape[0] == 1 and np.all(np.isfinite(distance))
  assert np.all((distance > 0) & (distance < 16 * np.sqrt(2)))
  # The noise analysis's clean accuracy is over all 9 val images (fewer than 512) with the
  # checkpoint of the final evaluation: the run's test accuracy.
  assert saved['noise']['clean_accuracy'] == pytest.approx(result['test_accuracy'], abs=1e-9)
  # On a batch of the training stream, augmented on the host.
  hessian_top = np.array(saved['hessian']['top_eigenvalues'])
  assert hessian_top.shape == (1, 5) and np.all(np.isfinite(hessian_top))
  # One more analysis of the same checkpoint into the same folder adds to what is there.
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.analyze', f'--workdir={workdir}',
                         f'--out={tmp_path / "analysis"}', '--only=fourier', '--images=4'],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (f'fourier written to {tmp_path / "analysis"}; kept from before: distance, noise, '
          'hessian') in proc.stdout
  added = files.read_json(str(tmp_path / 'analysis' / 'analysis.json'))
  assert {k: added[k] for k in saved} == saved and 'fourier' in added

  from vit_jax import export  # pylint: disable=g-import-not-at-top
  from vit_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  export.export(workdir, 'onnx', str(tmp_path / 'onnx'))
  manifest = files.read_json(str(tmp_path / 'onnx' / 'export.json'))
  (what, diff), = [(k, v) for k, v in manifest['verification']['max_abs_diff'].items()
                   if 'random' not in k]
  assert what == f"8 images of the 'records:{prepared}' val split" and diff <= 1e-4
  assert manifest['class_names'] == [f'n{c:08d}' for c in range(3)]
  source = records.RecordSource(prepared, 'val')
  want = np.stack([pipeline.eval_transform(source[i][0], 16, 1.) for i in
                   data.evenly_spaced(9, 8)]) / 127.5 - 1
  np.testing.assert_allclose(export.Source.from_run(workdir).images, want, atol=1e-6)


def test_subsets_and_the_hold_out_are_index_lists_over_the_records(prepared):
  config = stream_config(prepared, train_size=12, **{'eval.val_fraction': 0.25})
  train_split, val_split, test_split = data.load_data(config)
  source = records.RecordSource(prepared, 'train')
  subset = data.nested_subset(source.labels, 12, 0)
  assert isinstance(train_split, data.RecordSplit)
  assert len(train_split) + len(val_split) == 12 and len(val_split) == 3
  chosen = np.sort(np.concatenate([train_split.indices, val_split.indices]))
  np.testing.assert_array_equal(chosen, subset)
  assert not set(train_split.indices) & set(val_split.indices)
  np.testing.assert_array_equal(np.bincount(val_split.labels), [1, 1, 1])
  assert test_split.source.split == 'val' and len(test_split) == 9


def test_stream_config_errors_name_the_field(prepared, tmp_path):
  with pytest.raises(ValueError, match=r"all images of a split must have the same size "
                     r"\(data.kind='stream' reads images of any size\)"):
    train.train_and_evaluate(stream_config(prepared, **{'data.kind': 'memory'}), str(tmp_path))
  with pytest.raises(ValueError, match="no 'test' split; it has"):
    train.train_and_evaluate(stream_config(prepared, **{'data.eval_split': 'test'}),
                             str(tmp_path))
  with pytest.raises(ValueError, match='train_size=100 must be between 1 and the 18'):
    train.train_and_evaluate(stream_config(prepared, train_size=100), str(tmp_path))
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_resume_after_sigkill_on_the_stream_matches_an_uninterrupted_run(prepared, tmp_path):
  """Killed at four moments in turn (each rerun resumes), finished with two grain worker
  processes instead of none: parameters, losses and results equal an uninterrupted run's."""
  flags = ['--config.total_steps=12', '--config.checkpoint_every=4', '--config.eval_every=6',
           '--config.log_every=2', *cli_flags(prepared)]
  env = cli_env()
  main = lambda workdir, *extra: subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
       f'--workdir={workdir}', *SMOKE, *flags, *extra], cwd=ROOT, env=env, capture_output=True,
      text=True, timeout=600)
  straight = main(tmp_path / 'straight')
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = tmp_path / 'killed'
  # Checkpoints are written in the background: a kill may come before the newest is committed.
  # Each rerun resumes from the newest complete checkpoint there was when it started.
  for moment, at in [('step', 3), ('evaluation', 2), ('checkpoint-json', 8), ('step', 10)]:
    before = checkpoint_steps(killed)
    proc = subprocess.run([sys.executable, '-c', KILLER, moment, str(at),
                           '--config=configs/quickstart.py', f'--workdir={killed}', *SMOKE,
                           *flags], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, (moment, at, proc.stderr[-3000:])
    assert f'SIGKILL {moment} {at} in ' in proc.stderr
    if before:
      assert f'Resumed from step {before[-1]} ' in proc.stderr, (moment, proc.stderr[-3000:])
    else:
      assert 'Resumed from step' not in proc.stderr
  newest = checkpoint_steps(killed)[-1]
  assert newest in (4, 8)
  final = main(killed, '--config.data.workers=2')
  assert final.returncode == 0, final.stderr[-3000:]
  assert f'Resumed from step {newest} ' in final.stderr, final.stderr[-3000:]
  a = pretrained.flatten(checkpoint.read_params(str(killed)))
  b = pretrained.flatten(checkpoint.read_params(str(tmp_path / 'straight')))
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)
  assert sorted(losses(killed).items()) == sorted(losses(tmp_path / 'straight').items())
  got, want = (files.read_json(f'{d}/result.json') for d in (killed, tmp_path / 'straight'))
  for key in ('test_accuracy', 'test_loss', 'fewshot_1shot', 'fewshot_2shot'):
    assert got[key] == want[key], key


# sitecustomize.py for a run's processes: the first grain worker, as it starts (before it has
# imported the program, for seconds), sends Ctrl-C to the process group, as a terminal would.
CTRL_C_AS_A_WORKER_STARTS = """
import os, signal, sys
if '--multiprocessing-fork' in sys.argv:
  try:
    os.close(os.open(os.environ['CTRL_C_ONCE'], os.O_CREAT | os.O_EXCL))
  except FileExistsError:
    pass
  else:
    os.killpg(0, signal.SIGINT)
"""


@pytest.mark.slow
@pytest.mark.parametrize('moment', ['while training', 'as a worker starts'])
def test_ctrl_c_to_a_streamed_run_and_its_grain_workers_stops_at_a_checkpoint(prepared,
                                                                             tmp_path, moment):
  """A terminal's Ctrl-C reaches the whole process group, the two grain worker processes
  included, also while one starts: they ignore it, and the run saves a checkpoint of the
  current step and says so, with no traceback from anyone."""
  workdir, env = tmp_path / 'run', cli_env()
  if moment == 'as a worker starts':
    env = with_site_hook(env, tmp_path / 'hook', CTRL_C_AS_A_WORKER_STARTS)
    env['CTRL_C_ONCE'] = str(tmp_path / 'sent')
  proc = subprocess.Popen(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
       f'--workdir={workdir}', *SMOKE, *cli_flags(prepared), '--config.total_steps=100000',
       '--config.checkpoint_every=100000', '--config.eval_every=100000',
       '--config.data.workers=2'], cwd=ROOT, env=env, stdout=subprocess.PIPE,
      stderr=subprocess.PIPE, text=True, start_new_session=True)
  if moment == 'while training':
    deadline = time.time() + 300
    while not (workdir / 'metrics.jsonl').exists() or not losses(workdir):
      if time.time() > deadline or proc.poll() is not None:  # a hung child, not a speed check
        proc.kill()
        pytest.fail(f'the run wrote no progress line: {proc.communicate()[1][-3000:]}')
      time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert 'Traceback' not in err and 'KeyboardInterrupt' not in err, err[-3000:]
  step = int(re.search(r'Stopped by Ctrl-C at step (\d+) with a checkpoint', out).group(1))
  assert checkpoint_steps(workdir) == [step] and not (workdir / 'result.json').exists()
  assert moment == 'while training' or step == 1  # stopped during setup: after one step


def test_auto_sizes_a_prepared_split_from_16_records_spread_over_it(prepared, monkeypatch):
  read = []
  get = records.RecordSource.__getitem__
  monkeypatch.setattr(records.RecordSource, '__getitem__',
                      lambda self, i: read.append((self.split, i)) or get(self, i))
  kind, why = data.choose_kind(stream_config(prepared))
  # 18 training records of sizes from 40 to 120 pixels, some grayscale: streamed.
  assert kind == 'stream' and why.startswith('18 images of different sizes (HxWxC ')
  assert read == [('train', i) for i in np.linspace(0, 17, 16).astype(int)]


def test_split_slices_are_disjoint_class_mixed_and_cover_the_split(prepared):
  config = stream_config(prepared)
  head = data.open_split(config, 'train[:50%]')
  tail = data.open_split(config, 'train[50%:]')
  assert len(head) == len(tail) == 9
  np.testing.assert_array_equal(np.sort(np.concatenate([head.indices, tail.indices])),
                                np.arange(18))
  assert len(set(head.labels)) == 3  # not the first classes of the class-ordered records
  np.testing.assert_array_equal(data.open_split(config, 'train[3:5]').indices,
                                np.sort(np.random.default_rng(0).permutation(18)[3:5]))
  for bad in ('train[:5', 'train[1%:5]', 'train[-2:]'):
    with pytest.raises(ValueError, match='must be <name> or <name>'):
      data.open_split(config, bad)
  with pytest.raises(ValueError, match='selects none of the 18 images'):
    data.open_split(config, 'train[18:]')
  assert len(data.open_split(config, 'train[:100%]')) == 18 == len(
      data.open_split(config, 'train[:18]'))
  with pytest.raises(ValueError, match=r"Split 'train\[:150%\]' reaches past the end of its "
                     r'split: 150% is more than 100%\.'):
    data.open_split(config, 'train[:150%]')
  with pytest.raises(ValueError, match=r"Split 'train\[2:19\]' reaches past the end of its "
                     r'split: 19 is more than its 18 images\.'):
    data.open_split(config, 'train[2:19]')


@pytest.mark.slow
def test_imagenet_presets_run_a_few_steps_on_a_prepared_tree(prepared, tmp_path, monkeypatch):
  monkeypatch.setenv('VIT_JAX_I1K', prepared)
  monkeypatch.setenv('VIT_JAX_I21K', prepared)
  from configs import finetune, pretrain
  pretrain, finetune = importlib.reload(pretrain), importlib.reload(finetune)

  def shrink(config, **changes):
    small = {'image_size': 32, 'batch_size': 8, 'total_steps': 2, 'log_every': 2,
             'eval_every': 2, 'checkpoint_every': 2, 'schedule.warmup_steps': 1,
             'model.num_layers': 1, 'eval.batch_size': 8, 'eval.fewshot_shots': (1,),
             'eval.fewshot_seeds': 1, 'data.workers': 0, **changes}
    for key, value in small.items():
      *parents, leaf = key.split('.')
      node = config
      for p in parents:
        node = node[p]
      node[leaf] = value
    return config

  i1k = pretrain.get_config('Ti_16,i1k')
  assert i1k.dataset == f'records:{prepared}' and i1k.eval.crop_fraction == 0.875
  result = train.train_and_evaluate(shrink(i1k), str(tmp_path / 'i1k'))
  assert result['step'] == 2 and result['train_size'] == 18
  i21k = shrink(pretrain.get_config('Ti_16,i21k'), **{'data.train_split': 'train[6:]',
                                                      'data.eval_split': 'train[:6]'})
  result = train.train_and_evaluate(i21k, str(tmp_path / 'i21k'))
  assert result['train_size'] == 12 and result['step'] == 2
  tuned = shrink(finetune.get_config('Ti_16,i1k'), image_size=48,
                 **{'checkpoint.init_from': str(tmp_path / 'i1k')})
  result = train.train_and_evaluate(tuned, str(tmp_path / 'finetune'))
  assert result['step'] == 2 and 0 <= result['test_accuracy'] <= 1


def test_a_small_folder_tree_of_any_sizes_streams_in_place(tmp_path):
  written = make_tree(tmp_path / 'tree', classes=2, per_class={'train': 3, 'test': 2})
  archive = tmp_path / 'tree.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(tmp_path / 'tree', arcname='tree')
  for path in (tmp_path / 'tree', archive):
    config = smoke_config(dataset=f'folder:{path}', **{'data.kind': 'stream'})
    assert data.eval_split_name(config) == 'test'
    for split in ('train', 'test'):
      opened = data.open_split(config, split)
      assert isinstance(opened, data.RecordSplit)
      assert [opened.source[i] for i in range(len(opened))] == [
          ((tmp_path / 'tree' / rel).read_bytes(), label) for rel, label in written[split]]
  # 'auto' streams images of different sizes; forced into memory they are an error.
  tree = smoke_config(dataset=f'folder:{tmp_path / "tree"}',
                      **{'data.cache_dir': str(tmp_path / 'cache')})
  assert isinstance(data.open_split(tree, 'train'), data.RecordSplit)
  tree.data.kind = 'memory'
  with pytest.raises(ValueError, match="data.kind='stream' reads images of any size"):
    data.open_split(tree, 'train')


@pytest.mark.slow
def test_the_few_shot_probe_may_use_another_dataset(prepared, tmp_path):
  make_tree(tmp_path / 'src', classes=4, per_class={'train': 3, 'val': 2}, seed=5)
  prepare.prepare(str(tmp_path / 'src'), str(tmp_path / 'probe'), workers=1, progress=False)
  config = stream_config(prepared, train_size=3, **{'eval.fewshot_shots': (2,)})
  with pytest.raises(ValueError, match='class 0 has only 1 training examples'):
    train.train_and_evaluate(config, str(tmp_path / 'own'))
  config.eval.fewshot_dataset = f'records:{tmp_path / "probe"}'
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  # Scored on the probe's 8 validation images (4 classes x 2), not the run's 9.
  assert abs(result['fewshot_2shot'] * 8 - round(result['fewshot_2shot'] * 8)) < 1e-9
  assert abs(result['test_accuracy'] * 9 - round(result['test_accuracy'] * 9)) < 1e-9


@pytest.mark.slow
def test_a_colour_folder_in_imagenet_layout_probes_a_grayscale_model(tmp_path):
  """A run on the grayscale digits (in memory, 1 channel) probed on a tree of colour images of
  any size with train/ and val/, no test/ (streamed, 3 channels): scored on its 9 val images."""
  make_tree(tmp_path / 'tree', classes=3, per_class={'train': 2, 'val': 3})
  config = smoke_config(**{'eval.fewshot_dataset': f'folder:{tmp_path / "tree"}',
                           'eval.fewshot_shots': (1,), 'total_steps': 3})
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert abs(result['fewshot_1shot'] * 9 - round(result['fewshot_1shot'] * 9)) < 1e-9


def test_auto_holds_a_split_that_fits_in_memory_and_streams_a_bigger_one(tmp_path, caplog):
  """A folder tree of 16x16 RGB JPEGs and PNGs (8 training, 4 test images) and the same tree
  prepared as records: with data.memory_limit_gb at exactly the decoded training split's
  8 x 16 x 16 x 3 bytes both are held in memory, with half that limit both stream; the
  two kinds hold the same pixels and evaluate a model alike."""
  make_tree(tmp_path / 'tree', classes=2, per_class={'train': 4, 'test': 2}, sizes=(16, 17),
            grayscale=False)
  prepare.prepare(str(tmp_path / 'tree'), str(tmp_path / 'records'), workers=1, progress=False)
  decoded = 8 * 16 * 16 * 3
  model = get_model('ViT-Ti_16', num_classes=2, **TINY_VIT)
  params = randomize(init(model, 16)[0], seed=4)
  mesh = sharding.make_mesh((('data', -1),))
  caplog.set_level(logging.INFO)
  for dataset in (f'folder:{tmp_path / "tree"}', f'records:{tmp_path / "records"}'):
    evaluations, pixels = {}, {}
    for limit, kind, log in ((decoded / 1e9, data.Split,
                              'memory (8 images, 6.14 kB decoded <= 6.14 kB)'),
                             (decoded / 2e9, data.RecordSplit,
                              'stream (8 images, 6.14 kB decoded > 3.07 kB)')):
      config = smoke_config(dataset=dataset, image_size=16, **{
          'data.memory_limit_gb': limit, 'data.cache_dir': str(tmp_path / 'cache'),
          'eval.fewshot_shots': (1,), 'eval.batch_size': 3})
      caplog.clear()
      train_split, _, test_split = data.load_data(config)
      assert isinstance(train_split, kind) and isinstance(test_split, kind), (dataset, limit)
      assert [r.getMessage() for r in caplog.records if r.getMessage().startswith('data:')] == [
          f'data: {dataset}, {log}']
      assert len(train_split.labels) == 8 and len(test_split.labels) == 4
      pixels[kind] = np.concatenate([b[0] for b in data.split_eval_batches(
          test_split, 4, 0, 1, image_size=16)])
      evaluations[kind] = evaluate.Evaluator(model, config, mesh, train_split, None,
                                             test_split)(params, 0)
    np.testing.assert_array_equal(pixels[data.Split], pixels[data.RecordSplit])
    assert evaluations[data.Split].keys() == evaluations[data.RecordSplit].keys()
    for key, value in evaluations[data.Split].items():
      assert value == pytest.approx(evaluations[data.RecordSplit][key], rel=1e-5), key
  # data.kind forces either kind whatever the limit says.
  for kind, want in (('stream', data.RecordSplit), ('memory', data.Split)):
    config = smoke_config(dataset=f'records:{tmp_path / "records"}', image_size=16,
                          **{'data.kind': kind, 'data.memory_limit_gb': 100. if kind == 'stream'
                             else 0.})
    assert isinstance(data.load_data(config)[0], want)
