"""The few-shot linear probe (vit_jax/evaluate.py) against scikit-learn's ridge regression, and
its k-shot draws."""
import numpy as np
import pytest
from sklearn import linear_model, preprocessing

from vit_jax import evaluate

CLASSES, FEATURES = 4, 6


def features(n, seed, balanced=True):
  """Class-dependent features with very unequal scales and offsets (so standardisation
  matters) and enough noise that the probe makes mistakes. With unbalanced classes the bias
  feature matters too (with balanced ones it shifts every class's score alike)."""
  rng = np.random.default_rng(seed)
  labels = (np.arange(n) % CLASSES if balanced else
            rng.choice(CLASSES, n, p=[0.5, 0.25, 0.15, 0.1]))
  centres = np.random.default_rng(99).normal(size=(CLASSES, FEATURES))
  x = centres[labels] + rng.normal(scale=1.3, size=(n, FEATURES))
  return (x * np.geomspace(0.01, 100, FEATURES) + np.arange(FEATURES) * 5).astype(np.float32), \
      labels


def sklearn_probe(train_x, train_y, test_x, test_y, l2_reg):
  """Ridge on the shots' standardised features plus a constant feature, penalised alike (no
  separate intercept), to +-1 one-hot targets; accuracy of the argmax."""
  scaler = preprocessing.StandardScaler().fit(train_x.astype(np.float64))
  add_bias = lambda x: np.hstack([scaler.transform(x.astype(np.float64)), np.ones((len(x), 1))])
  targets = 2. * np.eye(CLASSES)[train_y] - 1.
  ridge = linear_model.Ridge(alpha=l2_reg, fit_intercept=False, solver='cholesky')
  ridge.fit(add_bias(train_x), targets)
  return np.mean(ridge.predict(add_bias(test_x)).argmax(1) == test_y)


@pytest.mark.parametrize('n,l2_reg,balanced', [(12, 2.0**10, True), (40, 1., True),
                                                (40, 30., True), (40, 3., False)])
def test_ridge_probe_matches_sklearn(n, l2_reg, balanced):
  train_x, train_y = features(n, 0, balanced)
  test_x, test_y = features(400, 1)
  got = evaluate.ridge_probe(train_x, train_y, test_x, test_y, CLASSES, l2_reg)
  want = sklearn_probe(train_x, train_y, test_x, test_y, l2_reg)
  assert 0.3 < want < 0.95  # a case where the probe is neither useless nor perfect
  assert got == pytest.approx(want, abs=1 / 400 + 1e-12)


def test_fewshot_draws_k_per_class_and_nest():
  labels = np.repeat(np.arange(CLASSES), 7)[np.random.default_rng(0).permutation(28)]
  five = evaluate.fewshot_indices(labels, 5, seed=3)
  two = evaluate.fewshot_indices(labels, 2, seed=3)
  assert len(set(five.tolist())) == 20
  assert np.array_equal(np.bincount(labels[five]), [5] * CLASSES)
  np.testing.assert_array_equal(two, five.reshape(CLASSES, 5)[:, :2].reshape(-1))
  assert not np.array_equal(five, evaluate.fewshot_indices(labels, 5, seed=4))
  with pytest.raises(ValueError, match='class 0 has only 7 training examples.*fewer than 8 shots'):
    evaluate.fewshot_indices(labels, 8, seed=0)


def test_fewshot_accuracies_average_the_probe_over_seeds():
  train_x, train_y = features(60, 2)
  test_x, test_y = features(300, 3)
  asked = []

  def features_fn(indices):
    asked.append(np.asarray(indices))
    return train_x[indices]

  got = evaluate.fewshot_accuracies(features_fn, train_y, test_x, test_y, shots=(1, 5),
                                    seeds=3, l2_reg=4.)
  assert sorted(got) == ['fewshot_1shot', 'fewshot_5shot']
  for k in (1, 5):
    want = np.mean([sklearn_probe(train_x[idx], train_y[idx], test_x, test_y, 4.)
                    for idx in (evaluate.fewshot_indices(train_y, k, seed) for seed in range(3))])
    assert got[f'fewshot_{k}shot'] == pytest.approx(want, abs=1e-12)
  # Features of each needed training example are computed once.
  assert len(asked) == 1 and len(np.unique(asked[0])) == len(asked[0]) <= 3 * 5 * CLASSES
