"""Prepared record datasets: ArrayRecord shards of encoded images plus a metadata file.

Layout of a prepared directory (written by `python -m vit_jax.data.prepare`):

  metadata.json               {'format': FORMAT, 'source': the --src it was prepared from,
                              'class_names': [...], 'splits': {split: {'num_examples': n,
                              'shards': [file, ...], 'skipped': [...]}}}
  <split>-labels.npy          (n,) int32 label of every record, in record order
  <split>-SSSSS-of-TTTTT.array_record   the encoded image bytes (JPEG, PNG, ...), one record
                              per image, in class order

`metadata.json` is written last, so a directory without it is not a finished dataset. The
labels file gives the per-class record indices that subsets need without reading any image.
The directory is a local folder (or a mounted bucket): the shards are opened as local files.
"""
import os

import numpy as np

from vit_jax import files

FORMAT = 'vit_jax.records/1'
METADATA = 'metadata.json'
# The prepared directories the presets read: environment variable -> its default.
PRESET_DIRS = {'VIT_JAX_I1K': '/data/imagenet2012', 'VIT_JAX_I21K': '/data/imagenet21k',
               'VIT_JAX_JFT': '/data/jft300m'}


def preset_dir(variable: str) -> str:
  """The prepared directory a preset reads: $<variable> (a key of PRESET_DIRS), by default
  its PRESET_DIRS value."""
  return os.environ.get(variable, PRESET_DIRS[variable])


def labels_file(directory: str, split: str) -> str:
  return os.path.join(directory, f'{split}-labels.npy')


def shard_name(split: str, index: int, count: int) -> str:
  return f'{split}-{index:05d}-of-{count:05d}.array_record'


def read_metadata(directory: str) -> dict:
  """The metadata of a prepared directory; errors name the directory and what is wrong."""
  path = os.path.join(directory, METADATA)
  if not files.is_local(directory):
    raise ValueError(f"config.dataset='records:{directory}': prepared datasets are read from "
                     'a local folder (ArrayRecord shards are opened as local files); copy it to '
                     'the disk of each host, or give the path of a mounted bucket (gcsfuse).')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"config.dataset='records:{directory}': {directory} does not "
                            f'exist{_preset_hint(directory)}.')
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'{directory} is not a prepared dataset ({METADATA} is missing; an interrupted '
        'prepare run leaves it out): run python -m vit_jax.data.prepare --src=<images> '
        f'--out={directory} (again: it resumes).')
  meta = files.read_json(path)  # ValueError naming the file when it is not JSON
  if not isinstance(meta, dict) or meta.get('format') != FORMAT:
    raise ValueError(f'{path} is not a {FORMAT} metadata file.')
  return meta


def _preset_hint(directory: str) -> str:
  """For a directory a preset names (`preset_dir`), where its variable pointed; else ''."""
  for variable in PRESET_DIRS:
    if directory == preset_dir(variable):
      where = (f'${variable}={os.environ[variable]}' if variable in os.environ else
               f'${variable}, not set: {PRESET_DIRS[variable]}')
      return (f' (the presets read it from {where}; prepare it with python -m '
              f'vit_jax.data.prepare --src=<images> --out={directory}, or set {variable} to '
              'the prepared folder)')
  return ''


class RecordSource:
  """Random access to one split of a prepared directory: `source[i]` -> (encoded image
  bytes, label). Opening reads the metadata and the labels only; shards are opened lazily in
  the process that reads them (so the source can be sent to worker processes)."""

  def __init__(self, directory: str, split: str):
    meta = read_metadata(directory)
    splits = meta['splits']
    if split not in splits:
      raise ValueError(f"config.dataset='records:{directory}' has no '{split}' split; it has "
                       f'{sorted(splits)}.')
    info = splits[split]
    self.directory, self.split = directory, split
    self.class_names = tuple(meta['class_names'])
    self.skipped = tuple(info.get('skipped', ()))
    self.paths = [os.path.join(directory, name) for name in info['shards']]
    missing = [p for p in self.paths if not os.path.isfile(p)]
    if missing:
      raise FileNotFoundError(f'Shard {missing[0]} of the {split} split is missing '
                              f'({len(missing)} of {len(self.paths)} missing).')
    self.labels = self._load_labels()
    if len(self.labels) != info['num_examples']:
      raise ValueError(f'{labels_file(directory, split)} has {len(self.labels)} labels but '
                       f'{METADATA} says {info["num_examples"]} examples.')
    self._reader = None

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[bytes, int]:
    if self._reader is None:
      self._reader = self._open()
    try:
      data = self._reader[int(index)]
    except RuntimeError as e:  # array_record's error for bytes that fail their checksum
      raise self._damaged(e, int(index)) from None
    return data, int(self.labels[index])

  def _open(self):
    """The reader of all shards (grain's ArrayRecordDataSource), checked against the labels."""
    from grain import sources  # imported where records are read
    try:
      reader = sources.ArrayRecordDataSource(self.paths)
    except RuntimeError as e:  # array_record's error for a shard it cannot open
      raise self._damaged(e) from None
    if len(reader) != len(self.labels):
      raise ValueError(f'The {self.split} shards of {self.directory} hold {len(reader)} '
                       f'records but {labels_file(self.directory, self.split)} has '
                       f'{len(self.labels)} labels.')
    return reader

  def _damaged(self, error: RuntimeError, index: int | None = None) -> OSError:
    """The error for shards array_record cannot read, naming the shard: the first that does
    not open alone, else the one holding record `index` (found by counting each shard's
    records; only on this error path)."""
    from grain import sources  # pylint: disable=g-import-not-at-top
    start, shard = 0, None
    for path in self.paths:
      try:
        count = len(sources.ArrayRecordDataSource([path]))
      except RuntimeError:
        shard = path
        break
      if index is not None and start <= index < start + count:
        shard = path
        break
      start += count
    shard = shard or f'the {self.split} shards of {self.directory}'
    what = f'record {index} of the {self.split} split in ' if index is not None else ''
    return OSError(f'Cannot read {what}{shard} ({error}): the shard is damaged or was cut '
                   'short in a copy. Copy the prepared dataset again, or prepare it again into '
                   'a new folder (python -m vit_jax.data.prepare).')

  def _load_labels(self) -> np.ndarray:
    """(N,) int32, memory-mapped (worker processes share the pages)."""
    path = labels_file(self.directory, self.split)
    try:
      labels = np.load(path, mmap_mode='r', allow_pickle=False)
    except (OSError, ValueError) as e:
      raise ValueError(f'Cannot read {path}: {e}') from e
    if labels.dtype != np.int32 or labels.ndim != 1:
      raise ValueError(f'{path} holds {labels.dtype} {labels.shape}, not a list of int32 labels.')
    return labels

  def __getstate__(self) -> dict:  # sent to worker processes without the data: reopened there
    return {**self.__dict__, '_reader': None, 'labels': None}

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self.labels = self._load_labels()
