"""Image-folder trees and `.tar` / `.tar.gz` archives decoded into memory, with a
decoded-array cache.

Layout: `<root>/{train,test}/<class>/<image>`, `<root>` being the path itself or its single
top-level folder. Every image of a split must have the same size; a split that mixes grayscale
and colour images is held as colour.
"""
import collections
import contextlib
import hashlib
import io
import os
import posixpath
import tarfile
import time
import zipfile
from typing import Callable

from absl import logging
from etils import epath
import numpy as np
from PIL import Image, UnidentifiedImageError

from vit_jax import files
from vit_jax.data.split import SPLITS, Split, convert_channels

_CACHE_VERSION = 1  # part of the cache key: bump when decoding changes
GRAY_MODES = ('1', 'L', 'LA', 'I', 'I;16', 'F')  # decoded as 'L' (one channel); others as 'RGB'
# A folder tree: (folders, files, read(file) -> bytes), paths relative and '/'-separated.
Listing = tuple[set[str], set[str], Callable[[str], bytes]]


def dataset_file(name: str) -> str:
  """The absolute path of a real dataset file the presets name (e.g. 'cifar10.tar.gz'): in the
  directory $VIT_JAX_DATA, by default `datasets/` under the current directory (the repository
  root, where the commands run)."""
  return os.path.abspath(os.path.join(os.environ.get('VIT_JAX_DATA', 'datasets'), name))


def require(path: str) -> None:
  """Raises FileNotFoundError naming config.dataset when `path` does not exist (for a file a
  preset names, `dataset_file`, saying where $VIT_JAX_DATA points)."""
  if files.exists(path):
    return
  hint = ''
  if path == dataset_file(name := os.path.basename(path)):
    where = (f'$VIT_JAX_DATA={os.environ["VIT_JAX_DATA"]}' if 'VIT_JAX_DATA' in os.environ else
             '$VIT_JAX_DATA, not set: datasets/ under the working directory')
    hint = (f' (the presets read {name} from {where}; set VIT_JAX_DATA to the folder that holds '
            'it)')
  raise FileNotFoundError(f"config.dataset='folder:{path}': {path} does not exist{hint}.")


def load_folder(path: str, split: str, cache_dir: str | None, skip_corrupt: bool) -> Split:
  """An image-folder directory, `.tar` or `.tar.gz`, from the cache when it is there."""
  require(path)
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
  dirs, file_names, read = listing(path, split)
  paths, labels, class_names = image_paths(path, split, dirs, file_names)
  images, kept = decode_images(path, paths, read, skip_corrupt)
  skipped = tuple(os.path.join(path, p) for p, k in zip(paths, kept) if not k)
  result = Split(images, np.asarray(labels, np.int32)[kept], class_names, skipped)
  logging.info('Decoded %d images of %s in %.1f s; caching them in %s.', len(images), path,
               time.perf_counter() - start, cache_file)
  _warn_skipped(path, split, skipped)
  try:
    files.write_npz(cache_file, dict(images=result.images, labels=result.labels,
                                     class_names=np.array(class_names, str),
                                     skipped=np.array(skipped, str)))
    _remove_stale(cache_file)
  except OSError as e:
    logging.warning('Could not write the cache file %s: %s', cache_file, e)
  return result


def cached_shape(path: str, split: str, cache_dir: str | None, skip_corrupt: bool
                 ) -> tuple[int, ...] | None:
  """The shape (N, H, W, C) of `split` of `path` in the decoded-array cache, read from the
  array's header without loading it; None when it is not cached (or not readable)."""
  try:
    cache_file = _cache_file(path, split, cache_dir, skip_corrupt)
    with (epath.Path(cache_file).open('rb') as f, zipfile.ZipFile(f) as archive,
          archive.open('images.npy') as member):
      version = np.lib.format.read_magic(member)
      header = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}[version]
      return tuple(header(member)[0])
  except (OSError, KeyError, ValueError, zipfile.BadZipFile):
    return None


def _warn_skipped(path: str, split: str, skipped: tuple[str, ...]) -> None:
  if skipped:
    logging.warning('Skipped %d image(s) of the %s split of %s that cannot be decoded '
                    "(data.corrupt_images='skip'): %s%s", len(skipped), split, path,
                    ', '.join(skipped[:5]), ' ...' if len(skipped) > 5 else '')


def _cache_file(path: str, split: str, cache_dir: str | None, skip_corrupt: bool) -> str:
  """Cache file name for `split` of `path`: `<name>-<split>-<digest of the path, split and
  decoding>-<digest of its modification stamp>.npz`."""
  path = files.absolute(path)
  if not files.is_local(path):  # an object store: every object's (name, size, modification time)
    stat = lambda p: (p, epath.Path(p).stat().length, epath.Path(p).stat().mtime)
    stamp = tuple(sorted(stat(f'{folder}/{n}') for folder, _, names in files.walk(path)
                         for n in names)) if files.isdir(path) else stat(path)
  elif os.path.isdir(path):
    newest, count = 0, 0
    for folder, _, names in files.walk(path):
      stamps = [os.stat(os.path.join(folder, n)).st_mtime_ns for n in names]
      newest = max([newest, os.stat(folder).st_mtime_ns, *stamps])
      count += len(names)
    stamp = (newest, count)
  else:
    stamp = (os.stat(path).st_size, os.stat(path).st_mtime_ns)
  digest = lambda key: hashlib.sha256(repr(key).encode()).hexdigest()
  cache_dir = cache_dir or os.environ.get('VIT_JAX_CACHE') or os.path.expanduser(
      '~/.cache/vit_jax')
  return os.path.join(cache_dir, f'{os.path.basename(path)}-{split}-'
                      f'{digest((_CACHE_VERSION, path, split, skip_corrupt))[:12]}-'
                      f'{digest(stamp)[:8]}.npz')


def _remove_stale(cache_file: str) -> None:
  """Deletes the caches of the same split of the same path made before its files changed
  (the names `_cache_file` gives them differ in the stamp's digest alone)."""
  cache = epath.Path(cache_file)
  prefix = cache.name.rsplit('-', 1)[0] + '-'
  for stale in cache.parent.iterdir():
    if stale.name.startswith(prefix) and stale.name.endswith('.npz') and stale != cache:
      with contextlib.suppress(OSError):
        stale.unlink()
        logging.info('Removed %s, the cache of the data before it changed.', stale)


def listing(path: str, split: str | None) -> Listing:
  """(folders, files, read) of the directory tree or archive at `path` (`list_folder`,
  `list_archive`: an archive keeps the bytes of `split`'s files, None: of none)."""
  return list_folder(path) if files.isdir(path) else list_archive(path, split)


def list_folder(path: str) -> Listing:
  """(folders, files, read) of a directory tree; paths are relative and '/'-separated."""
  dirs, file_names = set(), set()
  for folder, subdirs, names in files.walk(path):
    rel = os.path.relpath(folder, path).replace(os.sep, '/')
    prefix = '' if rel == '.' else rel + '/'
    dirs.update(prefix + d for d in subdirs)
    file_names.update(prefix + n for n in names)

  def read(rel: str) -> bytes:
    return epath.Path(path, rel).read_bytes()
  return dirs, file_names, read


def list_archive(path: str, split: str | None) -> Listing:
  """(folders, files, read) of a `.tar` or `.tar.gz`, in one streaming pass that keeps the
  bytes of the files that may belong to `split` (those with a `split` folder at depth one or
  two; None: it lists only)."""
  dirs, file_names, blobs = set(), set(), {}
  try:
    with epath.Path(path).open('rb') as f, tarfile.open(fileobj=f, mode='r|*') as tar:
      for member in tar:
        name = posixpath.normpath(member.name).lstrip('/')
        if member.isdir() and name != '.':
          dirs.add(name)
        elif member.isfile():
          file_names.add(name)
          if split is not None and split in name.split('/')[:2]:
            blobs[name] = tar.extractfile(member).read()
  except tarfile.TarError as e:
    raise ValueError(f'{path} is neither a directory nor a readable .tar / .tar.gz archive: '
                     f'{e}') from e
  for name in file_names:  # archives need not list every folder
    parts = name.split('/')
    dirs.update('/'.join(parts[:i]) for i in range(1, len(parts)))
  return dirs, file_names, blobs.__getitem__


# What file managers leave beside images (besides hidden files: macOS '._*' and '.DS_Store'):
# Windows' thumbnail caches and folder settings.
_MANAGER_FILES = ('thumbs.db', 'ehthumbs.db', 'desktop.ini')


def is_metadata(name: str) -> bool:
  """Whether the file `name` (a path) is a file manager's, not an image: a hidden file or one
  of _MANAGER_FILES (any case). Image-folder datasets leave such files out."""
  base = posixpath.basename(name)
  return base.startswith('.') or base.lower() in _MANAGER_FILES


def _subfolders(dirs: set[str], parent: str) -> list[str]:
  """Sorted names of the folders directly inside `parent` ('' for the top level)."""
  prefix = parent + '/' if parent else ''
  return sorted(d[len(prefix):] for d in dirs
                if d.startswith(prefix) and '/' not in d[len(prefix):])


def _root(dirs: set[str]) -> str:
  """The folder that holds a tree's split folders: its single top-level folder if that is not
  a split itself (an archive of 'mnist/train/...'), else '' (the top level)."""
  top = _subfolders(dirs, '')
  return top[0] if len(top) == 1 and top[0] not in SPLITS else ''


def split_names(dirs: set[str]) -> list[str]:
  """The sorted names of the split folders among a tree's folders `dirs` (`listing`)."""
  return _subfolders(dirs, _root(dirs))


def image_paths(path: str, split: str, dirs: set[str], file_names: set[str]
                ) -> tuple[list[str], list[int], tuple[str, ...]]:
  """Checks the layout; returns the split's image paths (by class, then name), their labels
  and the sorted class names."""
  root = _root(dirs)
  split_dir = posixpath.join(root, split)
  where = os.path.normpath(os.path.join(path, root))
  if split_dir not in dirs:
    held = split_names(dirs)
    evaluation = [n for n in ('validation', 'val') if n in held]
    hint = ''
    if split == 'test' and evaluation:
      hint = f"; set data.eval_split='{evaluation[0]}' to evaluate on it"
    elif split == 'test' and held == ['train']:
      hint = ("; to evaluate on a part of train/, set data.train_split='train[:90%]' and "
              "data.eval_split='train[90%:]'")
    raise FileNotFoundError(f"{where} has no '{split}' folder; it holds {held}{hint}.")
  classes = _subfolders(dirs, split_dir)
  if not classes:
    raise ValueError(f'{os.path.join(path, split_dir)} has no class folders.')
  other = 'test' if split == 'train' else 'train'
  theirs = _subfolders(dirs, posixpath.join(root, other))
  if theirs and theirs != classes:
    raise ValueError(
        f'The class folders of {where} differ between train and '
        f'{split if other == "train" else other}: only in {split}: '
        f'{sorted(set(classes) - set(theirs))}, only in {other}: '
        f'{sorted(set(theirs) - set(classes))}.')
  by_folder = collections.defaultdict(list)
  for name in file_names:
    if not is_metadata(name):
      by_folder[posixpath.dirname(name)].append(name)
  paths, labels = [], []
  for label, name in enumerate(classes):
    images = sorted(by_folder[posixpath.join(split_dir, name)])
    if not images:
      raise ValueError(f'Class folder {os.path.join(path, split_dir, name)} is empty.')
    paths += images
    labels += [label] * len(images)
  return paths, labels, tuple(classes)


def pillow_error(error: Exception) -> str:
  """What Pillow's error for a broken file says, without the address of the in-memory file
  ('cannot identify image file <_io.BytesIO object at 0x7f...>')."""
  if isinstance(error, UnidentifiedImageError):
    return 'not an image format Pillow can identify'
  return str(error)


def decode_images(path: str, paths: list[str], read: Callable[[str], bytes],
                  skip_corrupt: bool) -> tuple[np.ndarray, np.ndarray]:
  """Decodes `paths` with Pillow into (N', H, W, C) uint8, all of one size (grayscale modes as
  one channel, other modes as RGB; grayscale among colour images repeated as colour, as Pillow
  converts them), and a (N,) bool mask of the decoded paths (False only for files skipped with
  `skip_corrupt`)."""
  images, kept = [], np.ones(len(paths), bool)
  for i, name in enumerate(paths):
    try:
      with Image.open(io.BytesIO(read(name))) as pil:
        image = np.asarray(pil.convert('L' if pil.mode in GRAY_MODES else 'RGB'))
    except (OSError, SyntaxError, ValueError) as e:  # what Pillow raises for broken files
      if skip_corrupt:
        kept[i] = False
        continue
      raise ValueError(f'Cannot decode the image {os.path.join(path, name)}: '
                       f"{pillow_error(e)}; set data.corrupt_images='skip' to leave such files "
                       'out.') from e
    image = image.reshape(*image.shape[:2], -1)
    if images and image.shape[:2] != images[0].shape[:2]:
      size = lambda s: f'{s[0]}x{s[1]} (HxW)'
      raise ValueError(
          f'{os.path.join(path, name)} is {size(image.shape)} but '
          f'{os.path.join(path, paths[0])} is {size(images[0].shape)}: all images of a split '
          'must have the same size (data.kind=\'stream\' reads images of any size).')
    images.append(image)
  if not images:
    raise ValueError(f'None of the {len(paths)} images of {path} can be decoded.')
  channels = max(image.shape[-1] for image in images)
  return np.stack([convert_channels(image, channels) for image in images]), kept
