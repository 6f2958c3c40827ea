"""The streaming input pipeline (grain): record splits, host-side decoding and augmentation in
worker processes, the exactly resumable training stream and the evaluation pass.

Every batch is a pure function of (seed, step) and of its process: global stream position i
(epoch e = i // N) is record `order_e[i % N]` of the split, `order_e` grain's index shuffle of
seed + e (O(1) memory for any N); global batch b is positions [b * B, (b + 1) * B), process p
its rows [p * L, (p + 1) * L); the augmentation of position i draws from
`default_rng([seed, i])`. So the number of worker processes never changes the data, and the
state is the number of examples consumed, as for the in-memory `TrainIterator`.

Shapes: images (L, S, S, C) uint8 (C = 3: every mode is decoded as RGB; C = 1 when the split
asks for grayscale, `RecordSplit.channels`), labels (L,) int32, evaluation masks (L,) bool;
S = image_size.
"""
import contextlib
import dataclasses
import functools
import io
import itertools
import math
import os
import re
import signal
from typing import Iterator, Protocol

from absl import flags
import numpy as np
from PIL import Image

from vit_jax.data import worker_signals
from vit_jax.data.batches import local_batch_size
from vit_jax.data.split import convert_channels


class Source(Protocol):
  """Random access to (encoded image bytes, label) records."""
  labels: np.ndarray  # (N,) int32
  class_names: tuple[str, ...]

  def __len__(self) -> int: ...
  def __getitem__(self, index: int) -> tuple[bytes, int]: ...


@dataclasses.dataclass(frozen=True)
class RecordSplit:
  """A split read record by record: `source` restricted to `indices` (None: all), e.g. a
  nested subset or a validation hold-out, without copying any image.

  labels: (N,) int32 of the selected records. Images are decoded and, for training,
  augmented on the host (`host_augmented`), so the device only scales them to [-1, 1];
  as colour, or as grayscale with `channels` 1 (`convert_channels`).
  """
  source: Source
  indices: np.ndarray | None = None
  skipped: tuple[str, ...] = ()
  channels: int = 3

  host_augmented = True

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.source.class_names

  @property
  def labels(self) -> np.ndarray:
    labels = np.asarray(self.source.labels)
    return labels if self.indices is None else labels[self.indices]

  @property
  def where(self) -> str:
    """Where the records come from, for messages: a directory, 'tfds:<name>[<split>]'."""
    return getattr(self.source, 'directory', '') or type(self.source).__name__

  def record(self, i: int) -> int:
    """Index into the source of example i of this split."""
    return int(i if self.indices is None else self.indices[i])

  def __len__(self) -> int:
    return len(self.source) if self.indices is None else len(self.indices)

  def take(self, indices: np.ndarray) -> 'RecordSplit':
    """The examples at `indices` of this split."""
    indices = np.asarray(indices, np.int64)
    return dataclasses.replace(
        self, indices=indices if self.indices is None else self.indices[indices])

  def with_channels(self, channels: int | None) -> 'RecordSplit':
    """This split read as `channels` (1 or 3; None: unchanged), like `Split.with_channels`."""
    return self if channels is None else dataclasses.replace(self, channels=channels)


def open_image(data: bytes, need: tuple[float, float] | None = None) -> tuple[Image.Image, float]:
  """Decodes encoded bytes as RGB; returns (image, scale), the factor the image was shrunk by
  while decoding: with `need` = (width, height), JPEGs are decoded in Pillow's draft mode at
  the smallest of 1/1, 1/2, 1/4, 1/8 of their size that stays at least `need`."""
  image = Image.open(io.BytesIO(data))
  scale = 1.
  if need is not None and image.format == 'JPEG':
    width = image.size[0]
    drafted = image.draft('RGB', (max(1, math.ceil(need[0])), max(1, math.ceil(need[1]))))
    if drafted is not None:
      scale = width / drafted[1][2]
  return image.convert('RGB'), scale


def _resize_box(data: bytes, box: tuple[float, float, float, float], image_size: int
                ) -> Image.Image:
  """The (left, top, width, height) box of the original image, bilinearly resized (with
  antialiasing when shrinking) to image_size x image_size, decoded at the smallest scale
  that keeps the box at least image_size pixels wide and high."""
  left, top, width, height = box
  full = Image.open(io.BytesIO(data)).size
  need = (image_size * full[0] / width, image_size * full[1] / height)
  image, scale = open_image(data, need)
  return image.resize((image_size, image_size), Image.BILINEAR,
                      box=(left / scale, top / scale, (left + width) / scale,
                           (top + height) / scale))


def crop_box(size: tuple[int, int], rng: np.random.Generator, *, crop: bool,
             scale: tuple[float, float], ratio: tuple[float, float]
             ) -> tuple[float, float, float, float]:
  """Inception-style random crop (left, top, width, height) of an image of `size` (width,
  height): area fraction ~ U(scale), log aspect ratio (width / height) ~ U(log ratio), clipped
  to the image, uniform position (the convention of the device-side `augment`). Without `crop`
  the whole image."""
  w, h = size
  if not crop:
    return 0., 0., float(w), float(h)
  area = rng.uniform(*scale) * w * h
  r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
  ch, cw = min(math.sqrt(area / r), h), min(math.sqrt(area * r), w)
  top, left = rng.uniform(size=2) * (h - ch, w - cw)
  return float(left), float(top), cw, ch


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Decodes and augments one record: random resized crop from the original image, bilinear
  resize to image_size, horizontal flip with probability 1/2. (bytes, rng) -> (S, S, 3) uint8."""
  image_size: int
  crop: bool = True
  crop_scale: tuple[float, float] = (0.08, 1.)
  crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = True

  def __call__(self, data: bytes, rng: np.random.Generator) -> np.ndarray:
    box = crop_box(Image.open(io.BytesIO(data)).size, rng, crop=self.crop,
                   scale=self.crop_scale, ratio=self.crop_ratio)
    flip = rng.uniform() < 0.5
    image = np.asarray(_resize_box(data, box, self.image_size))
    return image[:, ::-1] if self.flip and flip else image


def eval_transform(data: bytes, image_size: int, crop_fraction: float) -> np.ndarray:
  """The central square of `crop_fraction` of the shorter side, resized to image_size (the
  same as resizing the shorter side to image_size / crop_fraction and cropping the centre):
  bytes -> (S, S, 3) uint8."""
  w, h = Image.open(io.BytesIO(data)).size
  side = crop_fraction * min(w, h)
  return np.asarray(_resize_box(data, ((w - side) / 2, (h - side) / 2, side, side), image_size))


def _decode_error(split: RecordSplit, i: int, e: Exception) -> ValueError:
  return ValueError(f'Record {split.record(i)} of {split.where} is not a decodable image: {e}')


@dataclasses.dataclass(frozen=True)
class _TrainBatch:
  """Local training batch `step` of a process (run in grain's worker processes)."""
  split: RecordSplit
  transform: TrainTransform
  seed: int
  global_batch: int
  local_batch: int
  offset: int  # p * L

  def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
    import grain  # pylint: disable=g-import-not-at-top
    order = grain.MapDataset.range(len(self.split)).shuffle(seed=self.seed)
    images, labels = [], []
    for position in step * self.global_batch + self.offset + np.arange(self.local_batch):
      i = order[int(position)]
      data, label = self.split.source[self.split.record(i)]
      try:
        images.append(self.transform(data, np.random.default_rng([self.seed, int(position)])))
      except (OSError, SyntaxError, ValueError) as e:
        raise _decode_error(self.split, i, e) from None
      labels.append(label)
    return convert_channels(np.stack(images), self.split.channels), np.asarray(labels, np.int32)


@dataclasses.dataclass(frozen=True)
class _EvalBatch:
  """Local evaluation batch `b` of a process: padded with example 0, masked out."""
  split: RecordSplit
  image_size: int
  crop_fraction: float
  global_batch: int
  local_batch: int
  offset: int

  def __call__(self, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stream = b * self.global_batch + self.offset + np.arange(self.local_batch)
    mask = stream < len(self.split)
    images, labels = [], []
    for i in np.where(mask, stream, 0):
      data, label = self.split.source[self.split.record(i)]
      try:
        images.append(eval_transform(data, self.image_size, self.crop_fraction))
      except (OSError, SyntaxError, ValueError) as e:
        raise _decode_error(self.split, i, e) from None
      labels.append(label)
    return (convert_channels(np.stack(images), self.split.channels),
            np.asarray(labels, np.int32), mask)


# grain's RuntimeError when a worker process dies (e.g. killed for memory).
_WORKER_DIED = re.compile(r'Worker process was terminated unexpectedly with exit code (-?\d+)')


@contextlib.contextmanager
def _worker_death_as_os_error() -> Iterator[None]:
  """grain's error for a worker process that died, as an OSError saying what happened and
  what to do (a command's one `Error:` line)."""
  try:
    yield
  except RuntimeError as e:
    if not (died := _WORKER_DIED.match(str(e))):
      raise
    code = int(died[1])
    if code >= 0:
      how = f'exit status {code}'
    elif code == -signal.SIGKILL:
      how = 'killed by SIGKILL, as the out-of-memory killer does'
    else:
      how = 'killed by ' + next((s.name for s in signal.Signals if s == -code), f'signal {-code}')
    raise OSError(f'A data worker process died ({how}). The checkpoints are intact: rerun the '
                  'same command to continue from the last one (with fewer data.workers if '
                  'memory is short).') from None


def _batches(fn, start: int, stop: int, workers: int) -> Iterator:
  """fn(start), fn(start + 1), ... fn(stop - 1), computed ahead by grain: in `workers`
  processes (each whole batches), or in this process's threads with workers=0. Closing the
  generator stops them; a worker that dies is an OSError."""
  import grain  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():  # grain reads its absl flags (defaults outside app.run)
    flags.FLAGS.mark_as_parsed()
  ds = grain.MapDataset.range(start, stop).map(fn).to_iter_dataset(
      grain.ReadOptions(num_threads=2, prefetch_buffer_size=2))
  if workers:
    init = functools.partial(worker_signals.init_worker, os.getpid())
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                     per_worker_buffer_size=2),
                        worker_init_fn=init)
  with _worker_death_as_os_error():
    # Each worker starts with its first batch: draw those with Ctrl-C blocked.
    with worker_signals.ctrl_c_blocked() if workers else contextlib.nullcontext():
      it = iter(ds)
      first = list(itertools.islice(it, workers))
    try:
      yield from first
      yield from it
    finally:
      it.close()


class StreamIterator:
  """Endless, deterministic, exactly resumable stream of training batches of a RecordSplit
  (see the module docstring), decoded and augmented in `workers` grain processes that run
  ahead of the loop. Yields (images (L, S, S, C) uint8, labels (L,) int32); state
  {'position': examples of the global stream consumed}, like `TrainIterator`."""

  _END = 2 ** 62  # batches: the stream is endless in practice

  def __init__(self, split: RecordSplit, global_batch_size: int, seed: int,
               process_index: int = 0, process_count: int = 1, *,
               transform: TrainTransform, workers: int = 0):
    local = local_batch_size(global_batch_size, process_index, process_count)
    if not len(split):
      raise ValueError('Cannot draw training batches from an empty split.')
    if not 0 <= seed < 2 ** 32:
      raise ValueError(f'seed={seed} must be in [0, 2**32) for the streaming pipeline.')
    self._fn = _TrainBatch(split, transform, seed, global_batch_size, local,
                           process_index * local)
    self._global, self._workers = global_batch_size, workers
    self._position, self._it = 0, None

  def __iter__(self) -> 'StreamIterator':
    return self

  def __next__(self) -> tuple[np.ndarray, np.ndarray]:
    if self._it is None:  # started lazily, from the current position
      self._it = _batches(self._fn, self._position // self._global, self._END, self._workers)
    batch = next(self._it)
    self._position += self._global
    return batch

  def get_state(self) -> dict:
    return {'position': self._position}

  def set_state(self, state: dict) -> None:
    position = state.get('position')
    if not isinstance(position, int) or position < 0 or position % self._global:
      raise ValueError(f'Iterator state {state} needs a non-negative "position" that is a '
                       f'multiple of the batch size {self._global}.')
    self.close()
    self._position = position

  def close(self) -> None:
    """Stops the worker processes (also done at garbage collection)."""
    if self._it is not None:
      self._it.close()
    self._it = None


def stream_eval_batches(split: RecordSplit, global_batch_size: int, process_index: int = 0,
                        process_count: int = 1, *, image_size: int, crop_fraction: float,
                        workers: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The whole split once, in order, centre-cropped on the host: (images (L, S, S, C) uint8,
  labels (L,) int32, mask (L,) bool) per global batch; the last batch is padded with copies of
  example 0 whose mask is False."""
  if not 0 < crop_fraction <= 1:
    raise ValueError(f'eval.crop_fraction={crop_fraction} must be in (0, 1].')
  local = local_batch_size(global_batch_size, process_index, process_count)
  fn = _EvalBatch(split, image_size, crop_fraction, global_batch_size, local,
                  process_index * local)
  return _batches(fn, 0, -(-len(split) // global_batch_size), workers)
