"""Device prefetch: the next batches are on the device while the current step runs.

`DevicePrefetch(iterator, put, size)` draws host batches from a resumable iterator (one with
`get_state` / `set_state`, e.g. `data.TrainIterator`) and hands them out already put on the
device by `put` (which returns without waiting: JAX transfers asynchronously). Each `next()`
returns the oldest batch and keeps `size` more in flight, so while the step of batch k runs,
batches k+1 .. k+size are drawn and transferred. `get_state()` is the wrapped iterator's state
after the batches handed out so far, not after the ones in flight, so a checkpoint taken
between steps resumes at the first batch not yet trained on.
"""
import collections
from typing import Any, Callable


class DevicePrefetch:
  """Iterator of `put(batch)` for the batches of `iterator` (an iterator with `get_state()`
  and `set_state(state)`), `size` batches ahead (size >= 1)."""

  def __init__(self, iterator: Any, put: Callable[[Any], Any], size: int = 1):
    if not isinstance(size, int) or size < 1:
      raise ValueError(f'Prefetch size={size!r} must be a positive integer.')
    self._iterator, self._put, self._size = iterator, put, size
    self._queue = collections.deque()  # (device batch, iterator state after it)
    self._state = iterator.get_state()

  def __iter__(self) -> 'DevicePrefetch':
    return self

  def _fill(self, count: int) -> None:
    while len(self._queue) < count:
      batch = next(self._iterator)
      self._queue.append((self._put(batch), self._iterator.get_state()))

  def __next__(self) -> Any:
    self._fill(1)
    batch, self._state = self._queue.popleft()
    self._fill(self._size)  # in flight while the caller's step on `batch` runs
    return batch

  def get_state(self) -> dict:
    """The wrapped iterator's state after the last batch handed out."""
    return self._state

  def set_state(self, state: dict) -> None:
    """Drops the batches in flight and resumes the wrapped iterator at `state`."""
    self._iterator.set_state(state)
    self._queue.clear()
    self._state = self._iterator.get_state()
