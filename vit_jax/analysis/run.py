"""Runs the analyses on a run's checkpoint or on every finished point of a sweep (the library
behind `python -m vit_jax.analyze`).

`analyze(workdir, out)` writes `<name>.png` per analysis and `analysis.json`;
`analyze_sweep(sweep_dir)` runs the cheap ones (`SWEEP_ANALYSES`) on every finished point (at the
checkpoint of the step its results report, `best_step`) into
`<sweep>/analysis/<point>/` and writes `sweep.csv` and `sweep.png`.
"""
import csv
import hashlib
import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import checkpoint, data, evaluate, files, train
from vit_jax.scaling import results as sweep_results
from vit_jax.analysis import attention, embeddings, fourier, hessian, plots, robustness
from vit_jax.models import forward_with_intermediates, input_channels, resolved_fields
from vit_jax.models.resnet import ResidualUnit

ANALYSES = ('filters', 'posemb', 'distance', 'rollout', 'fourier', 'noise', 'hessian')
NOISE_STD = 0.1  # of the band-limited noise, in the model's input units ([-1, 1] images)
NOISE_IMAGES = 512  # evaluation-split images for the noise robustness analysis
SWEEP_ANALYSES = ('distance', 'fourier')  # the default with --sweep (add 'hessian' if affordable)
# Which families each analysis applies to.
_FAMILIES = {'filters': ('vit',), 'posemb': ('vit', 'hybrid'), 'distance': ('vit', 'hybrid'),
             'rollout': ('vit', 'hybrid'), 'fourier': ('vit', 'hybrid', 'resnet'),
             'noise': ('vit', 'hybrid', 'resnet', 't2t'),
             'hessian': ('vit', 'hybrid', 'resnet', 't2t')}
_NEED_CLASSES = ('noise', 'hessian')  # skipped on masked patch prediction pre-training runs
# The setting each analysis's numbers depend on (recorded with them): `--images`, or for the
# Hessian `--hessian_batches`.
_SETTING = {'distance': 'images', 'rollout': 'images', 'fourier': 'images', 'hessian': 'batches'}

def _grid(num_tokens: int, classifier: str) -> tuple[int, int]:
  side = int(round(np.sqrt(num_tokens - (classifier == 'token'))))
  return side, side


def _resnet_maps(model, params, x) -> list[np.ndarray]:
  """Outputs (B, H, W, C) of every residual unit, in order."""
  _, state = model.apply({'params': params}, x, train=False, capture_intermediates=lambda m, n:
                         isinstance(m, ResidualUnit) and n == '__call__', mutable=['intermediates'])
  maps = []
  def collect(tree):
    for key, value in tree.items():
      if key == '__call__':
        maps.append(np.asarray(value[0]))
      elif isinstance(value, dict):
        collect(value)
  collect(state['intermediates'])
  return maps


def noise_robustness(model, params, images: np.ndarray, labels: np.ndarray, num_bands: int = 8,
                     std: float = NOISE_STD, batch_size: int = 128) -> dict:
  """Accuracy on `images` (B, H, W, C) in [-1, 1] clean and with noise confined to each of
  `num_bands` frequency bands; returns {'bands', 'clean_accuracy', 'accuracy_drop'}."""
  predict = jax.jit(lambda x: jnp.argmax(model.apply({'params': params}, x, train=False), -1))
  def accuracy(x):
    hits = [np.asarray(predict(jnp.asarray(x[i:i + batch_size], jnp.float32)))
            for i in range(0, len(x), batch_size)]
    return float(np.mean(np.concatenate(hits) == labels))
  clean = accuracy(images)
  rng = np.random.default_rng(0)
  drops = [clean - accuracy(images + robustness.band_noise(images.shape, band, std, rng))
           for band in robustness.bands(num_bands)]
  return {'bands': robustness.bands(num_bands), 'clean_accuracy': clean, 'accuracy_drop': drops}


def hessian_eigenvalues(config, model, params, train_split: data.Split | data.RecordSplit,
                        batches: int, k: int = 5, iterations: int = 50) -> np.ndarray:
  """(batches, k) top Hessian eigenvalues of the training loss (cross-entropy with label
  smoothing plus 0.5 * weight_decay * |params|^2) on the first `batches` mini-batches of the
  training stream of `train_split` (either kind), augmented as in training."""
  augment = data.augment_from_config(config)
  batches_of = data.train_iterator(train_split, config)
  values = []
  for b in range(batches):
    images, labels = next(batches_of)
    x = (data.normalize(jnp.asarray(images)) if train_split.host_augmented else
         augment(jnp.asarray(images), jax.random.PRNGKey(b)))
    y = jnp.asarray(labels)

    def loss_fn(p, x=x, y=y):
      logits = model.apply({'params': p}, x, train=False)
      ce = jnp.mean(train.cross_entropy(logits, y, config.optim.label_smoothing))
      l2 = sum(jnp.sum(w ** 2) for w in jax.tree_util.tree_leaves(p))
      return ce + 0.5 * config.optim.weight_decay * l2
    values.append(np.asarray(hessian.top_eigenvalues(loss_fn, params, k, iterations, seed=b)))
    logging.info('Hessian batch %d/%d: top eigenvalues %s', b + 1, batches, values[-1])
  return np.stack(values)


def analyze(workdir: str, out: str, only: list[str] | None = None, num_images: int = 64,
            hessian_batches: int = 4, step: checkpoint.Step = None) -> dict:
  """Runs the analyses on `workdir`'s checkpoint `step` ('latest' or None, 'best', a number);
  returns the numbers (also written to `<out>/analysis.json`, figures beside it)."""
  unknown = sorted(set(only or ()) - set(ANALYSES))
  if unknown:
    raise ValueError(f'Unknown analyses {unknown}; choose from {ANALYSES}.')
  step = checkpoint.resolve_step(workdir, step)
  config, model, params = checkpoint.load_run(workdir, step)
  kind = resolved_fields(**config.model)['family']
  wanted = list(only or ANALYSES)
  learned_posemb = 'posembed_input' in params.get('Transformer', {})  # not with sincos2d
  colours = 'mpp_head' in params  # masked patch prediction: no class logits to score
  bad = [a for a in wanted if kind not in _FAMILIES[a] or (a == 'posemb' and not learned_posemb)
         or (colours and a in _NEED_CLASSES)]
  if only and bad:
    why = f'{kind}, pre-trained by masked patch prediction: no class logits' if colours else kind
    raise ValueError(f'{bad} do not apply to {config.model.name} ({why}).')
  results = {'model': config.model.name, 'family': kind, 'workdir': files.absolute(workdir),
             'config_sha256': _config_digest(workdir), 'step': step, 'skipped': bad}
  wanted = [a for a in wanted if a not in bad]
  saved = os.path.join(out, 'analysis.json')
  _earlier(saved, results)  # another checkpoint's folder is refused before any work
  files.makedirs(out)
  figure = lambda name: os.path.join(out, f'{name}.png')

  config = data.resolve_kind(config)  # the run's dataset, of any kind
  # as training evaluated it: images of the other kind than the model's are converted
  channels = input_channels(model, params, config.image_size, config.model.name)
  test = data.open_split(config, data.eval_split_name(config)).with_channels(channels)
  x, _ = evaluate.eval_sample(config, test, num_images)
  if len(x) < num_images:
    logging.warning('The evaluation split has %d images, fewer than --images=%d: the analyses '
                    'use all of them (and record %d).', len(x), num_images, len(x))
  if kind in ('vit', 'hybrid') and {'distance', 'rollout', 'fourier'} & set(wanted):
    _, inter = forward_with_intermediates(model, {'params': params}, x)
    attn = np.asarray(inter['attention_weights'])
    grid = _grid(attn.shape[-1], model.classifier)
  if 'filters' in wanted:
    components, ratio = embeddings.filter_components(np.asarray(params['embedding']['kernel']), 28)
    plots.filter_components(components, ratio, figure('filters'))
    results['filters'] = {'explained_variance_ratio': ratio.tolist()}
  if 'posemb' in wanted:
    posemb = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])
    similarity = embeddings.posemb_similarity(posemb, _grid(posemb.shape[-2], model.classifier))
    plots.posemb_similarity(similarity, figure('posemb'))
    results['posemb'] = {'similarity': similarity.round(4).tolist()}
  if 'distance' in wanted:
    distance = attention.mean_attention_distance(attn, grid, config.image_size / grid[1])
    plots.attention_distance(distance, config.image_size, figure('distance'))
    results['distance'] = {'pixels': distance.round(3).tolist()}
  if 'rollout' in wanted:
    maps = attention.attention_rollout(attn[:, :8], grid)
    plots.rollout(np.asarray(x[:8]), maps, figure('rollout'))
    results['rollout'] = {'maps': maps.round(4).tolist()}
  if 'fourier' in wanted:
    if kind == 'resnet':
      maps = _resnet_maps(model, params, x)
    else:
      maps = [fourier.tokens_to_maps(b, grid) for b in np.asarray(inter['block_outputs'])]
    curves = [fourier.relative_log_amplitude(m) for m in maps]  # lengths follow map sizes
    plots.fourier(curves, figure('fourier'))
    results['fourier'] = {'delta_log_amplitude': [c.round(4).tolist() for c in curves]}
  if 'noise' in wanted:
    results['noise'] = noise_robustness(model, params,
                                        *evaluate.eval_sample(config, test, NOISE_IMAGES))
    plots.noise(results['noise'], figure('noise'))
  if 'hessian' in wanted:
    train_split = data.open_split(config, config.data.train_split)
    values = hessian_eigenvalues(config, model, params, train_split, hessian_batches)
    plots.hessian_spectrum(values, figure('hessian'))
    results['hessian'] = {'top_eigenvalues': values.tolist()}
  settings = {'images': len(x), 'batches': hessian_batches}  # the images actually used
  for name in set(wanted) & set(_SETTING):
    results[name][_SETTING[name]] = settings[_SETTING[name]]
  # What is there now: another call on this --out may have finished meanwhile.
  earlier = _earlier(saved, results)
  results.update({a: earlier[a] for a in ANALYSES if a in earlier and a not in wanted})
  results['skipped'] = [a for a in ANALYSES if a in bad or a in earlier.get('skipped', ())]
  files.write_json(saved, results)
  return results


def _config_digest(workdir: str) -> str:
  """The SHA-256 of the run's config.json: with the step, what names a checkpoint (a run moved
  to another folder or machine keeps it)."""
  return hashlib.sha256(files.read_text(os.path.join(workdir, 'config.json')).encode()
                        ).hexdigest()


def _still_to_do(path: str, workdir: str, step: checkpoint.Step, wanted: list[str],
                 settings: dict[str, int]) -> list[str]:
  """The analyses of `wanted` that the analysis.json at `path` (if any) lacks for `workdir`'s
  checkpoint `step`, or holds made with other `settings` ({'images': n, 'batches': m}, see
  `_SETTING`).

  Raises:
    ValueError: `path` holds the analyses of another checkpoint (`_earlier`).
  """
  earlier = _earlier(path, {'workdir': files.absolute(workdir), 'step': checkpoint.resolve_step(
      workdir, step), 'config_sha256': _config_digest(workdir)})
  return [a for a in wanted if a not in earlier or (
      a in _SETTING and earlier[a].get(_SETTING[a]) != settings[_SETTING[a]])]


def _earlier(path: str, run: dict) -> dict:
  """What an earlier call wrote to `path` (analysis.json) for the same checkpoint as `run`'s
  ('config_sha256', the digest of the run's config.json, and 'step': the same even after the
  run or its sweep moved to another folder or machine), so that the analyses not run again are
  kept beside those run now (read just before writing, so that two calls on one --out at once
  keep each other's); {} if there is none.

  Raises:
    ValueError: `path` holds the analyses of another checkpoint (its figures lie beside it).
  """
  if not files.exists(path):
    return {}
  earlier = files.read_json(path)
  key = 'config_sha256' if 'config_sha256' in earlier else 'workdir'  # older files: by path
  if (earlier.get(key), earlier.get('step')) != (run[key], run['step']):
    raise ValueError(f'{os.path.dirname(path)} holds the analyses of {earlier.get("workdir")} '
                     f'step {earlier.get("step")}, not of {run["workdir"]} step {run["step"]}; '
                     'choose another output folder (or remove that one).')
  return earlier


SWEEP_COLUMNS = ('model', 'family', 'depth', 'train_size', 'distance_first_layer',
                 'distance_mean', 'log_amplitude_pi_last', 'log_amplitude_pi_mean',
                 'hessian_top')


def _summary(row: dict, results: dict) -> dict:
  """One sweep.csv row: the point and scalar summaries of its analyses (None if not run). The
  values at pi are of the blocks whose maps are larger than 1x1 (a 1x1 map, as a ResNet's last
  units have on small images, has no frequency but 0): the deepest one's and their mean."""
  out = {k: row[k] for k in ('model', 'family', 'depth', 'train_size')}
  out.update(dict.fromkeys(SWEEP_COLUMNS[4:]))
  if 'distance' in results:
    pixels = np.array(results['distance']['pixels'])  # (layers, heads)
    out['distance_first_layer'], out['distance_mean'] = pixels[0].mean(), pixels.mean()
  if 'fourier' in results:
    at_pi = [curve[-1] for curve in results['fourier']['delta_log_amplitude'] if len(curve) > 1]
    if at_pi:
      out['log_amplitude_pi_last'], out['log_amplitude_pi_mean'] = at_pi[-1], np.mean(at_pi)
  if 'hessian' in results:
    out['hessian_top'] = float(np.mean(np.array(results['hessian']['top_eigenvalues'])[:, 0]))
  return out


def analyze_sweep(sweep_dir: str, only: list[str] | None = None, num_images: int = 64,
                  hessian_batches: int = 2) -> tuple[list[dict], list[str]]:
  """Runs `only` (default SWEEP_ANALYSES, those that apply) on every finished study point of a
  sweep (not its grid or convergence reruns); writes `<sweep>/analysis/<point>/`, `sweep.csv`
  and `sweep.png`; returns the summary rows and the names of the points left out because their
  checkpoints/ was deleted before any analysis of theirs (their rows have no analysis values;
  a point analysed before keeps its earlier numbers). The analyses a point's analysis.json
  holds for the same checkpoint with the same settings are not run again (`_still_to_do`).

  Raises:
    ValueError: every point is left out (nothing is written).
  """
  rows = sweep_results.finished(
      sweep_results.read_results(os.path.join(sweep_dir, 'results.csv')), 'study')
  if not rows:
    raise ValueError(f'No finished point in {sweep_dir}/results.csv to analyse.')
  out = os.path.join(sweep_dir, 'analysis')
  settings = {'images': num_images, 'batches': hessian_batches}
  summaries, without_checkpoints = [], []
  for n, row in enumerate(rows, 1):
    kinds = [a for a in (only or SWEEP_ANALYSES) if row['family'] in _FAMILIES[a]]
    name = os.path.basename(os.path.normpath(row['workdir']))
    saved, step = os.path.join(out, name, 'analysis.json'), row.get('best_step')  # reported
    kept = ''
    if files.isdir(os.path.join(row['workdir'], 'checkpoints')):
      # What a point has from an earlier call alike (a rerun after Ctrl-C) is kept.
      to_do = _still_to_do(saved, row['workdir'], step, kinds, settings)
      if to_do:
        results = analyze(row['workdir'], os.path.dirname(saved), to_do, num_images,
                          hessian_batches, step)
      elif kinds:
        results, kept = files.read_json(saved), ' (analysed alike before)'
      else:
        results = {}
    else:  # checkpoints deleted (a finished sweep pruned): what an earlier call found, if any
      results = files.read_json(saved) if files.exists(saved) else {}
      logging.warning('%s has no checkpoints/ (deleted?): %s.', row['workdir'],
                      'its earlier analyses are kept' if results else 'left out of the analyses')
      if not results:
        without_checkpoints.append(name)
    summaries.append(_summary(row, results))
    logging.info('Analysed %d/%d: %s%s', n, len(rows), name, kept)
  if len(without_checkpoints) == len(rows):
    raise ValueError(f'No point of {sweep_dir} can be analysed: the checkpoints/ of every one '
                     'is gone (deleted to save space?) and none was analysed before; nothing '
                     'was written.')
  with files.atomic_open(os.path.join(out, 'sweep.csv')) as f:
    writer = csv.DictWriter(f, fieldnames=SWEEP_COLUMNS)
    writer.writeheader()
    writer.writerows(summaries)
  plots.sweep(summaries, os.path.join(out, 'sweep.png'))
  return summaries, without_checkpoints
