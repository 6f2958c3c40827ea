"""Deterministic host-side batches of an in-memory split: the endless training stream and the
evaluation pass (each process its own rows of every global batch)."""
from typing import Iterator

import numpy as np

from vit_jax.data.split import Split


def local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
  """L = B / process_count, with errors for impossible settings."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} must be in [0, {process_count}).')
  if global_batch_size < 1 or global_batch_size % process_count:
    raise ValueError(f'batch_size={global_batch_size} must be a positive multiple of the '
                     f'process count {process_count}.')
  return global_batch_size // process_count


class TrainIterator:
  """Endless, deterministic stream of training batches from an in-memory Split.

  The global stream is epoch after epoch, epoch e in the order
  `default_rng([seed, e]).permutation(N)`; global batch b is stream positions
  [b * B, (b + 1) * B), crossing epoch boundaries without dropping or repeating examples, and
  process p gets its rows [p * L, (p + 1) * L). The state is the number of examples consumed
  (the same on every process), so `set_state(get_state())` resumes exactly.
  Yields (images (L, H, W, C) uint8, labels (L,) int32).
  """

  def __init__(self, split: Split, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1):
    self._local = local_batch_size(global_batch_size, process_index, process_count)
    if not len(split.labels):
      raise ValueError('Cannot draw training batches from an empty split.')
    self._split = split
    self._global = global_batch_size
    self._offset = process_index * self._local
    self._seed = seed
    self._position = 0
    self._epoch, self._order = -1, None  # the cached permutation of the latest epoch used

  def __iter__(self) -> 'TrainIterator':
    return self

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if epoch != self._epoch:
      n = len(self._split.labels)
      self._epoch, self._order = epoch, np.random.default_rng([self._seed, epoch]).permutation(n)
    return self._order

  def __next__(self) -> tuple[np.ndarray, np.ndarray]:
    n = len(self._split.labels)
    stream = self._position + self._offset + np.arange(self._local)
    index = np.empty(self._local, np.int64)
    for epoch in np.unique(stream // n):
      rows = stream // n == epoch
      index[rows] = self._epoch_order(int(epoch))[stream[rows] % n]
    self._position += self._global
    return self._split.images[index], self._split.labels[index]

  def get_state(self) -> dict:
    """JSON-serialisable state: {'position': examples of the global stream consumed}."""
    return {'position': self._position}

  def set_state(self, state: dict) -> None:
    position = state.get('position')
    if not isinstance(position, int) or position < 0:
      raise ValueError(f'Iterator state {state} needs a non-negative integer "position".')
    self._position = position


def eval_batches(split: Split, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The whole split once, in order: (images (L, H, W, C) uint8, labels (L,) int32, mask (L,)
  bool) per global batch of B, this process's rows [p * L, (p + 1) * L). The last batch is
  padded with copies of example 0 whose mask is False, so every batch has the same shape."""
  local = local_batch_size(global_batch_size, process_index, process_count)
  n = len(split.labels)

  def batch(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stream = start + process_index * local + np.arange(local)
    mask = stream < n
    index = np.where(mask, stream, 0)
    return split.images[index], split.labels[index], mask
  return map(batch, range(0, n, global_batch_size))
