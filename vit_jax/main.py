"""Command-line entry point: train one run.

  python -m vit_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart \
      [--config.<field>=<value> ...]

Rerunning the same command on the same workdir resumes from its latest checkpoint.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from vit_jax import cli
from vit_jax import files
from vit_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not _WORKDIR.value:
    raise app.UsageError('--workdir is required.')
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=configs/quickstart.py.')
  cli.setup_logging()
  try:
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (ValueError, OSError, FloatingPointError, files.LockedError) as e:
    sys.exit(f'Error: {e}')
  if result.get('preempted'):
    print(f'Stopped by SIGTERM at step {result["step"]} with a checkpoint; rerun the same '
          'command to continue.')
    return
  print(f'Final test accuracy {result.get("test_accuracy", float("nan")):.4f} after '
        f'{result["step"]} steps ({result["wall_time_sec"]:.0f} s); results in '
        f'{_WORKDIR.value}/result.json')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.parse_flags)
