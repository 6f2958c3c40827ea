"""The streaming pipeline: host-side crops against direct NumPy / Pillow computations, the
training stream's determinism (worker count, resume, processes) and the evaluation pass."""
import io
import multiprocessing
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import child_env, orphans_after_kill
from imagenet_tree import make_tree
from vit_jax.data import pipeline, prepare, records


def _png(array):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def _jpeg(array, quality=90):
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='JPEG', quality=quality)
  return buffer.getvalue()


def _photo(h, w, seed=0):
  """A smooth image with some texture (JPEG and resizing behave as on photos)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:h, :w] / max(h, w)
  base = np.stack([200 * yy, 150 * xx, 100 * (1 - yy * xx)], -1) + 30 * np.sin(20 * xx)[..., None]
  return np.clip(base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp('data')
  make_tree(root / 'src', classes=3, per_class={'train': 5, 'val': 3})
  prepare.prepare(str(root / 'src'), str(root / 'out'), workers=1, shard_size=4, progress=False)
  return str(root / 'out')


def test_central_crop_is_the_numpy_slice_when_no_resampling_is_needed():
  image = _photo(30, 40)
  out = pipeline.eval_transform(_png(image), image_size=24, crop_fraction=0.8)
  # Square of 0.8 * 30 = 24 px at the centre: rows 3..27, columns 8..32.
  np.testing.assert_array_equal(out, image[3:27, 8:32])
  gray = image[..., 0]
  out = pipeline.eval_transform(_png(gray), image_size=24, crop_fraction=0.8)
  np.testing.assert_array_equal(out, np.repeat(gray[3:27, 8:32, None], 3, -1))


def test_full_crop_is_the_image_or_its_mirror_with_both_flips_drawn():
  image = _photo(16, 16)
  transform = pipeline.TrainTransform(image_size=16, crop_scale=(1., 1.), crop_ratio=(1., 1.),
                                      flip=True)
  flips = []
  for seed in range(12):
    out = transform(_png(image), np.random.default_rng(seed))
    flips.append(not np.array_equal(out, image))
    np.testing.assert_array_equal(out, image[:, ::-1] if flips[-1] else image)
  assert 0 < sum(flips) < 12


def test_random_crops_lie_in_the_image_with_the_drawn_area_and_aspect():
  rng = np.random.default_rng(0)
  for _ in range(200):
    w, h = rng.integers(20, 500, 2)
    left, top, cw, ch = pipeline.crop_box((w, h), rng, crop=True, scale=(0.08, 1.),
                                          ratio=(3 / 4, 4 / 3))
    assert 0 <= left and left + cw <= w + 1e-9 and 0 <= top and top + ch <= h + 1e-9
    if cw < w and ch < h:  # not clipped: area and aspect within the ranges
      assert 0.08 - 1e-9 <= cw * ch / (w * h) <= 1 + 1e-9
      assert 3 / 4 - 1e-9 <= cw / ch <= 4 / 3 + 1e-9
  assert pipeline.crop_box((30, 20), rng, crop=False, scale=(1, 1), ratio=(1, 1)) == (
      0, 0, 30, 20)


def test_draft_decoding_shrinks_the_jpeg_and_matches_a_full_decode():
  data = _jpeg(_photo(360, 480))
  image, scale = pipeline.open_image(data, need=(100, 80))
  assert scale == 4 and image.size == (120, 90)
  box = (40., 30., 300., 260.)
  fast = np.asarray(pipeline._resize_box(data, box, 32), np.float32)
  full = Image.open(io.BytesIO(data)).convert('RGB')
  reference = np.asarray(full.resize((32, 32), Image.BILINEAR,
                                     box=(40, 30, 340, 290)), np.float32)
  assert np.abs(fast - reference).mean() < 3  # of 255: the DCT-domain scaling differs slightly


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_same(a, b):
  for (x1, y1), (x2, y2) in zip(a, b, strict=True):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_training_stream_is_a_function_of_seed_and_step_and_resumes_exactly(prepared):
  split = pipeline.RecordSplit(records.RecordSource(prepared, 'train'))
  transform = pipeline.TrainTransform(image_size=16)
  make = lambda seed=0: pipeline.StreamIterator(split, 5, seed, transform=transform)
  straight = _take(make(), 6)
  # Each epoch (3 batches of 5 of the 15 examples) holds every label as often as the split.
  for epoch in (straight[:3], straight[3:]):
    np.testing.assert_array_equal(np.bincount(np.concatenate([y for _, y in epoch])),
                                  np.bincount(split.labels))
  resumed = make()
  _take(resumed, 2)
  state = resumed.get_state()
  assert state == {'position': 10}
  again = make()
  again.set_state(state)
  _assert_same(_take(again, 4), straight[2:])
  other = _take(make(seed=1), 3)
  assert any(not np.array_equal(a[0], b[0]) for a, b in zip(other, straight))


@pytest.mark.slow
def test_worker_processes_do_not_change_the_data(prepared):
  split = pipeline.RecordSplit(records.RecordSource(prepared, 'train'))
  transform = pipeline.TrainTransform(image_size=16)
  inline = _take(pipeline.StreamIterator(split, 4, 3, transform=transform), 5)
  workers = pipeline.StreamIterator(split, 4, 3, transform=transform, workers=2)
  try:
    _assert_same(_take(workers, 5), inline)
  finally:
    workers.close()


@pytest.mark.slow
def test_a_worker_process_that_dies_is_an_os_error_saying_so(prepared):
  split = pipeline.RecordSplit(records.RecordSource(prepared, 'train'))
  stream = pipeline.StreamIterator(split, 4, 3, transform=pipeline.TrainTransform(image_size=16),
                                   workers=1)
  others = set(multiprocessing.active_children())
  try:
    next(stream)
    [worker] = set(multiprocessing.active_children()) - others
    os.kill(worker.pid, signal.SIGKILL)
    with pytest.raises(OSError, match=re.escape(
        'A data worker process died (killed by SIGKILL, as the out-of-memory killer does). The '
        'checkpoints are intact: rerun the same command')):
      for _ in range(100):  # the batches already made come first
        next(stream)
  finally:
    stream.close()


@pytest.mark.slow
def test_worker_processes_end_when_their_parent_is_killed(prepared):
  # SIGKILL (the out-of-memory killer) gives the parent no chance to stop its workers itself;
  # here they are running (they made a batch). test_records kills a run while they start.
  code = ('import time\nfrom vit_jax.data import pipeline, records\n'
          f'split = pipeline.RecordSplit(records.RecordSource({prepared!r}, "train"))\n'
          'stream = pipeline.StreamIterator(split, 4, 3, workers=2,\n'
          '                                 transform=pipeline.TrainTransform(image_size=16))\n'
          'next(stream)\nprint("running", flush=True)\ntime.sleep(600)\n')
  parent = subprocess.Popen([sys.executable, '-c', code], env=child_env(1), stdout=subprocess.PIPE,
                            text=True)
  assert parent.stdout.readline() == 'running\n'  # else it has exited (end of its output)
  assert not orphans_after_kill(parent, 2)


def test_processes_read_disjoint_rows_whose_union_is_the_global_batch(prepared):
  split = pipeline.RecordSplit(records.RecordSource(prepared, 'train'))
  transform = pipeline.TrainTransform(image_size=16, crop=False, flip=False)
  whole = _take(pipeline.StreamIterator(split, 6, 0, transform=transform), 4)
  parts = [_take(pipeline.StreamIterator(split, 6, 0, p, 2, transform=transform), 4)
           for p in range(2)]
  for b, (images, labels) in enumerate(whole):
    np.testing.assert_array_equal(np.concatenate([parts[0][b][0], parts[1][b][0]]), images)
    np.testing.assert_array_equal(np.concatenate([parts[0][b][1], parts[1][b][1]]), labels)


def test_evaluation_covers_every_example_once_in_order_with_a_masked_pad(prepared):
  source = records.RecordSource(prepared, 'val')
  split = pipeline.RecordSplit(source).take(np.array([8, 0, 3, 5, 1, 2, 7]))
  batches = list(pipeline.stream_eval_batches(split, 4, image_size=16, crop_fraction=0.875))
  images = np.concatenate([b[0] for b in batches])
  labels = np.concatenate([b[1] for b in batches])
  mask = np.concatenate([b[2] for b in batches])
  np.testing.assert_array_equal(mask, [True] * 7 + [False])
  np.testing.assert_array_equal(labels[:7], source.labels[[8, 0, 3, 5, 1, 2, 7]])
  for row, record in enumerate([8, 0, 3, 5, 1, 2, 7]):
    np.testing.assert_array_equal(images[row],
                                  pipeline.eval_transform(source[record][0], 16, 0.875))
  # Two processes: each its half of every global batch.
  halves = [list(pipeline.stream_eval_batches(split, 4, p, 2, image_size=16,
                                              crop_fraction=0.875)) for p in range(2)]
  for b, (x, y, m) in enumerate(batches):
    np.testing.assert_array_equal(np.concatenate([halves[0][b][0], halves[1][b][0]]), x)
    np.testing.assert_array_equal(np.concatenate([halves[0][b][2], halves[1][b][2]]), m)


def test_a_record_that_is_not_an_image_is_named(prepared, tmp_path):
  class Broken:
    labels = np.zeros(3, np.int32)
    class_names = ('a',)
    def __len__(self):
      return 3
    def __getitem__(self, i):
      return b'garbage', 0
  with pytest.raises(ValueError, match='Record 1 of Broken is not a decodable image'):
    next(iter(pipeline.stream_eval_batches(pipeline.RecordSplit(Broken()).take([1]), 1,
                                           image_size=8, crop_fraction=1.)))
