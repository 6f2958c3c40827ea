"""Worker processes that leave Ctrl-C to the process that started them.

A terminal's Ctrl-C (SIGINT) reaches every process of its process group, worker processes
included; a worker that dies of it (or prints its KeyboardInterrupt) breaks the parent's stop
at a checkpoint. Start workers inside `ctrl_c_blocked()` and give them `ignore_ctrl_c` as their
initializer: they start with SIGINT blocked (a signal mask is inherited by the threads and
the processes a thread starts, even across exec) and ignore it once they run their
initializer, so the signal never acts on them; the parent decides and ends them.
"""
import contextlib
from multiprocessing import resource_tracker
import signal
from typing import Iterator


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


def ignore_ctrl_c(*unused) -> None:
  """A worker's initializer (any arguments): SIGINT ignored, then unblocked."""
  del unused
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
