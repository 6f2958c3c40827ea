"""gs:// paths against a local Cloud Storage emulator: atomic file I/O, the workdir lock object
and image-folder datasets with their cache; a sweep and its analyses on gs:// (slow)."""
import csv
import io
import os
import subprocess
import sys

from etils import epath
import numpy as np
import pytest

from conftest import ROOT, child_env
from vit_jax import data, files


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
  with files.exclusive_lock(directory, 'sweep'):  # free again
    pass


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
