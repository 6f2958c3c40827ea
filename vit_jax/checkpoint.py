"""Training checkpoints (orbax), and reading parameters from a run or a published `.npz`.

`CheckpointManager` keeps the train state and the data iterator's position of a run under
`<workdir>/checkpoints/<step>/` (orbax; written asynchronously, and a step directory appears
only once fully written): the last `checkpoint.keep` steps and the best one by validation
accuracy. A checkpoint is chosen by `step`: 'latest', 'best' or a step number.
`read_params` reads the parameters of a run's checkpoint or of a `.npz` file; `load_pretrained`
fits them to a model and `save_npz` writes the published format (both from
`vit_jax.pretrained`, where the format lives).
"""
import contextlib
import dataclasses
import errno
import os
import re
from typing import Any, Iterator, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp

from vit_jax import files, pretrained
from vit_jax.models import config_overrides, get_model
from vit_jax.pretrained import Params, save_npz  # pylint: disable=unused-import (public API)


Step = int | str | None  # a step number, 'latest' or 'best' (None: 'latest')


def parse_step(text: str) -> Step:
  """A `--step` value: 'best', 'latest' or a step number (ValueError otherwise)."""
  if text in ('best', 'latest'):
    return text
  if not text.isdigit():
    raise ValueError(f"--step={text!r} must be 'best', 'latest' or a step number.")
  return int(text)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """{'params/Transformer/.../kernel': shape} of every array of a train state, of its abstract
  version, or of orbax's metadata of a saved one (the same names for all three)."""
  name = lambda key: str(getattr(key, 'key', getattr(key, 'name', getattr(key, 'idx', key))))
  leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: hasattr(x, 'shape'))
  return {'/'.join(map(name, path)): tuple(leaf.shape) for path, leaf in leaves}


@dataclasses.dataclass
class _LatestAndBest:
  """Orbax preservation policy: the last `keep` checkpoints and the one of step `best`."""
  keep: int
  best: int | None = None

  def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
    latest = ocp.checkpoint_managers.LatestN(self.keep).should_preserve(checkpoints,
                                                                         context=context)
    return [keep or c.step == self.best for keep, c in zip(latest, checkpoints)]


@contextlib.contextmanager
def _write_errors(step: int | None) -> Iterator[None]:
  """Turns the failure of writing checkpoint `step` into an OSError (e.g. a full disk:
  tensorstore reports it as a ValueError carrying the OS error code)."""
  try:
    yield
  except OSError:
    raise
  except Exception as e:  # tensorstore and orbax wrap OS errors in several types
    code = re.search(r"os_error_code='(\d+)'", str(e))
    code = int(code.group(1)) if code else errno.EIO
    raise OSError(code, f'writing checkpoint {step} failed, {os.strerror(code)}: '
                  f'{str(e)[:200]}') from e


class CheckpointManager:
  """Saves and restores (train state, data iterator state) under `directory`, keeping the last
  `keep` steps and the best one that `save` names.

  Saves are asynchronous: `save` returns once the arrays are copied off the devices, and orbax
  writes them in a background thread while training goes on; a step becomes visible only once
  complete, so a kill during a write leaves the earlier checkpoints intact. The next `save`,
  `wait` and `close` wait for the write in progress.
  """

  def __init__(self, directory: str, keep: int = 3):
    self.directory = files.absolute(directory)
    self._policy = _LatestAndBest(keep)
    self._pending = None  # the step being written
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(create=True, preservation_policy=self._policy,
                                             enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, best: int | None = None) -> None:
    """Starts writing checkpoint `step`; `best` is the step of the best checkpoint, kept
    besides the last `keep` (None: none).

    Raises:
      OSError: this write or the one before it failed; earlier checkpoints are untouched.
    """
    self.wait()
    self._policy.best = best
    with _write_errors(step):
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    self._pending = step

  def wait(self) -> None:
    """Blocks until the write in progress is complete (OSError if it failed)."""
    with _write_errors(self._pending):
      self._manager.wait_until_finished()
    self._pending = None

  def resolve(self, step: Step) -> int:
    """The step number of `step` ('latest' or None, 'best', or a number that must exist).

    Raises:
      FileNotFoundError: no such checkpoint.
      ValueError: 'best' of a run that holds out no validation split.
    """
    steps = self.all_steps()
    if step in (None, 'latest', 'best'):
      if not steps:
        raise FileNotFoundError(f'No checkpoint in {self.directory}.')
      if step != 'best':
        return steps[-1]
      best = self._manager.restore(steps[-1], args=ocp.args.Composite(
          data=ocp.args.JsonRestore())).data['best']
      if 'best_val_accuracy' not in best:
        raise ValueError(f'{self.directory}: the run holds out no validation split '
                         '(eval.val_fraction and eval.val_size are 0), so it has no best '
                         "checkpoint; use --step=latest or a step number.")
      step = best['best_step']
    if step not in steps:
      raise FileNotFoundError(f'No checkpoint for step {step} in {self.directory}; there are '
                              f'{steps}.')
    return step

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
    """Restores onto `abstract_state`'s structure and shardings (ShapeDtypeStructs).

    Without `step`, the latest readable checkpoint: one that cannot be read (damaged after it
    was written) is moved aside to `corrupt-<step>` by process 0, with a warning, and every
    process uses the previous one once it has been moved (a barrier). A checkpoint of other
    arrays or shapes (a run of another model or optimizer) is a ValueError; nothing is moved.
    """
    candidates = sorted(self._manager.all_steps(), reverse=True) if step is None else [step]
    wanted = _shapes(abstract_state)
    for candidate in candidates:
      self._check_fits(candidate, wanted)
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

  def _check_fits(self, step: int, wanted: dict[str, tuple[int, ...]]) -> None:
    """Raises ValueError, touching nothing, when checkpoint `step` holds arrays of other names
    or shapes than `wanted` (`_shapes` of the state to restore; the workdir holds a run of
    another model or optimizer: not damage). Metadata that cannot be read is left to
    `restore` (damage)."""
    try:
      stored = _shapes(self._manager.item_metadata(step)['state'])
    except Exception:  # pylint: disable=broad-except (orbax raises many types for damaged files)
      return
    differ = sorted(k for k in stored.keys() | wanted.keys() if stored.get(k) != wanted.get(k))
    if differ:
      example = next((k for k in differ if k.startswith('params/')), differ[0])
      shape = lambda shapes: shapes.get(example, 'absent')
      raise ValueError(
          f'Checkpoint {step} in {self.directory} does not fit this config: {len(differ)} '
          f'arrays differ, e.g. {example} is {shape(stored)} there and {shape(wanted)} here. '
          'The workdir holds a run of another model or optimizer; use a new --workdir (with '
          '--config.checkpoint.init_from=<this workdir> to start from its parameters). '
          'Nothing was changed.')

  def restore_params(self, step: Step = None) -> Params:
    """The parameters alone of checkpoint `step` (see `resolve`), as host NumPy arrays (for
    fine-tuning and export), whatever mesh and process count wrote the checkpoint: arrays
    are read onto one local device."""
    step = self.resolve(step)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree_util.tree_map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
        self._manager.item_metadata(step)['state'])
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target)))
    return pretrained.to_numpy(jax.device_get(restored.state['params']))

  def close(self) -> None:
    """Waits for the write in progress (OSError if it failed), then closes."""
    self.wait()
    self._manager.close()

  def __enter__(self) -> 'CheckpointManager':
    return self

  def __exit__(self, error_type, *_) -> None:
    """Closes; leaving on an error, the write in progress still completes (its own failure
    is only logged, so that the first error is the one reported)."""
    if error_type is None:
      self.close()
      return
    try:
      self.close()
    except OSError as e:
      logging.warning('%s', e)


@contextlib.contextmanager
def _run_checkpoints(workdir: str) -> Iterator[CheckpointManager]:
  """The checkpoint manager of a run workdir, for reading (FileNotFoundError if none)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not files.isdir(directory):
    if files.exists(os.path.join(workdir, 'config.json')):
      raise FileNotFoundError(f'{workdir} is a training run without checkpoints/ (deleted, or '
                              'the run stopped before its first checkpoint).')
    raise FileNotFoundError(f'{workdir} is neither a .npz file nor a run workdir with '
                            'checkpoints/ (or one of its checkpoints/<step> folders).')
  manager = CheckpointManager(directory)
  try:
    yield manager
  finally:
    manager.close()


def _checkpoint_folder(path: str) -> tuple[str, int] | None:
  """(run workdir, step) when `path` is a run's checkpoint folder `<workdir>/checkpoints/<step>`,
  else None."""
  parent, name = os.path.split(path.rstrip('/'))
  run, folder = os.path.split(parent)
  if folder == 'checkpoints' and name.isdigit() and files.exists(os.path.join(run,
                                                                           'config.json')):
    return run, int(name)
  return None


def _run_config_path(workdir: str) -> str:
  """`<workdir>/config.json` (FileNotFoundError if `workdir` is not a training run, naming the
  run it is inside (its checkpoints/ or a checkpoint folder) or the sweep it is)."""
  path = os.path.join(workdir, 'config.json')
  if files.exists(path):
    return path
  if not files.exists(workdir):
    raise FileNotFoundError(f'{workdir} does not exist.')
  run, step = _checkpoint_folder(workdir) or (os.path.dirname(workdir.rstrip('/')), None)
  if files.exists(os.path.join(run, 'config.json')):
    hint = f'; it is inside the run {run}: give that folder' + (
        f' and step {step} (--step={step})' if step is not None else '')
  elif files.exists(os.path.join(workdir, 'results.csv')):
    hint = "; it is a sweep's: give one of its point folders"
  else:
    hint = ''
  raise FileNotFoundError(f'{workdir} is not a training run directory (no config.json){hint}.')


def resolve_step(workdir: str, step: Step = None) -> int:
  """The step number that `step` ('latest' or None, 'best', a number) names in a run workdir
  (see `CheckpointManager.resolve`)."""
  _run_config_path(workdir)
  with _run_checkpoints(workdir) as manager:
    return manager.resolve(step)


def read_params(path: str, step: Step = None) -> Params:
  """Parameters from a `.npz` file, from checkpoint `step` ('latest' or None, 'best', a
  number) of a run workdir, or from a run's checkpoint folder `<workdir>/checkpoints/<step>`
  (with `step` None)."""
  if step is None and (found := _checkpoint_folder(path)):
    path, step = found
  if files.isdir(path):
    with _run_checkpoints(path) as manager:
      return manager.restore_params(step)
  if step is not None:
    raise ValueError(f'step={step} applies to a run workdir, not to the file {path}.')
  return pretrained.read_npz(path)


def load_run(workdir: str, step: Step = None) -> tuple[Any, Any, Params]:
  """(config, model, params) of a run's checkpoint `step` ('latest' or None, 'best', a
  number): the resolved config from `<workdir>/config.json`, the model it names (of a masked
  patch prediction pre-training run: built with `masked_patch_prediction`, its logits the
  patches' colours, not classes) and its parameters as NumPy arrays."""
  path = _run_config_path(workdir)
  config = ml_collections.ConfigDict(files.read_json(path))
  if not isinstance(config.get('model'), ml_collections.ConfigDict) or not isinstance(
      config.model.get('name'), str):
    raise ValueError(f'{path} names no model (model.name): not the config.json of a '
                     'training run.')
  params = read_params(workdir, step)
  colours = 'mpp_head' in params  # pre-trained by masked patch prediction: no class head
  num_classes = params['mpp_head' if colours else 'head']['kernel'].shape[-1]
  model = get_model(config.model.name, num_classes=num_classes, **config_overrides(config.model),
                    **({'masked_patch_prediction': True} if colours else {}))
  return config, model, params


def load_pretrained(path: str, init_params: Params, **options) -> Params:
  """Loads a published-format `.npz` (or a run workdir's latest checkpoint, or one of its
  checkpoint folders `<workdir>/checkpoints/<step>`) into a tree shaped
  like `init_params`: `pretrained.fit` (naming generations, scanned or unrolled layers,
  position embedding resizing, head reset; `options` are its `reset_head` and `strict`) of
  `read_params(path)`.

  Raises:
    ValueError: naming every missing, unexpected and wrongly-shaped key.
    FileNotFoundError: `path` is neither a `.npz` file nor a run workdir.
  """
  return pretrained.fit(read_params(path), init_params, source=path, **options)
