"""One interface over both kinds of split: the loop, the evaluator and the sweep call these and
never look at which kind they got.

- In memory (`Split`): decoded whole to uint8 arrays of one image size, augmented on the
  device: 'digits', and 'folder:<path>' (with its decoded-array cache), 'records:<prepared
  directory>' (`python -m vit_jax.data.prepare`) and 'tfds:<name>' (`tfds.data_source`)
  splits that fit.
- Streaming (`RecordSplit`): 'folder:', 'records:' and 'tfds:' splits read record by record by
  the grain pipeline, decoded and augmented on the host (images of any size; 'folder:' trees
  read in place).

`data.kind` ('auto' | 'memory' | 'stream') forces one kind; 'auto' (`choose_kind`) holds a
dataset in memory when its training split, decoded (`footprint`: N x H x W x C bytes at the
stored image size), takes at most `data.memory_limit_gb` and its images have one size, and
streams it otherwise ('digits' is always in memory). `resolve_kind` decides once
for a run and logs the decision in one line.
"""
import contextlib
import copy
import dataclasses
import re
from typing import Iterator

from absl import logging
import ml_collections
import numpy as np

from vit_jax import files
from vit_jax.data import folder, footprint, pipeline, records, sources, tfds_source
from vit_jax.data.batches import TrainIterator, eval_batches
from vit_jax.data.folder_source import FolderSource
from vit_jax.data.split import Split

KINDS = ('auto', 'memory', 'stream')
MEMORY_LIMIT_GB = 4.  # data.memory_limit_gb by default (and for runs saved before it existed)
EVAL_SPLITS = ('validation', 'val', 'test')  # a record source's evaluation split, if not given
PROBE_FOLDER_SPLITS = ('test', 'validation', 'val')  # a 'folder:' probe's, the first held


def _record_source(config: ml_collections.ConfigDict, split: str):
  kind, _, arg = config.dataset.partition(':')
  if kind == 'records' and arg:
    return records.RecordSource(arg, split)
  if kind == 'tfds' and arg:
    return tfds_source.TfdsSource(arg, split, config.data.tfds_dir, config.data.cache_dir)
  if kind == 'folder' and arg:
    return FolderSource(arg, split)
  raise ValueError(f'config.dataset={config.dataset!r}: data.kind=\'stream\' needs a '
                   "'records:<directory>' (prepare one with python -m vit_jax.data.prepare), "
                   "'tfds:<name>' or 'folder:<directory, .tar or .tar.gz>' dataset.")


def _record_split(config: ml_collections.ConfigDict, split: str) -> pipeline.RecordSplit:
  """Split `split` of config.dataset as records: a slice such as 'train[:99%]' is selected
  (`_select`) before anything is read; TFDS takes any split expression itself."""
  if config.dataset.startswith('tfds:'):
    return pipeline.RecordSplit(_record_source(config, split))
  source = _record_source(config, parse_split(split)[0])
  return _select(pipeline.RecordSplit(source, skipped=source.skipped), split)


def _cached_shape(config: ml_collections.ConfigDict, split: str) -> tuple[int, ...] | None:
  """(N, H, W, C) of split `split` of a 'folder:' dataset from its decoded-array cache (for a
  slice, N is the slice's share; one past the end raises ValueError), or None when the split
  is not cached."""
  shape = folder.cached_shape(config.dataset.partition(':')[2], parse_split(split)[0],
                              config.data.cache_dir, config.data.corrupt_images == 'skip')
  if shape is None:
    return None
  chosen = _slice_indices(split, shape[0])
  return shape if chosen is None else (len(chosen), *shape[1:])


def _footprint(config: ml_collections.ConfigDict) -> footprint.Footprint:
  """The decoded size of the training split: a 'folder:' split from its decoded-array cache
  when it is there, else any split from its records (`footprint.of_records`)."""
  split = config.data.train_split
  shape = _cached_shape(config, split) if config.dataset.startswith('folder:') else None
  if shape is not None:
    return footprint.of_array(shape)
  return footprint.of_records(_record_split(config, split))


def training_examples(config: ml_collections.ConfigDict) -> int:
  """N, the examples in data.train_split of config.dataset, counted without decoding the split
  (`_footprint`: a record source's count, a folder's listing or its decoded-array cache; the
  embedded digits are loaded)."""
  if config.dataset == 'digits':
    return len(open_split(config, config.data.train_split).labels)
  return _footprint(config).examples


def choose_kind(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """('memory' or 'stream', why): data.kind when it forces one; for 'auto', memory when the
  decoded training split fits under data.memory_limit_gb (see the module docstring)."""
  kind = config.data.kind
  if kind not in KINDS:
    raise ValueError(f'data.kind={kind!r} must be one of {KINDS}.')
  if kind != 'auto':
    return kind, f'data.kind={kind!r}'
  if config.dataset == 'digits':
    return 'memory', 'the embedded digits'
  found = dataclasses.replace(_footprint(config), channels=config.data.get('channels'))
  limit = config.data.get('memory_limit_gb', MEMORY_LIMIT_GB)
  if found.nbytes is None:
    return 'stream', found.describe()
  relation = '<=' if found.nbytes <= limit * footprint.GB else '>'
  return ('memory' if relation == '<=' else 'stream',
          f'{found.describe()} {relation} {footprint.size(limit * footprint.GB)}')


def resolve_kind(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose data.kind is the kind its dataset is read as ('memory' or
  'stream', `choose_kind`), decided once and logged in one line ('data: folder:cifar10.tar.gz,
  memory (50,000 images, 154 MB decoded <= 4 GB)', with data.channels when set: ', read as
  grayscale (data.channels=1)')."""
  kind, why = choose_kind(config)
  channels = config.data.get('channels')
  read_as = {1: ', read as grayscale', 3: ', read as colour'}.get(channels)
  logging.info('data: %s, %s (%s)%s', config.dataset, kind, why,
               f'{read_as} (data.channels={channels})' if read_as else '')
  resolved = copy.deepcopy(config)
  resolved.data.kind = kind
  return resolved


def is_streamed(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` reads its dataset through the streaming pipeline."""
  return choose_kind(config)[0] == 'stream'


def _first_held(dataset: str, tfds_dir: str | None, order: tuple[str, ...]
                ) -> tuple[str | None, list[str]]:
  """(the first of `order` that `dataset` holds or None, the sorted splits it holds): a
  'records:' or 'tfds:' dataset's from its metadata, a 'folder:' one's split folders from a
  listing (an archive is read through)."""
  kind, _, arg = dataset.partition(':')
  if kind == 'tfds':
    held = tfds_source.split_names(arg, tfds_dir)
  elif kind == 'records':
    held = list(records.read_metadata(arg)['splits'])
  else:
    folder.require(arg)
    held = folder.split_names(folder.listing(arg, None)[0])
  return next((s for s in order if s in held), None), sorted(held)


def eval_split_name(config: ml_collections.ConfigDict) -> str:
  """data.eval_split, or by default 'test' for 'digits' and 'folder:' datasets and for record
  sources ('records:', 'tfds:') the first of EVAL_SPLITS they have (ImageNet's labelled
  evaluation split is 'validation'/'val'), whichever kind reads them."""
  if config.data.eval_split:
    return config.data.eval_split
  if not config.dataset.startswith(('records:', 'tfds:')):
    return 'test'
  name, held = _first_held(config.dataset, config.data.tfds_dir, EVAL_SPLITS)
  if name is None:
    raise ValueError(f'config.dataset={config.dataset!r} has none of the evaluation splits '
                     f'{EVAL_SPLITS} (it has {held}); set data.eval_split.')
  return name


_EXPRESSION = re.compile(r'^([\w-]+)(?:\[(\d*)(%?):(\d*)(%?)\])?$')


def parse_split(expression: str) -> tuple[str, tuple[int | None, int | None, bool] | None]:
  """'train' -> ('train', None); 'train[:99%]', 'train[102400:]', 'val[10:20]' -> (name,
  (start, stop, in percent))."""
  match = _EXPRESSION.match(expression)
  if not match or (match.group(2) and match.group(4) and match.group(3) != match.group(5)):
    raise ValueError(f'Split {expression!r} must be <name> or <name>[<start>:<stop>] '
                     '(non-negative integers or percentages, e.g. train[:99%]).')
  name, start, start_pct, stop, stop_pct = match.groups()
  if start is None:
    return name, None
  number = lambda v: int(v) if v else None
  return name, (number(start), number(stop), bool(start_pct or stop_pct))


def _slice_indices(expression: str, n: int) -> np.ndarray | None:
  """The sorted indices into a split of `n` examples that `expression` selects (None for a
  whole split): a slice selects from the split in a fixed pseudo-random order (the same for
  every run and kind), so slices mix all classes, as TFDS's shuffled files do, though folders
  and prepared records are ordered by class; percentages are rounded to examples. A bound
  past the end (more than 100% or the example count) is an error, as in TFDS, not cut to the
  end."""
  bounds = parse_split(expression)[1]
  if bounds is None:
    return None
  start, stop, percent = bounds
  if past := [v for v in (start, stop) if v is not None and v > (100 if percent else n)]:
    raise ValueError(f'Split {expression!r} reaches past the end of its split: {past[0]}'
                     + ('% is more than 100%.' if percent else f' is more than its {n} images.'))
  scale = lambda v: None if v is None else (round(v * n / 100) if percent else v)
  chosen = np.random.default_rng(0).permutation(n)[scale(start):scale(stop)]
  if not len(chosen):
    raise ValueError(f'Split {expression!r} selects none of the {n} images.')
  return np.sort(chosen)


def _select(split: Split | pipeline.RecordSplit, expression: str
            ) -> Split | pipeline.RecordSplit:
  """The examples of the whole split `split` that `expression` selects (`_slice_indices`)."""
  chosen = _slice_indices(expression, len(split.labels))
  return split if chosen is None else split.take(chosen)


def open_split(config: ml_collections.ConfigDict, split: str) -> Split | pipeline.RecordSplit:
  """Split `split` (data.train_split or eval_split_name(config)) of config.dataset, of the
  kind `choose_kind` says (a run calls `resolve_kind` first, so 'auto' is decided once), its
  images read as data.channels asks (None: as stored; streamed images are colour). Every
  dataset takes slices such as 'train[:99%]' (`_slice_indices`) in either kind: records are
  selected before they are decoded, a folder's or the digits' split is decoded (or read from
  its cache) whole."""
  if is_streamed(config):
    opened = _record_split(config, split)
  elif config.dataset.startswith(('records:', 'tfds:')):
    opened = sources.decode_records(_record_split(config, split),
                                    config.data.corrupt_images == 'skip')
  else:
    opened = _select(sources.load_split(
        config.dataset, parse_split(split)[0], cache_dir=config.data.cache_dir,
        corrupt_images=config.data.corrupt_images, tfds_dir=config.data.tfds_dir), split)
  return opened.with_channels(config.data.get('channels'))  # (absent in runs saved before it)


@contextlib.contextmanager
def _as_fewshot_dataset(dataset: str) -> Iterator[None]:
  """Errors inside name the field the few-shot dataset `dataset` comes from: a source's
  "config.dataset=" becomes "config.eval.fewshot_dataset=", other messages start with
  "config.eval.fewshot_dataset='<dataset>': " (same exception type)."""
  try:
    yield
  except (ValueError, OSError, ImportError) as e:
    field = 'config.eval.fewshot_dataset='
    message = str(e).replace('config.dataset=', field)
    raise type(e)(message if field in message else f'{field}{dataset!r}: {message}') from e


def _probe_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` whose dataset is eval.fewshot_dataset, read with the same data.*
  settings from its 'train' split and its evaluation split, which the probe has no field to
  name: a record source's first of EVAL_SPLITS, a 'folder:' dataset's first of
  PROBE_FOLDER_SPLITS (ImageNet's layout has val/, no test/), and 'test' for 'digits'. Raises
  FileNotFoundError when the dataset holds none of them."""
  probe = copy.deepcopy(config)
  probe.dataset = config.eval.fewshot_dataset
  probe.data.train_split, probe.data.eval_split = 'train', 'test'
  kind, _, path = probe.dataset.partition(':')
  if kind == 'digits' or kind == 'folder' and not files.isdir(path) and folder.cached_shape(
      path, 'test', config.data.cache_dir, config.data.corrupt_images == 'skip'):
    return probe  # (an archive's decoded test split: no need to read the archive through)
  order = PROBE_FOLDER_SPLITS if kind == 'folder' else EVAL_SPLITS
  probe.data.eval_split, held = _first_held(probe.dataset, config.data.tfds_dir, order)
  if not probe.data.eval_split:
    raise FileNotFoundError(f'{path} has no split to evaluate the probe on, none of '
                            f'{list(order)}; it holds {held}.')
  return probe


def probe_splits(config: ml_collections.ConfigDict, channels: int) -> tuple | None:
  """(train, evaluation) splits of eval.fewshot_dataset for the few-shot probe (`_probe_config`),
  opened like the run's own dataset, their images converted to the model's `channels` (and
  logged, when the dataset holds grayscale images for a colour model, or back); None without
  one."""
  if not config.eval.fewshot_dataset:
    return None
  with _as_fewshot_dataset(config.eval.fewshot_dataset):
    probe = resolve_kind(_probe_config(config))
    splits = open_split(probe, 'train'), open_split(probe, probe.data.eval_split)
  if splits[0].channels != channels:
    logging.info('The few-shot dataset %s has %d-channel images, the model %d: they are '
                 'converted (%s).', probe.dataset, splits[0].channels, channels,
                 'grayscale as colour' if channels == 3 else 'to luma')
  return tuple(split.with_channels(channels) for split in splits)


def _check_present(dataset: str, train_split: str, tfds_dir: str | None) -> None:
  kind, _, arg = dataset.partition(':')
  if kind == 'folder':
    folder.require(arg)
  elif kind == 'records':
    records.read_metadata(arg)
  elif kind == 'tfds':
    tfds_source.open_source(arg, train_split, tfds_dir)


@contextlib.contextmanager
def _naming_split(field: str | None, split: str) -> Iterator[None]:
  """Errors inside start with the field that set split `split` ("data.eval_split='val': ...");
  `field` None (a default split): unchanged."""
  try:
    yield
  except (ValueError, OSError) as e:
    if field is None:
      raise
    raise type(e)(f'{field}={split!r}: {e}') from e


def _check_splits(config: ml_collections.ConfigDict,
                  fields: tuple[str | None, str | None]) -> None:
  """Raises FileNotFoundError or ValueError when data.train_split or the evaluation split
  (`eval_split_name`) is not a split of config.dataset (for a 'folder:' tree: a split folder
  of class folders, as `folder.image_paths` checks), naming the field of `fields` that set the
  split (None: none). Decodes no image: a tree is listed once (an archive only when a split's
  decoded-array cache is missing)."""
  kind, _, arg = config.dataset.partition(':')
  listed = None
  for field, split in zip(fields, (config.data.train_split, eval_split_name(config))):
    with _naming_split(field, split):
      if kind == 'records':
        _record_split(config, split)
      elif kind == 'tfds':
        tfds_source.open_source(arg, split, config.data.tfds_dir)
      elif kind == 'folder' and (files.isdir(arg) or _cached_shape(config, split) is None):
        listed = listed or folder.listing(arg, None)
        paths = folder.image_paths(arg, parse_split(split)[0], *listed[:2])[0]
        _slice_indices(split, len(paths))


def check_present(config: ml_collections.ConfigDict) -> None:
  """Raises FileNotFoundError or ValueError, naming the field, when config.dataset or
  eval.fewshot_dataset is a 'folder:' path that does not exist, a 'records:' directory that
  is not a prepared dataset or a 'tfds:' dataset whose training split is not prepared (as
  ArrayRecord), or when config.dataset lacks data.train_split or the evaluation split, or
  the few-shot dataset its 'train' split or its evaluation split (`_check_splits`,
  `_probe_config`). Decodes no image (a sweep checks its points before running any);
  'digits' needs no check."""
  _check_present(config.dataset, config.data.train_split, config.data.tfds_dir)
  if config.eval.fewshot_dataset:
    with _as_fewshot_dataset(config.eval.fewshot_dataset):
      _check_present(config.eval.fewshot_dataset, 'train', config.data.tfds_dir)
      _check_splits(_probe_config(config), (None, None))
  _check_splits(config, ('data.train_split',
                         'data.eval_split' if config.data.eval_split else None))


def train_iterator(split: Split | pipeline.RecordSplit, config: ml_collections.ConfigDict,
                   process_index: int = 0, process_count: int = 1
                   ) -> TrainIterator | pipeline.StreamIterator:
  """The endless training stream of `split` (get_state / set_state for checkpoints): uint8
  batches (L, H, W, C) to augment on the device, or (L, S, S, 3) already augmented on the host
  (`split.host_augmented`)."""
  if not split.host_augmented:
    return TrainIterator(split, config.batch_size, config.seed, process_index, process_count)
  aug = config.augment
  transform = pipeline.TrainTransform(config.image_size, aug.crop, tuple(aug.crop_scale),
                                      tuple(aug.crop_ratio), aug.flip)
  return pipeline.StreamIterator(split, config.batch_size, config.seed, process_index,
                                 process_count, transform=transform, workers=config.data.workers)


def split_eval_batches(split: Split | pipeline.RecordSplit, global_batch_size: int,
                       process_index: int, process_count: int, *,
                       image_size: int | None = None, crop_fraction: float = 1.0,
                       workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The evaluation pass over either kind of split: (images, labels, mask) per global batch;
  streamed images come centre-cropped (`crop_fraction`) to (L, S, S, 3) with S = image_size
  (which only they need: ValueError without it), in-memory ones as stored."""
  if split.host_augmented:
    if image_size is None:
      raise ValueError('A streamed split is evaluated at an image_size; none was given.')
    return pipeline.stream_eval_batches(split, global_batch_size, process_index, process_count,
                                        image_size=image_size, crop_fraction=crop_fraction,
                                        workers=workers)
  return eval_batches(split, global_batch_size, process_index, process_count)
