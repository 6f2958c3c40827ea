"""Training checkpoints (orbax), and reading parameters from a run or a published `.npz`.

`CheckpointManager` keeps the train state and the data iterator's position of a run under
`<workdir>/checkpoints/<step>/` (orbax; a step directory appears only once fully written).
`read_params` reads the parameters of a run's checkpoint or of a `.npz` file; `load_pretrained`
fits them to a model and `save_npz` writes the published format (both from
`vit_jax.pretrained`, where the format lives).
"""
import errno
import os
import re
from typing import Any

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from vit_jax import files, pretrained
from vit_jax.models import config_overrides, get_model
from vit_jax.pretrained import Params, save_npz  # pylint: disable=unused-import (public API)


class CheckpointManager:
  """Saves and restores (train state, data iterator state) under `directory`, keeping the last
  `keep` steps. Writes are synchronous and atomic per step."""

  def __init__(self, directory: str, keep: int = 3):
    self.directory = files.absolute(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict) -> None:
    """Writes checkpoint `step`; it becomes visible only once complete.

    Raises:
      OSError: the write failed (e.g. a full disk: tensorstore reports it as a ValueError
        carrying the OS error code); earlier checkpoints are untouched.
    """
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
      self._manager.wait_until_finished()
    except OSError:
      raise
    except Exception as e:  # tensorstore and orbax wrap OS errors in several types
      code = re.search(r"os_error_code='(\d+)'", str(e))
      code = int(code.group(1)) if code else errno.EIO
      raise OSError(code, f'writing checkpoint {step} failed, {os.strerror(code)}: '
                    f'{str(e)[:200]}') from e

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores onto `abstract_state`'s structure and shardings (ShapeDtypeStructs).

    Without `step`, the latest readable checkpoint: one that cannot be read (damaged after it
    was written) is moved aside to `corrupt-<step>` by process 0, with a warning, and every
    process uses the previous one once it has been moved (a barrier).
    """
    candidates = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
    for candidate in candidates:
      try:
        restored = self._manager.restore(candidate, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
        return restored.state, restored.data
      except Exception as e:  # orbax and tensorstore raise many types for damaged files
        if step is not None:
          raise
        aside = os.path.join(self.directory, f'corrupt-{candidate}')
        logging.warning('Checkpoint %d in %s cannot be read (%s: %s); moving it to %s and '
                        'using the previous one.', candidate, self.directory,
                        type(e).__name__, str(e)[:200], aside)
        if jax.process_index() == 0:
          files.rename(os.path.join(self.directory, str(candidate)), aside)
        multihost_utils.sync_global_devices(f'checkpoint {candidate} moved aside')
        self._manager.reload()
    raise FileNotFoundError(f'No readable checkpoint in {self.directory}.')

  def restore_params(self, step: int | None = None) -> Params:
    """The parameters alone, as host NumPy arrays (for fine-tuning and export), whatever
    mesh and process count wrote the checkpoint: arrays are read onto one local device."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        self._manager.item_metadata(step)['state'])
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return pretrained.to_numpy(jax.device_get(restored.state['params']))

  def close(self) -> None:
    self._manager.close()


def read_params(path: str, step: int | None = None) -> Params:
  """Parameters from a `.npz` file, or from checkpoint `step` (default: the latest) of a run
  workdir."""
  if files.isdir(path):
    directory = os.path.join(path, 'checkpoints')
    if not files.isdir(directory):
      raise FileNotFoundError(f'{path} is neither a .npz file nor a run workdir with '
                              'checkpoints/.')
    manager = CheckpointManager(directory)
    try:
      if step is not None and step not in manager.all_steps():
        raise FileNotFoundError(f'No checkpoint for step {step} in {directory}; there are '
                                f'{manager.all_steps()}.')
      return manager.restore_params(step)
    finally:
      manager.close()
  if step is not None:
    raise ValueError(f'step={step} applies to a run workdir, not to the file {path}.')
  return pretrained.read_npz(path)


def load_run(workdir: str, step: int | None = None) -> tuple[Any, Any, Params]:
  """(config, model, params) of a run's checkpoint `step` (default: the latest): the resolved
  config from `<workdir>/config.json`, the model it names and its parameters as NumPy arrays."""
  path = os.path.join(workdir, 'config.json')
  if not files.exists(path):
    raise FileNotFoundError(f'{workdir} is not a training run directory (no config.json).')
  config = ml_collections.ConfigDict(files.read_json(path))
  params = read_params(workdir, step)
  if 'head' not in params:
    raise ValueError(f'{workdir} has no classification head (a masked patch prediction '
                     'pre-training run?): use a classifier, e.g. its fine-tuned run.')
  num_classes = params['head']['kernel'].shape[-1]
  model = get_model(config.model.name, num_classes=num_classes, **config_overrides(config.model))
  return config, model, params




def load_pretrained(path: str, init_params: Params, **options) -> Params:
  """Loads a published-format `.npz` (or a run workdir's latest checkpoint) into a tree shaped
  like `init_params`: `pretrained.fit` (naming generations, scanned or unrolled layers,
  position embedding resizing, head reset; `options` are its `reset_head` and `strict`) of
  `read_params(path)`.

  Raises:
    ValueError: naming every missing, unexpected and wrongly-shaped key.
    FileNotFoundError: `path` is neither a `.npz` file nor a run workdir.
  """
  return pretrained.fit(read_params(path), init_params, source=path, **options)
