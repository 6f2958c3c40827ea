"""In-memory sources (`config.dataset`): the embedded digits, image folders, TFDS.

- 'digits': scikit-learn's embedded 8x8 digits (works offline), with a fixed class-balanced
  80/20 train/test split.
- 'folder:<path>': an image-folder tree `<root>/{train,test}/<class>/<image>`, as a directory
  or a `.tar.gz` read in one streaming pass (see `vit_jax.data.folder`).
- 'tfds:<name>': TensorFlow Datasets, only where it is installed (imported lazily).
"""
import numpy as np

from vit_jax.data.folder import load_folder
from vit_jax.data.split import SPLITS, Split

SOURCES = ("'digits', 'folder:<directory or .tar.gz>', 'tfds:<name>' or 'records:<prepared "
           "directory>'")
CORRUPT_IMAGES = ('error', 'skip')  # what `data.corrupt_images` may say to do with a broken file


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
    return load_folder(arg, split, cache_dir, skip_corrupt=corrupt_images == 'skip')
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
