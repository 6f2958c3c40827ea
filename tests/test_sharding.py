"""Sharding strategies: data parallel, FSDP, tensor parallel and their combinations train the
same numbers as one device; parameters, optimizer state and activations are split as specified;
impossible meshes fail with an error naming the config field.

The test process has one CPU device, so one child process with 8 simulated devices
(`python tests/test_sharding.py <outdir>`) runs every mesh and writes what it saw; the tests
compare it with the child's own single-device run.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, child_env

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

STEPS, BATCH, IMAGE, CLASSES = 3, 16, 16, 10
MESHES = {
    'data': (('data', 8),),
    'fsdp': (('fsdp', 8),),
    'model': (('data', 2), ('model', 4)),
    'fsdp_model': (('fsdp', 4), ('model', 2)),
    'data_fsdp_model': (('data', 2), ('fsdp', 2), ('model', 2)),
}
# Scanned layers (a leading layer axis on every block parameter) with full rematerialisation.
SCAN_MESHES = {
    'scan_data': (('data', 8),),
    'scan_fsdp': (('fsdp', 8),),
    'scan_fsdp_model': (('fsdp', 4), ('model', 2)),
}
BAD_MESHES = {  # model overrides, mesh -> the error's start
    'heads': ({}, (('model', 8),), "model.num_heads=2 is not divisible by the 'model' mesh axis "
                                   'size 8'),
    'mlp': ({'num_heads': 8, 'mlp_dim': 100}, (('data', 1), ('model', 8)),
            "model.mlp_dim=100 is not divisible by the 'model' mesh axis size 8"),
}


# ---------------------------------------------------------------------------------------------
# The child: trains STEPS steps of a tiny ViT on fixed random data under every mesh.

def _train(mesh_spec, devices, scan: bool, outdir: str, name: str) -> dict:
  """Trains the tiny model on `mesh_spec`; writes the final state to <outdir>/<name>.npz and
  returns {'losses', 'leaves': {path: [spec, shard shape]}, 'constraints', 'temp_bytes' (the
  compiled step's temporaries per device)}."""
  import jax
  from conftest import TINY_VIT
  from vit_jax import config as config_lib
  from vit_jax import optim, sharding, train
  from vit_jax.models import get_model

  config = config_lib.defaults()
  config.model = config_lib.model_config('ViT-Ti_16', **TINY_VIT, scan=scan,
                                     remat_policy='full' if scan else 'none')
  config.batch_size, config.image_size, config.total_steps = BATCH, IMAGE, STEPS
  # SGD with momentum: Adam would turn the rounding noise of gradients that are zero in exact
  # arithmetic (the key bias: softmax ignores it) into full-size steps of either sign.
  config.optim.name, config.optim.lr = 'sgd', 0.1
  config.schedule.warmup_steps, config.schedule.decay = 0, 'constant'
  config.mesh = mesh_spec
  mesh = sharding.make_mesh(mesh_spec, devices)
  overrides = {k: v for k, v in config.model.items() if k != 'name'}
  model = get_model('ViT-Ti_16', num_classes=CLASSES, **overrides)
  tx, schedule = optim.make_optimizer(config)
  _, shardings, init = train.init_state(model, tx, config, (IMAGE, IMAGE, 3), mesh)
  step = train.make_train_step(model, tx, schedule, config, mesh, shardings)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (STEPS, BATCH, IMAGE, IMAGE, 3), dtype=np.uint8)
  labels = rng.integers(0, CLASSES, (STEPS, BATCH)).astype(np.int32)
  state, losses = init(), []
  batch = lambda i: (sharding.global_batch(images[i], mesh), sharding.global_batch(labels[i], mesh))
  lowered = step.lower(state, *batch(0))
  hlo, step = lowered.as_text(), lowered.compile()
  for i in range(STEPS):
    state, metrics = step(state, *batch(i))
    losses.append(float(metrics['loss']))
  flat = jax.tree_util.tree_flatten_with_path(state)[0]
  np.savez(os.path.join(outdir, f'{name}.npz'),
           **{jax.tree_util.keystr(p): np.asarray(leaf) for p, leaf in flat})
  leaves = {jax.tree_util.keystr(p): [str(leaf.sharding.spec),
                                      list(leaf.addressable_shards[0].data.shape)]
            for p, leaf in flat}
  return {'losses': losses, 'leaves': leaves, 'constraints': hlo.count('sharding_constraint'),
          'temp_bytes': step.memory_analysis().temp_size_in_bytes}


def _bad_mesh_error(overrides: dict, mesh_spec, workdir: str) -> str:
  """The error `train_and_evaluate` raises for an impossible tensor-parallel mesh."""
  from configs import quickstart
  from vit_jax import train
  config = quickstart.get_config()
  config.mesh = mesh_spec
  for key, value in overrides.items():
    config.model[key] = value
  try:
    train.train_and_evaluate(config, workdir)
  except ValueError as e:
    return str(e)
  return 'no error'


def child_main(outdir: str) -> None:
  import jax
  devices = jax.devices()
  results = {'single': _train((('data', 1),), devices[:1], False, outdir, 'single'),
             'scan_single': _train((('data', 1),), devices[:1], True, outdir, 'scan_single')}
  for name, spec in MESHES.items():
    results[name] = _train(spec, devices, False, outdir, name)
  for name, spec in SCAN_MESHES.items():
    results[name] = _train(spec, devices, True, outdir, name)
  results['errors'] = {name: _bad_mesh_error(overrides, spec, os.path.join(outdir, name))
                       for name, (overrides, spec, _) in BAD_MESHES.items()}
  with open(os.path.join(outdir, 'results.json'), 'w') as f:
    json.dump(results, f)


# ---------------------------------------------------------------------------------------------
# The tests.

@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  outdir = tmp_path_factory.mktemp('sharding')
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), str(outdir)], cwd=ROOT,
                        env=child_env(8), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-4000:]
  with open(outdir / 'results.json') as f:
    results = json.load(f)
  states = {name: dict(np.load(outdir / f'{name}.npz')) for name in results if name != 'errors'}
  return results, states


@pytest.mark.parametrize('name', [*MESHES, *SCAN_MESHES])
def test_sharded_training_equals_one_device(runs, name):
  results, states = runs
  reference = 'scan_single' if name in SCAN_MESHES else 'single'
  np.testing.assert_allclose(results[name]['losses'], results[reference]['losses'], rtol=1e-5)
  assert states[name].keys() == states[reference].keys()
  for key, value in states[reference].items():  # parameters, Adam moments, step and rng
    np.testing.assert_allclose(states[name][key], value, rtol=1e-4, atol=1e-6, err_msg=key)
  # Training changed the loss clearly, so the comparison above is not vacuous.
  assert abs(results[reference]['losses'][-1] - results[reference]['losses'][0]) > 1e-2


def _placement(results, name, suffix, opt_state=False):
  """[spec, per-device shard shape] of the parameters (or their momentum in the optimizer
  state) whose path ends with `suffix`, the same in every layer."""
  leaves = results[name]['leaves']
  found = [v for k, v in leaves.items() if k.endswith(suffix) and
           ('.trace' in k if opt_state else k.startswith('.params'))]
  assert found and all(v == found[0] for v in found), found
  return found[0]


# (mesh, parameter path suffix) -> per-device shard shape. Full shapes: query kernel (32, 4, 8),
# out kernel (4, 8, 32), MLP Dense_0 kernel (32, 64), Dense_1 kernel (64, 32), scanned ones
# with a leading layer axis of 2; arrays under 1024 elements stay whole under FSDP.
SHARD_SHAPES = [
    ('data', "['query']['kernel']", (32, 4, 8)),
    ('fsdp', "['query']['kernel']", (4, 4, 8)),
    ('fsdp', "['MlpBlock_0']['Dense_0']['kernel']", (32, 8)),
    ('fsdp', "['MlpBlock_0']['Dense_0']['bias']", (64,)),
    ('fsdp', "['head']['kernel']", (32, 10)),
    ('model', "['query']['kernel']", (32, 1, 8)),
    ('model', "['query']['bias']", (1, 8)),
    ('model', "['out']['kernel']", (1, 8, 32)),
    ('model', "['MlpBlock_0']['Dense_0']['kernel']", (32, 16)),
    ('model', "['MlpBlock_0']['Dense_1']['kernel']", (16, 32)),
    ('model', "['MlpBlock_0']['Dense_1']['bias']", (32,)),
    ('fsdp_model', "['value']['kernel']", (8, 2, 8)),
    ('fsdp_model', "['MlpBlock_0']['Dense_1']['kernel']", (32, 8)),
    ('data_fsdp_model', "['MlpBlock_0']['Dense_0']['kernel']", (16, 32)),
    ('scan_fsdp_model', "['encoderblock']['MultiHeadDotProductAttention_0']['query']['kernel']",
     (2, 8, 2, 8)),
    ('scan_fsdp_model', "['encoderblock']['MlpBlock_0']['Dense_0']['kernel']", (2, 8, 32)),
]


@pytest.mark.parametrize('name,suffix,shard', SHARD_SHAPES)
def test_parameters_and_optimizer_state_are_split_as_specified(runs, name, suffix, shard):
  results, _ = runs
  param = _placement(results, name, suffix)
  momentum = _placement(results, name, suffix, opt_state=True)
  assert tuple(param[1]) == shard, param
  assert momentum == param  # the optimizer state lives exactly where its parameter does


def test_activation_constraints_only_where_parameters_are_split(runs):
  results, _ = runs
  for name in ('single', 'data', 'scan_data'):
    assert results[name]['constraints'] == 0, name
  for name in ('fsdp', 'model', 'fsdp_model', 'data_fsdp_model', 'scan_fsdp', 'scan_fsdp_model'):
    assert results[name]['constraints'] > 0, name


def test_scanned_fsdp_step_keeps_activations_batch_split(runs):
  # Without the activation constraints XLA followed the parameters' fsdp split into the scanned
  # blocks' activations and gathered the batch: about 2.3x the data-parallel temporaries here
  # (538 kB vs 234 kB in a probe of this model and mesh; 174 kB with them), 38 GB vs 2 GB per
  # device for ViT-B/16 on 256 devices.
  results, _ = runs
  assert results['scan_fsdp']['temp_bytes'] <= results['scan_data']['temp_bytes'], (
      results['scan_fsdp']['temp_bytes'], results['scan_data']['temp_bytes'])


def _whole_under_fsdp(name: str, fsdp: int, data: int = 1) -> set[str]:
  """Last two path components (module/parameter) of the parameters of the scanned `name` ViT
  (21,843 classes, 224 px) that an `fsdp` axis of `fsdp` devices leaves whole (abstract shapes
  and an abstract mesh: nothing compiles)."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import AbstractMesh
  from vit_jax import sharding
  from vit_jax.models import get_model
  model = get_model(name, num_classes=21843, scan=True, remat_policy='full')
  params = jax.eval_shape(lambda: model.init(
      jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))['params']
  mesh = AbstractMesh((data, fsdp), ('data', 'fsdp'))
  return {'/'.join(path.split('/')[-2:])
          for path, _ in sharding.fsdp_replicated(params, mesh)}


def test_fsdp_splits_every_large_vit_b_parameter_over_256_devices():
  # Width 768 = 3 x 256 and MLP 3072 = 12 x 256: every kernel, embedding and layer norm splits.
  # Left whole: the head bias (21,843 is odd) and the (layers, heads, head dim) = (12, 12, 64)
  # query/key/value biases.
  assert _whole_under_fsdp('ViT-B_16', 256) == {'head/bias', 'query/bias', 'key/bias',
                                                'value/bias'}


def test_fsdp_of_256_cannot_split_vit_g_attention_but_128_can():
  # ViT-g/14: width 1408 = 2^7 x 11, 16 heads of 88, 40 layers: no dimension of the attention
  # kernels or the width-sized vectors is divisible by 256, all are by 128.
  whole = _whole_under_fsdp('ViT-g_14', 256)
  assert {'query/kernel', 'key/kernel', 'value/kernel', 'out/kernel', 'out/bias',
          'LayerNorm_0/scale', 'encoder_norm/scale', 'head/kernel'} <= whole
  assert 'Dense_0/kernel' not in whole  # (40, 1408, 6144): 6144 = 24 x 256
  assert _whole_under_fsdp('ViT-g_14', 128, data=2) == {'head/bias', 'query/bias', 'key/bias',
                                                        'value/bias'}


@pytest.mark.parametrize('name', BAD_MESHES)
def test_impossible_tensor_parallel_mesh_names_the_field(runs, name):
  results, _ = runs
  assert results['errors'][name].startswith(BAD_MESHES[name][2]), results['errors'][name]


if __name__ == '__main__':
  child_main(sys.argv[1])
