"""Figures of the analyses (matplotlib, Agg backend; each function writes one PNG atomically)."""
import matplotlib
import matplotlib.ticker
matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np

from vit_jax import files
from vit_jax.scaling import results


def _save(fig, path: str) -> str:
  with files.atomic_open(path, 'wb') as f:
    fig.savefig(f, format='png', dpi=110, bbox_inches='tight')
  plt.close(fig)
  return path


def _grid(n: int) -> tuple[int, int]:
  cols = int(np.ceil(np.sqrt(n)))
  return -(-n // cols), cols


def filter_components(components: np.ndarray, ratio: np.ndarray, path: str) -> str:
  """components (k, P, P, C) shown as image patches, each scaled to [0, 1]."""
  rows, cols = _grid(len(components))
  fig, axes = plt.subplots(rows, cols, figsize=(1.2 * cols, 1.2 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for i, (c, ax) in enumerate(zip(components, axes.flat)):
    c = (c - c.min()) / (np.ptp(c) + 1e-12)
    ax.imshow(c.squeeze(-1) if c.shape[-1] == 1 else c, cmap='gray', interpolation='nearest')
    ax.set_title(f'{100 * ratio[i]:.0f}%', fontsize=7)
  fig.suptitle('Patch-embedding filters: principal components (explained variance)')
  return _save(fig, path)


def posemb_similarity(similarity: np.ndarray, path: str) -> str:
  """similarity (h, w, h, w) as a grid of grids: tile (i, j) is patch (i, j)'s map."""
  h, w = similarity.shape[:2]
  fig, axes = plt.subplots(h, w, figsize=(0.6 * w + 1, 0.6 * h), squeeze=False)
  for i in range(h):
    for j in range(w):
      image = axes[i, j].imshow(similarity[i, j], vmin=-1, vmax=1, cmap='viridis')
      axes[i, j].set_xticks([])
      axes[i, j].set_yticks([])
  fig.colorbar(image, ax=axes, shrink=0.6, label='cosine similarity')
  fig.suptitle('Position-embedding similarity (row, column of the input patch)')
  return _save(fig, path)


def attention_distance(distance: np.ndarray, image_size: int, path: str) -> str:
  """distance (L, K): one dot per head against the layer index."""
  fig, ax = plt.subplots(figsize=(5, 4))
  layers = np.repeat(np.arange(1, len(distance) + 1)[:, None], distance.shape[1], 1)
  ax.scatter(layers.ravel(), distance.ravel(), s=12, alpha=0.7)
  ax.set(xlabel='network depth (layer)', ylabel='mean attention distance (pixels)',
         ylim=(0, image_size), title='Mean attention distance per head')
  ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax.grid(alpha=0.3)
  return _save(fig, path)


def rollout(images: np.ndarray, maps: np.ndarray, path: str) -> str:
  """images (B, H, W, C) in [-1, 1] with rollout maps (B, h, w) overlaid."""
  fig, axes = plt.subplots(2, len(images), figsize=(1.6 * len(images), 3.4), squeeze=False)
  for i, (image, heat) in enumerate(zip(images, maps)):
    shown = np.clip((image + 1) / 2, 0, 1)
    shown = shown.squeeze(-1) if shown.shape[-1] == 1 else shown
    extent = (0, image.shape[1], image.shape[0], 0)
    axes[0, i].imshow(shown, cmap='gray', extent=extent)
    axes[1, i].imshow(shown, cmap='gray', extent=extent)
    axes[1, i].imshow(heat, cmap='inferno', alpha=0.6, extent=extent)
    for ax in axes[:, i]:
      ax.axis('off')
  fig.suptitle('Attention rollout')
  return _save(fig, path)


def hessian_spectrum(eigenvalues: np.ndarray, path: str) -> str:
  """eigenvalues (batches, k): the top-k per mini-batch, as a histogram."""
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.hist(np.ravel(eigenvalues), bins=20)
  ax.set(xlabel='Hessian eigenvalue', ylabel='count',
         title=f'Top-{eigenvalues.shape[1]} Hessian eigenvalues over {len(eigenvalues)} batches')
  return _save(fig, path)


def fourier(curves: list[np.ndarray], path: str) -> str:
  """curves: per block, the relative log amplitude from frequency 0 to pi (lengths may differ
  between stages), drawn against frequency (left); the value at pi against normalised depth
  (right)."""
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
  colours = plt.cm.viridis(np.linspace(0, 1, len(curves)))
  for curve, colour in zip(curves, colours):
    left.plot(np.linspace(0, 1, len(curve)), curve, color=colour)
  left.set(xlabel='frequency (x pi)', ylabel='delta log amplitude',
           title='Feature maps per block (dark: early, light: late)')
  depth = np.linspace(0, 1, len(curves))
  right.plot(depth, [curve[-1] for curve in curves], marker='o')
  right.set(xlabel='normalised depth', ylabel='delta log amplitude at pi',
            title='High-frequency content by depth')
  for ax in (left, right):
    ax.grid(alpha=0.3)
  return _save(fig, path)


def noise(result: dict, path: str) -> str:
  """Accuracy drop under band-limited noise against the band's centre frequency."""
  centres = [(a + b) / 2 for a, b in result['bands']]
  fig, ax = plt.subplots(figsize=(5, 4))
  ax.plot(centres, result['accuracy_drop'], marker='o')
  ax.set(xlabel='noise frequency (x pi, band centre)', ylabel='accuracy drop',
         title=f'Band-limited noise (clean accuracy {result["clean_accuracy"]:.3f})')
  ax.grid(alpha=0.3)
  return _save(fig, path)


_SWEEP_PANELS = (('distance_first_layer', 'first-layer mean attention distance (px)'),
                 ('log_amplitude_pi_last', 'last block: delta log amplitude at pi'),
                 ('hessian_top', 'top Hessian eigenvalue (mean over batches)'))


def _seed_means(rows: list[dict], key: str) -> dict[str, tuple[list, list, list]]:
  """{model: (training-set sizes ascending, the means of `key` over the seeds, their sample
  standard deviations, NaN for one seed)} of the `sweep.csv` rows `rows`, models in their
  order in `rows`; a model without `key` is left out."""
  out = {}
  for model in dict.fromkeys(r['model'] for r in rows):
    by_size = {}
    for r in rows:
      if r['model'] == model and r[key] is not None:
        by_size.setdefault(r['train_size'], []).append(r[key])
    stats = [results.mean_and_std(values) for _, values in sorted(by_size.items())]
    if stats:
      out[model] = (sorted(by_size), [mean for mean, _ in stats],
                    [np.nan if std is None else std for _, std in stats])
  return out


def sweep_figure(rows: list[dict]) -> plt.Figure:
  """The `sweep.csv` rows' analyses against training-set size (log x, ticks at the sizes): the
  first layer's mean attention distance, the last block's delta log amplitude at pi (of the
  blocks with maps larger than 1x1) and, when run, the top Hessian eigenvalue; one line per
  model, the mean over its seeds with bars of their standard deviation, each model in its
  colour of the report's figures (the models' order in results.csv)."""
  colors = {m: f'C{i % 10}' for i, m in enumerate(dict.fromkeys(r['model'] for r in rows))}
  panels = [p for p in _SWEEP_PANELS if any(r[p[0]] is not None for r in rows)
            ] or list(_SWEEP_PANELS[:2])
  sizes = sorted({r['train_size'] for r in rows})
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
  for ax, (key, label) in zip(axes[0], panels):
    for model, (size, mean, std) in _seed_means(rows, key).items():
      ax.errorbar(size, mean, yerr=std, fmt='o-', color=colors[model], capsize=3, label=model)
    ax.set(xscale='log', xlabel='training images', ylabel=label)
    ax.set_xticks(sizes, [f'{s:,}' for s in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.grid(True, which='both', alpha=0.3)
    ax.legend(fontsize='small')
  fig.suptitle('Inside the models across the data-scaling sweep (bars: std over seeds)')
  fig.tight_layout()
  return fig


def sweep(rows: list[dict], path: str) -> str:
  """Writes `sweep_figure(rows)` to `path`."""
  return _save(sweep_figure(rows), path)
