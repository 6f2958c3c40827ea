"""A run's workdir: its lock, what a failed write reports, `config.json`, and the SIGTERM flag
that stops a run at a checkpoint (agreed across the processes of a multi-process run)."""
import contextlib
import errno
import os
import signal
import threading
import time
from typing import Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from vit_jax import files

# What a failed write reports when the workdir is full, read-only or otherwise unwritable.
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM,
                 errno.EIO, errno.ENOTDIR}


@contextlib.contextmanager
def hold(workdir: str) -> Iterator[None]:
  """Holds the workdir's lock (on process 0) for the block and turns a failed write into one
  error that names the workdir and says what to do.

  Raises:
    files.LockedError: another run holds the workdir.
    OSError: a write failed; the message says that everything written before is intact.
  """
  try:
    with (files.exclusive_lock(workdir, 'training run') if jax.process_index() == 0
          else contextlib.nullcontext()):
      yield
  except OSError as e:
    if e.errno not in _WRITE_ERRNOS:
      raise
    problem = f'{e.filename}: {e.strerror}' if e.filename else e.strerror or str(e)
    raise OSError(e.errno, f'Cannot write in the workdir {workdir} ({problem}). Everything '
                  'written there before is intact; free space or fix the permissions, then '
                  'rerun the same command to continue from the last checkpoint.') from e


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config; a different one already there is kept with a timestamp."""
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2, sort_keys=True) + '\n'
  if files.exists(path) and files.read_text(path) != text:
    backup = f'{path}.{time.strftime("%Y%m%d-%H%M%S")}'
    files.rename(path, backup)
    logging.warning('The config differs from the one this workdir was started with; the old '
                    'one is kept as %s.', backup)
  with files.atomic_open(path) as f:
    f.write(text)


@contextlib.contextmanager
def sigterm_flag() -> Iterator[list]:
  """A list that becomes non-empty when SIGTERM arrives inside the block (only the main
  thread can receive signals: elsewhere the list stays empty)."""
  flag = []
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  previous = signal.signal(signal.SIGTERM, lambda *_: flag.append(True))
  try:
    yield flag
  finally:
    signal.signal(signal.SIGTERM, previous)


def stop_agreed(flag: list, sync_point: bool) -> bool:
  """Whether the run stops (with a checkpoint) at this step: a single process as soon as its
  SIGTERM `flag` is set; the processes of a multi-process run together, at a `sync_point`
  (the log steps), when any of them has received SIGTERM (an all-gather of the flags), so
  that all save the same step."""
  if jax.process_count() == 1:
    return bool(flag)
  if not sync_point:
    return False
  return bool(np.any(multihost_utils.process_allgather(np.array(bool(flag)))))
