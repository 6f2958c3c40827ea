"""The few-shot ridge probe: primal (D x D) and dual (n x n) solves against an independent
least-squares solution of the same ridge problem."""
import numpy as np
import pytest

from vit_jax import evaluate


@pytest.mark.parametrize('n,d', [(40, 7), (6, 30)])  # primal (n > D) and dual (n <= D)
def test_ridge_weights_equal_the_augmented_least_squares_solution(n, d):
  rng = np.random.default_rng(0)
  x, y, l2 = rng.normal(size=(n, d)), rng.normal(size=(n, 3)), 0.7
  # Ridge = least squares on [x; sqrt(l2) I] w = [y; 0].
  want = np.linalg.lstsq(np.concatenate([x, np.sqrt(l2) * np.eye(d)]),
                         np.concatenate([y, np.zeros((d, 3))]), rcond=None)[0]
  np.testing.assert_allclose(evaluate.ridge_weights(x, y, l2), want, rtol=1e-8, atol=1e-10)


def test_probe_separates_separable_classes_with_either_solve():
  rng = np.random.default_rng(1)
  centres = rng.normal(0, 5, (4, 6))
  labels = np.repeat(np.arange(4), 10)
  x = centres[labels] + rng.normal(0, .3, (40, 6))
  test_labels = np.repeat(np.arange(4), 5)
  t = centres[test_labels] + rng.normal(0, .3, (20, 6))
  for shots in (2, 10):  # 8 examples (dual, D + 1 = 7 features) and 40 (primal)
    idx = np.concatenate([np.flatnonzero(labels == c)[:shots] for c in range(4)])
    assert evaluate.ridge_probe(x[idx], labels[idx], t, test_labels, 4, 1.) == 1.
