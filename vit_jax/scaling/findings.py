"""Findings: sentences generated from the numbers (best model at the smallest and largest
size, each model against the ResNet, deeper against shallower ViTs, agreement with the ViT
paper, and how sure the verdict is).

A difference counts only when it exceeds both half a point (`TIE`) and, with several seeds,
`Z` standard errors of the difference of the seeds' means (about 95% confidence for normal
noise); smaller differences are called "about equal" (or "within the spread"). With one seed
per point the spread is unknown and the verdict says so. A crossing of two fitted curves is
claimed only where the measured gaps back it by the same rule (`crossing_support`).
"""
import numpy as np

from vit_jax.scaling import results
from vit_jax.scaling.tables import crossing_text, images, percent, points

TIE = 0.005  # accuracy differences below half a point are "about equal"
Z = 2.0      # ... and so are those within Z standard errors of the seeds' means


def threshold(error: float | None) -> float:
  """The smallest difference that counts, given its standard error (None: unknown)."""
  return TIE if error is None else max(TIE, Z * error)


def _versus(label: str, other: str, gap: float, error: float | None = None) -> str:
  """'ViT-12 loses to ResNet by 3.1 points' / 'beats ... by' / 'is about equal to'."""
  if abs(gap) < threshold(error):
    spread = '' if error is None else f' +- {100 * error:.1f}'
    return f'{label} is about equal to {other} ({100 * gap:+.1f}{spread} points)'
  return f'{label} {"beats" if gap > 0 else "loses to"} {other} by {points(gap)}'


def _best_at(curves: dict[str, list[dict]], size: int, which: str) -> str:
  """Finding (1): the best model at one training-set size and its margin."""
  at = {label: p for label, c in curves.items() for p in c if p['train_size'] == size}
  ranked = sorted(((p['test_accuracy'], label) for label, p in at.items()), reverse=True)
  (best_acc, best), where = ranked[0], f'At the {which} training size ({images(size)})'
  if len(ranked) == 1:
    return f'{where}, only {best} finished ({percent(best_acc)}% test accuracy).'
  second_acc, second = ranked[1]
  error = results.gap_errors([at[best]], [at[second]])[size]
  if best_acc - second_acc < threshold(error):
    return (f'{where}, {best} and {second} are about equal ({percent(best_acc)}% vs '
            f'{percent(second_acc)}% test accuracy).')
  return (f'{where}, {best} is best with {percent(best_acc)}% test accuracy, '
          f'{points(best_acc - second_acc)} ahead of {second} ({percent(second_acc)}%).')


def _trend(label: str, ref: str, gaps: list[tuple[int, float]],
           errors: dict[int, float | None]) -> str:
  """How the gap (`gaps`: (size, accuracy - ref's), by size) moves from the first size to the
  last; a shrinking gap also says from which size on it no longer shrinks beyond the spread."""
  (small, first), (large, last) = gaps[0], gaps[-1]
  if first < -threshold(errors[small]) and last > threshold(errors[large]):
    return f'{label} overtakes {ref} as data grows'
  if first > threshold(errors[small]) and last < -threshold(errors[large]):
    return f'{label} falls behind {ref} as data grows'
  change = abs(last) - abs(first)
  change_error = _combined(errors[small], errors[large])
  if abs(change) < threshold(change_error):
    within = '' if change_error is None else ', within the spread of the seeds'
    return (f'the gap stays about the same as data grows ({points(first)} vs {points(last)}'
            f'{within})')
  text = (f'the gap {"shrinks" if change < 0 else "widens"} as data grows, from '
          f'{points(first)} to {points(last)}')
  for size, gap in gaps[1:-1] if change < 0 else []:  # the first size the gap stalls from
    error = _combined(errors[size], errors[large])
    if abs(gap) - abs(last) < threshold(error):
      beyond = f'by under {points(TIE)}' if error is None else 'not beyond the spread of the seeds'
      return f'{text}, but from {images(size)} on ({points(gap)} there) {beyond}'
  return text


def _against_reference(curves: dict[str, list[dict]], entry: dict) -> str:
  """Finding (2): one model against the ResNet at the smallest and largest shared size, the
  trend of the gap and the fitted crossing."""
  label, ref = entry['models']
  gaps = results.gaps(curves[label], curves[ref])
  if not gaps:
    return f'{label} and {ref} share no training size, so they cannot be compared directly.'
  errors = results.gap_errors(curves[label], curves[ref])
  (small, first), (large, last) = gaps[0], gaps[-1]
  text = f'{_versus(label, ref, first, errors[small])} at {images(small)}'
  if large != small:
    text += (f' and {_versus(label, ref, last, errors[large]).removeprefix(label + " ")} at '
             f'{images(large)}; {_trend(label, ref, gaps, errors)}')
  if entry['size'] is None:
    return f'{text}. Fitted curves: {crossing_text(entry)}.'
  return f'{text}. Their fitted curves cross at {crossing_text(entry)}.'


def crossing_support(curves: dict[str, list[dict]], entry: dict) -> str | None:
  """Why the measured gaps do not support a fitted crossing (`entry` from
  `powerlaw.crossings`), or None when they do or there is no crossing.

  Inside the measured range the lead must change hands beyond the spread (each model ahead by
  a difference that counts at some size); outside it, the measured gap must narrow towards the
  crossing beyond the spread (from the far end of the range to the near one). Otherwise the
  report gives the fitted size with this reason and does not claim that the models cross.
  """
  if entry['size'] is None:
    return None
  pair = [curves[label] for label in entry['models']]
  gaps, errors = results.gaps(*pair), results.gap_errors(*pair)
  if not gaps:
    return 'the two share no measured size'
  leads = {gap > 0 for size, gap in gaps if abs(gap) >= threshold(errors[size])}
  if not leads:
    return 'the two are within the spread at every measured size'
  if not entry['extrapolated']:
    return None if len(leads) == 2 else 'the lead never changes hands beyond the spread'
  below = entry['size'] < entry['lo']
  (near, near_gap), (far, far_gap) = (gaps[0], gaps[-1]) if below else (gaps[-1], gaps[0])
  if abs(far_gap) - abs(near_gap) >= threshold(_combined(errors[near], errors[far])):
    return None
  return 'the measured gap does not narrow towards it beyond the spread'


def _depth_finding(curves: dict[str, list[dict]]) -> list[str]:
  """Finding (3): whether each deeper ViT overtakes the shallowest one, and from which size."""
  vits = results.vits_by_depth(curves)
  if len(vits) < 2:
    return ['Fewer than two ViT depths finished, so deeper and shallower ViTs cannot be compared.']
  sentences = []
  for deeper in vits[1:]:
    gaps = results.gaps(curves[deeper], curves[vits[0]])
    errors = results.gap_errors(curves[deeper], curves[vits[0]])
    ahead = [gap > threshold(errors[size]) for size, gap in gaps]
    if not gaps:
      sentences.append(f'{deeper} and {vits[0]} share no training size.')
    elif all(ahead):
      sentences.append(f'{deeper} beats {vits[0]} at every measured size, by '
                       f'{points(min(g for _, g in gaps))} to {points(max(g for _, g in gaps))}.')
    elif ahead[-1]:
      start = gaps[len(ahead) - ahead[::-1].index(False)][0]
      sentences.append(f'{deeper} overtakes {vits[0]} from {images(start)} on; at '
                       f'{images(gaps[-1][0])}, '
                       f'{_versus(deeper, vits[0], gaps[-1][1], errors[gaps[-1][0]])}.')
    else:
      sentences.append(f'{deeper} does not overtake {vits[0]} within the measured range: at '
                       f'{images(gaps[-1][0])}, '
                       f'{_versus(deeper, vits[0], gaps[-1][1], errors[gaps[-1][0]])}.')
  return sentences


def _paper_finding(curves: dict[str, list[dict]]) -> str:
  """Finding (4): agreement with the paper's three claims, each checked where measurable."""
  ref, vits = results.reference(curves), results.vits_by_depth(curves)
  checks = []
  pairs = [(curves[v], curves[ref]) for v in vits] if ref else []
  gaps = [results.gaps(*pair) for pair in pairs]
  errors = [results.gap_errors(*pair) for pair in pairs]
  smallest = results.sizes(curves)[0]
  at_smallest = [(g[0][1], e[smallest]) for g, e in zip(gaps, errors)
                 if g and g[0][0] == smallest]
  if at_smallest:
    checks.append((f'every ViT measured at {images(smallest)} behind the ResNet there',
                   all(gap < -threshold(e) for gap, e in at_smallest)))
  trends = [(g, e) for g, e in zip(gaps, errors) if len(g) > 1]
  if trends:
    checks.append(('every ViT gaining on the ResNet as data grows',
                   all(g[-1][1] - g[0][1] > threshold(_combined(e[g[0][0]], e[g[-1][0]]))
                       for g, e in trends)))
  depth = results.gaps(curves[vits[-1]], curves[vits[0]]) if len(vits) > 1 else []
  if len(depth) > 1:
    depth_errors = results.gap_errors(curves[vits[-1]], curves[vits[0]])
    (small, first), (large, last) = depth[0], depth[-1]
    checks.append((f'the deepest ViT ({vits[-1]}) ahead of the shallowest ({vits[0]}) at '
                   f'{images(large)} but not at {images(small)}',
                   first <= threshold(depth_errors[small]) < last))
  claim = ('the paper (ViT behind the ResNet on small data, catching up with more data; larger '
           'ViTs paying off only with the most data)')
  if not checks:
    return (f'This sweep cannot be compared with {claim}: that needs a ResNet and a ViT, or two '
            'ViT depths, measured at two or more shared sizes.')
  held = [ok for _, ok in checks]
  verdict = 'agrees' if all(held) else 'disagrees' if not any(held) else 'partly agrees'
  details = '; '.join(f'{name}: {"yes" if ok else "no"}' for name, ok in checks)
  return f'Compared with {claim}, this sweep {verdict} ({details}). {_certainty(curves)}'


def _combined(*errors: float | None) -> float | None:
  return None if None in errors else float(np.hypot(*errors))


def _certainty(curves: dict[str, list[dict]]) -> str:
  """How sure the verdict is: the seeds behind it and the rule for a difference to count."""
  seeds = [p['seeds'] for c in curves.values() for p in c]
  if max(seeds) < 2:
    return ('How sure: one seed per point, so the spread is unknown and every statement above '
            f'rests on single runs (differences under {points(TIE)} count as equal); treat the '
            'verdict as tentative.')
  few = ' (an error estimate from 2 seeds is itself rough)' if min(seeds) < 3 else ''
  counts = f'{min(seeds)}' if min(seeds) == max(seeds) else f'{min(seeds)}-{max(seeds)}'
  return (f'How sure: {counts} seeds per point; a difference counts only '
          f'beyond {Z:g} standard errors of the seeds\' means (about 95% for normal noise) and '
          f'{points(TIE)}{few}.')


def findings(curves: dict[str, list[dict]], crossings: list[dict]) -> list[str]:
  sizes = results.sizes(curves)
  findings = [_best_at(curves, sizes[0], 'smallest')]
  if len(sizes) > 1:
    findings.append(_best_at(curves, sizes[-1], 'largest'))
  ref = results.reference(curves)
  if ref is None:
    findings.append('No ResNet finished, so no model can be compared with the CNN baseline.')
  findings += [_against_reference(curves, e) for e in crossings if e['models'][1] == ref]
  return findings + _depth_finding(curves) + [_paper_finding(curves)]
