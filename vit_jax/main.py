"""Command-line entry point: train one run, or plan one (`--plan`).

  python -m vit_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart \
      [--config.<field>=<value> ...]

Rerunning the same command on the same workdir resumes from its latest checkpoint.

Multi-process (one process per host, the same command on every host; see `vit_jax.distributed`):
`--distributed=on` on a Cloud TPU pod or under SLURM (JAX detects the rest), or explicitly
`--coordinator_address=<host of process 0>:<port> --num_processes=N --process_id=i`.

Plan mode compiles the sharded train step on simulated CPU devices and prints per-device
memory, FLOPs per step and every parameter's sharding (`vit_jax.plan`); no workdir, no data:
  python -m vit_jax.main --config=configs/pretrain.py:H_14,i21k --plan --plan_devices=256 \
      --config.mesh="(('fsdp', -1),)" [--plan_json=plan.json]
"""
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from vit_jax import cli
from vit_jax import distributed
from vit_jax import files
from vit_jax import plan
from vit_jax import train

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Training config file (configs/*.py).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and results.')
_JOIN = distributed.define_flags()
_PLAN = flags.DEFINE_bool('plan', False, 'Compile the train step on --plan_devices simulated '
                          'CPU devices and print memory, FLOPs and shardings; do not train.')
_PLAN_DEVICES = flags.DEFINE_integer('plan_devices', 8, 'Simulated devices for --plan.')
_PLAN_CLASSES = flags.DEFINE_integer('plan_num_classes', 1000, 'Head size for --plan (no '
                                     'data is loaded).', lower_bound=1)
_PLAN_JSON = flags.DEFINE_string('plan_json', None, 'Also write the --plan result here (JSON).')


def run_plan(config) -> None:
  """--plan: simulated devices (set before JAX starts a backend), compile, report."""
  plan.use_simulated_devices(_PLAN_DEVICES.value)
  result = plan.plan(config, _PLAN_CLASSES.value)
  print(plan.summary(result))
  if _PLAN_JSON.value:
    files.write_json(_PLAN_JSON.value, result)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _CONFIG.value is None:
    raise app.UsageError('--config is required, e.g. --config=configs/quickstart.py.')
  if not _WORKDIR.value and not _PLAN.value:
    raise app.UsageError('--workdir is required.')
  cli.setup_logging()
  try:
    if _PLAN.value:
      with cli.ends_on_ctrl_c('Stopped by Ctrl-C while planning; nothing was written.'):
        run_plan(_CONFIG.value)
      return
    _JOIN()
    result = train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except cli.COMMAND_ERRORS as e:
    sys.exit(f'Error: {e}')
  if jax.process_index():  # one report, from process 0
    return
  if 'stopped_by' in result:
    print(f'Stopped by {result["stopped_by"]} at step {result["step"]} with a checkpoint; rerun '
          'the same command to continue.')
    return
  print(f'Final test accuracy {result.get("test_accuracy", float("nan")):.4f} after '
        f'{result["step"]} steps ({result["wall_time_sec"]:.0f} s); results in '
        f'{_WORKDIR.value}/result.json')


if __name__ == '__main__':
  cli.run(main, 'Stopped at once by Ctrl-C, without a checkpoint of the current step; rerun the '
                'same command to continue from the latest checkpoint.')
