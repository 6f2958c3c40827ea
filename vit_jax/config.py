"""The training config: its vocabulary and defaults, and the one table every field is checked
against.

`defaults()` is the config every preset (configs/*.py) starts from: a tiny ViT on the embedded
digits. `TRAIN_FIELDS` declares every field's type and range (`SWEEP_FIELDS` those of a sweep
config); `check(config)` and `check_sweep(sweep)` walk them, so a field that is unknown or out
of range is a ValueError naming it before anything runs. Every field can be overridden on the
command line, e.g. `--config.model.num_layers=24 --config.mesh="(('data', -1),)"`. Model
fields left at None keep the value the registry gives the named model.
"""
import contextlib
import dataclasses
import importlib.util
import math
import os
import sys
from typing import Any, Callable, Iterator

from flax import traverse_util
import ml_collections
from ml_collections.config_dict import placeholder

from vit_jax import sharding
from vit_jax.data import loader
from vit_jax.data.split import CHANNELS
from vit_jax.models import model_fields, registry


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: the Python types it accepts, whether None is allowed (the registry's
  or the code's default), and `valid(value)` with `rule` saying in words what it accepts."""
  types: tuple[type, ...]
  valid: Callable[[Any], bool]
  rule: str
  none: bool = False

  def error(self, path: str, value: Any, note: str = '') -> str | None:
    """None if `value` is valid, else the message naming `path` (and `note`)."""
    if value is None and self.none:
      return None
    typed = isinstance(value, self.types) and (bool in self.types or not isinstance(value, bool))
    if typed and self.valid(value):
      return None
    return f'config.{path}={value!r} must be {self.rule}{note}.'


def _int(low: int = 1, none: bool = False) -> Field:
  rule = 'a positive integer' if low == 1 else f'an integer >= {low}'
  return Field((int,), lambda v: v >= low, rule, none)


def _real(low: float, high: float = math.inf, *, open_low: bool = False, open_high: bool = True,
          none: bool = False) -> Field:
  """A number in the interval low..high (`open_*`: that end excluded)."""
  def valid(v):
    return ((v > low if open_low else v >= low) and
            (v < high if open_high else v <= high) and not math.isnan(v))
  if low == -math.inf and high == math.inf:
    rule = 'a finite number'
  elif high == math.inf:
    rule = f'{"> " if open_low else ">= "}{low}'
  else:
    rule = f'in {"(" if open_low else "["}{low}, {high}{")" if open_high else "]"}'
  return Field((int, float), valid, rule, none)


def _choice(*values, none: bool = False) -> Field:
  return Field((str,), lambda v: v in values, f'one of {values}', none)


def _is_int(v, low: int) -> bool:
  return isinstance(v, int) and not isinstance(v, bool) and v >= low


def _ints(none: bool = False) -> Field:
  """A tuple of positive integers."""
  return Field((tuple, list), lambda v: all(_is_int(i, 1) for i in v), 'positive integers', none)


def _range_pair(high: float) -> Field:
  """(low, high) with 0 < low <= high <= `high`."""
  def valid(v):
    return (len(v) == 2 and all(isinstance(x, (int, float)) for x in v) and
            0 < v[0] <= v[1] <= high)
  return Field((tuple, list), valid, f'a pair (a, b) with 0 < a <= b <= {high}')


_STEPS = Field((tuple, list), lambda v: len(v) == 2 and _is_int(v[0], 1) and _is_int(v[1], v[0]),
               'a pair of steps (a, b) with 1 <= a <= b', none=True)


_BOOL = Field((bool,), lambda v: True, 'True or False')
_BOOL_OR_NONE = dataclasses.replace(_BOOL, none=True)
_TEXT = Field((str,), lambda v: True, 'a string')
_PATH_OR_NONE = Field((str,), lambda v: bool(v), 'a path', none=True)


def _known_model(name: str) -> bool:
  registry.get_model_config(name)  # raises naming the unknown model and the known names
  return True


def _dataset(v: str) -> bool:
  kind, _, arg = v.partition(':')
  return v == 'digits' or (kind in ('folder', 'tfds', 'records') and bool(arg))


def _split_expression(v: str) -> bool:
  try:
    loader.parse_split(v)
  except ValueError:
    return False
  return True


_DATASET_RULE = ("'digits', 'folder:<dir, .tar or .tar.gz>', 'tfds:<name>' or 'records:<dir from "
                 "python -m vit_jax.data.prepare>'")
_SPLIT_RULE = "a split name or slice, such as 'train' or 'train[:99%]'"


def _mesh(v) -> bool:
  """(name, size) pairs; `sharding.make_mesh` checks the names against the devices."""
  return len(v) > 0 and all(
      isinstance(pair, (tuple, list)) and len(pair) == 2 and isinstance(pair[0], str) and
      isinstance(pair[1], int) and (pair[1] > 0 or pair[1] == -1) for pair in v)


_SOFT_SPLIT = Field(
    (tuple, list), lambda v: all(
        isinstance(s, (tuple, list)) and len(s) == 3 and _is_int(s[0], 1) and _is_int(s[1], 1)
        and _is_int(s[2], 0) for s in v),
    '(kernel, stride, padding) triples, padding >= 0 and the others positive', none=True)
_POSITIVE_OR_NONE = _int(none=True)

# Every model override a config may set (None = the registry's value). The names are exactly
# the constructor arguments of the model families (`vit_jax.models.model_fields`) but
# `masked_patch_prediction`, which `mpp.enabled` sets.
MODEL_FIELDS: dict[str, Field] = {
    'hidden_size': _POSITIVE_OR_NONE, 'mlp_dim': _POSITIVE_OR_NONE,
    'num_heads': _POSITIVE_OR_NONE, 'num_layers': _POSITIVE_OR_NONE,
    'patch_size': Field((int,), lambda v: v > 0, 'positive', none=True),
    'classifier': _choice('token', 'gap', none=True),
    'representation_size': _POSITIVE_OR_NONE,
    'dropout_rate': _real(0, 1, none=True), 'attention_dropout_rate': _real(0, 1, none=True),
    'posemb': _choice('learn', 'sincos2d', none=True),
    'dtype': _choice('float32', 'bfloat16', 'float16', none=True),
    'attention_impl': _choice('xla', 'cudnn', none=True),
    'scan': _BOOL_OR_NONE,
    'remat_policy': _choice('none', 'full', 'dots', 'dots_no_batch', none=True),
    'gelu_approximate': _BOOL_OR_NONE,
    'head_bias_init': _real(-math.inf, none=True),
    'resnet_layers': _ints(none=True), 'resnet_width': _POSITIVE_OR_NONE,
    'resnet_stem': _choice('bit', 'small', none=True),
    'token_dim': _POSITIVE_OR_NONE, 'soft_split': _SOFT_SPLIT,
}

# Every field of a training config: the vocabulary `defaults()` fills in.
TRAIN_FIELDS: dict[str, Field] = {
    'model.name': Field((str,), _known_model, 'a registered model name'),
    **{f'model.{k}': f for k, f in MODEL_FIELDS.items()},
    'dataset': Field((str,), _dataset, _DATASET_RULE),
    'train_size': _POSITIVE_OR_NONE,
    'image_size': _int(), 'batch_size': _int(), 'total_steps': _int(), 'seed': _int(0),
    'log_every': _int(), 'eval_every': _int(), 'checkpoint_every': _int(),
    'profile_steps': _STEPS,
    'mesh': Field((tuple, list), _mesh,
                  f'(axis, size) pairs, axes from {sharding.KNOWN_AXES}, sizes > 0 or -1'),
    'optim.name': _choice('adam', 'adamw', 'sgd'),
    'optim.lr': _real(0, open_low=True, open_high=False),  # inf: a test of the non-finite stop
    'optim.b1': _real(0, 1), 'optim.b2': _real(0, 1), 'optim.momentum': _real(0, 1),
    'optim.weight_decay': _real(0), 'optim.grad_clip_norm': _real(0),
    'optim.label_smoothing': _real(0, 1), 'optim.grad_accum_steps': _int(),
    'optim.skip_nonfinite': _BOOL,
    'schedule.warmup_steps': _int(0), 'schedule.decay': _choice('cosine', 'linear', 'constant'),
    'schedule.end_lr': _real(0),
    'augment.crop': _BOOL, 'augment.crop_scale': _range_pair(1.0),
    'augment.crop_ratio': _range_pair(math.inf), 'augment.flip': _BOOL,
    'eval.batch_size': _int(), 'eval.crop_fraction': _real(0, 1, open_low=True, open_high=False),
    'eval.fewshot_shots': _ints(), 'eval.fewshot_seeds': _int(),
    'eval.fewshot_l2_reg': _real(0, open_low=True), 'eval.val_fraction': _real(0, 1),
    'eval.val_size': _int(0), 'eval.patience': _int(0),
    'eval.fewshot_dataset': Field((str,), _dataset, _DATASET_RULE, none=True),
    'checkpoint.keep': _int(), 'checkpoint.init_from': _PATH_OR_NONE,
    'checkpoint.reset_head': _BOOL_OR_NONE,
    'mpp.enabled': _BOOL, 'mpp.corrupt_fraction': _real(0, 1, open_low=True, open_high=False),
    'mpp.mask_fraction': _real(0, 1, open_high=False),
    'mpp.random_fraction': _real(0, 1, open_high=False),
    'data.cache_dir': _PATH_OR_NONE, 'data.subset_seed': _int(0),
    'data.corrupt_images': _choice('error', 'skip'),
    'data.kind': _choice(*loader.KINDS), 'data.memory_limit_gb': _real(0),
    'data.workers': _int(0), 'data.tfds_dir': _PATH_OR_NONE,
    'data.channels': Field((int,), lambda v: _is_int(v, 1) and v in CHANNELS,
                           f'one of {CHANNELS}', none=True),
    'data.train_split': Field((str,), _split_expression, _SPLIT_RULE),
    'data.eval_split': Field((str,), _split_expression, _SPLIT_RULE, none=True),
}

def _distinct(values) -> bool:
  return len(set(values)) == len(values)


def _reals(low: float, open_low: bool) -> Field:
  """A non-empty tuple of distinct numbers above `low` (`open_low`: `low` itself excluded)."""
  above = lambda x: x > low if open_low else x >= low
  return Field((tuple, list), lambda v: len(v) > 0 and _distinct(v) and all(
      isinstance(x, (int, float)) and not isinstance(x, bool) and above(x) for x in v),
               f'a non-empty tuple of distinct numbers {">" if open_low else ">="} {low}')


# The fields of a sweep config (configs/data_scaling.py) besides `base`, a training config, and
# `models`, label -> {'model': a model section, 'lr': None or that model's learning rate,
# 'weight_decay': None or its weight decay, 'min_steps': None or its budget floor}. All but
# `train_sizes` are optional; `sweep_field` gives the default of an absent one.
SWEEP_FIELDS: dict[str, Field] = {
    'name': _TEXT,
    'train_sizes': Field((tuple, list), lambda v: len(v) > 0 and _distinct(v) and all(
        s is None or _is_int(s, 1) for s in v),
                         'a non-empty tuple of distinct positive integers or None (all)'),
    # Budget rule: a point trains budget.epochs passes over its training subset, at least
    # min_steps and at most max_steps; None = every point runs base.total_steps.
    'budget.epochs': _real(0, open_low=True, none=True),
    'budget.min_steps': _int(), 'budget.max_steps': _int(),
    'budget.evals': _int(),          # evaluations per point (eval_every = steps // evals)
    # Seeds: every point runs `seeds` times (config.seed = base.seed + i); sizes up to
    # small_size run small_seeds times; vary_subset: the subset (data.subset_seed) varies too.
    'seeds': _int(), 'small_seeds': _int(), 'small_size': _int(0),
    'vary_subset': _BOOL,
    # Convergence check: the smallest and largest sizes rerun with twice the budget, seed 0; at
    # the smallest, where seeds vary most, its first convergence_seeds seeds rerun.
    'convergence_check': _BOOL, 'convergence_seeds': _int(),
    # Learning-rate / weight-decay grid per family at one size (None = no grid), picked by
    # validation accuracy; the study's points use the chosen values.
    'grid.size': _POSITIVE_OR_NONE, 'grid.lr': _reals(0, True),
    'grid.weight_decay': _reals(0, False),
}
SWEEP_DEFAULTS: dict[str, Any] = {
    'name': '', 'budget.epochs': None, 'budget.min_steps': 1, 'budget.max_steps': 10**9,
    'budget.evals': 1, 'seeds': 1, 'small_seeds': 1, 'small_size': 0, 'vary_subset': False,
    'convergence_check': False, 'convergence_seeds': 1, 'grid.size': None, 'grid.lr': (1e-3,),
    'grid.weight_decay': (0.,),
}
SWEEP_MODEL_FIELDS: dict[str, Field] = {'lr': _real(0, open_low=True, none=True),
                                        'weight_decay': _real(0, none=True),
                                        'min_steps': _int(none=True)}


def sweep_field(sweep: ml_collections.ConfigDict, key: str) -> Any:
  """A sweep field by its dotted name ('budget.epochs'), SWEEP_DEFAULTS[key] when absent."""
  node = sweep
  for part in key.split('.'):
    if part not in node:
      return SWEEP_DEFAULTS[key]
    node = node[part]
  return node


def registry_model_fields() -> set[str]:
  """The model overrides the registry's families accept (what MODEL_FIELDS must name)."""
  families = ('vit', 'resnet', 't2t')
  return set().union(*(model_fields(f) for f in families)) - {'masked_patch_prediction'}


@contextlib.contextmanager
def importable(spec: str) -> Iterator[None]:
  """While the body loads the config file of `spec` ('<file>.py[:<preset>]'), the file can
  import its neighbours from any working directory: the folder above its package
  (`configs/data_scaling.py` imports `configs.cifar10`), or the file's own folder when that is
  no package, goes first on sys.path, and is taken off again after. No `spec`: no change."""
  if not spec:
    yield
    return
  folder = os.path.dirname(os.path.abspath(spec.split(':', 1)[0]))
  while os.path.isfile(os.path.join(folder, '__init__.py')) and folder != os.path.dirname(folder):
    folder = os.path.dirname(folder)
  sys.path.insert(0, folder)
  try:
    yield
  finally:
    sys.path.remove(folder)


def load_file(spec: str) -> ml_collections.ConfigDict:
  """The config of a `--config` value, '<file>.py[:<preset>]': the file's `get_config()` or
  `get_config(<preset>)`, loaded by path as `ml_collections.config_flags` does (`importable`)."""
  path, *preset = spec.split(':', 1)
  module_spec = importlib.util.spec_from_file_location('config_file', path)
  if module_spec is None:
    raise FileNotFoundError(f'--config={spec}: {path} is not a Python file.')
  module = importlib.util.module_from_spec(module_spec)
  with importable(spec):
    module_spec.loader.exec_module(module)
    return module.get_config(*preset)


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model`: a registry name plus a typed slot for every override."""
  unknown = set(overrides) - set(MODEL_FIELDS)
  if unknown:
    raise ValueError(f'Unknown model field(s) {sorted(unknown)}; known: {sorted(MODEL_FIELDS)}.')
  slot = lambda f: placeholder(float if float in f.types else f.types[0])
  fields = {k: overrides.get(k, slot(f)) for k, f in MODEL_FIELDS.items()}
  return ml_collections.ConfigDict(dict(name=name, **fields))


def model_and_dataset(arg: str, file: str, datasets: dict) -> tuple[str, str]:
  """Splits a '<model>,<dataset>' preset; errors name the config `file` and the choices."""
  try:
    model, dataset = arg.split(',')
  except ValueError:
    raise ValueError(f'{file} preset {arg!r} must be "<model>,<dataset>", '
                     f'e.g. "B_16,{next(iter(datasets))}".') from None
  if dataset not in datasets:
    raise ValueError(f'Unknown {file} dataset {dataset!r}; use one of {sorted(datasets)}.')
  return model, dataset


def defaults() -> ml_collections.ConfigDict:
  """Returns the shared defaults (a tiny ViT on the embedded digits)."""
  config = ml_collections.ConfigDict()
  config.model = model_config('ViT-Nano_4', num_layers=4)
  config.dataset = 'digits'           # 'digits' | 'folder:<dir, .tar or .tar.gz>' | 'tfds:<name>'
                                      # | 'records:<dir from python -m vit_jax.data.prepare>'
  config.train_size = placeholder(int)  # nested class-balanced subset; None = all
  config.image_size = 8
  config.batch_size = 128             # global batch over all devices and processes
  config.total_steps = 500
  config.seed = 0
  config.log_every = 50
  config.eval_every = 250
  config.checkpoint_every = 250
  config.profile_steps = placeholder(tuple)  # (a, b): profiler trace of steps a..b in the
                                             # workdir's profile/; None = no trace
  config.mesh = (('data', -1),)       # (axis, size) pairs; -1 = the remaining devices

  config.optim = ml_collections.ConfigDict(dict(
      name='adamw',                   # 'adam' | 'adamw' (decoupled decay) | 'sgd' (momentum)
      lr=1e-3, b1=0.9, b2=0.999, momentum=0.9, weight_decay=0.1,
      grad_clip_norm=1.0,             # global-norm clipping; 0 = none
      label_smoothing=0.0,
      grad_accum_steps=1,             # micro-batches per step
      skip_nonfinite=False,           # skip (and count) steps with a non-finite loss/gradient
                                      # instead of stopping the run
  ))
  config.schedule = ml_collections.ConfigDict(dict(
      warmup_steps=50,
      decay='cosine',                 # 'cosine' | 'linear' | 'constant'
      end_lr=0.0,                     # at most optim.lr
  ))
  config.augment = ml_collections.ConfigDict(dict(
      crop=True,                      # random resized crop ...
      crop_scale=(0.5, 1.0),          # ... of this fraction of the area
      crop_ratio=(3 / 4, 4 / 3),      # ... and aspect ratio
      flip=False,                     # random horizontal flip (off for digits)
  ))
  config.eval = ml_collections.ConfigDict(dict(
      batch_size=512,
      crop_fraction=1.0,              # central crop kept before resizing to image_size
      fewshot_shots=(1, 5, 10),       # linear probe on pre-logits features, k per class
      fewshot_seeds=3,
      fewshot_l2_reg=2.0**10,
      fewshot_dataset=placeholder(str),  # the probe's dataset (its train and evaluation
                                      # splits) if not the training one, e.g. ImageNet-1k
                                      # 5-shot for a JFT or ImageNet-21k run
      val_fraction=0.0,               # > 0: hold out this much of the training subset
                                      # (class-balanced) and report the best-validation step
      val_size=0,                     # > 0 (instead): a fixed validation set of this many
                                      # training-split images (class-balanced), held out
                                      # before the subset is drawn: the same for every
                                      # train_size and outside all of them
      patience=0,                     # > 0 (with a validation split): stop when validation accuracy
                                      # has not improved for this many evaluations
  ))
  config.checkpoint = ml_collections.ConfigDict(dict(
      keep=3,                         # last N checkpoints kept
      init_from=placeholder(str),     # a .npz, run workdir or <workdir>/checkpoints/<step>
      reset_head=placeholder(bool),   # None: reset when the class count differs
  ))
  config.mpp = ml_collections.ConfigDict(dict(
      enabled=False,                  # pre-train by masked patch prediction (vit_jax/mpp.py;
                                      # plain ViTs): labels are not used, and the metrics'
                                      # loss / accuracy are those of the corrupted patches
      corrupt_fraction=0.5,           # patches corrupted per image ...
      mask_fraction=0.8,              # ... of which replaced by the mask token,
      random_fraction=0.1,            # ... by a random patch of the batch (rest unchanged)
  ))
  config.data = ml_collections.ConfigDict(dict(
      cache_dir=placeholder(str),     # decoded-array cache; None = ~/.cache/vit_jax
      subset_seed=0,                  # seed of the nested train_size subsets
      corrupt_images='error',         # an undecodable image file: 'error' | 'skip' (counted
                                      # in result.json as skipped_images)
      kind='auto',                    # 'memory' (decoded whole, augmented on the device) |
                                      # 'stream' (grain, decoded + augmented on the host) |
                                      # 'auto' (memory when the training split decoded fits
                                      # memory_limit_gb and its images share one size, else
                                      # stream; 'digits' always in memory)
      memory_limit_gb=loader.MEMORY_LIMIT_GB,  # the limit of 'auto' on the decoded training
                                      # split: N x H x W x C bytes at the stored image size
      workers=0,                      # grain worker processes decoding ahead (0: threads)
      channels=placeholder(int),      # read every image as 1 (grayscale: its luma, as
                                      # Pillow's 'L') or 3 (colour) channels; None: as stored
                                      # (streamed: colour), e.g. 3 for a colour checkpoint
      tfds_dir=placeholder(str),      # prepared TFDS data; None: $TFDS_DATA_DIR or
                                      # ~/tensorflow_datasets
      train_split='train',            # or a slice: 'train[:99%]', 'train[102400:]';
      eval_split=placeholder(str),    # None: 'test' for digits and folders, for record
                                      # sources the first of validation, val, test
  ))
  return config


def _flatten(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """{'optim.lr': 0.001, ...}: every leaf of a config by its dotted path."""
  return traverse_util.flatten_dict(config.to_dict(), sep='.')


def _check_table(values: dict[str, Any], table: dict[str, Field], prefix: str = '',
                 note: str = '') -> None:
  """Raises ValueError naming the unknown fields of `values` (and the known fields of the
  first one's section) or the first field out of its range."""
  unknown = sorted(set(values) - set(table))
  if unknown:
    section = unknown[0].rpartition('.')[0]
    depth = section.count('.') + 1 if section else 0
    known = sorted({prefix + '.'.join(k.split('.')[:depth + 1]) for k in table
                    if k.startswith(f'{section}.' if section else '')})
    raise ValueError(f'Unknown config field(s) {[prefix + k for k in unknown]}; the fields of '
                     f'{prefix + section or "the config"} are {known}.')
  for key, field in table.items():
    if key in values and (message := field.error(prefix + key, values[key],
                                                 note if key.startswith('model.') else '')):
      raise ValueError(message)


def check(config: ml_collections.ConfigDict, prefix: str = '') -> None:
  """Raises ValueError naming any field that is not in the vocabulary of `defaults()` or
  whose value is out of its range in TRAIN_FIELDS, and combinations that cannot work.
  `prefix` is the config's place in a larger one (a sweep's 'base.')."""
  if not prefix and {'base', 'models'} <= set(config):
    raise ValueError("The config is a sweep's (it has 'base' and 'models'): run it with python "
                     '-m vit_jax.sweep, which trains each of its points.')
  _check_table(_flatten(config), TRAIN_FIELDS, prefix,
               f' ({config.get("model", {}).get("name")})')
  if config.batch_size % config.optim.grad_accum_steps:
    raise ValueError(f'batch_size={config.batch_size} is not divisible by '
                     f'optim.grad_accum_steps={config.optim.grad_accum_steps}.')
  if config.schedule.end_lr > config.optim.lr:
    raise ValueError(f'schedule.end_lr={config.schedule.end_lr} must not exceed '
                     f'optim.lr={config.optim.lr}.')
  if config.profile_steps and config.profile_steps[1] > config.total_steps:
    raise ValueError(f'profile_steps={tuple(config.profile_steps)} must end by '
                     f'total_steps={config.total_steps}.')
  if config.eval.val_fraction and config.eval.val_size:
    raise ValueError(f'eval.val_fraction={config.eval.val_fraction} and eval.val_size='
                     f'{config.eval.val_size}: set one of the two validation splits.')
  if config.mpp.mask_fraction + config.mpp.random_fraction > 1:
    raise ValueError(f'mpp.mask_fraction={config.mpp.mask_fraction} + mpp.random_fraction='
                     f'{config.mpp.random_fraction} must be at most 1.')


def check_sweep(sweep: ml_collections.ConfigDict) -> None:
  """Raises ValueError naming an unknown or out-of-range field of a sweep config, its base
  training config or one of its models."""
  fields = sorted([*SWEEP_FIELDS, 'base', 'models'])
  missing = sorted({'base', 'models'} - set(sweep))
  if missing and {'model', 'optim'} <= set(sweep):
    raise ValueError("The config is a training run's (it has 'model' and 'optim', no 'base' or "
                     "'models'): train it with python -m vit_jax.main, or give a sweep config "
                     'such as configs/data_scaling.py:<preset>.')
  if missing:
    raise ValueError(f'The sweep config has no field(s) {missing}; its fields are {fields}.')
  rest = _flatten(ml_collections.ConfigDict(
      {k: v for k, v in sweep.items() if k not in ('base', 'models')}))
  _check_table(rest, {**SWEEP_FIELDS, 'base': None, 'models': None})
  check(sweep.base, 'base.')
  if sweep_field(sweep, 'budget.min_steps') > sweep_field(sweep, 'budget.max_steps'):
    raise ValueError(f'config.budget.min_steps={sweep.budget.min_steps} must not exceed '
                     f'config.budget.max_steps={sweep.budget.max_steps}.')
  if sweep_field(sweep, 'budget.epochs') is not None and None in sweep.train_sizes:
    raise ValueError(f'config.train_sizes={tuple(sweep.train_sizes)}: the budget rule '
                     '(budget.epochs) needs every size as a number, not None (all).')
  if not sweep.models:
    raise ValueError('The sweep needs at least one entry in `models`.')
  model_table = {k: f for k, f in TRAIN_FIELDS.items() if k.startswith('model.')}
  for label, entry in sweep.models.items():
    if not isinstance(entry, ml_collections.ConfigDict) or 'name' not in entry.get('model', {}):
      shown = entry.to_dict() if isinstance(entry, ml_collections.ConfigDict) else entry
      raise ValueError(f"config.models.{label}={shown!r} needs model.name, e.g. "
                       "{'model': {'name': 'ViT-Ti_4'}} (and optionally lr, weight_decay, "
                       'min_steps).')
    _check_table(_flatten(entry),
                 {**SWEEP_MODEL_FIELDS, **model_table}, f'models.{label}.',
                 f' ({entry.model.name})')
    floor = entry.get('min_steps')
    if floor is not None and sweep_field(sweep, 'budget.epochs') is None:
      raise ValueError(f'config.models.{label}.min_steps={floor} needs a budget rule: set '
                       'config.budget.epochs.')
    if floor is not None and floor > sweep_field(sweep, 'budget.max_steps'):
      raise ValueError(f'config.models.{label}.min_steps={floor} must not exceed '
                       f'config.budget.max_steps={sweep.budget.max_steps}.')


def check_batch(config: ml_collections.ConfigDict, mesh) -> None:
  """Raises ValueError unless the batch splits over the data-parallel devices and the
  gradient-accumulation micro-batches."""
  dp = sharding.data_parallel_size(mesh)
  if config.batch_size % (dp * config.optim.grad_accum_steps):
    raise ValueError(f'batch_size={config.batch_size} is not divisible by the data-parallel '
                     f'size {dp} (mesh={config.mesh}) x optim.grad_accum_steps='
                     f'{config.optim.grad_accum_steps}.')
