"""Data: splits held in memory as decoded uint8 arrays or streamed record by record (chosen by
size, `loader.resolve_kind`), deterministic batching, augmentation.

Modules: `loader` (the one interface over both kinds of split: `resolve_kind`, `open_split`,
`train_iterator`, `split_eval_batches`; `check_present`, a dataset's path and splits checked
without decoding it; `training_examples`, its training split's size), `footprint` (a split's
decoded size, what data.kind='auto' decides by), `sources` (`load_split` for 'digits',
'folder:<path>', 'tfds:<name>'; `decode_records` for any record split), `folder` (image-folder
trees and .tar / .tar.gz archives with a decoded-array cache), `split` (the in-memory `Split`;
`convert_channels`, images read as grayscale or colour, data.channels), `subsets` (nested
class-balanced subsets, the validation hold-out, the evaluation sample, `load_data` of a
training config), `batches` (the in-memory training stream and evaluation
pass), `transforms` (device-side augmentation and evaluation preprocessing); streaming:
`records` (prepared ArrayRecord datasets), `prepare` (the converter, `python -m
vit_jax.data.prepare`), `pipeline` (the grain pipeline: host-side decoding and augmentation,
resumable training stream, evaluation pass), `worker_signals` (worker processes of both leave
Ctrl-C to their parent and end when it dies).

Shapes: N examples, B global batch, L = B / process_count local batch, H x W images with
C channels (1 for grayscale, 3 for colour). The host side (`TrainIterator`, `eval_batches`)
yields uint8 images and int32 labels; `augment` and `preprocess_eval` turn them into float32
in [-1, 1] on the device, inside the jitted step.
"""
from vit_jax.data.batches import TrainIterator, eval_batches
from vit_jax.data.loader import (KINDS, MEMORY_LIMIT_GB, check_present, choose_kind,
                                 eval_split_name, is_streamed, open_split, probe_splits,
                                 resolve_kind, split_eval_batches, train_iterator,
                                 training_examples)
from vit_jax.data.pipeline import RecordSplit, StreamIterator
from vit_jax.data.sources import CORRUPT_IMAGES, SOURCES, dataset_file, load_split
from vit_jax.data.split import SPLITS, Split, convert_channels
from vit_jax.data.subsets import evenly_spaced, hold_out, load_data, nested_subset

__all__ = ['CORRUPT_IMAGES', 'KINDS', 'MEMORY_LIMIT_GB', 'RecordSplit', 'SOURCES', 'SPLITS',
           'Split', 'StreamIterator', 'TrainIterator', 'augment', 'augment_from_config',
           'check_present', 'choose_kind', 'convert_channels', 'dataset_file', 'eval_batches',
           'eval_split_name', 'evenly_spaced', 'hold_out', 'is_streamed', 'load_data',
           'load_split', 'nested_subset', 'normalize', 'open_split', 'preprocess_eval',
           'probe_splits', 'resolve_kind', 'split_eval_batches', 'train_iterator',
           'training_examples']

_DEVICE_SIDE = ('augment', 'augment_from_config', 'normalize', 'preprocess_eval')


def __getattr__(name: str):
  """The device-side transforms import JAX: loaded on first use, so the converter's and the
  input pipeline's worker processes, which import this package, start without JAX."""
  if name in _DEVICE_SIDE:
    from vit_jax.data import transforms  # pylint: disable=g-import-not-at-top
    return getattr(transforms, name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
