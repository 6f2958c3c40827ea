"""The original google-research/vision_transformer code as a benchmark subject (--vs-ref=<dir>).

Its ViT (`vit_jax.models_vit.VisionTransformer` of a user-given checkout) shaped like ours, and
a train step written like its `train.make_update_fn`: softmax cross-entropy on one-hot labels,
`jax.value_and_grad`, `optax.clip_by_global_norm(1)` + SGD with momentum 0.9 (bfloat16
accumulator), donated parameters and optimizer state; jitted on one device instead of its
`pmap`. No augmentation (its input pipeline runs on the host with tf.data): float images already
in [-1, 1]. float32 (the original has no compute-dtype option).

The checkout's package is also named `vit_jax`, so the steps are built in a worker process of
its own (`worker.py`, which loads this module by path), never beside our package; this module
imports nothing of ours.
"""
import importlib.util
import os
import sys
import types
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def check_checkout(ref_dir: str) -> None:
  """Raises FileNotFoundError unless ref_dir holds the original's vit_jax/models_vit.py."""
  if not os.path.isfile(os.path.join(ref_dir, 'vit_jax', 'models_vit.py')):
    raise FileNotFoundError(f'--vs-ref={ref_dir} is not a google-research/vision_transformer '
                            'checkout: it has no vit_jax/models_vit.py.')


def _import_models_vit(ref_dir: str):
  """`vit_jax.models_vit` of the checkout in ref_dir, without running its package __init__
  (which imports the LiT models and their text dependencies)."""
  check_checkout(ref_dir)
  package_dir = os.path.join(ref_dir, 'vit_jax')
  package = types.ModuleType('vit_jax')
  package.__path__ = [package_dir]
  sys.modules['vit_jax'] = package
  spec = importlib.util.spec_from_file_location(
      'vit_jax.models_vit', os.path.join(package_dir, 'models_vit.py'))
  module = importlib.util.module_from_spec(spec)
  sys.modules['vit_jax.models_vit'] = module
  spec.loader.exec_module(module)
  return module


def steps(mode: str, fields: dict, *, image_size: int, batch: int, num_classes: int,
          ref_dir: str) -> tuple[dict[str, Callable[[], None]], dict]:
  """({'step': one call of the train step or forward pass, waited for}, description)."""
  models_vit = _import_models_vit(ref_dir)
  model = models_vit.VisionTransformer(
      num_classes=num_classes, hidden_size=fields['hidden_size'],
      patches=ml_collections.ConfigDict({'size': (fields['patch_size'],) * 2}),
      transformer=ml_collections.ConfigDict({
          'mlp_dim': fields['mlp_dim'], 'num_heads': fields['num_heads'],
          'num_layers': fields['num_layers'], 'attention_dropout_rate': 0.,
          'dropout_rate': 0.}),
      classifier='token', representation_size=None)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.uniform(-1, 1, (batch, image_size, image_size, 3)), jnp.float32)
  labels = jax.nn.one_hot(np.arange(batch) % num_classes, num_classes)
  params = jax.jit(lambda: model.init(jax.random.PRNGKey(0), images[:1], train=False))()[
      'params']
  describe = {'implementation': 'google-research/vision_transformer models_vit + SGD step',
              'ref_dir': os.path.abspath(ref_dir), 'dtype': 'float32',
              'num_params': sum(p.size for p in jax.tree_util.tree_leaves(params))}
  if mode == 'infer':
    forward = jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))
    return {'step': lambda: forward(params, images).block_until_ready()}, describe

  tx = optax.chain(optax.clip_by_global_norm(1.),
                   optax.sgd(learning_rate=0.03, momentum=0.9, accumulator_dtype='bfloat16'))

  def loss_fn(p, x, y, key):
    logits = model.apply({'params': p}, x, train=True, rngs={'dropout': key})
    return -jnp.mean(jnp.sum(jax.nn.log_softmax(logits) * y, axis=1))

  def update(p, opt_state, key, x, y):
    key, dropout_key = jax.random.split(key)
    loss, grads = jax.value_and_grad(loss_fn)(p, x, y, dropout_key)
    updates, opt_state = tx.update(grads, opt_state)
    return optax.apply_updates(p, updates), opt_state, loss, key
  update = jax.jit(update, donate_argnums=(0, 1))
  holder = [params, tx.init(params), jax.random.PRNGKey(1)]

  def step():
    p, opt_state, loss, key = update(*holder, images, labels)
    holder[:] = [p, opt_state, key]
    loss.block_until_ready()
  return {'step': step}, describe
