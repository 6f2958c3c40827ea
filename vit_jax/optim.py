"""Optimizer and learning-rate schedule from `config.optim` and `config.schedule` (optax)."""
from absl import logging
import jax
import ml_collections
import optax

OPTIMIZERS = ('adam', 'adamw', 'sgd')
DECAYS = ('cosine', 'linear', 'constant')


def learning_rate(config: ml_collections.ConfigDict) -> optax.Schedule:
  """Linear warm-up from 0 to `optim.lr` over `schedule.warmup_steps`, then the decay to
  `schedule.end_lr` at `total_steps` ('cosine', 'linear') or a constant rate. A warm-up longer
  than the run (a shortened smoke run) is cut to half the run."""
  lr, sched, total = config.optim.lr, config.schedule, config.total_steps
  if sched.decay not in DECAYS:
    raise ValueError(f'schedule.decay={sched.decay!r} must be one of {DECAYS}.')
  if sched.warmup_steps < 0:
    raise ValueError(f'schedule.warmup_steps={sched.warmup_steps} must not be negative.')
  warmup_steps = sched.warmup_steps
  if warmup_steps >= total:
    warmup_steps = total // 2
    logging.warning('schedule.warmup_steps=%d >= total_steps=%d; warming up for %d steps.',
                    sched.warmup_steps, total, warmup_steps)
  decay_steps = total - warmup_steps
  decay = {
      'cosine': optax.cosine_decay_schedule(lr, decay_steps, alpha=sched.end_lr / lr),
      'linear': optax.linear_schedule(lr, sched.end_lr, decay_steps),
      'constant': optax.constant_schedule(lr),
  }[sched.decay]
  if not warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, lr, warmup_steps)
  return optax.join_schedules([warmup, decay], [warmup_steps])


def _kernels_only(params):
  """Weight-decay mask: matrices and convolution kernels, not biases, norms or embeddings'
  scalars (every array with more than one dimension)."""
  return jax.tree_util.tree_map(lambda p: p.ndim > 1, params)


def make_optimizer(config: ml_collections.ConfigDict
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optimizer, learning-rate schedule). Gradient clipping at `optim.grad_clip_norm`
  (0 = off), then Adam, AdamW (decoupled weight decay, scaled by the learning rate) or SGD
  with momentum; `weight_decay` for 'adam' and 'sgd' is added to the gradient (L2) before the
  update, as in the ViT paper's Adam setup."""
  opt = config.optim
  if opt.name not in OPTIMIZERS:
    raise ValueError(f'optim.name={opt.name!r} must be one of {OPTIMIZERS}.')
  if opt.lr <= 0:
    raise ValueError(f'optim.lr={opt.lr} must be positive.')
  schedule = learning_rate(config)
  parts = [optax.clip_by_global_norm(opt.grad_clip_norm)] if opt.grad_clip_norm else []
  if opt.name == 'adamw':
    parts.append(optax.adamw(schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay,
                             mask=_kernels_only))
  else:
    if opt.weight_decay:
      parts.append(optax.add_decayed_weights(opt.weight_decay, mask=_kernels_only))
    parts.append(optax.adam(schedule, b1=opt.b1, b2=opt.b2) if opt.name == 'adam'
                 else optax.sgd(schedule, momentum=opt.momentum))
  return optax.chain(*parts), schedule
