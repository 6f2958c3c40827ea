"""One interface over both kinds of split: the loop, the evaluator and the sweep call these and
never look at which kind they got.

- In memory (`Split`): 'digits', 'folder:<path>' (decoded whole, augmented on the device).
- Streaming (`RecordSplit`): 'records:<prepared directory>' (`python -m vit_jax.data.prepare`),
  'tfds:<name>' (`tfds.data_source`) and, with data.kind='stream', 'folder:' trees read in
  place, record by record by the grain pipeline, decoded and augmented on the host.

`data.kind` ('auto' | 'memory' | 'stream') forces one kind where a source has both; 'auto'
streams 'records:' and 'tfds:' sources and holds the others in memory.
"""
import copy
import re
from typing import Iterator

import ml_collections
import numpy as np

from vit_jax.data import pipeline, records, tfds_source
from vit_jax.data.batches import TrainIterator, eval_batches
from vit_jax.data.folder_source import FolderSource
from vit_jax.data.sources import load_split
from vit_jax.data.split import Split

KINDS = ('auto', 'memory', 'stream')
EVAL_SPLITS = ('validation', 'val', 'test')  # a record source's evaluation split, if not given


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
                   "'tfds:<name>' or 'folder:<directory or .tar.gz>' dataset.")


def is_streamed(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` reads its dataset through the streaming pipeline."""
  kind = config.data.kind
  if kind not in KINDS:
    raise ValueError(f'data.kind={kind!r} must be one of {KINDS}.')
  if kind == 'memory':
    if config.dataset.startswith('records:'):
      raise ValueError(f"data.kind='memory' cannot hold config.dataset={config.dataset!r} "
                       "(images of any size); use data.kind='auto' or 'stream'.")
    return False
  return kind == 'stream' or config.dataset.startswith(('records:', 'tfds:'))


def eval_split_name(config: ml_collections.ConfigDict) -> str:
  """data.eval_split, or by default 'test' in memory and for record sources the first of
  EVAL_SPLITS they have (ImageNet's labelled evaluation split is 'validation'/'val')."""
  if config.data.eval_split:
    return config.data.eval_split
  kind, _, arg = config.dataset.partition(':')
  if kind == 'tfds' and is_streamed(config):
    available = tfds_source.split_names(arg, config.data.tfds_dir)
  elif kind == 'records':
    available = records.read_metadata(arg)['splits']
  else:
    return 'test'
  for name in EVAL_SPLITS:
    if name in available:
      return name
  raise ValueError(f'config.dataset={config.dataset!r} has none of the evaluation splits '
                   f'{EVAL_SPLITS} (it has {sorted(available)}); set data.eval_split.')


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


def _select(source, expression: str) -> pipeline.RecordSplit:
  """The records of `expression`: a slice selects from the split's records in a fixed
  pseudo-random order (the same for every run), so slices mix all classes, as TFDS's shuffled
  files do; percentages are rounded to records."""
  split = pipeline.RecordSplit(source, skipped=source.skipped)
  bounds = parse_split(expression)[1]
  if bounds is None:
    return split
  n = len(source)
  start, stop, percent = bounds
  scale = lambda v: None if v is None else (round(v * n / 100) if percent else v)
  chosen = np.random.default_rng(0).permutation(n)[scale(start):scale(stop)]
  if not len(chosen):
    raise ValueError(f'Split {expression!r} selects none of the {n} records.')
  return split.take(np.sort(chosen))


def open_split(config: ml_collections.ConfigDict, split: str) -> Split | pipeline.RecordSplit:
  """Split `split` (data.train_split or eval_split_name(config)) of config.dataset, of the
  kind `is_streamed` says. Record sources take slices such as 'train[:99%]' (`_select`)."""
  if is_streamed(config):
    if config.dataset.startswith(('tfds:', 'folder:')):  # TFDS takes split expressions itself
      source = _record_source(config, split)
      return pipeline.RecordSplit(source)
    return _select(_record_source(config, parse_split(split)[0]), split)
  return load_split(config.dataset, split, cache_dir=config.data.cache_dir,
                    corrupt_images=config.data.corrupt_images, tfds_dir=config.data.tfds_dir)


def probe_splits(config: ml_collections.ConfigDict) -> tuple | None:
  """(train, evaluation) splits of eval.fewshot_dataset for the few-shot probe, opened like
  the run's own dataset (same data.* settings, default splits); None without one."""
  if not config.eval.fewshot_dataset:
    return None
  probe = copy.deepcopy(config)
  probe.dataset = config.eval.fewshot_dataset
  probe.data.train_split, probe.data.eval_split = 'train', None
  return open_split(probe, 'train'), open_split(probe, eval_split_name(probe))


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
