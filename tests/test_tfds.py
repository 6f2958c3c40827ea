"""TFDS through `tfds.data_source`: a tiny dataset prepared here (ArrayRecord, real JPEG and PNG
bytes of varying sizes; preparing from encoded bytes needs no TensorFlow), read as a record
source with TFDS split expressions, streamed into training, decoded whole in memory."""
import re
import shutil
import sys
import textwrap

import numpy as np
import pytest

from vit_jax import data
from vit_jax.data import pipeline, tfds_source

BUILDER = '''
import io
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

SIZES = {'train': [(40, 60), (50, 30), (35, 35), (64, 48), (30, 50), (45, 45)] * 2,
         'validation': [(36, 36), (48, 40), (40, 52), (33, 41)]}
FIXED = bool(int('%(fixed)s'))


def examples(split):
  """[(encoded bytes, label)] of the split, in generation order."""
  out = []
  for i, (h, w) in enumerate(SIZES[split]):
    h, w = (24, 24) if FIXED else (h, w)
    rng = np.random.default_rng([len(split), i])
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    if i %% 3 == 1 and not FIXED:
      image = image.convert('L')
    buffer = io.BytesIO()
    image.save(buffer, format='PNG' if i %% 3 == 2 else 'JPEG')
    out.append((buffer.getvalue(), i %% 3))
  return out


class Tiny%(fixed)s(tfds.core.GeneratorBasedBuilder):
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(), 'label': tfds.features.ClassLabel(
            names=['cat', 'dog', 'fox'])}))

  def _split_generators(self, dl_manager):
    return {s: self._generate_examples(s) for s in SIZES}

  def _generate_examples(self, split):
    for i, (image, label) in enumerate(examples(split)):
      yield i, {'image': image, 'label': label}
'''


def _build(root, fixed: int):
  """Writes and prepares the builder `tiny<fixed>` under root; returns its module."""
  package = root / f'tinypkg{fixed}'
  package.mkdir()
  (package / '__init__.py').write_text('')
  (package / 'builder.py').write_text(textwrap.dedent(BUILDER % {'fixed': fixed}))
  sys.path.insert(0, str(root))
  try:
    module = __import__(f'tinypkg{fixed}.builder', fromlist=['builder'])
  finally:
    sys.path.remove(str(root))
  getattr(module, f'Tiny{fixed}')(data_dir=str(root / 'tfds'),
                                  file_format='array_record').download_and_prepare()
  return module


TFDS_DIR = []


@pytest.fixture(scope='module')
def tiny(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  TFDS_DIR[:] = [str(root / 'tfds')]
  return root, _build(root, 0), _build(root, 1)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
  monkeypatch.setenv('VIT_JAX_CACHE', str(tmp_path / 'cache'))


def _config(dataset, **data_fields):
  from configs import quickstart
  config = quickstart.get_config()
  config.dataset = dataset
  config.data.tfds_dir = TFDS_DIR[0]
  for key, value in data_fields.items():
    config.data[key] = value
  return config


def test_records_are_the_prepared_bytes_and_labels_with_split_expressions(tiny):
  _, module, _ = tiny
  source = tfds_source.TfdsSource('tiny0', 'train', TFDS_DIR[0])
  assert len(source) == 12 and source.class_names == ('cat', 'dog', 'fox')
  assert sorted(source[i] for i in range(12)) == sorted(module.examples('train'))
  np.testing.assert_array_equal(source.labels, [source[i][1] for i in range(12)])
  head = data.open_split(_config('tfds:tiny0'), 'train[:50%]')
  tail = data.open_split(_config('tfds:tiny0'), 'train[50%:]')
  assert isinstance(head, data.RecordSplit) and len(head) == len(tail) == 6
  got = [head.source[i] for i in range(6)] + [tail.source[i] for i in range(6)]
  assert got == [source[i] for i in range(12)]
  assert data.eval_split_name(_config('tfds:tiny0')) == 'validation'


def test_unknown_splits_and_datasets_are_named(tiny):
  with pytest.raises(ValueError, match=r"split 'test'.*\['train', 'validation'\]"):
    data.open_split(_config('tfds:tiny0'), 'test')
  with pytest.raises(FileNotFoundError, match="'tfds:nosuch'"):
    data.open_split(_config('tfds:nosuch'), 'train')
  data.check_present(_config('tfds:tiny0'))  # 'train' and the default 'validation'
  with pytest.raises(ValueError, match=re.escape(
      "data.eval_split='test': config.dataset='tfds:tiny0', split 'test': ")):
    data.check_present(_config('tfds:tiny0', eval_split='test'))  # as a sweep checks its points


def test_a_dataset_not_prepared_in_tfds_dir_says_how_to_prepare_it(tiny, tmp_path):
  config = _config('tfds:tiny0', tfds_dir=str(tmp_path / 'elsewhere'))
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"config.dataset='tfds:tiny0' has no ArrayRecord build in {tmp_path}/elsewhere (random "
      'access reads only that format): prepare it with `tfds build tiny0 '
      '--file_format=array_record`, or set data.tfds_dir to where it is.')):
    data.open_split(config, 'train')


def test_a_dataset_not_prepared_in_the_default_tfds_directory_is_the_same_error(
    tiny, tmp_path, monkeypatch):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(tfds.core.constants, 'DATA_DIR', str(tmp_path / 'default'))
  config = _config('tfds:tiny0', tfds_dir=None)  # TFDS's default: $TFDS_DATA_DIR at its import
  with pytest.raises(FileNotFoundError, match=re.escape(
      f"config.dataset='tfds:tiny0' has no ArrayRecord build in {tmp_path}/default (random ")):
    data.open_split(config, 'train')


def test_damaged_or_truncated_files_are_an_error_naming_the_dataset(tiny, tmp_path):
  copy = tmp_path / 'tfds'
  shutil.copytree(TFDS_DIR[0], copy)
  source = tfds_source.TfdsSource('tiny0', 'train', str(copy))  # its labels read and cached
  [shard] = (copy / 'tiny0' / '1.0.0').glob('tiny0-train.array_record-*')
  with open(shard, 'r+b') as f:  # bytes of the first chunk
    f.seek(100)
    f.write(b'\xff' * 100)
  where = f"of config.dataset='tfds:tiny0' (train in {copy}): "
  advice = re.escape('The files are damaged or were cut short in a copy: copy them again, or '
                     'prepare again (tfds build tiny0 --file_format=array_record).')
  with pytest.raises(OSError, match=re.escape(f'Cannot read record 0 {where}') + '.*' + advice):
    source[0]
  shutil.rmtree(tmp_path / 'cache')  # the labels are read again
  damaged = re.escape(f'Cannot read records 0 to 11 {where}') + '.*' + advice
  with pytest.raises(OSError, match=damaged):
    tfds_source.TfdsSource('tiny0', 'train', str(copy))
  with open(shard, 'r+b') as f:  # a copy cut short
    f.truncate(1000)
  with pytest.raises(OSError, match=damaged):
    tfds_source.TfdsSource('tiny0', 'train', str(copy))


def test_streamed_batches_decode_the_records(tiny):
  split = data.open_split(_config('tfds:tiny0'), 'validation')
  batches = list(pipeline.stream_eval_batches(split, 4, image_size=16, crop_fraction=1.))
  assert len(batches) == 1 and batches[0][0].shape == (4, 16, 16, 3) and batches[0][2].all()
  for row in range(4):
    np.testing.assert_array_equal(batches[0][0][row],
                                  pipeline.eval_transform(split.source[row][0], 16, 1.))


def test_equal_size_images_load_whole_in_memory(tiny):
  _, _, module = tiny
  split = data.open_split(_config('tfds:tiny1', kind='memory'), 'train')
  assert isinstance(split, data.Split) and split.images.shape == (12, 24, 24, 3)
  source = tfds_source.TfdsSource('tiny1', 'train', TFDS_DIR[0])
  from PIL import Image
  import io
  for i in range(12):  # JPEG and PNG records
    want = np.asarray(Image.open(io.BytesIO(source[i][0])).convert('RGB'))
    np.testing.assert_array_equal(split.images[i], want)
  np.testing.assert_array_equal(split.labels, source.labels)


def test_auto_holds_equal_size_records_in_memory_and_streams_the_others(tiny):
  assert data.choose_kind(_config('tfds:tiny1')) == (
      'memory', '12 images, 20.7 kB decoded <= 4 GB')  # 12 x 24 x 24 x 3 bytes
  assert data.choose_kind(_config('tfds:tiny0'))[0] == 'stream'  # sizes from 30 to 64 pixels
  train, _, test = data.load_data(_config('tfds:tiny1'))
  assert isinstance(train, data.Split) and train.images.shape == (12, 24, 24, 3)
  assert isinstance(test, data.Split) and test.images.shape == (4, 24, 24, 3)  # 'validation'
