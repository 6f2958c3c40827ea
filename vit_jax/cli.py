"""Shared command-line plumbing: flag parsing with readable config errors, quiet logging."""
import logging as std_logging
import os
import sys

from absl import flags
from absl import logging


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config errors (unknown fields, bad overrides) into one
  message instead of a traceback. Pass as `app.run(main, flags_parser=parse_flags)`."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    sys.exit(f'Error: {e}\nPass --helpshort for the flags.')
  except (AttributeError, KeyError, ValueError, TypeError) as e:
    sys.exit(f'Error in --config or a --config.<field> override: {e}')


def _only_our_info(record: std_logging.LogRecord) -> bool:
  """Keeps warnings and errors from everyone, INFO lines only from vit_jax (orbax and friends
  log every checkpoint step at INFO)."""
  ours = os.sep + 'vit_jax' + os.sep in record.pathname
  return record.levelno >= std_logging.WARNING or ours


def setup_logging() -> None:
  """INFO progress lines from vit_jax, warnings from everything else."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_only_our_info)
