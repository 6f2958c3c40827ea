"""Worker processes that leave Ctrl-C to the process that started them, and end when it dies.

A terminal's Ctrl-C (SIGINT) reaches every process of its process group, worker processes
included; a worker that dies of it (or prints its KeyboardInterrupt) breaks the parent's stop
at a checkpoint. Start workers inside `ctrl_c_blocked()` and give them `init_worker` (with
this process's pid) as their initializer: they start with SIGINT blocked (a signal mask is
inherited by the threads and the processes a thread starts, even across exec) and ignore it
once they run their initializer, so the signal never acts on them; the parent decides and
ends them.

A parent killed outright (SIGKILL, the out-of-memory killer) cannot end its workers, and they
would run on, orphaned, holding their memory: `init_worker` also starts a thread that ends
the worker within `ORPHAN_POLL_S` seconds of its parent's death.
"""
import contextlib
from multiprocessing import resource_tracker
import os
import signal
import threading
import time
from typing import Iterator

ORPHAN_POLL_S = 1.0  # how often a worker checks that its parent is alive


@contextlib.contextmanager
def ctrl_c_blocked() -> Iterator[None]:
  """SIGINT blocked in this thread (and in the threads and processes started inside). A
  Ctrl-C meanwhile reaches this process through its other threads, or when the block ends."""
  # Python's resource tracker unblocks SIGINT in the thread that starts it: start it first.
  resource_tracker.ensure_running()
  previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
  try:
    yield
  finally:
    signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def init_worker(parent: int, *unused) -> None:
  """A worker's initializer, given the pid of the process that starts it (then any
  arguments): SIGINT ignored, then unblocked; the worker exits once `parent` is gone, even
  if it died while the worker was starting (`_exit_when_orphaned`)."""
  del unused
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
  threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True,
                   name='exit-when-orphaned').start()


def _exit_when_orphaned(parent: int) -> None:
  """Exits this process (status 1, no clean-up: its parent is gone) once its parent process
  is no longer `parent` (an orphan is adopted by init or a subreaper)."""
  while os.getppid() == parent:
    time.sleep(ORPHAN_POLL_S)
  os._exit(1)  # pylint: disable=protected-access
