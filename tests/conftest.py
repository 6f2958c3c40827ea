"""Shared test helpers: tiny models, random (non-zero) parameters, child-process settings."""
import os

import jax
import numpy as np
import pytest

from vit_jax.models import get_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_VIT = dict(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2, patch_size=4)


def init(model, image_size, seed=0, channels=3):
  """Initialises `model` on a (2, S, S, C) batch; returns (params, images)."""
  images = jax.random.uniform(jax.random.PRNGKey(seed + 1), (2, image_size, image_size, channels),
                              minval=-1, maxval=1)
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(seed), x))(images)['params']
  return params, images


def randomize(params, seed=0, scale=0.2):
  """Replaces every parameter by Gaussian noise so zero-initialised heads matter too."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: (rng.normal(0, scale, a.shape) + (a.ndim == 1) * 0.5).astype(np.float32), params)


@pytest.fixture
def tiny_vit():
  """A tiny random ViT on 16x16 images: (model, params, images)."""
  model = get_model('ViT-Ti_16', num_classes=5, **TINY_VIT)
  params, images = init(model, 16)
  return model, randomize(params), images


# XLA's cheaper CPU compilation halves the child's run time (compiling dominates it); every
# comparison is between runs compiled alike.
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def child_env(devices: int) -> dict[str, str]:
  """Environment of a child process with `devices` simulated CPU devices that imports this
  checkout (not whatever `vit_jax` the interpreter has installed)."""
  path = os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=path,
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE}')


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: takes more than about 5 s (deselect with -m "not slow")')
