"""Command-line entry point: train one run.

  python -m vit_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart \
      [--config.<field>=<value> ...]

Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""
import logging as std_logging
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from vit_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config errors (unknown fields, bad overrides) into one
  message instead of a traceback."""
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


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required.')
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=configs/quickstart.py.')
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_only_our_info)
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, FileNotFoundError) as e:
    sys.exit(f'Error: {e}')
  print(f'Final test accuracy {result.get("test_accuracy", float("nan")):.4f} after '
        f'{result["step"]} steps ({result["wall_time_sec"]:.0f} s); results in '
        f'{_WORKDIR.value}/result.json')


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
