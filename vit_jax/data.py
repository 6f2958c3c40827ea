"""Datasets held in memory as decoded uint8 arrays, deterministic batching, augmentation.

Sources (`config.dataset`):
- 'digits': scikit-learn's embedded 8x8 digits (works offline), with a fixed class-balanced
  80/20 train/test split.
- 'folder:<path>': an image-folder tree `<root>/{train,test}/<class>/<image>`, as a directory
  or a `.tar.gz` read in one streaming pass; `<root>` is the path itself or its single
  top-level folder. Decoded arrays are cached as plain `.npz` files (see `load_split`).
- 'tfds:<name>': TensorFlow Datasets, only where it is installed (imported lazily).

Shapes: N examples, B global batch, L = B / process_count local batch, H x W images with
C channels (1 for grayscale, 3 for colour). The host side (`TrainIterator`, `eval_batches`)
yields uint8 images and int32 labels; `augment` and `preprocess_eval` turn them into float32
in [-1, 1] on the device, inside the jitted step.
"""
import collections
import dataclasses
import hashlib
import io
import os
import posixpath
import tarfile
import time
from typing import Callable, Iterator

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vit_jax import files

SPLITS = ('train', 'test')
SOURCES = "'digits', 'folder:<directory or .tar.gz>' or 'tfds:<name>'"
_CACHE_VERSION = 1  # part of the cache key: bump when decoding changes
_GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')  # decoded as 'L' (one channel); others as 'RGB'
# A folder tree: (folders, files, read(file) -> bytes), paths relative and '/'-separated.
Listing = tuple[set[str], set[str], Callable[[str], bytes]]


CORRUPT_IMAGES = ('error', 'skip')  # what `data.corrupt_images` may say to do with a broken file


@dataclasses.dataclass(frozen=True)
class Split:
  """One decoded split held in memory.

  images: (N, H, W, C) uint8; labels: (N,) int32 indices into class_names; skipped: the files
  left out because they could not be decoded (with corrupt_images='skip').
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  skipped: tuple[str, ...] = ()

  def take(self, indices: np.ndarray) -> 'Split':
    """The examples at `indices`, same classes."""
    return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])


def load_split(source: str, split: str, *, cache_dir: str | None = None,
               corrupt_images: str = 'error') -> Split:
  """Loads split 'train' or 'test' of `source` (see the module docstring) into memory.

  'folder:' sources are decoded once and cached in `cache_dir` (default: $VIT_JAX_CACHE or
  ~/.cache/vit_jax) as `.npz` files keyed by the absolute path, the archive's size and mtime
  (a directory's newest mtime and file count), the split and `corrupt_images`; an unreadable
  cache file is decoded again. An image file that cannot be decoded is an error, or with
  corrupt_images='skip' left out, logged and listed in `Split.skipped`.
  """
  if split not in SPLITS:
    raise ValueError(f"split={split!r} must be 'train' or 'test'.")
  if corrupt_images not in CORRUPT_IMAGES:
    raise ValueError(f'data.corrupt_images={corrupt_images!r} must be one of {CORRUPT_IMAGES}.')
  kind, _, arg = source.partition(':')
  if source == 'digits':
    return _load_digits(split)
  if kind == 'folder' and arg:
    return _load_folder(arg, split, cache_dir, skip_corrupt=corrupt_images == 'skip')
  if kind == 'tfds' and arg:
    return _load_tfds(arg, split)
  raise ValueError(f'config.dataset={source!r} is not one of {SOURCES}.')


def _load_digits(split: str) -> Split:
  """scikit-learn's 1797 digits: 0..16 -> uint8 0..255, (N, 8, 8, 1); per class a fixed 20%
  (from `default_rng(0)`) is the test split; original order within each split."""
  from sklearn import datasets  # heavy import (about a second), only needed here
  digits = datasets.load_digits()
  labels = digits.target.astype(np.int32)
  rng = np.random.default_rng(0)
  test = np.zeros(len(labels), bool)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    test[members[:round(0.2 * len(members))]] = True
  keep = test if split == 'test' else ~test
  images = np.round(digits.images * 255 / 16).astype(np.uint8)[..., None]
  return Split(images[keep], labels[keep], tuple(str(c) for c in digits.target_names))


def _load_tfds(name: str, split: str) -> Split:
  """A TFDS dataset loaded whole as NumPy (needs TensorFlow and the prepared data)."""
  try:
    import tensorflow_datasets as tfds  # lazily: the training path must not import TensorFlow
  except ImportError as e:
    raise ImportError(f"config.dataset='tfds:{name}' needs TensorFlow Datasets: pip install "
                      "tensorflow tensorflow-datasets, or use a 'folder:<directory or "
                      ".tar.gz>' dataset instead.") from e
  ds, info = tfds.load(name, split=split, batch_size=-1, as_supervised=True, with_info=True)
  images, labels = tfds.as_numpy(ds)
  names = getattr(info.features['label'], 'names', None) if 'label' in info.features else None
  names = names or [str(c) for c in range(int(labels.max()) + 1)]
  return Split(images.astype(np.uint8), labels.astype(np.int32), tuple(names))


def _load_folder(path: str, split: str, cache_dir: str | None, skip_corrupt: bool) -> Split:
  """An image-folder directory or `.tar.gz`, from the cache when it is there."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"config.dataset='folder:{path}': {path} does not exist.")
  cache_file = _cache_file(path, split, cache_dir, skip_corrupt)
  try:
    arrays = files.read_npz(cache_file)
    result = Split(arrays['images'], arrays['labels'], tuple(arrays['class_names'].tolist()),
                   tuple(arrays['skipped'].tolist()))
    _warn_skipped(path, split, result.skipped)
    return result
  except FileNotFoundError:
    pass
  except (ValueError, KeyError) as e:
    logging.warning('Ignoring the unreadable cache file %s (%s); decoding again.', cache_file, e)

  logging.info('Decoding the %s split of %s ...', split, path)
  start = time.perf_counter()
  dirs, file_names, read = _list_folder(path) if os.path.isdir(path) else _list_archive(path, split)
  paths, labels, class_names = _image_paths(path, split, dirs, file_names)
  images, kept = _decode_images(path, paths, read, skip_corrupt)
  skipped = tuple(os.path.join(path, p) for p, k in zip(paths, kept) if not k)
  result = Split(images, np.asarray(labels, np.int32)[kept], class_names, skipped)
  logging.info('Decoded %d images of %s in %.1f s; caching them in %s.', len(images), path,
               time.perf_counter() - start, cache_file)
  _warn_skipped(path, split, skipped)
  try:
    files.write_npz(cache_file, dict(images=result.images, labels=result.labels,
                                     class_names=np.array(class_names, str),
                                     skipped=np.array(skipped, str)))
  except OSError as e:
    logging.warning('Could not write the cache file %s: %s', cache_file, e)
  return result


def _warn_skipped(path: str, split: str, skipped: tuple[str, ...]) -> None:
  if skipped:
    logging.warning('Skipped %d image(s) of the %s split of %s that cannot be decoded '
                    "(data.corrupt_images='skip'): %s%s", len(skipped), split, path,
                    ', '.join(skipped[:5]), ' ...' if len(skipped) > 5 else '')


def _cache_file(path: str, split: str, cache_dir: str | None, skip_corrupt: bool) -> str:
  """Cache file name for `split` of `path`, from its absolute path and modification stamp."""
  path = os.path.abspath(path)
  if os.path.isdir(path):
    newest, count = 0, 0
    for folder, _, names in os.walk(path):
      stamps = [os.stat(os.path.join(folder, n)).st_mtime_ns for n in names]
      newest = max([newest, os.stat(folder).st_mtime_ns, *stamps])
      count += len(names)
    stamp = (newest, count)
  else:
    stamp = (os.stat(path).st_size, os.stat(path).st_mtime_ns)
  key = repr((_CACHE_VERSION, path, stamp, split, skip_corrupt))
  digest = hashlib.sha256(key.encode()).hexdigest()[:16]
  cache_dir = cache_dir or os.environ.get('VIT_JAX_CACHE') or os.path.expanduser(
      '~/.cache/vit_jax')
  return os.path.join(cache_dir, f'{os.path.basename(path)}-{split}-{digest}.npz')


def _list_folder(path: str) -> Listing:
  """(folders, files, read) of a directory tree; paths are relative and '/'-separated."""
  dirs, file_names = set(), set()
  for folder, subdirs, names in os.walk(path):
    rel = os.path.relpath(folder, path).replace(os.sep, '/')
    prefix = '' if rel == '.' else rel + '/'
    dirs.update(prefix + d for d in subdirs)
    file_names.update(prefix + n for n in names)

  def read(rel: str) -> bytes:
    with open(os.path.join(path, rel), 'rb') as f:
      return f.read()
  return dirs, file_names, read


def _list_archive(path: str, split: str) -> Listing:
  """(folders, files, read) of a `.tar.gz`, in one streaming pass that keeps the bytes of the
  files that may belong to `split` (those with a `split` folder at depth one or two)."""
  dirs, file_names, blobs = set(), set(), {}
  try:
    with tarfile.open(path, 'r|gz') as tar:
      for member in tar:
        name = posixpath.normpath(member.name).lstrip('/')
        if member.isdir() and name != '.':
          dirs.add(name)
        elif member.isfile():
          file_names.add(name)
          if split in name.split('/')[:2]:
            blobs[name] = tar.extractfile(member).read()
  except tarfile.TarError as e:
    raise ValueError(f'{path} is neither a directory nor a readable .tar.gz archive: {e}') from e
  for name in file_names:  # archives need not list every folder
    parts = name.split('/')
    dirs.update('/'.join(parts[:i]) for i in range(1, len(parts)))
  return dirs, file_names, blobs.__getitem__


def _subfolders(dirs: set[str], parent: str) -> list[str]:
  """Sorted names of the folders directly inside `parent` ('' for the top level)."""
  prefix = parent + '/' if parent else ''
  return sorted(d[len(prefix):] for d in dirs
                if d.startswith(prefix) and '/' not in d[len(prefix):])


def _image_paths(path: str, split: str, dirs: set[str], file_names: set[str]
                 ) -> tuple[list[str], list[int], tuple[str, ...]]:
  """Checks the layout; returns the split's image paths (by class, then name), their labels
  and the sorted class names."""
  top = _subfolders(dirs, '')
  root = top[0] if len(top) == 1 and top[0] not in SPLITS else ''
  split_dir = posixpath.join(root, split)
  where = os.path.normpath(os.path.join(path, root))
  if split_dir not in dirs:
    raise FileNotFoundError(f"{where} has no '{split}' folder; it holds "
                            f'{_subfolders(dirs, root)}.')
  classes = _subfolders(dirs, split_dir)
  if not classes:
    raise ValueError(f'{os.path.join(path, split_dir)} has no class folders.')
  other = 'test' if split == 'train' else 'train'
  theirs = _subfolders(dirs, posixpath.join(root, other))
  if theirs and theirs != classes:
    raise ValueError(
        f'The class folders of {where} differ between train and test: only in {split}: '
        f'{sorted(set(classes) - set(theirs))}, only in {other}: '
        f'{sorted(set(theirs) - set(classes))}.')
  by_folder = collections.defaultdict(list)
  for name in file_names:
    folder, base = posixpath.split(name)
    if not base.startswith('.'):  # hidden files, e.g. macOS '._*' metadata
      by_folder[folder].append(name)
  paths, labels = [], []
  for label, name in enumerate(classes):
    images = sorted(by_folder[posixpath.join(split_dir, name)])
    if not images:
      raise ValueError(f'Class folder {os.path.join(path, split_dir, name)} is empty.')
    paths += images
    labels += [label] * len(images)
  return paths, labels, tuple(classes)


def _decode_images(path: str, paths: list[str], read: Callable[[str], bytes],
                   skip_corrupt: bool) -> tuple[np.ndarray, np.ndarray]:
  """Decodes `paths` with Pillow into (N', H, W, C) uint8, all of one size and mode, and a
  (N,) bool mask of the decoded paths (False only for files skipped with `skip_corrupt`)."""
  images, kept = [], np.ones(len(paths), bool)
  for i, name in enumerate(paths):
    try:
      with Image.open(io.BytesIO(read(name))) as pil:
        image = np.asarray(pil.convert('L' if pil.mode in _GRAY_MODES else 'RGB'))
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for broken files
      if skip_corrupt:
        kept[i] = False
        continue
      raise ValueError(f'Cannot decode the image {os.path.join(path, name)}: {e}; set '
                       "data.corrupt_images='skip' to leave such files out.") from e
    image = image.reshape(*image.shape[:2], -1)
    if images and image.shape != images[0].shape:
      describe = lambda s: f'{s[0]}x{s[1]} (HxW) with {s[2]} channel(s)'
      raise ValueError(
          f'{os.path.join(path, name)} is {describe(image.shape)} but '
          f'{os.path.join(path, paths[0])} is {describe(images[0].shape)}: all images of a '
          'split must have the same size and mode.')
    images.append(image)
  if not images:
    raise ValueError(f'None of the {len(paths)} images of {path} can be decoded.')
  return np.stack(images), kept


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


def _local_batch_size(global_batch_size: int, process_index: int, process_count: int) -> int:
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
    self._local = _local_batch_size(global_batch_size, process_index, process_count)
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
  local = _local_batch_size(global_batch_size, process_index, process_count)
  n = len(split.labels)

  def batch(start: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    stream = start + process_index * local + np.arange(local)
    mask = stream < n
    index = np.where(mask, stream, 0)
    return split.images[index], split.labels[index], mask
  return map(batch, range(0, n, global_batch_size))


def _resize_box(images: jax.Array, corner: jax.Array, size: jax.Array,
                image_size: int) -> jax.Array:
  """Bilinear resize of the box at `corner` (top, left) of `size` (height, width), in pixels,
  of images (..., H, W, C) -> (..., image_size, image_size, C); antialiased when shrinking."""
  scale = image_size / size
  shape = (*images.shape[:-3], image_size, image_size, images.shape[-1])
  return jax.image.scale_and_translate(images, shape, (images.ndim - 3, images.ndim - 2), scale,
                                       -corner * scale, method='linear')


def _check_range(name: str, value: tuple[float, float], upper: float = np.inf) -> None:
  if not 0 < value[0] <= value[1] <= upper:
    raise ValueError(f'{name}={value} must satisfy 0 < min <= max <= {upper}.')


def augment(images: jax.Array, key: jax.Array, *, image_size: int, crop: bool,
            crop_scale: tuple[float, float], crop_ratio: tuple[float, float],
            flip: bool) -> jax.Array:
  """Training augmentation: (B, H, W, C) uint8 -> (B, image_size, image_size, C) float32 in
  [-1, 1], each image with its own key from `key`.

  crop: Inception-style random resized crop, area fraction ~ U(crop_scale), log aspect ratio
  (width / height) ~ U(log crop_ratio), clipped to the image, uniform position, bilinearly
  resized; otherwise the whole image is resized. flip: horizontal mirror with probability 1/2.
  All options are Python values (static under `jax.jit`).
  """
  if crop:
    _check_range('augment.crop_scale', crop_scale, upper=1.)
    _check_range('augment.crop_ratio', crop_ratio)
  full = jnp.array(images.shape[1:3], jnp.float32)

  def one(image: jax.Array, key: jax.Array) -> jax.Array:
    k_area, k_ratio, k_corner, k_flip = jax.random.split(key, 4)
    size, corner = full, jnp.zeros(2)
    if crop:
      area = jax.random.uniform(k_area, minval=crop_scale[0], maxval=crop_scale[1]) * full.prod()
      ratio = jnp.exp(jax.random.uniform(k_ratio, minval=np.log(crop_ratio[0]),
                                         maxval=np.log(crop_ratio[1])))
      size = jnp.minimum(jnp.sqrt(area * jnp.stack([1 / ratio, ratio])), full)
      corner = jax.random.uniform(k_corner, (2,)) * (full - size)
    image = _resize_box(image, corner, size, image_size)
    if flip:
      image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
    return image
  x = images.astype(jnp.float32) / 127.5 - 1
  return jax.vmap(one)(x, jax.random.split(key, images.shape[0]))


def preprocess_eval(images: jax.Array, *, image_size: int, crop_fraction: float = 1.0
                    ) -> jax.Array:
  """(B, H, W, C) uint8 -> (B, image_size, image_size, C) float32 in [-1, 1]: the central
  crop keeping `crop_fraction` of each side, bilinearly resized to image_size."""
  if not 0 < crop_fraction <= 1:
    raise ValueError(f'eval.crop_fraction={crop_fraction} must be in (0, 1].')
  full = np.array(images.shape[1:3], np.float32)
  size = full * crop_fraction
  x = images.astype(jnp.float32) / 127.5 - 1
  return _resize_box(x, (full - size) / 2, size, image_size)
