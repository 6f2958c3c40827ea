"""The report's finding sentences on hand-made sweeps whose answers are worked out by hand, and
crossings of fitted curves with two roots or outside the measured range."""
import pytest

from test_scaling import CURVES, dense_crossing, result_row, synthetic_rows, write_csv
from vit_jax.scaling import powerlaw, report

SIZES = (1_000, 3_000, 10_000)


def rows_from(accuracies):
  """{(model, family, depth): accuracies at SIZES} -> result rows."""
  return [result_row(model, family, depth, size, acc)
          for (model, family, depth), accs in accuracies.items()
          for size, acc in zip(SIZES, accs)]

# With one seed per point the verdict says that its spread is unknown.
ONE_SEED = (' How sure: one seed per point, so the spread is unknown and every statement above '
            'rests on single runs (differences under 0.5 points count as equal); treat the '
            'verdict as tentative.')


def test_falls_behind_stays_the_same_and_partly_agrees(tmp_path):
  # Gaps to the ResNet: ViT-6 +5, +2, -6 points (falls behind); ViT-12 -5, -4.7, -4.7 (the gap
  # changes by 0.3 < 0.5 points: stays about the same). ViT-12 - ViT-6: -10, -6.7, +1.3 points.
  rows = rows_from({('ResNet', 'resnet', 26): (0.50, 0.60, 0.70),
                    ('ViT-6', 'vit', 6): (0.55, 0.62, 0.64),
                    ('ViT-12', 'vit', 12): (0.45, 0.553, 0.653)})
  findings = report.write_report(write_csv(tmp_path, rows))['findings']
  assert findings[0] == ('At the smallest training size (1,000 images), ViT-6 is best with 55.0% '
                         'test accuracy, 5.0 points ahead of ResNet (50.0%).')
  assert findings[1] == ('At the largest training size (10,000 images), ResNet is best with '
                         '70.0% test accuracy, 4.7 points ahead of ViT-12 (65.3%).')
  assert findings[2].startswith(
      'ViT-6 beats ResNet by 5.0 points at 1,000 images and loses to ResNet by 6.0 points at '
      '10,000 images; ViT-6 falls behind ResNet as data grows. ')
  assert findings[3].startswith(
      'ViT-12 loses to ResNet by 5.0 points at 1,000 images and loses to ResNet by 4.7 points at '
      '10,000 images; the gap stays about the same as data grows (5.0 points vs 4.7 points). ')
  assert findings[4] == ('ViT-12 overtakes ViT-6 from 10,000 images on; at 10,000 images, ViT-12 '
                         'beats ViT-6 by 1.3 points.')
  # Claims: ViTs behind at 1,000 (no: ViT-6 is ahead); every ViT gaining (no: ViT-6 loses
  # ground); deepest ahead only at the largest size (yes).
  assert findings[5] == (
      'Compared with the paper (ViT behind the ResNet on small data, catching up with more data; '
      'larger ViTs paying off only with the most data), this sweep partly agrees (every ViT '
      'measured at 1,000 images behind the ResNet there: no; every ViT gaining on the ResNet as '
      'data grows: no; the deepest ViT (ViT-12) ahead of the shallowest (ViT-6) at 10,000 images '
      'but not at 1,000 images: yes).' + ONE_SEED)
  assert len(findings) == 6


def test_depth_findings_every_size_and_never(tmp_path):
  rows = rows_from({('ViT-6', 'vit', 6): (0.50, 0.60, 0.70),
                    ('ViT-12', 'vit', 12): (0.52, 0.63, 0.71),
                    ('ViT-24', 'vit', 24): (0.40, 0.55, 0.68)})
  findings = report.write_report(write_csv(tmp_path, rows))['findings']
  assert findings[2] == 'No ResNet finished, so no model can be compared with the CNN baseline.'
  assert findings[3] == 'ViT-12 beats ViT-6 at every measured size, by 1.0 points to 3.0 points.'
  assert findings[4] == ('ViT-24 does not overtake ViT-6 within the measured range: at 10,000 '
                         'images, ViT-24 loses to ViT-6 by 2.0 points.')
  # Only the depth claim is measurable, and it does not hold.
  assert findings[5].endswith('this sweep disagrees (the deepest ViT (ViT-24) ahead of the '
                              'shallowest (ViT-6) at 10,000 images but not at 1,000 images: no).'
                              + ONE_SEED)


def test_a_crossing_outside_the_measured_range_is_called_extrapolated(tmp_path):
  """The ViT-12 and ResNet curves of test_report cross near 6,500 images; measured only up to
  4,000 images, the fits (exact power laws) still find it, marked extrapolated."""
  sizes = (1_000, 1_500, 2_000, 3_000, 4_000)
  curves = {k: CURVES[k] for k in ('ResNet', 'ViT-12')}
  result = report.write_report(write_csv(tmp_path, synthetic_rows(curves, sizes)))
  want = dense_crossing(CURVES['ViT-12'][2], CURVES['ResNet'][2], 10, 1e7)
  assert 4_000 < want < 10_000
  sentence = next(f for f in result['findings'] if f.startswith('ViT-12 loses to ResNet'))
  assert sentence.endswith(f'Their fitted curves cross at about {float(f"{want:.3g}"):,.0f} '
                           'images (extrapolated, outside the measured 1,000-4,000).')
  assert 'the gap shrinks as data grows' in sentence


def test_two_crossings_give_the_one_nearer_the_measured_range():
  """1 * D^-0.5 + 0.1 = 100 * D^-1 + 0.1016 is -100 u^2 + u - 0.0016 = 0 in u = D^-0.5:
  u = 0.008 or 0.002, so D = 15,625 or 250,000."""
  first, second = dict(a=1., b=0.5, c=0.1), dict(a=100., b=1., c=0.1016)
  assert powerlaw.crossing(first, second, 1_000, 20_000) == pytest.approx(15_625, rel=1e-6)
  assert powerlaw.crossing(first, second, 200_000, 300_000) == pytest.approx(250_000, rel=1e-6)
  # Outside both: the nearer in log distance (40,000 / 15,625 < 250,000 / 60,000).
  assert powerlaw.crossing(first, second, 40_000, 60_000) == pytest.approx(15_625, rel=1e-6)
  assert powerlaw.crossing(first, second, 100_000, 130_000) == pytest.approx(250_000, rel=1e-6)
  # Searched only from lo / 100 to hi * 100: from 0.5 to 10,000 neither is found.
  assert powerlaw.crossing(first, second, 50, 100) is None
  with pytest.raises(ValueError, match='Need 0 < lo <= hi'):
    powerlaw.crossing(first, second, 100, 50)
