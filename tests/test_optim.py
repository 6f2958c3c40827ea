"""Optimizer and learning-rate schedule (vit_jax/optim.py) against hand-written NumPy updates:
warm-up and cosine / linear / constant decay, the weight-decay mask, gradient clipping, Adam
with L2 decay vs AdamW with decoupled decay, SGD with momentum."""
import math

import jax
import numpy as np
import pytest

from configs import quickstart
from vit_jax import optim

LR, END_LR, WARMUP, TOTAL = 1e-2, 1e-4, 4, 20


def make_config(name='adamw', decay='cosine', warmup=WARMUP, weight_decay=0.1, clip=0.,
                total=TOTAL):
  config = quickstart.get_config()
  config.total_steps = total
  config.optim.name, config.optim.lr, config.optim.weight_decay = name, LR, weight_decay
  config.optim.grad_clip_norm = clip
  config.optim.b1, config.optim.b2, config.optim.momentum = 0.8, 0.95, 0.7
  config.schedule.decay, config.schedule.warmup_steps, config.schedule.end_lr = (
      decay, warmup, END_LR)
  return config


def reference_lr(step, decay, warmup=WARMUP, total=TOTAL):
  """Linear warm-up from 0, then the decay over the remaining steps, written out."""
  if step < warmup:
    return LR * step / warmup
  progress = min((step - warmup) / (total - warmup), 1.)
  if decay == 'cosine':
    return END_LR + (LR - END_LR) * 0.5 * (1 + math.cos(math.pi * progress))
  if decay == 'linear':
    return LR + (END_LR - LR) * progress
  return LR


@pytest.mark.parametrize('decay', ['cosine', 'linear', 'constant'])
def test_schedule_is_warmup_then_decay(decay):
  schedule = optim.learning_rate(make_config(decay=decay))
  for step in (0, 1, 3, 4, 5, 9, 12, 19, 20):
    assert float(schedule(step)) == pytest.approx(reference_lr(step, decay), rel=1e-5, abs=1e-9)


def test_schedule_without_warmup_starts_at_the_peak():
  schedule = optim.learning_rate(make_config(decay='linear', warmup=0))
  assert float(schedule(0)) == pytest.approx(LR)
  assert float(schedule(10)) == pytest.approx(reference_lr(10, 'linear', warmup=0), rel=1e-5)


def test_a_warmup_longer_than_the_run_is_cut_to_half_of_it():
  schedule = optim.learning_rate(make_config(decay='linear', warmup=50, total=10))
  for step in (0, 2, 5, 7, 10):
    assert float(schedule(step)) == pytest.approx(
        reference_lr(step, 'linear', warmup=5, total=10), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize('field,value,message', [
    ('decay', 'step', "schedule.decay='step' must be one of"),
    ('warmup', -1, 'schedule.warmup_steps=-1 must not be negative'),
    ('name', 'lamb', "optim.name='lamb' must be one of"),
])
def test_bad_settings_name_the_field(field, value, message):
  with pytest.raises(ValueError, match=message):
    optim.make_optimizer(make_config(**{field: value}))


def test_non_positive_learning_rate_is_refused():
  config = make_config()
  config.optim.lr = 0.
  with pytest.raises(ValueError, match='optim.lr=0.0 must be positive'):
    optim.make_optimizer(config)


PARAMS = {'dense': {'kernel': np.array([[0.5, -1.0, 2.0], [1.5, -0.3, 0.7]]),
                    'bias': np.array([0.2, -0.4, 0.1])},
          'norm': {'scale': np.array([1.0, 0.9, 1.1])},
          'conv': {'kernel': np.linspace(-1, 1, 12).reshape(1, 2, 2, 3)}}
GRADS = [jax.tree_util.tree_map(lambda p, i=i: np.cos(np.arange(p.size).reshape(p.shape) + i) * 3.,
                                PARAMS) for i in range(5)]


def reference_updates(name, weight_decay, clip, decay='cosine', eps=1e-8, b1=0.8, b2=0.95,
                      momentum=0.7):
  """Parameters after len(GRADS) steps, in NumPy: clipping of the global gradient norm, then
  Adam/SGD with L2 decay added to the gradient of matrices and kernels only, or AdamW with
  decoupled decay (p <- p - lr (adam_update + wd p))."""
  keys = [('dense', 'kernel'), ('dense', 'bias'), ('norm', 'scale'), ('conv', 'kernel')]
  decayed = {k: PARAMS[k[0]][k[1]].ndim > 1 for k in keys}
  p = {k: PARAMS[k[0]][k[1]].astype(np.float64) for k in keys}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for t, grads in enumerate(GRADS):
    g = {k: grads[k[0]][k[1]].astype(np.float64) for k in keys}
    if clip:
      norm = math.sqrt(sum(np.sum(x**2) for x in g.values()))
      g = {k: x * min(1., clip / norm) for k, x in g.items()}
    lr = reference_lr(t, decay)
    for k in keys:
      wd = weight_decay * p[k] if decayed[k] else 0.
      if name == 'sgd':
        m[k] = g[k] + wd + momentum * m[k]
        p[k] = p[k] - lr * m[k]
        continue
      grad = g[k] + (wd if name == 'adam' else 0.)
      m[k] = b1 * m[k] + (1 - b1) * grad
      v[k] = b2 * v[k] + (1 - b2) * grad**2
      update = (m[k] / (1 - b1**(t + 1))) / (np.sqrt(v[k] / (1 - b2**(t + 1))) + eps)
      p[k] = p[k] - lr * (update + (wd if name == 'adamw' else 0.))
  return {k[0] + '/' + k[1]: x for k, x in p.items()}


@pytest.mark.parametrize('name,weight_decay,clip', [
    ('adamw', 0.3, 0.), ('adam', 0.3, 0.), ('adamw', 0.3, 2.), ('adam', 0., 2.),
    ('sgd', 0.3, 2.), ('sgd', 0., 0.)])
def test_updates_match_numpy(name, weight_decay, clip):
  tx, _ = optim.make_optimizer(make_config(name, weight_decay=weight_decay, clip=clip))
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), PARAMS)
  state = tx.init(params)
  for grads in GRADS:
    updates, state = tx.update(jax.tree_util.tree_map(np.float32, grads), state, params)
    params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
  want = reference_updates(name, weight_decay, clip)
  for key, value in want.items():
    group, leaf = key.split('/')
    np.testing.assert_allclose(params[group][leaf], value, rtol=2e-5, atol=1e-6, err_msg=key)


def test_decay_reaches_only_matrices_and_kernels():
  """With a zero gradient AdamW's whole update is the decay: kernels shrink by lr * wd, biases
  and norm scales stay as they are."""
  tx, _ = optim.make_optimizer(make_config('adamw', decay='constant', warmup=0, weight_decay=0.5))
  params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), PARAMS)
  zeros = jax.tree_util.tree_map(np.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  for group, leaves in PARAMS.items():
    for leaf, value in leaves.items():
      want = -LR * 0.5 * value if value.ndim > 1 else np.zeros_like(value)
      np.testing.assert_allclose(updates[group][leaf], want, rtol=1e-6, atol=1e-9)
