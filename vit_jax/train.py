"""The training loop: `train_and_evaluate(config, workdir)`.

config (checked, `vit_jax.config`) -> mesh -> data (`data.load_data`: uint8 in memory, augmented
on the device, or streamed and augmented on the host) -> model + optimizer -> state
initialised directly sharded -> jitted train step (explicit shardings, donated state) ->
metrics / evaluation / checkpoints (written asynchronously; each holds, besides the state, the
data order, the metrics averaged so far and the latest results). Rerunning on the same workdir
resumes from the latest checkpoint and ends with the same parameters and recorded numbers
(timings aside). SIGTERM or Ctrl-C saves a checkpoint at the current step (at the next log step
in a multi-process run, the same on every process) and returns (a second Ctrl-C stops at once:
KeyboardInterrupt); a non-finite loss or gradient stops the run (FloatingPointError) before
anything is saved, unless optim.skip_nonfinite skips such steps.
"""
import functools
import os
import time
from typing import Any

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vit_jax import (checkpoint, data, evaluate, files, flops, metrics, mpp, optim, overview,
                     prefetch, pretrained, sharding)
from vit_jax import config as config_lib
from vit_jax import workdir as run_dir
from vit_jax.models import config_fields, config_overrides, get_model


class TrainState(flax.struct.PyTreeNode):
  step: jax.Array       # () int32, number of updates applied
  params: Any
  opt_state: Any
  rng: jax.Array        # (2,) uint32; step keys are fold_in(rng, step)


def build_model(config: ml_collections.ConfigDict, num_classes: int, channels: int, **changes):
  """The run's model: a classifier of `num_classes`, or with `mpp.enabled` the masked patch
  predictor of the colours of `channels`-channel images (which needs a plain ViT with square
  patches: ValueError otherwise). `changes` replace model fields (None: the registry's)."""
  overrides = {**config_overrides(config.model), **changes}
  if config.mpp.enabled:
    mpp.patch_size(config)
    overrides['masked_patch_prediction'] = True
    num_classes = mpp.num_colors(channels)
  return get_model(config.model.name, num_classes=num_classes, **overrides)


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float) -> jax.Array:
  """Per-example softmax cross-entropy with label smoothing: (B, K), (B,) -> (B,)."""
  k = logits.shape[-1]
  targets = optax.smooth_labels(jax.nn.one_hot(labels, k), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def make_train_step(model, tx: optax.GradientTransformation, schedule: optax.Schedule,
                    config: ml_collections.ConfigDict, mesh, state_shardings,
                    host_augmented: bool = False):
  """Returns the jitted step (state, images uint8 (B,H,W,C), labels (B,)) -> (state, metrics).

  The loss is the classification cross-entropy, or with `mpp.enabled` that of masked patch
  prediction (labels unused; metrics['accuracy'] is then over corrupted patches).
  Augmentation runs inside the step (with `host_augmented` the batches come augmented at
  image_size from the streaming pipeline and are only scaled to [-1, 1]); the state is
  donated; with grad_accum_steps = A the batch is split into A strided micro-batches whose
  gradients are averaged. The step is traced inside `mesh` (as an abstract mesh), so the
  model's activation constraints (`sharding.constrain`) apply. metrics['nonfinite'] is 1 when
  the loss, gradient or update is not finite; with optim.skip_nonfinite such a step leaves
  parameters and optimizer state unchanged.
  """
  augment = data.augment_from_config(config)
  accum = config.optim.grad_accum_steps
  smoothing = config.optim.label_smoothing
  skip_nonfinite = config.optim.skip_nonfinite
  masked_patches = mpp.objective_args(config)

  def loss_fn(params, images, labels, key):  # -> (loss, accuracy)
    if masked_patches is not None:
      corrupt_key, dropout_key = jax.random.split(key)
      loss, correct, count, _ = mpp.objective(model, params, images, corrupt_key, train=True,
                                              dropout_key=dropout_key, **masked_patches)
      return loss / count, correct / count
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': key})
    loss = jnp.mean(cross_entropy(logits, labels, smoothing))
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def update(state: TrainState, images, labels):
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    x = data.normalize(images) if host_augmented else augment(images, aug_key)
    if accum == 1:
      (loss, accuracy), grads = grad_fn(state.params, x, labels, dropout_key)
    else:
      micro = lambda a: a.reshape(a.shape[0] // accum, accum, *a.shape[1:]).swapaxes(0, 1)

      def body(carry, inputs):
        (loss, accuracy), grads = grad_fn(state.params, *inputs)
        return jax.tree_util.tree_map(jnp.add, carry, (loss, accuracy, grads)), None

      zeros = (0., 0., jax.tree_util.tree_map(jnp.zeros_like, state.params))
      (loss, accuracy, grads), _ = jax.lax.scan(
          body, zeros, (micro(x), micro(labels), jax.random.split(dropout_key, accum)))
      loss, accuracy, grads = jax.tree_util.tree_map(lambda a: a / accum,
                                                     (loss, accuracy, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    grad_norm, update_norm = optax.tree.norm(grads), optax.tree.norm(updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(update_norm)
    params = optax.apply_updates(state.params, updates)
    if skip_nonfinite:  # keep the previous parameters and optimizer state
      keep = lambda new, old: jax.tree_util.tree_map(lambda a, b: jnp.where(finite, a, b), new, old)
      params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, {'loss': loss, 'accuracy': accuracy,
                       'grad_norm': grad_norm, 'lr': schedule(state.step),
                       'nonfinite': 1. - finite}

  def step(state: TrainState, images, labels):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return update(state, images, labels)

  batch = sharding.batch_sharding(mesh)
  return jax.jit(step, in_shardings=(state_shardings, batch, batch),
                 out_shardings=(state_shardings, sharding.replicated(mesh)), donate_argnums=0)


def init_state(model, tx, config, image_shape: tuple[int, ...], mesh):
  """Returns (abstract state with shardings, init function producing the sharded state)."""

  def init_fn(rng):
    params_rng, state_rng = jax.random.split(rng)
    params = model.init(params_rng, jnp.zeros((1, *image_shape)), train=False)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      rng=state_rng)

  rng = jax.random.PRNGKey(config.seed)
  abstract = jax.eval_shape(init_fn, rng)
  shardings = sharding.tree_shardings(abstract, mesh)
  abstract = jax.tree_util.tree_map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  return abstract, shardings, lambda: jax.jit(init_fn, out_shardings=shardings)(rng)


def _stop_if_nonfinite(pending: list, skip: bool, last_good: int | None) -> None:
  """Raises on the first non-finite (step, metrics) in `pending`, unless such steps are
  skipped. Called before every log line, evaluation and checkpoint."""
  bad = [(s, m) for s, m in jax.device_get(pending) if m['nonfinite']]
  if bad and not skip:
    step, m = bad[0]
    raise FloatingPointError(
        f'Non-finite loss or gradient at step {step} (loss={m["loss"]}, grad_norm='
        f'{m["grad_norm"]}); stopping. The last good checkpoint is step {last_good}: rerun to '
        'resume from it with a lower optim.lr, or set optim.skip_nonfinite=True to skip such '
        'steps.')


def _window(pending: list) -> list[tuple[int, dict[str, float]]]:
  """The (step, metrics) of the steps since the last log line, as Python floats (saved with a
  checkpoint, so that a resumed run averages the same steps)."""
  return [(int(s), {k: float(v) for k, v in m.items()}) for s, m in jax.device_get(pending)]


def _summary(pending: list, skipped: int, images_per_sec: float) -> dict[str, float]:
  """The log line's metrics: the mean (in float64) of every metric over the steps in
  `pending` (over the finite ones when some were skipped), the throughput and the skipped-step
  count so far."""
  host = [m for _, m in _window(pending)]
  skipped += int(sum(m['nonfinite'] for m in host))
  good = [m for m in host if not m['nonfinite']] or host  # skipped steps' loss is NaN
  summary = {k: float(np.mean([m[k] for m in good])) for k in host[0] if k != 'nonfinite'}
  return dict(summary, images_per_sec=images_per_sec, skipped_steps=skipped)


def _check_inputs(config: ml_collections.ConfigDict, mesh, shots_from) -> None:
  """Raises, before anything is written, for what the config check cannot see: the few-shot
  probe's shots per class of `shots_from` (the split the shots are drawn from), a missing
  `checkpoint.init_from`, a tensor-parallel split of the model."""
  if shots := config.eval.fewshot_shots:  # every class needs the shots (raises if not)
    evaluate.fewshot_indices(shots_from.labels, max(shots), seed=0)
  init_from = config.checkpoint.init_from
  if init_from and not files.exists(init_from):
    url = pretrained.published_url(init_from)
    raise FileNotFoundError(f'checkpoint.init_from={init_from!r} does not exist' + (
        f'; the published checkpoint downloads from {url}' if url else '') + '.')
  sharding.check_tensor_parallel(mesh, config_fields(config.model))


def _restore_or_init(config, manager, abstract, shardings, init, tx, iterator
                     ) -> tuple[TrainState, dict[str, Any]]:
  """(state, saved): the latest checkpoint (and the iterator's position) with its saved
  'best', 'skipped', 'wall_time', 'window' (the metrics of the steps since the last log line)
  and 'results', else a new state, from `checkpoint.init_from` if set."""
  if manager.latest_step() is not None:
    state, saved = manager.restore(abstract)
    iterator.set_state(saved['iterator'])
    logging.info('Resumed from step %d in %s.', int(state.step), manager.directory)
    return state, saved
  state = init()
  if config.checkpoint.init_from:
    params = checkpoint.load_pretrained(config.checkpoint.init_from, abstract.params,
                                        reset_head=config.checkpoint.reset_head)
    params = jax.device_put(params, shardings.params)
    opt_state = jax.jit(tx.init, out_shardings=shardings.opt_state)(params)
    state = state.replace(params=params, opt_state=opt_state)
    logging.info('Initialised from %s.', config.checkpoint.init_from)
  return state, {'best': {}, 'skipped': 0, 'wall_time': 0., 'window': [], 'results': {}}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains and evaluates one run in `workdir`; resumes if it holds checkpoints.

  Returns the final results (also written to `<workdir>/result.json`), or {'stopped_by':
  'SIGTERM' or 'Ctrl-C', 'step': s} when one arrived (at any time: during setup the run stops
  after one step) and a checkpoint of step s was written.

  Raises:
    ValueError, FileNotFoundError: a bad config or dataset, before anything is written.
    files.LockedError: another run holds the workdir.
    OSError: the workdir cannot be written (full, read-only); nothing already there is lost.
    FloatingPointError: a non-finite loss or gradient (unless optim.skip_nonfinite).
    KeyboardInterrupt: a second Ctrl-C (no checkpoint of the current step).
  """
  with run_dir.stop_flag() as stop_flag:
    return _train_and_evaluate(config, workdir, stop_flag)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                        stop_flag: list) -> dict[str, Any]:
  """The body of `train_and_evaluate`; `stop_flag` is `workdir.stop_flag`'s list."""
  config_lib.check(config)
  mesh = sharding.make_mesh(config.mesh)
  config_lib.check_batch(config, mesh)
  train_split, val_split, test_split = data.load_data(config)
  channels = train_split.channels
  probe = data.probe_splits(config, channels)  # eval.fewshot_dataset's (train, test), or None
  _check_inputs(config, mesh, (probe or (train_split,))[0])
  model = build_model(config, len(train_split.class_names), channels)
  tx, schedule = optim.make_optimizer(config)
  image_shape = (config.image_size, config.image_size, channels)
  abstract, shardings, init = init_state(model, tx, config, image_shape, mesh)

  checkpoints = os.path.join(workdir, 'checkpoints')
  with (run_dir.hold(workdir),
        checkpoint.CheckpointManager(checkpoints, config.checkpoint.keep) as manager,
        metrics.ProfileTrace(workdir, config.profile_steps) as trace):
    is_writer = jax.process_index() == 0
    iterator = data.train_iterator(train_split, config, jax.process_index(),
                                   jax.process_count())
    state, saved = _restore_or_init(config, manager, abstract, shardings, init, tx, iterator)
    best, skipped = saved['best'], saved['skipped']
    if is_writer:
      run_dir.write_config(config, workdir)
      files.write_json(os.path.join(workdir, 'class_names.json'), list(train_split.class_names))
    start_step = int(state.step)
    result_path = os.path.join(workdir, 'result.json')
    stopped = lambda step: evaluate.patience_spent(best, step, config.eval_every,
                                                   config.eval.patience)
    if files.exists(result_path) and (start_step >= config.total_steps or stopped(start_step)):
      logging.info('%s already finished (step %d); nothing to do.', workdir, start_step)
      return files.read_json(result_path)
    writer = metrics.MetricsWriter(workdir, start_step, active=is_writer)
    num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(abstract.params))
    logging.info('%s: %s parameters, %d train / %d validation / %d test images, %d %s, '
                 'mesh %s.', config.model.name, f'{num_params:,}', len(train_split.labels),
                 0 if val_split is None else len(val_split.labels), len(test_split.labels),
                 model.num_classes, 'patch colours to predict' if config.mpp.enabled else 'classes',
                 dict(mesh.shape))
    logging.info('Parameters:\n%s', overview.parameter_table(abstract.params))
    train_step = make_train_step(model, tx, schedule, config, mesh, shardings,
                                 host_augmented=train_split.host_augmented)
    evaluator = evaluate.Evaluator(model, config, mesh, train_split, val_split, test_split,
                                   probe)

    def run_eval(step: int) -> dict[str, float]:
      nonlocal best
      evals = evaluator(state.params, step)
      writer.write(step, evals)
      best = evaluate.update_best(best, evals, step)
      return evals

    # pending: (step, metrics) since the last log line; results: the latest of every number
    pending, results = [tuple(p) for p in saved['window']], saved['results']
    check_finite = lambda: _stop_if_nonfinite(pending, config.optim.skip_nonfinite,
                                              manager.latest_step())
    last_log, last_log_step = time.time(), start_step
    run_start = time.time() - saved['wall_time']
    # The next batch is on the device while a step runs; nothing waits for the device
    # between log steps (metrics stay on it in `pending` until the next log line).
    batches = prefetch.DevicePrefetch(
        iterator, lambda batch: tuple(sharding.global_batch(a, mesh) for a in batch))
    # A run that stopped early but was killed before result.json trains no further.
    last_step = start_step if stopped(start_step) else config.total_steps
    for step in range(start_step + 1, last_step + 1):
      trace.before(step)
      state, step_metrics = train_step(state, *next(batches))
      trace.after(step, state)
      pending.append((step, step_metrics))
      final = step == config.total_steps
      log = step % config.log_every == 0 or final
      if log:
        check_finite()
        now = time.time()
        summary = _summary(pending, skipped,
                           (step - last_log_step) * config.batch_size / (now - last_log))
        skipped = summary['skipped_steps']
        writer.write(step, summary)
        eta = (config.total_steps - step) * (now - last_log) / (step - last_log_step)
        logging.info(metrics.progress_line(step, config.total_steps, summary, eta))
        results.update({f'train_{k}': v for k, v in summary.items()})
        pending, last_log, last_log_step = [], now, step
      pause = time.time()  # evaluation and checkpointing do not count towards images/s
      if step % config.eval_every == 0 or final:
        check_finite()
        results.update(run_eval(step))
        if not final and stopped(step):
          logging.info('Early stopping at step %d: validation accuracy has not improved for '
                       '%d evaluations (best at step %d).', step, config.eval.patience,
                       best['best_step'])
          final = True
      stop = run_dir.stop_agreed(stop_flag, log)
      best_step = best.get('best_step') if val_split is not None else None  # by validation
      if step % config.checkpoint_every == 0 or final or stop or best_step == step:
        check_finite()
        manager.save(step, state, {'iterator': batches.get_state(), 'best': best,
                                   'skipped': skipped, 'wall_time': time.time() - run_start,
                                   'window': _window(pending), 'results': dict(results)}, best_step)
      last_log += time.time() - pause
      if stop and not final:
        logging.warning('%s: saved a checkpoint at step %d; rerun the same command to '
                        'continue.', stop, step)
        manager.wait()
        writer.close()
        return {'stopped_by': stop, 'step': step}
      if final:
        break
    trace.close()  # a trace still running (an early stop inside its steps)
    if 'test_accuracy' not in results:  # finished earlier, but result.json was never written
      results.update(run_eval(int(state.step)))
    manager.wait()  # the final checkpoint is complete before result.json
    writer.close()

    final_step = int(state.step)
    num_val = 0 if val_split is None else len(val_split.labels)
    forward = flops.forward_flops(
        functools.partial(build_model, config, len(train_split.class_names), channels),
        image_shape, config_fields(config.model).get('num_layers'))
    results.update(best)
    results.update({
        'step': final_step, 'budget_steps': config.total_steps,
        'early_stopped': final_step < config.total_steps,
        'examples_seen': final_step * config.batch_size,
        'forward_flops_per_example': forward,
        'train_flops': flops.train_flops(forward, final_step * config.batch_size),
        'wall_time_sec': time.time() - run_start, 'num_params': num_params,
        'model': config.model.name, 'dataset': config.dataset,
        'train_size': len(train_split.labels) + (0 if config.eval.val_size else num_val),
        'val_size': num_val,
        'devices': jax.device_count(),
        'skipped_images': len(train_split.skipped) + len(test_split.skipped),
    })
    if is_writer:
      files.write_json(result_path, results)
    return results
