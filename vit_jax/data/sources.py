"""In-memory sources (`config.dataset`): the embedded digits, image folders, TFDS.

- 'digits': scikit-learn's embedded 8x8 digits (works offline), with a fixed class-balanced
  80/20 train/test split.
- 'folder:<path>': an image-folder tree `<root>/{train,test}/<class>/<image>`, as a directory
  or a `.tar` / `.tar.gz` read in one streaming pass (see `vit_jax.data.folder`).
- 'tfds:<name>': a prepared TensorFlow Datasets dataset of equal-size images (read with
  `tfds.data_source`, no TensorFlow; see `vit_jax.data.tfds_source`), where tensorflow-datasets
  is installed (imported lazily).

`decode_records` decodes any record split (a prepared 'records:' directory, a TFDS split
expression) into memory the same way.
"""
import numpy as np

from vit_jax.data.folder import dataset_file, decode_images, load_folder
from vit_jax.data.pipeline import RecordSplit
from vit_jax.data.split import SPLITS, Split
from vit_jax.data.tfds_source import TfdsSource

SOURCES = ("'digits', 'folder:<directory, .tar or .tar.gz>', 'tfds:<name>' or 'records:<prepared "
           "directory>'")
CORRUPT_IMAGES = ('error', 'skip')  # what `data.corrupt_images` may say to do with a broken file


def load_split(source: str, split: str, *, cache_dir: str | None = None,
               corrupt_images: str = 'error', tfds_dir: str | None = None) -> Split:
  """Loads split `split` of `source` (see the module docstring) into memory: 'train' or
  'test' of the digits, any split folder of an image-folder tree (e.g. ImageNet's 'val').

  'folder:' sources are decoded once and cached in `cache_dir` (default: $VIT_JAX_CACHE or
  ~/.cache/vit_jax) as `.npz` files keyed by the absolute path, the archive's size and mtime
  (a directory's newest mtime and file count), the split and `corrupt_images`; an unreadable
  cache file is decoded again. An image file that cannot be decoded is an error, or with
  corrupt_images='skip' left out, logged and listed in `Split.skipped`.
  """
  if source == 'digits' and split not in SPLITS:
    raise ValueError(f"The digits have no {split!r} split; they have 'train' and 'test'.")
  if corrupt_images not in CORRUPT_IMAGES:
    raise ValueError(f'data.corrupt_images={corrupt_images!r} must be one of {CORRUPT_IMAGES}.')
  kind, _, arg = source.partition(':')
  if source == 'digits':
    return _load_digits(split)
  if kind == 'folder' and arg:
    return load_folder(arg, split, cache_dir, skip_corrupt=corrupt_images == 'skip')
  if kind == 'tfds' and arg:
    return _load_tfds(arg, split, tfds_dir, cache_dir, skip_corrupt=corrupt_images == 'skip')
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


def _load_tfds(name: str, split: str, data_dir: str | None, cache_dir: str | None,
               skip_corrupt: bool) -> Split:
  """A prepared TFDS dataset decoded whole (through `tfds.data_source`: no TensorFlow); every
  image must have the same size."""
  return decode_records(RecordSplit(TfdsSource(name, split, data_dir, cache_dir)), skip_corrupt)


def decode_records(split: RecordSplit, skip_corrupt: bool) -> Split:
  """Every record of a record split decoded into memory, as image folders are (one size;
  grayscale stays one channel, unless mixed with colour): images (N, H, W, C) uint8. A record
  that cannot be decoded is an error, or with `skip_corrupt` left out and listed in
  `Split.skipped` (after the files the split itself lists as skipped)."""
  where = f'{split.where} record'
  records = [str(split.record(i)) for i in range(len(split))]
  images, kept = decode_images(where, records, lambda r: split.source[int(r)][0], skip_corrupt)
  left_out = tuple(f'{where} {r}' for r, k in zip(records, kept) if not k)
  return Split(images, split.labels[kept], split.class_names, split.skipped + left_out)
