"""Evaluation: test accuracy and loss, and the few-shot linear probe on pre-logits features.

Few-shot protocol (ViT paper, section 4.1, "Metrics"): frozen pre-logits features, k examples per
class drawn from the training split with a fixed seed, features standardised with the shots'
statistics, a bias feature, closed-form ridge regression to +-1 one-hot targets, accuracy on the
whole test split; averaged over seeds.
"""
from typing import Callable

from absl import logging
import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vit_jax import data, mpp, sharding


def eval_input(images: jax.Array, *, image_size: int, crop_fraction: float,
               host_cropped: bool) -> jax.Array:
  """An evaluation batch (B, H, W, C) uint8 -> (B, S, S, C) float32 in [-1, 1], S = image_size:
  centre-cropped (`crop_fraction`) and resized here, or only scaled when `host_cropped` (the
  streaming pipeline cropped it on the host)."""
  if host_cropped:
    return data.normalize(images)
  return data.preprocess_eval(images, image_size=image_size, crop_fraction=crop_fraction)


def eval_sample(config, split, count: int) -> tuple[np.ndarray, np.ndarray]:
  """`count` examples of `split` (either kind) evenly spaced over it (evaluation splits are
  often sorted by class), read and preprocessed as the evaluation reads them (`config`'s
  image_size and eval.crop_fraction): images (n, S, S, C) float32 in [-1, 1], labels (n,)
  int32, n = min(count, N)."""
  sample = split.take(data.evenly_spaced(len(split.labels), count))
  images, labels = [], []
  for batch, batch_labels, mask in data.split_eval_batches(
      sample, config.eval.batch_size, 0, 1, image_size=config.image_size,
      crop_fraction=config.eval.crop_fraction):
    x = eval_input(jnp.asarray(batch), image_size=config.image_size,
                   crop_fraction=config.eval.crop_fraction, host_cropped=sample.host_augmented)
    images.append(np.asarray(x)[mask])
    labels.append(batch_labels[mask])
  return np.concatenate(images), np.concatenate(labels)


def make_eval_step(model, *, image_size: int, crop_fraction: float,
                   masked_patches: dict | None = None, host_cropped: bool = False) -> Callable:
  """Returns jitted (params, images uint8 (B,H,W,C), labels (B,), mask (B,)) ->
  (sum of losses, number correct, count, pre-logits features (B, F)).

  With `host_cropped` the images come centre-cropped at image_size (streaming pipeline) and
  are only scaled to [-1, 1]. With `masked_patches` (`mpp.objective_args`) the scores are those
  of masked patch prediction over the corrupted patches, with the same corruption every call.
  """

  def step(params, images, labels, mask):
    x = eval_input(images, image_size=image_size, crop_fraction=crop_fraction,
                   host_cropped=host_cropped)
    if masked_patches is not None:
      loss, correct, count, features = mpp.objective(
          model, params, x, jax.random.PRNGKey(0), train=False, valid=mask, **masked_patches)
      return loss, correct, count, features['representation'][0]
    logits, state = model.apply({'params': params}, x, train=False, mutable=['features'])
    loss = -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, logits.shape[-1]), -1)
    correct = (jnp.argmax(logits, -1) == labels) & mask
    return (jnp.sum(jnp.where(mask, loss, 0.)), jnp.sum(correct), jnp.sum(mask),
            state['features']['representation'][0])

  return jax.jit(step)


def features_and_metrics(eval_step: Callable, params, split, *, batch_size: int,
                         mesh: Mesh, **pipeline) -> tuple[dict[str, float], np.ndarray]:
  """Runs `split` (in memory or streamed: `pipeline` are the keyword arguments of
  `data.split_eval_batches`) once; returns ({'loss', 'accuracy'}, features (N, F) float32)."""
  totals = np.zeros(3)
  features = []
  for images, labels, mask in data.split_eval_batches(split, batch_size, jax.process_index(),
                                                       jax.process_count(), **pipeline):
    batch = [sharding.global_batch(a, mesh) for a in (images, labels, mask)]
    loss, correct, count, feats = eval_step(params, *batch)
    totals += [float(loss), float(correct), float(count)]
    feats = np.asarray(multihost_utils.process_allgather(feats, tiled=True))
    global_mask = np.asarray(multihost_utils.process_allgather(
        batch[2], tiled=True))
    features.append(feats[global_mask])
  loss, correct, count = totals
  return {'loss': loss / count, 'accuracy': correct / count}, np.concatenate(features)


def fewshot_indices(labels: np.ndarray, shots: int, seed: int) -> np.ndarray:
  """`shots` examples of every class, chosen with `seed`; the first k of a larger draw form the
  k-shot set of the same seed. Returns indices (num_classes * shots,)."""
  rng = np.random.default_rng(seed)
  picks = []
  for c in np.unique(labels):
    members = np.flatnonzero(labels == c)
    if len(members) < shots:
      raise ValueError(f'eval.fewshot_shots: class {c} has only {len(members)} training '
                       f'examples (after the train_size subset and the validation hold-out), '
                       f'fewer than {shots} shots; use fewer shots or more data.')
    picks.append(rng.permutation(members)[:shots])
  return np.concatenate(picks)


def ridge_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                test_y: np.ndarray, num_classes: int, l2_reg: float) -> float:
  """Closed-form ridge regression to +-1 targets on standardised features plus a bias
  feature; returns test accuracy. Shapes: train_x (n, F), test_x (m, F)."""
  mean, std = train_x.mean(0), train_x.std(0) + 1e-6
  add_bias = lambda x: np.concatenate([(x - mean) / std, np.ones((len(x), 1))], axis=1)
  x, t = add_bias(train_x.astype(np.float64)), add_bias(test_x.astype(np.float64))
  y = 2. * np.eye(num_classes)[train_y] - 1.
  w = ridge_weights(x, y, l2_reg)
  return float(np.mean(np.argmax(t @ w, axis=1) == test_y))


def ridge_weights(x: np.ndarray, y: np.ndarray, l2_reg: float) -> np.ndarray:
  """argmin_w |x w - y|^2 + l2_reg |w|^2 for x (n, D), y (n, K) -> w (D, K): the primal
  solve (x^T x + l2 I)^-1 x^T y, D x D, when the examples outnumber the features, else the dual
  x^T (x x^T + l2 I)^-1 y, n x n (the same w; the smaller system is solved)."""
  n, d = x.shape
  if n > d:
    return np.linalg.solve(x.T @ x + l2_reg * np.eye(d), x.T @ y)
  return x.T @ np.linalg.solve(x @ x.T + l2_reg * np.eye(n), y)


def fewshot_accuracies(features_fn: Callable[[np.ndarray], np.ndarray], train_labels: np.ndarray,
                       test_features: np.ndarray, test_labels: np.ndarray, *,
                       shots: tuple[int, ...], seeds: int, l2_reg: float) -> dict[str, float]:
  """Mean k-shot accuracy over `seeds` for every k in `shots`: {'fewshot_{k}shot': acc}.

  `features_fn(indices)` returns the pre-logits features of those training examples.
  """
  num_classes = int(max(train_labels.max(), test_labels.max())) + 1
  draws = [fewshot_indices(train_labels, max(shots), seed) for seed in range(seeds)]
  needed = np.unique(np.concatenate(draws))
  feats = dict(zip(needed.tolist(), features_fn(needed)))
  results = {}
  for k in shots:
    accs = []
    for draw in draws:
      idx = draw.reshape(-1, max(shots))[:, :k].reshape(-1)  # first k of every class
      x = np.stack([feats[i] for i in idx.tolist()])
      accs.append(ridge_probe(x, train_labels[idx], test_features, test_labels, num_classes,
                              l2_reg))
    results[f'fewshot_{k}shot'] = float(np.mean(accs))
  return results


def update_best(best: dict[str, float], results: dict[str, float], step: int
                ) -> dict[str, float]:
  """The best evaluation so far, as 'best_<metric>' plus 'best_step': `results` of `step` when
  its validation accuracy is the highest yet (always without validation), else `best`."""
  if 'val_accuracy' in results and results['val_accuracy'] <= best.get('best_val_accuracy', -1.):
    return best
  return {'best_step': step, **{f'best_{k}': v for k, v in results.items()}}


def patience_spent(best: dict[str, float], step: int, eval_every: int, patience: int) -> bool:
  """Early stopping: True when `patience` > 0 evaluations (every `eval_every` steps) have
  passed at `step` since the best validation accuracy in `best` (`update_best`'s record);
  never without a validation split."""
  if not patience or 'best_val_accuracy' not in best:
    return False
  return step - best['best_step'] >= patience * eval_every


class Evaluator:
  """Evaluates one run: validation (if held out) and test loss and accuracy, and the few-shot
  probe with shots from the training split (or from `probe` = (train, test) splits of
  eval.fewshot_dataset, the probe's test features then from its own evaluation split)."""

  def __init__(self, model, config, mesh: Mesh, train: data.Split, val: data.Split | None,
               test: data.Split, probe: tuple | None = None):
    dp = sharding.data_parallel_size(mesh)
    # One step per kind of split (jitted lazily: only the kinds evaluated are compiled).
    self._steps = {cropped: make_eval_step(model, image_size=config.image_size,
                                           crop_fraction=config.eval.crop_fraction,
                                           masked_patches=mpp.objective_args(config),
                                           host_cropped=cropped)
                   for cropped in (False, True)}
    self._pipeline = dict(image_size=config.image_size, crop_fraction=config.eval.crop_fraction,
                          workers=config.data.workers)
    self._batch = -(-config.eval.batch_size // dp) * dp  # rounded up to the data-parallel size
    self._mesh, self._config = mesh, config.eval
    self._train, self._val, self._test = train, val, test
    self._probe = probe

  def _run(self, params, split) -> tuple[dict[str, float], np.ndarray]:
    return features_and_metrics(self._steps[split.host_augmented], params, split,
                                batch_size=self._batch, mesh=self._mesh, **self._pipeline)

  def __call__(self, params, step: int) -> dict[str, float]:
    results = {}
    if self._val is not None:
      results.update({f'val_{k}': v for k, v in self._run(params, self._val)[0].items()})
    test_metrics, test_features = self._run(params, self._test)
    results.update({f'test_{k}': v for k, v in test_metrics.items()})
    if self._config.fewshot_shots:
      shots_from, probe_test = self._probe or (self._train, self._test)
      if self._probe:
        test_features = self._run(params, probe_test)[1]
      results.update(fewshot_accuracies(
          lambda idx: self._run(params, shots_from.take(idx))[1], shots_from.labels,
          test_features, probe_test.labels, shots=tuple(self._config.fewshot_shots),
          seeds=self._config.fewshot_seeds, l2_reg=self._config.fewshot_l2_reg))
    logging.info('eval at step %d: %s', step,
                 ', '.join(f'{k} {v:.4f}' for k, v in results.items()))
    return results
