"""Multi-process runs: whether and how `jax.distributed.initialize()` is called.

Every host of a pod (a Cloud TPU VM worker, a SLURM task, ...) runs the same command; JAX's
multi-controller runtime joins the processes, `jax.devices()` then lists the devices of all of
them and the mesh spans them all. Each process feeds its own rows of every global batch,
process 0 alone writes metrics, reports and `result.json`, and every process takes part in
writing each (orbax) checkpoint.

Modes (`--distributed`): 'off' never initialises; 'on' always does, with the coordinator
address, process count and process id from the flags where given and otherwise detected by
JAX (Cloud TPU, SLURM, Open MPI); 'auto' (the default) initialises when any of those is given
(flags or JAX_COORDINATOR_ADDRESS) or the environment is a SLURM step or Open MPI job of more
than one task; a single process never initialises. A multi-host Cloud TPU slice can only be
recognised through its metadata server, so pod launches pass `--distributed=on`.
"""
import os
import re
from typing import Callable, Mapping

from absl import flags
from absl import logging
import jax

MODES = ('auto', 'on', 'off')
# (process count variable, variables that JAX's own detection needs) per cluster environment.
_CLUSTERS = {
    'SLURM': ('SLURM_NTASKS', ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_PROCID',
                               'SLURM_LOCALID')),
    'Open MPI': ('OMPI_COMM_WORLD_SIZE', ('OMPI_MCA_orte_hnp_uri', 'OMPI_COMM_WORLD_RANK')),
}


def detected_cluster(environ: Mapping[str, str] = os.environ) -> str | None:
  """The multi-process cluster environment this process runs in ('SLURM', 'Open MPI'), or None
  for a single process."""
  for name, (count, needed) in _CLUSTERS.items():
    if all(v in environ for v in needed) and environ.get(count, '1').isdigit() and int(
        environ.get(count, '1')) > 1:
      return name
  return None


def should_initialize(mode: str, coordinator_address: str | None, num_processes: int | None,
                      process_id: int | None, environ: Mapping[str, str] = os.environ) -> bool:
  """Whether this process joins a multi-process run (see the module docstring).

  Raises:
    ValueError: an unknown mode, mode 'off' with process settings given, or a coordinator
      address (flag or $JAX_COORDINATOR_ADDRESS) that is not host:port.
  """
  if mode not in MODES:
    raise ValueError(f'--distributed={mode!r} must be one of {MODES}.')
  given = any(v is not None for v in (coordinator_address, num_processes, process_id))
  if mode == 'off':
    if given:
      raise ValueError('--distributed=off contradicts --coordinator_address/--num_processes/'
                       '--process_id; drop one or the other.')
    return False
  join = (mode == 'on' or given or 'JAX_COORDINATOR_ADDRESS' in environ
          or detected_cluster(environ) is not None)
  address = coordinator_address or environ.get('JAX_COORDINATOR_ADDRESS')
  if join and address is not None and not re.fullmatch(r'.+:\d+', address):
    where = '--coordinator_address' if coordinator_address else '$JAX_COORDINATOR_ADDRESS'
    raise ValueError(f"{where}={address!r} must be host:port: process 0's address and a free "
                     'port, e.g. 10.130.0.2:8476.')
  return join


def initialize(mode: str = 'auto', coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None) -> None:
  """Calls `jax.distributed.initialize` when `should_initialize` says so; must run before
  anything touches a JAX device. Settings left None are detected by JAX.

  Raises:
    ValueError: the settings are incomplete outside a known cluster, or joining failed (the
      message names the flags).
  """
  if not should_initialize(mode, coordinator_address, num_processes, process_id):
    return
  try:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  except (RuntimeError, ValueError, TypeError) as e:
    raise ValueError(f'Cannot join the multi-process run (--coordinator_address='
                     f'{coordinator_address}, --num_processes={num_processes}, --process_id='
                     f'{process_id}, cluster detected: {detected_cluster()}): {e}') from e
  logging.info('Process %d of %d; %d local and %d global devices.', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def define_flags() -> Callable[[], None]:
  """Defines --distributed, --coordinator_address, --num_processes and --process_id; returns
  the function that calls `initialize` with their values."""
  mode = flags.DEFINE_enum(
      'distributed', 'auto', MODES,
      'Join a multi-process run: auto (when a coordinator is given or SLURM/Open MPI runs more '
      'than one task), on (always; JAX detects Cloud TPU, SLURM, Open MPI settings), off.')
  coordinator = flags.DEFINE_string('coordinator_address', None,
                                    'host:port of process 0 (multi-process runs).')
  num_processes = flags.DEFINE_integer('num_processes', None, 'Number of processes of a run.',
                                       lower_bound=1)
  process_id = flags.DEFINE_integer('process_id', None,
                                    'This process: 0 .. num_processes - 1.', lower_bound=0)
  return lambda: initialize(mode.value, coordinator.value, num_processes.value, process_id.value)
