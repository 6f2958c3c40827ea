"""Findings: sentences generated from the numbers (best model at the smallest and largest
size, each model against the ResNet, deeper against shallower ViTs, agreement with the ViT
paper); accuracy differences below half a point are called "about equal"."""
from vit_jax.scaling import results
from vit_jax.scaling.tables import crossing_text, images, percent, points

TIE = 0.005  # accuracy differences below half a point are "about equal"


def _versus(label: str, other: str, gap: float) -> str:
  """'ViT-12 loses to ResNet by 3.1 points' / 'beats ... by' / 'is about equal to'."""
  if abs(gap) < TIE:
    return f'{label} is about equal to {other} ({100 * gap:+.1f} points)'
  return f'{label} {"beats" if gap > 0 else "loses to"} {other} by {points(gap)}'


def _best_at(curves: dict[str, list[dict]], size: int, which: str) -> str:
  """Finding (1): the best model at one training-set size and its margin."""
  accuracies = {label: results.accuracies(c) for label, c in curves.items()}
  ranked = sorted(((acc[size], label) for label, acc in accuracies.items() if size in acc),
                  reverse=True)
  (best_acc, best), where = ranked[0], f'At the {which} training size ({images(size)})'
  if len(ranked) == 1:
    return f'{where}, only {best} finished ({percent(best_acc)}% test accuracy).'
  second_acc, second = ranked[1]
  if best_acc - second_acc < TIE:
    return (f'{where}, {best} and {second} are about equal ({percent(best_acc)}% vs '
            f'{percent(second_acc)}% test accuracy).')
  return (f'{where}, {best} is best with {percent(best_acc)}% test accuracy, '
          f'{points(best_acc - second_acc)} ahead of {second} ({percent(second_acc)}%).')


def _trend(label: str, ref: str, first: float, last: float) -> str:
  if first < -TIE and last > TIE:
    return f'{label} overtakes {ref} as data grows'
  if first > TIE and last < -TIE:
    return f'{label} falls behind {ref} as data grows'
  change = abs(last) - abs(first)
  if abs(change) < TIE:
    return f'the gap stays about the same as data grows ({points(first)} vs {points(last)})'
  return (f'the gap {"shrinks" if change < 0 else "widens"} as data grows, from '
          f'{points(first)} to {points(last)}')


def _against_reference(curves: dict[str, list[dict]], entry: dict) -> str:
  """Finding (2): one model against the ResNet at the smallest and largest shared size, the
  trend of the gap and the fitted crossing."""
  label, ref = entry['models']
  gaps = results.gaps(curves[label], curves[ref])
  if not gaps:
    return f'{label} and {ref} share no training size, so they cannot be compared directly.'
  (small, first), (large, last) = gaps[0], gaps[-1]
  text = f'{_versus(label, ref, first)} at {images(small)}'
  if large != small:
    text += (f' and {_versus(label, ref, last).removeprefix(label + " ")} at {images(large)}; '
             f'{_trend(label, ref, first, last)}')
  if entry['size'] is None:
    return f'{text}. Fitted curves: {crossing_text(entry)}.'
  return f'{text}. Their fitted curves cross at {crossing_text(entry)}.'


def _depth_finding(curves: dict[str, list[dict]]) -> list[str]:
  """Finding (3): whether each deeper ViT overtakes the shallowest one, and from which size."""
  vits = results.vits_by_depth(curves)
  if len(vits) < 2:
    return ['Fewer than two ViT depths finished, so deeper and shallower ViTs cannot be compared.']
  sentences = []
  for deeper in vits[1:]:
    gaps = results.gaps(curves[deeper], curves[vits[0]])
    ahead = [gap > TIE for _, gap in gaps]
    if not gaps:
      sentences.append(f'{deeper} and {vits[0]} share no training size.')
    elif all(ahead):
      sentences.append(f'{deeper} beats {vits[0]} at every measured size, by '
                       f'{points(min(g for _, g in gaps))} to {points(max(g for _, g in gaps))}.')
    elif ahead[-1]:
      start = gaps[len(ahead) - ahead[::-1].index(False)][0]
      sentences.append(f'{deeper} overtakes {vits[0]} from {images(start)} on; at '
                       f'{images(gaps[-1][0])}, {_versus(deeper, vits[0], gaps[-1][1])}.')
    else:
      sentences.append(f'{deeper} does not overtake {vits[0]} within the measured range: at '
                       f'{images(gaps[-1][0])}, {_versus(deeper, vits[0], gaps[-1][1])}.')
  return sentences


def _paper_finding(curves: dict[str, list[dict]]) -> str:
  """Finding (4): agreement with the paper's three claims, each checked where measurable."""
  ref, vits = results.reference(curves), results.vits_by_depth(curves)
  checks = []
  gaps = [results.gaps(curves[v], curves[ref]) for v in vits] if ref else []
  smallest = results.sizes(curves)[0]
  at_smallest = [g[0][1] for g in gaps if g and g[0][0] == smallest]
  if at_smallest:
    checks.append((f'every ViT measured at {images(smallest)} behind the ResNet there',
                   all(gap < -TIE for gap in at_smallest)))
  trends = [g for g in gaps if len(g) > 1]
  if trends:
    checks.append(('every ViT gaining on the ResNet as data grows',
                   all(g[-1][1] > g[0][1] + TIE for g in trends)))
  depth = results.gaps(curves[vits[-1]], curves[vits[0]]) if len(vits) > 1 else []
  if len(depth) > 1:
    (small, first), (large, last) = depth[0], depth[-1]
    checks.append((f'the deepest ViT ({vits[-1]}) ahead of the shallowest ({vits[0]}) at '
                   f'{images(large)} but not at {images(small)}', first <= TIE < last))
  claim = ('the paper (ViT behind the ResNet on small data, catching up with more data; larger '
           'ViTs paying off only with the most data)')
  if not checks:
    return (f'This sweep cannot be compared with {claim}: that needs a ResNet and a ViT, or two '
            'ViT depths, measured at two or more shared sizes.')
  held = [ok for _, ok in checks]
  verdict = 'agrees' if all(held) else 'disagrees' if not any(held) else 'partly agrees'
  details = '; '.join(f'{name}: {"yes" if ok else "no"}' for name, ok in checks)
  return f'Compared with {claim}, this sweep {verdict} ({details}).'


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
