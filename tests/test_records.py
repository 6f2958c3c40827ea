"""Prepared record datasets: the converter (directories and archives, parallel, resumable,
corrupt images) and `RecordSource` random access, on real image files and ArrayRecord shards."""
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from conftest import child_env, orphans_after_kill, with_site_hook
from configs import quickstart
from imagenet_tree import make_tree
from vit_jax import data
from vit_jax.data import footprint, prepare, records


@pytest.fixture(scope='module')
def tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('tree')
  return root, make_tree(root, classes=3, per_class={'train': 5, 'val': 2})


def run_prepare(*args: str, env: dict | None = None, **kwargs) -> subprocess.CompletedProcess:
  """`python -m vit_jax.data.prepare <args>` in a child process, its output captured (at most
  300 s: a hang fails the test)."""
  return subprocess.run([sys.executable, '-m', 'vit_jax.data.prepare', *args],
                        capture_output=True, text=True, env=env or child_env(1), timeout=300,
                        **kwargs)


def _file_bytes(root, rel):
  with open(os.path.join(root, rel), 'rb') as f:
    return f.read()


def test_prepare_keeps_every_file_byte_for_byte_with_its_label(tree, tmp_path):
  root, written = tree
  meta = prepare.prepare(str(root), str(tmp_path / 'out'), workers=2, shard_size=4,
                         progress=False)
  assert meta['class_names'] == [f'n{c:08d}' for c in range(3)]
  for split, items in written.items():
    source = records.RecordSource(str(tmp_path / 'out'), split)
    assert len(source) == len(items) == meta['splits'][split]['num_examples']
    assert len(source.paths) == -(-len(items) // 4)
    for i, (rel, label) in enumerate(items):
      assert source[i] == (_file_bytes(root, rel), label)
  # Nothing but the finished files is left behind.
  assert sorted(os.listdir(tmp_path / 'out')) == sorted(
      ['.lock', 'metadata.json', 'train-labels.npy', 'val-labels.npy',
       *meta['splits']['train']['shards'], *meta['splits']['val']['shards']])


def test_a_tar_gz_with_a_top_folder_gives_the_same_records(tree, tmp_path):
  root, written = tree
  archive = tmp_path / 'tree.tar.gz'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(root, arcname='imagenet')
    for name in ('train/Thumbs.db', 'train/n00000000/desktop.ini', 'val/n00000001/._0.JPEG'):
      member = tarfile.TarInfo(f'imagenet/{name}')  # file managers' files, left out
      member.size = 4
      tar.addfile(member, io.BytesIO(b'meta'))
  prepare.prepare(str(archive), str(tmp_path / 'out'), workers=1, progress=False)
  assert not [n for n in os.listdir(tmp_path / 'out') if n.startswith('.source')]
  source = records.RecordSource(str(tmp_path / 'out'), 'train')
  assert [source[i] for i in range(len(source))] == [
      (_file_bytes(root, rel), label) for rel, label in written['train']]


def test_corrupt_images_stop_the_run_or_are_left_out_and_listed(tree, tmp_path):
  root, written = tree
  src = tmp_path / 'src'
  shutil.copytree(root, src)
  bad = src / 'train' / 'n00000001' / 'broken.JPEG'
  bad.write_bytes(b'not an image')
  with pytest.raises(ValueError, match='broken.JPEG of .*: not an image format Pillow can '
                     'identify; pass --corrupt_images=skip'):
    prepare.prepare(str(src), str(tmp_path / 'out'), workers=1, progress=False)
  assert not os.path.exists(tmp_path / 'out' / 'metadata.json')
  with pytest.raises(FileNotFoundError, match='metadata.json is missing'):
    records.RecordSource(str(tmp_path / 'out'), 'train')
  meta = prepare.prepare(str(src), str(tmp_path / 'out'), workers=1, corrupt_images='skip',
                         progress=False)
  assert meta['splits']['train']['skipped'] == ['train/n00000001/broken.JPEG']
  source = records.RecordSource(str(tmp_path / 'out'), 'train')
  np.testing.assert_array_equal(source.labels, [label for _, label in written['train']])


def test_a_rerun_after_a_failure_keeps_the_finished_shards(tree, tmp_path):
  root, _ = tree
  src, out = tmp_path / 'src', tmp_path / 'out'
  shutil.copytree(root, src)
  good = (src / 'train' / 'n00000002' / 'train_2_004.JPEG').read_bytes()
  (src / 'train' / 'n00000002' / 'train_2_004.JPEG').write_bytes(good[:100])  # truncated
  with pytest.raises(ValueError, match='train_2_004.JPEG'):
    prepare.prepare(str(src), str(out), workers=1, shard_size=4, progress=False)
  done = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)
          if n.endswith('.array_record')}
  assert 'train-00000-of-00004.array_record' in done and 'metadata.json' not in os.listdir(out)
  (src / 'train' / 'n00000002' / 'train_2_004.JPEG').write_bytes(good)
  prepare.prepare(str(src), str(out), workers=1, shard_size=4, progress=False)
  for name, stamp in done.items():  # not written again
    assert os.stat(out / name).st_mtime_ns == stamp
  fresh = tmp_path / 'fresh'
  prepare.prepare(str(src), str(fresh), workers=2, shard_size=4, progress=False)
  for split in ('train', 'val'):
    a, b = records.RecordSource(str(out), split), records.RecordSource(str(fresh), split)
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]


def test_a_finished_out_is_kept_and_names_the_source_it_came_from(tree, tmp_path):
  """A finished --out is never prepared again; given another --src (one class more here) it
  says so, in a warning and in the command's last line, rather than pass the old dataset off
  as the new one."""
  root, _ = tree
  out, other = tmp_path / 'out', tmp_path / 'other'
  meta = prepare.prepare(str(root), str(out), workers=1, progress=False)
  assert meta['source'] == os.path.realpath(root)
  stamps = {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)}
  shutil.copytree(root, other)
  shutil.copytree(other / 'train' / 'n00000002', other / 'train' / 'n00000003')
  shutil.copytree(other / 'val' / 'n00000002', other / 'val' / 'n00000003')
  result = run_prepare(f'--src={other}', f'--out={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert (f'{out} holds the dataset prepared from {root}, not from --src={other}; it is left as '
          f'it is (remove it to prepare {other}).') in result.stderr
  assert result.stdout == (f'{out}: train 15 images, val 6 images, 3 classes, prepared from '
                           f'{root}.\n')
  assert prepare.prepare(str(root), str(out), workers=1, progress=False) == meta
  assert {n: os.stat(out / n).st_mtime_ns for n in os.listdir(out)} == stamps
  assert len(prepare.prepare(str(other), str(tmp_path / 'out2'), workers=1,
                             progress=False)['class_names']) == 4


def test_an_out_inside_the_source_tree_is_not_read_as_images(tree, tmp_path):
  root, _ = tree
  src = tmp_path / 'src'
  shutil.copytree(root, src)
  meta = prepare.prepare(str(src), str(src / 'records'), workers=1, progress=False)
  os.remove(src / 'records' / 'metadata.json')  # as if stopped before its end: a rerun lists src
  assert prepare.prepare(str(src), str(src / 'records'), workers=1, progress=False) == meta


def test_linked_class_folders_give_the_records_of_the_real_tree(tree, tmp_path):
  """Class folders that are symbolic links (one with a link back up, a loop) are read as the
  real ones; an empty source is named."""
  root, written = tree
  for split in ('train', 'val'):
    (tmp_path / 'linked' / split).mkdir(parents=True)
    for name in sorted(os.listdir(root / split)):
      (tmp_path / 'linked' / split / name).symlink_to(root / split / name)
  loop = root / 'train' / 'n00000000' / 'loop'  # inside a linked folder: back up to the tree
  loop.symlink_to(tmp_path / 'linked')
  try:
    prepare.prepare(str(tmp_path / 'linked'), str(tmp_path / 'out'), workers=1, progress=False)
  finally:
    loop.unlink()  # the tree is the module's
  for split in ('train', 'val'):
    source = records.RecordSource(str(tmp_path / 'out'), split)
    assert [source[i] for i in range(len(source))] == [
        (_file_bytes(root, rel), label) for rel, label in written[split]]
  (tmp_path / 'empty' / 'train').mkdir(parents=True)
  with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'empty'} holds no files")):
    prepare.prepare(str(tmp_path / 'empty'), str(tmp_path / 'out2'), workers=1, progress=False)


def test_a_split_without_class_folders_is_named(tree, tmp_path):
  """ImageNet's unlabelled test/ (images directly in the split folder) unpacked beside train/
  and val/: the error names the folder and what to do; several top folders are named too."""
  root, _ = tree
  src = tmp_path / 'src'
  shutil.copytree(root, src)
  os.makedirs(src / 'test')
  shutil.copy(src / 'val' / 'n00000001' / os.listdir(src / 'val' / 'n00000001')[0],
              src / 'test' / 'x.JPEG')
  with pytest.raises(ValueError, match=re.escape(
      "1 file(s) lie above the class folders, in ['test'] (e.g. 'test/x.JPEG'): leave an "
      "unlabelled split such as ImageNet's test/ out (--splits=train,val, or move it out of "
      '--src)')):
    prepare.prepare(str(src), str(tmp_path / 'out'), workers=1, progress=False)
  os.remove(src / 'test' / 'x.JPEG')
  shutil.copytree(src, tmp_path / 'two' / 'a')
  shutil.copytree(src, tmp_path / 'two' / 'b')
  with pytest.raises(ValueError, match=re.escape(
      '<split>/<class>/<image>, under at most one <root> folder; found e.g. '
      "['a/train/n00000000/")):
    prepare.prepare(str(tmp_path / 'two'), str(tmp_path / 'out'), workers=1, progress=False)
  assert not os.path.exists(tmp_path / 'out' / 'metadata.json')


def test_splits_prepares_the_named_splits_alone(tree, tmp_path):
  """ImageNet unpacked with its unlabelled test/, under a root folder (as an archive of it
  would be): --splits=train,val prepares those two from the tree, test/ is never read."""
  root, written = tree
  src = tmp_path / 'src' / 'imagenet'
  shutil.copytree(root, src)
  os.makedirs(src / 'test')
  (src / 'test' / 'x.JPEG').write_bytes(b'not even an image')
  result = run_prepare(f'--src={src.parent}', f'--out={tmp_path / "out"}', '--splits=train,val',
                       '--workers=1')
  assert result.returncode == 0, result.stderr
  assert 'train 15 images, val 6 images, 3 classes' in result.stdout
  for split, items in written.items():
    source = records.RecordSource(str(tmp_path / 'out'), split)
    assert [source[i] for i in range(len(source))] == [
        (_file_bytes(root, rel), label) for rel, label in items]
  # One split alone; a split that is not there; a finished --out without a split asked for.
  meta = prepare.prepare(str(src), str(tmp_path / 'val'), splits=['val'], workers=1,
                         progress=False)
  assert list(meta['splits']) == ['val'] and meta['splits']['val']['num_examples'] == 6
  probe = quickstart.get_config()  # read as a few-shot dataset, whose shots come from 'train'
  probe.eval.fewshot_dataset = f"records:{tmp_path / 'val'}"
  with pytest.raises(ValueError, match=re.escape(
      f"config.eval.fewshot_dataset='records:{tmp_path / 'val'}' has no 'train' split; it has "
      "['val'].")):
    data.probe_splits(probe, 3)
  prepare.prepare(str(src), str(tmp_path / 'train'), splits=['train'], workers=1,
                  progress=False)  # a few-shot dataset needs a split to evaluate on, too
  probe.eval.fewshot_dataset = f"records:{tmp_path / 'train'}"
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"config.eval.fewshot_dataset='records:{tmp_path / 'train'}': {tmp_path / 'train'} has no "
      "split to evaluate the probe on, none of ['validation', 'val', 'test']; it holds "
      "['train'].")):
    data.probe_splits(probe, 3)
  with pytest.raises(ValueError, match=re.escape(
      f"--splits names ['validation'], not a split folder of {src}; its split folders: "
      "['test', 'train', 'val'].")):
    prepare.prepare(str(src), str(tmp_path / 'other'), splits=['train', 'validation'])
  assert not (tmp_path / 'other' / 'metadata.json').exists()


def test_a_finished_out_gains_the_splits_it_lacks_and_keeps_the_others(tree, tmp_path):
  """val/ prepared after train/ into the same --out: train's files are not written again, val's
  records are its files; a val/ whose classes differ from train's, or an --out prepared from
  another --src, is refused and the --out left as it was."""
  root, written = tree
  src, out = tmp_path / 'src', tmp_path / 'out'
  shutil.copytree(root, src)
  prepare.prepare(str(src), str(out), splits=['train'], workers=1, shard_size=4,
                  progress=False)
  stamps = lambda: {p.name: p.stat().st_mtime_ns for p in out.iterdir()
                    if p.name.startswith('train')}
  before = stamps()
  result = run_prepare(f'--src={src}', f'--out={out}', '--splits=train,val', '--workers=1',
                       '--shard_size=4')
  assert result.returncode == 0, result.stderr
  assert f"{out} is prepared from {src} with the splits ['train']; adding ['val']." in (
      result.stderr)
  assert 'train 15 images, val 6 images, 3 classes' in result.stdout
  assert stamps() == before
  for split, items in written.items():
    source = records.RecordSource(str(out), split)
    assert [source[i] for i in range(len(source))] == [
        (_file_bytes(root, rel), label) for rel, label in items]
  meta = (out / 'metadata.json').read_bytes()
  os.makedirs(src / 'test' / 'n00000009')  # a class of its own
  shutil.copy(src / 'val' / 'n00000001' / os.listdir(src / 'val' / 'n00000001')[0],
              src / 'test' / 'n00000009' / 'x.JPEG')
  for dirname in os.listdir(src / 'val'):
    shutil.copytree(src / 'val' / dirname, src / 'test' / dirname)
  with pytest.raises(ValueError, match=re.escape(
      f"The class folders of ['test'] in {src} differ from the classes {out} was prepared "
      "with: only in " f"{out}: [], only in ['test']: ['n00000009']; remove {out} (or choose "
      'another --out) to prepare every split together.')):
    prepare.prepare(str(src), str(out), splits=['test'], workers=1, progress=False)
  with pytest.raises(ValueError, match=re.escape(
      f"{out} is already prepared from {src}, with the splits ['train', 'val'], not ['test']: "
      f'remove it (or choose another --out) to prepare --splits=test from {root}.')):
    prepare.prepare(str(root), str(out), splits=['test'])
  assert (out / 'metadata.json').read_bytes() == meta and not list(out.glob('test*'))


def test_a_rerun_after_the_archive_changed_reads_the_new_archive(tree, tmp_path):
  """A .tar.gz refused for its layout, then packed again without the stray file: the rerun
  decompresses the new archive (not the copy the first run left in --out) and prepares it."""
  root, written = tree
  archive, out = tmp_path / 'tree.tar.gz', tmp_path / 'out'
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(root, arcname='.')
    member = tarfile.TarInfo('val/README.txt')
    member.size = 4
    tar.addfile(member, io.BytesIO(b'read'))
  with pytest.raises(ValueError, match=re.escape("in ['val'] (e.g. 'val/README.txt')")):
    prepare.prepare(str(archive), str(out), workers=1, progress=False)
  assert len([n for n in os.listdir(out) if n.startswith('.source')]) == 1  # kept for a rerun
  with tarfile.open(archive, 'w:gz') as tar:
    tar.add(root, arcname='.')
  os.utime(archive, ns=(0, os.stat(archive).st_mtime_ns + 1))  # a later stamp on any clock
  meta = prepare.prepare(str(archive), str(out), workers=1, progress=False)
  assert meta['splits']['val']['num_examples'] == len(written['val'])
  assert not [n for n in os.listdir(out) if n.startswith('.source')]
  source = records.RecordSource(str(out), 'val')
  assert [source[i] for i in range(len(source))] == [
      (_file_bytes(root, rel), label) for rel, label in written['val']]


def test_the_command_line_reports_errors_in_one_line(tree, tmp_path):
  root, _ = tree
  src = tmp_path / 'src'
  shutil.copytree(root, src)
  shutil.rmtree(src / 'val' / 'n00000001')
  result = run_prepare(f'--src={src}', f'--out={tmp_path / "out"}')
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      'Error: The class folders of') and 'n00000001' in result.stderr
  result = run_prepare(f'--src={root}', f'--out={tmp_path / "out2"}', '--workers=1')
  assert result.returncode == 0, result.stderr
  assert 'train 15 images, val 6 images, 3 classes' in result.stdout
  # A .tar.gz's failed run keeps its decompressed copy for the rerun, and says so.
  with tarfile.open(tmp_path / 'src.tar.gz', 'w:gz') as tar:
    tar.add(src, arcname='.')
  result = run_prepare(f'--src={tmp_path / "src.tar.gz"}', f'--out={tmp_path / "out3"}')
  kept, = (tmp_path / 'out3').glob('.source-*.tar')
  assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].endswith(
      f"only in val: []. Kept for the rerun into this --out: {kept} "
      f'({footprint.size(kept.stat().st_size)}, the decompressed --src); remove it if there '
      'will be none.')


def test_record_source_errors_name_the_split_and_the_file(tree, tmp_path):
  root, _ = tree
  out = tmp_path / 'out'
  prepare.prepare(str(root), str(out), workers=1, shard_size=4, progress=False)
  with pytest.raises(ValueError, match=r"no 'test' split; it has \['train', 'val'\]"):
    records.RecordSource(str(out), 'test')
  os.remove(out / 'train-00002-of-00004.array_record')
  with pytest.raises(FileNotFoundError, match='train-00002-of-00004.array_record'):
    records.RecordSource(str(out), 'train')
  with pytest.raises(FileNotFoundError, match='does not exist'):
    records.RecordSource(str(tmp_path / 'nowhere'), 'train')


def test_a_damaged_or_truncated_shard_is_an_error_naming_it(tree, tmp_path):
  root, written = tree
  out = tmp_path / 'out'
  prepare.prepare(str(root), str(out), workers=1, shard_size=4, progress=False)
  flipped, cut = (out / f'train-0000{i}-of-00004.array_record' for i in (1, 3))
  with open(flipped, 'r+b') as f:  # bytes inside the shard's first chunk (records 4 to 7)
    f.seek(100)
    f.write(b'\xff' * 100)
  source = records.RecordSource(str(out), 'train')
  failed = []
  for i, (rel, label) in enumerate(written['train'][:12]):
    try:
      assert source[i] == (_file_bytes(root, rel), label)
    except OSError as e:
      failed.append(i)
      assert str(e).startswith(f'Cannot read record {i} of the train split in {flipped} ('), e
      assert str(e).endswith('the shard is damaged or was cut short in a copy. Copy the prepared '
                             'dataset again, or prepare it again into a new folder (python -m '
                             'vit_jax.data.prepare).'), e
  assert failed and set(failed) <= {4, 5, 6, 7}, failed
  with open(cut, 'r+b') as f:  # a copy cut short
    f.truncate(1000)
  with pytest.raises(OSError, match=re.escape(f'Cannot read {cut} (') + '.*the shard is damaged'):
    records.RecordSource(str(out), 'train')[0]


def test_prepare_names_a_missing_source_and_the_path_a_config_prefix_hides(tree, tmp_path):
  root, _ = tree
  with pytest.raises(FileNotFoundError, match=re.escape(f'--src={root}/no does not exist.')):
    prepare.prepare(f'{root}/no', str(tmp_path / 'out'), workers=1, progress=False)
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'--src=folder:{root} does not exist (--src takes the path alone: --src={root}).')):
    prepare.prepare(f'folder:{root}', str(tmp_path / 'out'), workers=1, progress=False)
  assert not (tmp_path / 'out').exists()


KILL_AFTER_TWO_SHARDS = '''
import os, signal, sys
from absl import app
from vit_jax.data import prepare
write, done = prepare._write_shard, []
def killing(job):
  out = write(job)
  done.append(1)
  if len(done) == 2:
    os.kill(os.getpid(), signal.SIGKILL)
  return out
prepare._write_shard = killing
app.run(prepare.main, argv=['prepare', *sys.argv[1:]])
'''


def test_a_run_killed_with_sigkill_resumes_and_ends_like_a_fresh_one(tree, tmp_path):
  root, _ = tree
  out, args = tmp_path / 'out', [f'--src={root}', '--workers=1', '--shard_size=4']
  killed = subprocess.run([sys.executable, '-c', KILL_AFTER_TWO_SHARDS, *args, f'--out={out}'],
                          capture_output=True, text=True, env=child_env(1))
  assert killed.returncode == -9, killed.stderr[-2000:]
  shards = sorted(n for n in os.listdir(out) if n.endswith('.array_record'))
  assert len(shards) == 2 and not (out / 'metadata.json').exists()
  stamps = {n: os.stat(out / n).st_mtime_ns for n in shards}
  resumed = run_prepare(*args, f'--out={out}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert '4 of 6 shards to write' in resumed.stderr
  assert {n: os.stat(out / n).st_mtime_ns for n in shards} == stamps
  prepare.prepare(str(root), str(tmp_path / 'fresh'), workers=1, shard_size=4, progress=False)
  for split in ('train', 'val'):
    a = records.RecordSource(str(out), split)
    b = records.RecordSource(str(tmp_path / 'fresh'), split)
    assert [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]


CTRL_C_AFTER_TWO_SHARDS = """
import os, signal, tqdm
update, done = tqdm.tqdm.update, []
def update_then_ctrl_c(self, n=1):
  done.append(n)
  if len(done) == 2:  # as a terminal's Ctrl-C: to every process of the group
    os.killpg(0, signal.SIGINT)
  return update(self, n)
tqdm.tqdm.update = update_then_ctrl_c
"""


# In a worker process, every image takes 0.5 s to check (a shard of one image is being written
# for that long); with DIE, a worker kills itself at its second image.
SLOW_WORKERS = """
import multiprocessing, os, signal, time
import PIL.ImageFile
load, checked = PIL.ImageFile.ImageFile.load, []
def slow_load(self):
  if multiprocessing.parent_process() is not None:
    checked.append(1)
    if DIE and len(checked) == 2:
      os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.5)
  return load(self)
PIL.ImageFile.ImageFile.load = slow_load
"""


def test_ctrl_c_stops_a_parallel_run_with_one_line_and_the_rerun_keeps_its_shards(tree,
                                                                                tmp_path):
  """Ctrl-C after two shards (sent to the process group, the two workers included, from a
  sitecustomize.py the command imports at start) while the workers write the next ones: one
  line, exit status 130, no worker traceback, the shards being written finished, not cut off;
  the rerun writes only the missing shards."""
  root, _ = tree
  out, args = tmp_path / 'out', [f'--src={root}', '--workers=2', '--shard_size=1']
  env = with_site_hook(child_env(1), tmp_path / 'hook',
                       CTRL_C_AFTER_TWO_SHARDS + 'DIE = False\n' + SLOW_WORKERS)
  stopped = run_prepare(*args, f'--out={out}', env=env, start_new_session=True)
  assert stopped.returncode == 130, stopped.stderr[-2000:]
  assert 'Traceback' not in stopped.stderr and 'KeyboardInterrupt' not in stopped.stderr
  assert stopped.stderr.splitlines()[-1] == (
      'Stopped by Ctrl-C; rerun the same command to continue (finished shards are kept).')
  finished = [n for n in os.listdir(out) if n.endswith('.array_record.json')]  # sidecars last
  assert 3 <= len(finished) < 21 and not (out / 'metadata.json').exists()
  assert not [n for n in os.listdir(out) if n.endswith('.tmp')]  # no shard cut off
  resumed = run_prepare(*args, f'--out={out}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'{21 - len(finished)} of 21 shards to write' in resumed.stderr


def test_the_workers_end_when_the_run_is_killed(tree, tmp_path):
  # SIGKILL (the out-of-memory killer) gives the run no chance to stop its workers itself;
  # here while they start (test_pipeline kills a parent whose workers run).
  root, _ = tree
  env = with_site_hook(child_env(1), tmp_path / 'hook', 'DIE = False\n' + SLOW_WORKERS)
  run = subprocess.Popen([sys.executable, '-m', 'vit_jax.data.prepare', f'--src={root}',
                          f'--out={tmp_path / "out"}', '--workers=2', '--shard_size=1'],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert not orphans_after_kill(run, 2)


def test_a_worker_that_dies_ends_the_run_with_one_line_and_keeps_the_finished_shards(tree,
                                                                                    tmp_path):
  root, _ = tree
  out, args = tmp_path / 'out', [f'--src={root}', '--workers=2', '--shard_size=1']
  env = with_site_hook(child_env(1), tmp_path / 'hook', 'DIE = True\n' + SLOW_WORKERS)
  died = run_prepare(*args, f'--out={out}', env=env)
  assert died.returncode == 1 and 'Traceback' not in died.stderr, died.stderr[-2000:]
  assert died.stderr.splitlines()[-1] == (
      'Error: A worker process died while writing shards (killed, or out of memory: try fewer '
      '--workers); the finished shards are kept, rerun the same command to continue.')
  finished = [n for n in os.listdir(out) if n.endswith('.array_record.json')]
  assert 1 <= len(finished) < 21
  resumed = run_prepare(*args, f'--out={out}')
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert f'{21 - len(finished)} of 21 shards to write' in resumed.stderr

