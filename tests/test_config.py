"""The config table: every field is checked by type and range, the model fields are the
registry's, config errors on the command line are one `Error:` line, and a run's changed
config is kept with its changes named."""
import json
import os
import re
import subprocess
import sys

import ml_collections
import pytest

from conftest import child_env, with_site_hook
from vit_jax import config as config_lib
from vit_jax import workdir as run_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One value outside its field's type or range, for every field of TRAIN_FIELDS.
BAD = {
    'model.name': 'ViT-X_4', 'model.hidden_size': 0, 'model.mlp_dim': 0, 'model.num_heads': 0,
    'model.num_layers': 0, 'model.patch_size': 0, 'model.classifier': 'cls',
    'model.representation_size': 0, 'model.dropout_rate': 1.0,
    'model.attention_dropout_rate': -0.1, 'model.posemb': 'rope', 'model.dtype': 'float8',
    'model.attention_impl': 'flash', 'model.scan': 'yes', 'model.remat_policy': 'some',
    'model.gelu_approximate': 1, 'model.head_bias_init': float('nan'),
    'model.resnet_layers': (3, 0), 'model.resnet_width': -1, 'model.resnet_stem': 'deep',
    'model.token_dim': 0, 'model.soft_split': ((3, 1),),
    'dataset': 'imagenet', 'train_size': 0, 'image_size': 0, 'batch_size': 0, 'total_steps': 0,
    'seed': -1, 'log_every': 0, 'eval_every': 0, 'checkpoint_every': 0, 'profile_steps': (0, 2),
    'mesh': (('data', 0),),
    'optim.name': 'lamb', 'optim.lr': 0.0, 'optim.b1': 1.0, 'optim.b2': 1.5,
    'optim.momentum': -0.5, 'optim.weight_decay': -1e-4, 'optim.grad_clip_norm': -1.0,
    'optim.label_smoothing': 1.0, 'optim.grad_accum_steps': 0, 'optim.skip_nonfinite': 'no',
    'schedule.warmup_steps': -1, 'schedule.decay': 'step', 'schedule.end_lr': -1e-3,
    'augment.crop': None, 'augment.crop_scale': (0.5, 1.5), 'augment.crop_ratio': (2.0, 1.0),
    'augment.flip': 'no',
    'eval.batch_size': 0, 'eval.crop_fraction': 0.0, 'eval.fewshot_shots': (0, 5),
    'eval.fewshot_seeds': 0, 'eval.fewshot_l2_reg': 0.0, 'eval.val_fraction': 1.0,
    'eval.val_size': -1,
    'eval.patience': -1,
    'checkpoint.keep': 0, 'checkpoint.init_from': '', 'checkpoint.reset_head': 'yes',
    'mpp.enabled': 'yes', 'mpp.corrupt_fraction': 0.0, 'mpp.mask_fraction': 1.5,
    'mpp.random_fraction': -0.1,
    'data.cache_dir': '', 'data.subset_seed': -1, 'data.corrupt_images': 'drop',
    'data.kind': 'disk', 'data.memory_limit_gb': -1.0, 'data.workers': -1, 'data.tfds_dir': '',
    'data.channels': 2,
    'data.train_split': 'train[:', 'data.eval_split': 'val[1%:2]',
    'eval.fewshot_dataset': 'imagenet',
}


def with_value(config: ml_collections.ConfigDict, field: str, value) -> ml_collections.ConfigDict:
  """A copy of `config` with `field` (dotted) set to `value`, past ConfigDict's type checks."""
  tree = config.to_dict()
  *parents, leaf = field.split('.')
  node = tree
  for p in parents:
    node = node[p]
  node[leaf] = value
  return ml_collections.ConfigDict(tree)


def test_defaults_and_model_slots_follow_the_table():
  defaults = config_lib.defaults()
  config_lib.check(defaults)
  assert set(config_lib.TRAIN_FIELDS) == set(config_lib._flatten(defaults))
  assert set(config_lib.MODEL_FIELDS) == config_lib.registry_model_fields()


def test_every_field_has_an_out_of_range_value_here():
  assert set(BAD) == set(config_lib.TRAIN_FIELDS)


@pytest.mark.parametrize('field', sorted(BAD))
def test_an_out_of_range_value_is_refused_by_name(field):
  config = with_value(config_lib.defaults(), field, BAD[field])
  expected = ("Unknown model name 'ViT-X_4'" if field == 'model.name' else
              re.escape(f'config.{field}={BAD[field]!r} must be '))
  with pytest.raises(ValueError, match=expected):
    config_lib.check(config)


@pytest.mark.parametrize('field,value,message', [
    ('schedule.end_lr', 0.01, 'schedule.end_lr=0.01 must not exceed optim.lr=0.001'),
    ('optim.grad_accum_steps', 3, 'batch_size=128 is not divisible by optim.grad_accum_steps=3'),
    ('mpp.random_fraction', 0.3, 'mpp.mask_fraction=0.8 + mpp.random_fraction=0.3'),
])
def test_combinations_that_cannot_work(field, value, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    config_lib.check(with_value(config_lib.defaults(), field, value))


def sweep_config() -> ml_collections.ConfigDict:
  return config_lib.load_file(os.path.join(ROOT, 'configs', 'data_scaling.py:smoke'))


@pytest.mark.parametrize('field,value,message', [
    ('train_sizes', (), "config.train_sizes=() must be a non-empty tuple"),
    ('train_sizes', (60, 0), 'config.train_sizes=(60, 0) must be'),
    ('train_sizes', (60, 120, 60),  # one workdir per point: a repeated size would share them
     'config.train_sizes=(60, 120, 60) must be a non-empty tuple of distinct positive integers'),
    ('models.ViT-1', {'name': 'ViT-Ti_4'},
     "config.models.ViT-1={'name': 'ViT-Ti_4'} needs model.name, e.g. {'model': {'name': "),
    ('models.ViT-1', 3, 'config.models.ViT-1=3 needs model.name'),
    ('name', 3, 'config.name=3 must be a string'),
    ('base.optim.b2', 1.0, 'config.base.optim.b2=1.0 must be in [0, 1)'),
    ('models.ResNet.lr', -1.0, 'config.models.ResNet.lr=-1.0 must be > 0'),
    ('budget.min_steps', 0, 'config.budget.min_steps=0 must be a positive integer'),
    ('budget.epochs', -1.0, 'config.budget.epochs=-1.0 must be > 0'),
    ('budget.max_steps', 2,
     'config.budget.min_steps=4 must not exceed config.budget.max_steps=2'),
    ('seeds', 0, 'config.seeds=0 must be a positive integer'),
    ('grid.lr', (1e-3, 0.0),
     'config.grid.lr=(0.001, 0.0) must be a non-empty tuple of distinct numbers > 0'),
    ('grid.weight_decay', (0.1, 0.1),
     'config.grid.weight_decay=(0.1, 0.1) must be a non-empty tuple of distinct numbers >= 0'),
    ('grid.weight_decay', (), 'config.grid.weight_decay=() must be a non-empty tuple'),
    ('base.eval.patience', -1, 'config.base.eval.patience=-1 must be an integer >= 0'),
    ('models.ResNet.weight_decay', -0.1, 'config.models.ResNet.weight_decay=-0.1 must be >= 0'),
    ('models.ResNet.min_steps', 0, 'config.models.ResNet.min_steps=0 must be a positive integer'),
    ('models.ResNet.min_steps', 6,
     'config.models.ResNet.min_steps=6 needs a budget rule: set config.budget.epochs.'),
    ('models.ViT-1.model.num_layers', 0,
     'config.models.ViT-1.model.num_layers=0 must be a positive integer (ViT-Nano_2)'),
])
def test_sweep_fields_are_checked(field, value, message):
  sweep = sweep_config()
  config_lib.check_sweep(sweep)
  tree = sweep.to_dict()
  node = tree
  *parents, leaf = field.split('.')
  for p in parents:
    node = node[p]
  node[leaf] = value
  with pytest.raises(ValueError, match=re.escape(message)):
    config_lib.check_sweep(ml_collections.ConfigDict(tree))


def test_a_models_budget_floor_must_not_exceed_the_cap():
  tree = sweep_config().to_dict()
  tree['budget']['epochs'], tree['models']['ResNet']['min_steps'] = 1.0, 9
  with pytest.raises(ValueError, match=re.escape(
      'config.models.ResNet.min_steps=9 must not exceed config.budget.max_steps=8.')):
    config_lib.check_sweep(ml_collections.ConfigDict(tree))


def test_the_budget_rule_needs_numeric_sizes():
  tree = sweep_config().to_dict()
  tree['budget']['epochs'], tree['train_sizes'] = 10.0, (60, None)
  with pytest.raises(ValueError, match=re.escape(
      'config.train_sizes=(60, None): the budget rule (budget.epochs) needs every size')):
    config_lib.check_sweep(ml_collections.ConfigDict(tree))


def test_an_unknown_sweep_field_lists_the_sweep_fields():
  tree = sweep_config().to_dict()
  tree['dataset'] = 'digits'
  with pytest.raises(ValueError, match=re.escape(
      "Unknown config field(s) ['dataset']; the fields of the config are ['base', 'budget', "
      "'convergence_check', 'convergence_seeds', 'grid', 'models', 'name', 'seeds', "
      "'small_seeds', 'small_size', 'train_sizes', 'vary_subset']")):
    config_lib.check_sweep(ml_collections.ConfigDict(tree))


@pytest.mark.parametrize('package', [True, False])
def test_a_config_file_imports_its_neighbours_from_any_directory(tmp_path, monkeypatch, package):
  # A researcher's own configs outside this repository, loaded from another working directory:
  # in a package (lab/studies_of_test/tiny.py imports studies_of_test.common) or a plain folder
  # (lab/tiny.py imports the common_of_test module beside it).
  folder = tmp_path / 'lab' / ('studies_of_test' if package else '')
  folder.mkdir(parents=True)
  neighbour = 'studies_of_test.common' if package else 'common_of_test'
  if package:
    (folder / '__init__.py').write_text('')
  (folder / f'{neighbour.rsplit(".", 1)[-1]}.py').write_text('STEPS = 7\n')
  (folder / 'tiny.py').write_text(
      f'from vit_jax import config\nimport {neighbour} as common\n\n\ndef get_config():\n'
      '  c = config.defaults()\n  c.total_steps = common.STEPS\n  return c\n')
  monkeypatch.chdir(tmp_path)
  path_before = list(sys.path)
  try:
    assert config_lib.load_file(str(folder / 'tiny.py')).total_steps == 7
    assert sys.path == path_before  # the folder is on the import path only while it loads
  finally:
    for name in [n for n in sys.modules
                 if n.split('.')[0] in ('studies_of_test', 'common_of_test')]:
      del sys.modules[name]


@pytest.mark.slow
@pytest.mark.parametrize('space', [False, True])  # --config=<spec> or --config <spec>
def test_the_presets_load_from_any_directory(tmp_path, space):
  # configs/data_scaling.py imports configs.cifar10: the command finds it from elsewhere too.
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  spec = f'{os.path.join(ROOT, "configs", "data_scaling.py")}:smoke'
  config = ['--config', spec] if space else [f'--config={spec}']
  proc = subprocess.run([sys.executable, '-m', 'vit_jax.sweep', '--dry_run', *config,
                         f'--workdir={tmp_path / "sweep"}'], cwd=tmp_path, capture_output=True,
                        text=True, timeout=300, env=dict(env, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f'workdir={tmp_path / "sweep" / "ViT-1_n120"}' in proc.stdout, proc.stdout


def run(module, *flags):
  return subprocess.run([sys.executable, '-m', module, *flags], cwd=ROOT, capture_output=True,
                        text=True, timeout=300, env=dict(os.environ, JAX_PLATFORMS='cpu'))


@pytest.mark.slow
@pytest.mark.parametrize('module,flags,message', [
    ('vit_jax.main', ['--config=configs/cifar10.py:convnext', '--workdir=/tmp/unused'],
     "Error: --config=configs/cifar10.py:convnext: Unknown cifar10 preset 'convnext'"),
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       '--dry_run', '--config.dataset=digits'],
     "Error: --config.dataset: the config has no field 'dataset'; its top-level fields are "
     "['base', 'budget', 'convergence_check', 'convergence_seeds', 'grid', 'models', 'name', "
     "'seeds', 'small_seeds', 'small_size', 'train_sizes', 'vary_subset']."),
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--config.optim.b1=1.0'],
     'Error: config.optim.b1=1.0 must be in [0, 1).'),
    ('vit_jax.main', ['--config=configs/quickstart.py:tiny', '--workdir=/tmp/unused'],
     'Error: --config=configs/quickstart.py:tiny: configs/quickstart.py has no presets; use '
     '--config=configs/quickstart.py.'),
    # absl's `--flag value` form too.
    ('vit_jax.main', ['--config', 'configs/quickstart.py', '--workdir', '/tmp/unused',
                      '--config.optim.nofield', '1'],
     "Error: --config.optim.nofield: the config has no field 'optim.nofield'; its fields of "
     "optim are ['b1', 'b2', "),
    # A field a typo away from one: named.
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--config.total_step=5'],
     "Error: --config.total_step: the config has no field 'total_step' (did you mean "
     "'total_steps'?); its top-level fields are ['augment', "),
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       "--config.models['ViT-l'].lr=0.5"],
     "Error: --config.models.ViT-l.lr: the config has no field 'models.ViT-l' (did you mean "
     "'models.ViT-1'?); its fields of models are ['ResNet', 'ViT-1']."),
    ('vit_jax.main', ['--config', 'configs/nowhere.py', '--workdir', '/tmp/unused'],
     'Error: --config=configs/nowhere.py: no such file.'),
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--config.model=ViT-B_16'],
     'Error: --config.model is a section of the config, not a value: set its fields, '
     '--config.model.<field>=<value>.'),
    # Usage errors: one line and a pointer to the flags, not absl's usage text.
    ('vit_jax.main', ['--config=configs/quickstart.py'], 'Error: --workdir is required.'),
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused', 'extra'],
     "Error: Unexpected arguments: ['extra']"),
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       'digits'],
     "Error: Unexpected arguments: ['digits']"),
    ('vit_jax.analyze', ['--workdir=/tmp/unused'],
     'Error: --workdir and --out (one run) or --sweep (a sweep) are required.'),
    ('vit_jax.analyze', ['--sweep=/tmp/unused', '--out=/tmp/unused/figures', '--step=best'],
     "Error: --out, --step: for one run, not with --sweep (which analyses every point's "
     'reported step into <sweep>/analysis/).'),
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke'],
     'Error: --config and --workdir are required.'),
    ('vit_jax.data.prepare', ['--src=digits'], 'Error: --src and --out are required.'),
    # The few-shot probe's dataset is named by its own field.
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--config.eval.fewshot_dataset=folder:/no/such/dir'],
     "Error: config.eval.fewshot_dataset='folder:/no/such/dir': /no/such/dir does not exist."),
    # Local only: ArrayRecord shards are local files.
    ('vit_jax.data.prepare', ['--src=gs://b/images', '--out=/tmp/unused'],
     'Error: --src=gs://b/images: prepare reads and writes local folders'),
    ('vit_jax.data.prepare', ['--src=/tmp', '--out=gs://b/prepared'],
     'Error: --out=gs://b/prepared: prepare reads and writes local folders'),
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--config.dataset=records:gs://b/prepared'],
     "Error: config.dataset='records:gs://b/prepared': prepared datasets are read from a local "
     'folder'),
    # Multi-process settings JAX itself would fail on with a traceback.
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--coordinator_address=node1', '--num_processes=2', '--process_id=0'],
     "Error: --coordinator_address='node1' must be host:port"),
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       '--num_processes=0'],  # was taken as 1 by the sweep
     'Error: flag --num_processes=0: 0 is not a positive integer'),
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--process_id=-1'], 'Error: flag --process_id=-1: -1 is not a non-negative'),
    # A sweep's config given to the training command, a run's to the sweep.
    ('vit_jax.main', ['--config=configs/data_scaling.py:digits', '--workdir=/tmp/unused'],
     "Error: The config is a sweep's (it has 'base' and 'models'): run it with python -m "
     'vit_jax.sweep'),
    ('vit_jax.sweep', ['--config=configs/quickstart.py', '--workdir=/tmp/unused'],
     "Error: The config is a training run's (it has 'model' and 'optim', no 'base' or "
     "'models'): train it with python -m vit_jax.main"),
    # A sweep's model label is not a Python name: the override is written with brackets.
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       '--config.models.ViT-1.lr=0.5'],
     "Error: --config.models.ViT-1.lr: 'ViT-1' is not a Python name, so the field cannot be "
     'written with dots; quote it: "--config.models[\'ViT-1\'].lr=0.5".'),
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       "--config.models['ViT-2'].lr=0.5"],
     "Error: --config.models.ViT-2.lr: the config has no field 'models.ViT-2'; its fields of "
     "models are ['ResNet', 'ViT-1']."),
    # Bad sweep flags: refused before the sweep folder (and its lock) is made.
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       '--max_parallel=0'], 'Error: --max_parallel=0 must be at least 1.'),
    # Counts out of range.
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=/tmp/unused',
                       '--point=4'],
     'Error: --point=4: the sweep has 4 points, 0 to 3 (--dry_run lists them).'),
    ('vit_jax.analyze', ['--sweep=/tmp/unused', '--images=0'],
     'Error: flag --images=0: 0 is not a positive integer'),
])
def test_config_errors_are_one_error_line(tmp_path, module, flags, message):
  proc = run(module, *[f.replace('/tmp/unused', str(tmp_path / 'run')) for f in flags])
  assert proc.returncode != 0 and 'Traceback' not in proc.stderr
  errors = [l for l in proc.stderr.splitlines() if 'Error' in l]
  assert len(errors) == 1 and errors[0].startswith(message), proc.stderr
  assert len(proc.stderr.splitlines()) <= 2, proc.stderr  # at most a pointer to the flags
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_a_run_into_a_sweep_folder_and_a_sweep_into_a_run_folder_are_refused(tmp_path):
  """Mixing the two levels would put a run's files among a sweep's points (or the points
  inside a run): one Error line, nothing written."""
  for folder, made in (('sweep', 'sweep_config.json'), ('run', 'config.json')):
    (tmp_path / folder).mkdir()
    (tmp_path / folder / made).write_text('{}')
    (tmp_path / folder / '.lock').write_text('pid 1')  # each kind holds its lock file
  for module, config, workdir, message in (
      ('vit_jax.main', 'configs/quickstart.py', tmp_path / 'sweep',
       f"Error: {tmp_path / 'sweep'} is a sweep's folder (it holds sweep_config.json): give the "
       'run a --workdir of its own.'),
      ('vit_jax.sweep', 'configs/data_scaling.py:smoke', tmp_path / 'run',
       f"Error: {tmp_path / 'run'} is a training run's folder (it holds config.json): give the "
       'sweep a --workdir of its own.')):
    proc = run(module, f'--config={config}', f'--workdir={workdir}')
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1] == message, proc.stderr
  assert sorted(os.listdir(tmp_path / 'sweep')) == ['.lock', 'sweep_config.json']
  assert sorted(os.listdir(tmp_path / 'run')) == ['.lock', 'config.json']


GCS_EXTRA = ('gs:// paths need the [gcs] extra (gcsfs, google-cloud-storage): pip install -e '
             '".[gcs]"')
# The base install (`pip install -e .`) has neither the [gcs] nor the [tfds] extra.
WITHOUT_EXTRAS = ("import sys\nsys.modules.update(dict.fromkeys(['gcsfs', 'google.api_core', "
                  "'google.cloud.storage', 'tensorflow_datasets']))\n")


@pytest.mark.slow
@pytest.mark.parametrize('module,flags,message', [
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=gs://b/run'],
     f"Error: gs://b/run: {GCS_EXTRA} (import of google.api_core halted; None in sys.modules)."),
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--config.dataset=folder:gs://b/images'], f'Error: {GCS_EXTRA}.'),
    ('vit_jax.main', ['--config=configs/quickstart.py', '--workdir=/tmp/unused',
                      '--config.dataset=tfds:mnist'],
     'Error: config.dataset=\'tfds:<name>\' needs TensorFlow Datasets: pip install -e ".[tfds]"'),
    ('vit_jax.sweep', ['--config=configs/data_scaling.py:smoke', '--workdir=gs://b/sweep'],
     f'Error: gs://b/sweep: {GCS_EXTRA} ('),
    ('vit_jax.analyze', ['--sweep=gs://b/sweep'], f'Error: {GCS_EXTRA}.'),
    ('vit_jax.export', ['--workdir=gs://b/run', '--format=npz', '--out=/tmp/unused'],
     f'Error: {GCS_EXTRA}.'),
    ('vit_jax.scaling', ['gs://b/sweep'], f'Error: {GCS_EXTRA}.'),
    ('vit_jax.bench', ['data', '--model=ViT-Ti_4', '--batch=2', '--image-size=8',
                       '--dataset=folder:gs://b/images'], f'Error: {GCS_EXTRA}.'),
])
def test_a_missing_extra_is_one_error_line_that_says_what_to_install(tmp_path, module, flags,
                                                                     message):
  env = with_site_hook(child_env(1), tmp_path / 'hook', WITHOUT_EXTRAS)
  proc = subprocess.run([sys.executable, '-m', module,
                         *[f.replace('/tmp/unused', str(tmp_path / 'run')) for f in flags]],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.splitlines()[-1].startswith(message), proc.stderr[-3000:]
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
@pytest.mark.parametrize('source,message', [
    (None, 'no such file.'),
    ('def get_config(:\n', 'the file failed to load at line 1: SyntaxError: '),
    ('import os\nimport no_such_module\n', 'the file failed to load at line 2: '
     "ModuleNotFoundError: No module named 'no_such_module'."),
    ('X = 1\n', 'the file defines no get_config().'),
    ('def get_config():\n  return 3\n',
     'get_config() returned int, not an ml_collections.ConfigDict.'),
])
def test_a_config_file_that_cannot_be_loaded_is_one_error_line(tmp_path, source, message):
  path = tmp_path / 'my_config.py'
  if source is not None:
    path.write_text(source)
  proc = run('vit_jax.main', f'--config={path}', f'--workdir={tmp_path / "run"}')
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
  [line] = proc.stderr.splitlines()
  assert line.startswith(f'Error: --config={path}: {message}'), line
  assert not (tmp_path / 'run').exists()


@pytest.mark.slow
def test_importing_the_library_leaves_xla_flags_alone():
  code = ('import os; os.environ["XLA_FLAGS"] = "--mine"; import vit_jax, vit_jax.train; '
          'print(os.environ["XLA_FLAGS"])')
  proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == '--mine'


def test_a_changed_config_is_kept_with_a_timestamp_and_its_changes_named(tmp_path, caplog):
  first = config_lib.defaults()
  run_dir.write_config(first, str(tmp_path))
  text = (tmp_path / 'config.json').read_text()
  run_dir.write_config(first, str(tmp_path))  # the same config: nothing kept, nothing said
  assert os.listdir(tmp_path) == ['config.json'] and not caplog.records
  second = config_lib.defaults()
  second.total_steps, second.optim.lr, second.eval.fewshot_shots = 20, 0.5, (2,)
  run_dir.write_config(second, str(tmp_path))
  backup, = (name for name in os.listdir(tmp_path) if name != 'config.json')
  assert re.fullmatch(r'config\.json\.\d{8}-\d{6}', backup)
  assert (tmp_path / backup).read_text() == text
  assert json.loads((tmp_path / 'config.json').read_text())['optim']['lr'] == 0.5
  assert caplog.messages == [
      'The config differs from the one of the last run in this workdir (eval.fewshot_shots: '
      f'{list(first.eval.fewshot_shots)} -> [2], optim.lr: {first.optim.lr} -> 0.5, '
      f'total_steps: {first.total_steps} -> 20); the old one is kept as {tmp_path / backup}.']
