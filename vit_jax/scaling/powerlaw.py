"""Power-law fits of test error against training-set size, and where two fits cross.

Every model's test error is fitted with err(D) = a * D^-b + c over the training-set size D (the
ViT paper's Figures 3/4 show the same curves as accuracy); the sizes where two fitted curves
cross are reported, marked "extrapolated" outside the measured range.
"""
import warnings

import numpy as np
from scipy import optimize

from vit_jax.scaling import results, tables

MIN_FIT_POINTS = 3


def _power_law(d: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
  return a * d ** -b + c


def fit_power_law(sizes: np.ndarray, errors: np.ndarray) -> dict:
  """Least-squares fit of err(D) = a * D^-b + c with a >= 0, 0 <= b <= 3, 0 <= c <= 1.

  Returns {'a', 'b', 'c', 'r2', 'rmse', 'n'} ('r2' is None when all errors are equal). Raises
  ValueError with fewer than 3 points, invalid inputs or when the optimiser fails; the report
  then lists the model without a fit. D is divided by its maximum inside the fit (so a is O(1)
  there) and a is converted back to the original units.
  """
  sizes, errors = np.asarray(sizes, np.float64), np.asarray(errors, np.float64)
  if sizes.shape != errors.shape or sizes.ndim != 1:
    raise ValueError(f'sizes {sizes.shape} and errors {errors.shape} must be equal-length 1-D.')
  if len(sizes) < MIN_FIT_POINTS:
    raise ValueError(f'only {len(sizes)} points; a power-law fit needs {MIN_FIT_POINTS}.')
  if not (np.all(np.isfinite(sizes)) and np.all(sizes > 0)):
    raise ValueError(f'training-set sizes must be finite and positive, got {sizes.tolist()}.')
  if not (np.all(np.isfinite(errors)) and np.all((errors >= 0) & (errors <= 1))):
    raise ValueError(f'errors must lie in [0, 1], got {errors.tolist()}.')
  scale = sizes.max()
  x = sizes / scale
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore', optimize.OptimizeWarning)  # pcov is not used
      (a, b, c), _ = optimize.curve_fit(_power_law, x, errors, p0=_initial_guess(x, errors),
                                        bounds=([0, 0, 0], [np.inf, 3, 1]), max_nfev=10_000)
  except RuntimeError as e:
    raise ValueError(f'the power-law fit did not converge: {e}') from e
  residuals = errors - _power_law(x, a, b, c)
  total = np.sum((errors - errors.mean()) ** 2)
  return {'a': float(a * scale ** b), 'b': float(b), 'c': float(c),
          'r2': float(1 - np.sum(residuals ** 2) / total) if total > 0 else None,
          'rmse': float(np.sqrt(np.mean(residuals ** 2))), 'n': len(sizes)}


def _initial_guess(x: np.ndarray, errors: np.ndarray) -> list[float]:
  """c at half the smallest error; a and b from a log-log line through the rest."""
  c = 0.5 * errors.min()
  rest = np.maximum(errors - c, 1e-6)
  slope, intercept = np.polyfit(np.log(x), np.log(rest), 1) if np.ptp(x) > 0 else (0., 0.)
  return [float(np.exp(intercept)), float(np.clip(-slope, 0.01, 2.99)), float(min(c, 0.99))]


def predict_error(fit: dict, sizes: np.ndarray) -> np.ndarray:
  """The fitted error a * D^-b + c at training-set sizes D."""
  return _power_law(np.asarray(sizes, np.float64), fit['a'], fit['b'], fit['c'])


def crossing(fit_a: dict, fit_b: dict, lo: float, hi: float) -> float | None:
  """Training-set size D where two fitted error curves cross, searched from lo / 100 to
  hi * 100; None if they do not cross there.

  The difference of two such curves changes sign at most twice; when it does twice, the crossing
  nearer the measured range [lo, hi] (in log distance, 0 inside it) is returned.
  """
  if not 0 < lo <= hi:
    raise ValueError(f'Need 0 < lo <= hi for the crossing search, got lo={lo}, hi={hi}.')
  log_d = np.linspace(np.log(lo / 100), np.log(hi * 100), 2001)
  diff = lambda t: predict_error(fit_a, np.exp(t)) - predict_error(fit_b, np.exp(t))
  sign = np.sign(diff(log_d))
  roots = [log_d[i] if sign[i] == 0 else optimize.brentq(diff, log_d[i], log_d[i + 1])
           for i in np.flatnonzero(sign[:-1] != sign[1:])]
  # A root exactly on a grid point shows up twice (+ to 0, then 0 to -); the set keeps one.
  roots = sorted({float(np.exp(t)) for t in roots})
  if not roots:
    return None
  distance = lambda d: max(np.log(lo) - np.log(d), np.log(d) - np.log(hi), 0.)
  return min(roots, key=distance)


def fit_curves(curves: dict[str, list[dict]]) -> dict[str, dict]:
  """A power-law fit of test error per label over every seed's run (each run one data point;
  at least 3 distinct sizes), or {'error': why not, 'n': runs}."""
  fits = {}
  for label, curve in curves.items():
    runs = [(p['train_size'], acc) for p in curve for acc in p.get('test_accuracies',
                                                                   [p['test_accuracy']])]
    sizes = np.array([size for size, _ in runs])
    try:
      if len(curve) < MIN_FIT_POINTS:
        raise ValueError(f'only {len(curve)} points; a power-law fit needs {MIN_FIT_POINTS}.')
      fits[label] = fit_power_law(sizes, 1 - np.array([acc for _, acc in runs]))
    except ValueError as e:
      fits[label] = {'error': str(e), 'n': len(runs)}
  return fits


def _pairs(curves: dict[str, list[dict]]) -> list[tuple[str, str]]:
  """Every non-ResNet model against the ResNet, every deeper ViT against the shallowest."""
  ref, vits = results.reference(curves), results.vits_by_depth(curves)
  pairs = [(label, ref) for label in curves if ref is not None and label != ref]
  return pairs + [(deeper, vits[0]) for deeper in vits[1:]]


def crossings(curves: dict[str, list[dict]], fits: dict[str, dict]) -> list[dict]:
  """{'models': [a, b], 'size', 'extrapolated', 'lo', 'hi', 'reason'} per compared pair; size
  is None (and reason says why) when the fits do not cross or one is missing."""
  entries = []
  for pair in _pairs(curves):
    sizes = [p['train_size'] for label in pair for p in curves[label]]
    entry = {'models': list(pair), 'size': None, 'extrapolated': None, 'lo': min(sizes),
             'hi': max(sizes)}
    unfitted = [label for label in pair if 'error' in fits[label]]
    if unfitted:
      entry['reason'] = f'no fit for {" and ".join(unfitted)}'
    else:
      entry['size'] = crossing(fits[pair[0]], fits[pair[1]], entry['lo'], entry['hi'])
      if entry['size'] is None:
        entry['reason'] = (f'no crossing between {tables.images(entry["lo"] / 100)} and '
                           f'{tables.images(entry["hi"] * 100)}')
      else:
        entry['extrapolated'] = not entry['lo'] <= entry['size'] <= entry['hi']
    entries.append(entry)
  return entries
