"""Atomic, pickle-free file I/O shared by checkpoints, the data cache and run outputs.

Every write goes to a temporary file in the destination's directory and is renamed over the
destination only once complete, so a crash never leaves a half-written file behind.
"""
import contextlib
import fcntl
import json
import os
import tempfile
import zipfile
from typing import Any, Iterator, TextIO

import numpy as np


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w') -> Iterator[TextIO]:
  """Opens a temporary file that replaces `path` when the block exits without error."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.',
                             suffix='.tmp')
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # what open() would give, not mkstemp's owner-only 0600
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


class LockedError(RuntimeError):
  """Another process holds the directory's lock."""


@contextlib.contextmanager
def exclusive_lock(directory: str, what: str) -> Iterator[None]:
  """Holds `<directory>/.lock` exclusively for the block, so two runs or sweeps never write
  the same directory; the operating system releases it if the process dies.

  Raises:
    LockedError: naming the directory and the holder's pid.
  """
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, '.lock'), 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      raise LockedError(f'Another {what} is running in {directory} ({f.read().strip()}); wait '
                        'for it to finish or use another directory.') from None
    f.seek(0)
    f.truncate()
    f.write(f'pid {os.getpid()}')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def write_json(path: str, obj: Any) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes a flat dict of numeric (or unicode) arrays as `.npz`; never pickles."""
  bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray) or v.dtype == object]
  if bad:
    raise ValueError(f'Cannot save non-numeric arrays {bad} to {path}.')
  with atomic_open(path, 'wb') as f:
    np.savez(f, allow_pickle=False, **arrays)


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads a flat `.npz` into {key: array}, refusing pickled objects with a clear error."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'File not found: {path}')
  if not zipfile.is_zipfile(path):
    raise ValueError(f'{path} is not a readable .npz file (not a zip archive).')
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except ValueError as e:
    if 'allow_pickle' in str(e):
      raise ValueError(f'{path} holds pickled Python objects; refusing to load it (only plain '
                       'numeric arrays are accepted).') from e
    raise ValueError(f'{path} is not a readable .npz file: {e}') from e
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path} is not a readable .npz file: {e}') from e
