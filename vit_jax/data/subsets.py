"""Subsets of a labelled split: nested class-balanced subsets, the validation hold-out, the
evenly spaced evaluation sample, and a training config's (train, validation, test) splits."""
from absl import logging
import numpy as np

from vit_jax.data import loader
from vit_jax.data.pipeline import RecordSplit
from vit_jax.data.split import Split

AnySplit = Split | RecordSplit


def nested_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced subset of `size` examples (None: all).

  Every class gets a fixed permutation (one `default_rng(seed)` draw per class, in class
  order); examples are taken by (position in their class's permutation, class). So for one
  seed a smaller subset lies inside every larger one, and per-class counts differ by at most
  one among the classes that still have examples left.
  """
  if size is None:
    return np.arange(len(labels))
  if not 1 <= size <= len(labels):
    raise ValueError(f'train_size={size} must be between 1 and the {len(labels)} available '
                     'training examples.')
  rng = np.random.default_rng(seed)
  rank = np.empty(len(labels), np.int64)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    rank[members] = np.arange(len(members))
  return np.sort(np.lexsort((labels, rank))[:size])


def evenly_spaced(size: int, count: int) -> np.ndarray:
  """Indices of `count` examples (at most `size`) evenly spaced over a split of `size`, the
  first and last included: a fixed evaluation sample that spans every part of the split."""
  return np.linspace(0, size - 1, min(count, size)).astype(int)


def hold_out(train: AnySplit, fraction: float, seed: int) -> tuple[AnySplit, AnySplit | None]:
  """(the rest, validation): a class-balanced `fraction` of `train` held out with `seed`
  (at least one example per class); (train, None) when `fraction` is 0.

  Raises:
    ValueError: the hold-out would leave no training examples.
  """
  if not fraction:
    return train, None
  num_val = max(round(fraction * len(train.labels)), len(train.class_names))
  return _split_off(train, num_val, seed, f'eval.val_fraction={fraction}')


def _split_off(train: AnySplit, num_val: int, seed: int,
               field: str) -> tuple[AnySplit, AnySplit]:
  """(the rest, validation): `num_val` class-balanced examples of `train` taken with `seed`."""
  if num_val >= len(train.labels):
    raise ValueError(f'{field} leaves no training examples out of {len(train.labels)}.')
  val = nested_subset(train.labels, num_val, seed)
  rest = np.setdiff1d(np.arange(len(train.labels)), val)
  return train.take(rest), train.take(val)


def load_data(config) -> tuple[AnySplit, AnySplit | None, AnySplit]:
  """(train, validation or None, test) of a training config: the nested `train_size` subset of
  `data.train_split` of `dataset`, minus a class-balanced `eval.val_fraction` of it held out
  for validation (with `data.subset_seed` + 1); or, with `eval.val_size`, that many
  class-balanced images held out of the whole split first (same seed), the subset drawn from
  the rest: one validation set for every size, outside every subset. The test split is
  `loader.eval_split_name`'s, its images converted to the training images' channels when they
  differ (a 'folder:' tree of grayscale test images for colour training images, or back). In
  memory (`Split`) or streamed (`RecordSplit`), as `loader.resolve_kind` decides (and logs)."""
  config = loader.resolve_kind(config)
  # the evaluation split first: usually the smaller, so a wrong name fails before the
  # training split's long decode
  test = loader.open_split(config, loader.eval_split_name(config))
  train = loader.open_split(config, config.data.train_split)
  test = test.with_channels(train.channels)
  seed, val = config.data.subset_seed, None
  if config.eval.val_size:  # (the config check allows one of val_size and val_fraction)
    train, val = _split_off(train, config.eval.val_size, seed + 1,
                            f'eval.val_size={config.eval.val_size}')
  train = train.take(nested_subset(train.labels, config.train_size, seed))
  if val is None:
    train, val = hold_out(train, config.eval.val_fraction, seed + 1)
  unseen = np.count_nonzero(np.bincount(train.labels, minlength=len(train.class_names)) == 0)
  if unseen:
    held_out = (f'eval.val_size={config.eval.val_size}' if config.eval.val_size else
                f'eval.val_fraction={config.eval.val_fraction}')
    logging.warning('The %d training images hold no example of %d of the %d classes '
                    '(train_size=%s, %s): the model never sees those classes.',
                    len(train.labels), unseen, len(train.class_names), config.train_size,
                    held_out)
  return train, val, test
