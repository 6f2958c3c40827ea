"""Ctrl-C while one of our commands starts: for the first seconds Python imports JAX and the
rest, before the command's `main` runs and installs its own handling; a KeyboardInterrupt there
would be a traceback from whichever import it landed in. `vit_jax/__init__` installs `stop` in
command processes; `vit_jax.cli.ends_on_ctrl_c` (which every command's main work runs under)
hands back to Python's default. Only the standard library is used here (nothing heavy is
imported yet).
"""
import os
import signal
import sys

MESSAGE = 'Stopped by Ctrl-C while starting; nothing was written.'


def stop(signum: int, frame) -> None:  # pylint: disable=unused-argument
  """The SIGINT handler while starting: `MESSAGE` on stderr, exit status 130 at once (nothing
  to save: no command has run yet)."""
  sys.stderr.write(MESSAGE + '\n')
  sys.stderr.flush()
  os._exit(130)  # pylint: disable=protected-access (no SystemExit caught inside an import)


def install() -> None:
  """Makes Ctrl-C `stop`, unless SIGINT's handler is not Python's default (ignored, as in a
  shell script's background job, or set by whoever embeds us): that choice is kept."""
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, stop)


def hand_over() -> None:
  """Back to Python's default (KeyboardInterrupt) where `install` set `stop`."""
  if signal.getsignal(signal.SIGINT) is stop:
    signal.signal(signal.SIGINT, signal.default_int_handler)
