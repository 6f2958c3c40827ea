"""Plan mode (`python -m vit_jax.main --plan`): per-device memory and FLOPs of a mesh of
simulated devices, checked against byte counts and XLA's cost analysis made here."""
import functools
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AbstractMesh

from conftest import ROOT, child_env, with_site_hook
from configs import quickstart
from vit_jax import flops, optim, sharding, train
from vit_jax.models import config_overrides, get_model

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

BATCH, LAYERS, DEVICES = 32, 2, 8


@pytest.fixture(scope='module')
def plans(tmp_path_factory):
  """Plan results by (mesh axis, data.channels), each computed once."""
  cache = {}
  def get(axis: str, channels: int | None = None) -> dict:
    if (axis, channels) not in cache:
      cache[axis, channels] = run_plan(tmp_path_factory.mktemp(axis),
                                       f"(('{axis}', {DEVICES}),)", channels)
    return cache[axis, channels]
  return get


def run_plan(tmp_path, mesh: str, channels: int | None) -> dict:
  out = tmp_path / 'plan.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py', '--plan',
       f'--plan_devices={DEVICES}', '--plan_num_classes=10', f'--plan_json={out}',
       f'--config.batch_size={BATCH}', f'--config.model.num_layers={LAYERS}',
       f'--config.mesh={mesh}', '--config.model.scan=True']
      + ([f'--config.data.channels={channels}'] if channels else []),
      cwd=ROOT, env=child_env(1), capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert 'per device: peak' in proc.stdout and 'parameter shardings:' in proc.stdout
  result = json.loads(out.read_text())
  assert proc.stdout.startswith(
      f'ViT-Nano_2: {result["num_params"]:,} parameters (10-class head: --plan_num_classes), '
      f'batch {BATCH} at 8 px with {channels or 3} channel(s) (data.channels), mesh')
  assert result['num_classes'] == 10
  total = [c.strip() for c in proc.stdout.rstrip().splitlines()[-1].split(' | ')]
  assert total == ['total', '', f'{result["num_params"]:,}', f'{len(result["params"])} arrays']
  return result


@pytest.fixture(scope='module')
def model_and_state():
  """channels -> the quickstart model (unscanned) and its abstract train state for images of
  that many channels, built here on one device."""
  config = quickstart.get_config()
  config.model.num_layers = LAYERS
  model = get_model(config.model.name, num_classes=10, **config_overrides(config.model))
  tx, _ = optim.make_optimizer(config)
  return lambda channels: (model, jax.eval_shape(
      lambda: (lambda p: (p, tx.init(p)))(
          model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, channels)))['params'])))


def per_device_bytes(tree, mesh) -> int:
  """Bytes of `tree`'s shards on one device under the partition rules on `mesh`."""
  total = 0
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    spec = sharding.partition_spec(sharding.path_str(path), tuple(leaf.shape), mesh)
    split = math.prod(mesh.shape[a] for a in jax.tree_util.tree_leaves(tuple(spec)) if a)
    total += leaf.size * leaf.dtype.itemsize // split
  return total


@pytest.mark.parametrize('axis,channels', [('data', None), ('fsdp', None), ('data', 1)])
def test_plan_arguments_are_the_state_and_batch_shards(plans, model_and_state, axis, channels):
  """The state and the batch of (8, 8, C) uint8 images, C = data.channels or 3 (the plan reads
  no data)."""
  _, (params, opt_state) = model_and_state(channels or 3)
  result = plans(axis, channels)
  assert result['devices'] == DEVICES and result['mesh'] == {axis: DEVICES}
  assert result['channels'] == (channels or 3)
  assert result['num_params'] == sum(a.size for a in jax.tree_util.tree_leaves(params))
  mesh = AbstractMesh((DEVICES,), (axis,))
  # Step (int32), RNG key (2 x uint32), parameters, optimizer state and the batch rows.
  state = per_device_bytes((params, opt_state), mesh) + 4 + 8
  batch = BATCH // DEVICES * (8 * 8 * (channels or 3) + 4)  # uint8 images, int32 labels
  assert result['memory']['arguments'] == pytest.approx(state + batch, abs=64)
  if axis == 'fsdp':
    sharded = [p for p in result['params'] if 'fsdp' in p['spec']]
    assert any(p['path'].endswith('MlpBlock_0/Dense_0/kernel') for p in sharded)
    assert per_device_bytes(params, mesh) < per_device_bytes(params, AbstractMesh((1,), ('data',)))


def test_plan_flops_match_cost_analysis_of_the_unscanned_model(plans, model_and_state):
  model, _ = model_and_state(3)
  result = plans('data')
  forward = flops.xla_forward_flops(model, (8, 8, 3))  # XLA's count for the whole unrolled model
  np.testing.assert_allclose(result['flops_per_step'], 3 * BATCH * forward, rtol=1e-6)


@pytest.mark.parametrize('layers', [3, 4])
def test_plan_flops_extrapolate_depth_to_the_unscanned_model(layers):
  """F(L) = F(1) + (L - 1) (F(2) - F(1)) from 1- and 2-layer models against XLA's count for the
  whole unscanned L-layer model (at L = 2 the formula reduces to F(2) and proves nothing)."""
  config = quickstart.get_config()
  config.model.num_layers, config.model.scan = layers, True
  unscanned = get_model(config.model.name, num_classes=10,
                        **dict(config_overrides(config.model), scan=False))
  build = functools.partial(train.build_model, config, 10, 3)
  np.testing.assert_allclose(flops.forward_flops(build, (8, 8, 3), layers),
                             flops.xla_forward_flops(unscanned, (8, 8, 3)), rtol=1e-6)


# Sends Ctrl-C (SIGINT to this process) as plan mode starts planning: vit_jax.plan.plan is
# wrapped when the module is first imported.
CTRL_C_AS_PLANNING_STARTS = '''
import importlib.machinery, os, signal, sys

class CtrlCInPlan:
  def find_spec(self, name, path=None, target=None):
    if name != 'vit_jax.plan':
      return None
    spec = importlib.machinery.PathFinder.find_spec(name, path)
    load = spec.loader.exec_module
    def exec_module(module):
      load(module)
      original = module.plan
      def plan(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return original(*args, **kwargs)
      module.plan = plan
    spec.loader.exec_module = exec_module
    return spec

sys.meta_path.insert(0, CtrlCInPlan())
'''


def test_ctrl_c_while_planning_is_one_line_about_the_plan(tmp_path):
  out = tmp_path / 'plan.json'
  env = with_site_hook(child_env(1), tmp_path / 'hook', CTRL_C_AS_PLANNING_STARTS)
  proc = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py', '--plan',
       f'--plan_devices={DEVICES}', f'--plan_json={out}'],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 130, proc.stderr[-3000:]
  assert proc.stderr.splitlines()[-1] == 'Stopped by Ctrl-C while planning; nothing was written.'
  assert 'Traceback' not in proc.stderr and 'checkpoint' not in proc.stderr
  assert not out.exists()
