"""A run's workdir: its lock, what a failed write reports, `config.json`, and the stop flag
(SIGTERM or Ctrl-C) that stops a run at a checkpoint (agreed across the processes of a
multi-process run)."""
import contextlib
import errno
import json
import os
import signal
import threading
import time
from typing import Iterator

from absl import logging
from flax import traverse_util
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
    ValueError: the workdir is a sweep's folder (it holds sweep_config.json; a run there would
      mix its files with the sweep's points), before anything is written.
    OSError: a write failed; the message says that everything written before is intact.
  """
  try:
    with (files.exclusive_lock(workdir, 'training run') if jax.process_index() == 0
          else contextlib.nullcontext()):
      if files.exists(os.path.join(workdir, 'sweep_config.json')):  # (the lock checked access)
        raise ValueError(f"{workdir} is a sweep's folder (it holds sweep_config.json): give the "
                         'run a --workdir of its own.')
      yield
  except OSError as e:
    if e.errno not in _WRITE_ERRNOS:
      raise
    problem = f'{e.filename}: {e.strerror}' if e.filename else e.strerror or str(e)
    raise OSError(e.errno, f'Cannot write in the workdir {workdir} ({problem}). Everything '
                  'written there before is intact; free space or fix the permissions, then '
                  'rerun the same command to continue from the last checkpoint.') from e


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config; a different one already there is kept with a timestamp, and
  the warning names the fields that changed."""
  path = os.path.join(workdir, 'config.json')
  text = config.to_json_best_effort(indent=2, sort_keys=True) + '\n'
  if files.exists(path) and (earlier := files.read_text(path)) != text:
    backup = f'{path}.{time.strftime("%Y%m%d-%H%M%S")}'
    files.rename(path, backup)
    then, now = (traverse_util.flatten_dict(json.loads(t), sep='.') for t in (earlier, text))
    changed = [f'{k}: {then.get(k, "absent")} -> {now.get(k, "absent")}'
               for k in sorted(then.keys() | now.keys()) if then.get(k) != now.get(k)]
    logging.warning('The config differs from the one of the last run in this workdir (%s); the '
                    'old one is kept as %s.', ', '.join(changed[:8]) + (
                        f' and {len(changed) - 8} more' if len(changed) > 8 else ''), backup)
  with files.atomic_open(path) as f:
    f.write(text)


# How a stop is named (stop_flag's list, messages).
STOP_SIGNAL_NAMES = {signal.SIGTERM: 'SIGTERM', signal.SIGINT: 'Ctrl-C'}


@contextlib.contextmanager
def on_stop_signals(handler) -> Iterator[None]:
  """`handler(signum, frame)` for the signals that stop a run or a sweep at a checkpoint inside
  the block, the previous handlers after it: SIGTERM, and SIGINT (Ctrl-C) unless it is ignored
  (a shell script's background job, which its Ctrl-C must not stop)."""
  signums = [signal.SIGTERM]
  if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
    signums.append(signal.SIGINT)
  previous = {s: signal.signal(s, handler) for s in signums}
  try:
    yield
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


@contextlib.contextmanager
def stop_flag() -> Iterator[list]:
  """A list that receives 'SIGTERM' or 'Ctrl-C' when SIGTERM or SIGINT arrives inside the
  block (`on_stop_signals`): the run stops at a checkpoint. A second Ctrl-C raises
  KeyboardInterrupt (stop at once, without that checkpoint). Only the main thread can receive
  signals: elsewhere the list stays empty."""
  flag = []
  if threading.current_thread() is not threading.main_thread():
    yield flag
    return
  def on_signal(signum, frame):
    if signum == signal.SIGINT and STOP_SIGNAL_NAMES[signum] in flag:
      raise KeyboardInterrupt
    flag.append(STOP_SIGNAL_NAMES[signum])
  with on_stop_signals(on_signal):
    yield flag


def stop_agreed(flag: list, sync_point: bool) -> str | None:
  """Why the run stops (with a checkpoint) at this step, 'SIGTERM' or 'Ctrl-C', or None: a
  single process as soon as its `stop_flag` is set; the processes of a multi-process run
  together, at a `sync_point` (the log steps), when any of them has received one (an
  all-gather of the flags; the reason is the lowest such process's), so that all save the
  same step."""
  if jax.process_count() == 1:
    return flag[0] if flag else None
  if not sync_point:
    return None
  reasons = list(STOP_SIGNAL_NAMES.values())
  code = reasons.index(flag[0]) + 1 if flag else 0
  codes = [int(c) for c in np.ravel(multihost_utils.process_allgather(np.array(code))) if c]
  return reasons[codes[0] - 1] if codes else None
