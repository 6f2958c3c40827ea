"""TFDS datasets read record by record with `tfds.data_source` (ArrayRecord builds): no
TensorFlow is imported, images stay encoded until the pipeline decodes them.

The data must be prepared already (`tfds build`, or the builder's `download_and_prepare()`) in
`data.tfds_dir` (None: TFDS's default, $TFDS_DATA_DIR or ~/tensorflow_datasets); nothing is
downloaded here. Any TFDS split
expression works ('train', 'validation', 'train[:99%]', 'train[99%:]').
"""
import hashlib
import os

from absl import logging
import numpy as np


def _tfds():
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("config.dataset='tfds:<name>' needs TensorFlow Datasets: pip install -e "
                      '".[tfds]" (reading needs no TensorFlow; many catalog builders need it to '
                      "prepare), or use a 'folder:<directory, .tar or .tar.gz>' or "
                      "'records:<directory>' dataset instead.") from e
  return tfds


class TfdsSource:
  """`source[i]` -> (encoded image bytes, label) of split expression `split` of the TFDS
  dataset `name` (features 'image' and 'label'). The labels (N,) int32 are read once (one pass
  over the records) and cached in `cache_dir` (keyed by the prepared data's directory and the
  split); the data source is opened lazily in every process that reads it."""

  def __init__(self, name: str, split: str, data_dir: str | None = None,
               cache_dir: str | None = None):
    self.name, self.split, self.data_dir = name, split, data_dir
    info = self._open().dataset_info
    features = info.features
    if 'image' not in features or 'label' not in features:
      raise ValueError(f"config.dataset='tfds:{name}' needs 'image' and 'label' features; it "
                       f'has {sorted(features.keys())}.')
    self.class_names = tuple(getattr(features['label'], 'names', None) or
                             map(str, range(features['label'].num_classes)))
    self.directory = f'tfds:{name}[{split}]'
    self.skipped = ()
    key = hashlib.sha256(repr((str(info.data_dir), split)).encode()).hexdigest()[:16]
    self._cache = os.path.join(
        cache_dir or os.environ.get('VIT_JAX_CACHE') or os.path.expanduser('~/.cache/vit_jax'),
        f'tfds-{name.replace("/", "_")}-labels-{key}.npy')
    self.labels = self._labels()

  def _open(self):
    return open_source(self.name, self.split, self.data_dir)

  def _labels(self) -> np.ndarray:
    """(N,) int32 from the cache file, else from one pass over the records (then cached)."""
    try:
      return np.load(self._cache, allow_pickle=False)
    except (OSError, ValueError):
      pass
    source = self._open()
    logging.info('Reading the labels of the %d records of tfds:%s[%s] once ...', len(source),
                 self.name, self.split)
    labels = np.empty(len(source), np.int32)
    for start in range(0, len(source), 1024):
      stop = min(start + 1024, len(source))
      try:
        chunk = source.__getitems__(range(start, stop))
      except RuntimeError as e:  # array_record's error for a damaged or truncated file
        raise self._damaged(f'records {start} to {stop - 1}', e) from None
      labels[start:start + len(chunk)] = [int(r['label']) for r in chunk]
    from vit_jax import files  # pylint: disable=g-import-not-at-top
    try:
      with files.atomic_open(self._cache, 'wb') as f:
        np.save(f, labels, allow_pickle=False)
    except OSError as e:
      logging.warning('Could not cache the labels in %s: %s', self._cache, e)
    return labels

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    if getattr(self, '_source', None) is None:
      self._source = self._open()
    try:
      record = self._source[int(index)]
    except RuntimeError as e:  # array_record's error for a damaged or truncated file
      raise self._damaged(f'record {index}', e) from None
    return record['image'], int(record['label'])

  def _damaged(self, what: str, error: RuntimeError) -> OSError:
    """The error for prepared files array_record cannot read (`what` of them)."""
    return OSError(f"Cannot read {what} of config.dataset='tfds:{self.name}' ({self.split} in "
                   f'{_data_dir(self.data_dir)}): {error}. The files are '
                   'damaged or were cut short in a copy: copy them again, or prepare again '
                   f'(tfds build {self.name} --file_format=array_record).')

  def __getstate__(self) -> dict:  # workers reopen the data source
    return {**self.__dict__, '_source': None}


def open_source(name: str, split: str, data_dir: str | None = None):
  """`tfds.data_source` of split expression `split` of the prepared TFDS dataset `name`, images
  left encoded; FileNotFoundError or ValueError naming config.dataset when it is not there."""
  tfds = _tfds()
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False,
                            decoders={'image': tfds.decode.SkipDecoding()})
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(f"config.dataset='tfds:{name}': no such TFDS dataset "
                            f'({str(e).splitlines()[0]}).') from None
  except ValueError as e:  # an unknown split names the existing ones
    raise ValueError(f"config.dataset='tfds:{name}', split {split!r}: {e}") from None
  except (AssertionError, FileNotFoundError) as e:  # not prepared
    raise FileNotFoundError(f"config.dataset='tfds:{name}' is not prepared in "
                            f'{_data_dir(data_dir)}: {e}') from None
  except (NotImplementedError, KeyError):  # not prepared (in data_dir: the first; in TFDS's
    # default directory: the second, no split), or prepared as TFRecord files only
    raise FileNotFoundError(
        f"config.dataset='tfds:{name}' has no ArrayRecord build in {_data_dir(data_dir)} "
        f'(random access reads only that format): prepare it with `tfds build {name} '
        '--file_format=array_record`, or set data.tfds_dir to where it is.') from None


def _data_dir(data_dir: str | None) -> str:
  """The directory TFDS reads: `data_dir` (data.tfds_dir), else its default ($TFDS_DATA_DIR or
  ~/tensorflow_datasets)."""
  return data_dir or _tfds().core.constants.DATA_DIR


def split_names(name: str, data_dir: str | None = None) -> list[str]:
  """The splits of the prepared TFDS dataset `name`."""
  tfds = _tfds()
  try:
    return sorted(tfds.builder(name, data_dir=data_dir).info.splits.keys())
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(f"config.dataset='tfds:{name}': no such TFDS dataset "
                            f'({str(e).splitlines()[0]}).') from None
