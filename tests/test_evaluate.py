"""Evaluation (vit_jax/evaluate.py): loss, accuracy and features over padded, masked batches
against a direct count on the whole split; the validation hold-out; the best-step selection."""
import numpy as np
import pytest

from configs import quickstart
from conftest import TINY_VIT, init, randomize
from vit_jax import config as config_lib
from vit_jax import data, evaluate, sharding
from vit_jax.models import get_model

CLASSES = 5


@pytest.fixture(scope='module')
def setup():
  """A tiny random ViT on 8x8 images, a 13-image split, a one-device mesh."""
  model = get_model('ViT-Ti_16', num_classes=CLASSES, **dict(TINY_VIT, patch_size=2))
  params, _ = init(model, 8)
  params = randomize(params, seed=3)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (13, 8, 8, 3), dtype=np.uint8)
  return model, params, images, sharding.make_mesh((('data', -1),))


def direct_logits_and_features(model, params, images):
  """The model on the whole split at once, no batching or padding."""
  x = data.preprocess_eval(images, image_size=8)
  logits, state = model.apply({'params': params}, x, mutable=['features'])
  return np.asarray(logits, np.float64), np.asarray(state['features']['representation'][0])


def test_accuracy_and_loss_over_padded_batches_equal_a_direct_count(setup):
  model, params, images, mesh = setup
  logits, features = direct_logits_and_features(model, params, images)
  predicted = logits.argmax(-1)
  # Example 0 (the padding's copy) is right, about half of the others wrong.
  labels = np.where(np.arange(13) % 2 == 0, predicted, (predicted + 1) % CLASSES).astype(np.int32)
  split = data.Split(images, labels, tuple('abcde'))
  step = evaluate.make_eval_step(model, image_size=8, crop_fraction=1.)
  metrics, got_features = evaluate.features_and_metrics(step, params, split, batch_size=5,
                                                        mesh=mesh)  # 5 + 5 + 3 (2 padded)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert metrics['accuracy'] == pytest.approx(7 / 13)
  assert metrics['loss'] == pytest.approx(-np.mean(log_probs[np.arange(13), labels]), rel=1e-5)
  assert got_features.shape == (13, 32)
  np.testing.assert_allclose(got_features, features, rtol=1e-5, atol=1e-6)


def constant_head(params, cls):
  """`params` with a head that always predicts class `cls`."""
  head = {'kernel': np.zeros_like(params['head']['kernel']),
          'bias': 10. * np.eye(CLASSES, dtype=np.float32)[cls]}
  return {**params, 'head': head}


@pytest.mark.parametrize('with_validation', [True, False])
def test_best_step_is_the_highest_validation_accuracy(setup, with_validation):
  model, params, images, mesh = setup
  config = quickstart.get_config()
  config.image_size, config.eval.fewshot_shots, config.eval.batch_size = 8, (), 4
  split = lambda labels: data.Split(images[:len(labels)], np.array(labels, np.int32),
                                    tuple('abcde'))
  val = split([2, 2, 2, 1, 0]) if with_validation else None
  test = split([0, 1, 2, 2, 3, 4, 4, 4, 1])
  best = {}
  evaluator = evaluate.Evaluator(model, config, mesh, split([0, 1]), val, test)
  for step, cls in ((10, 0), (20, 2), (30, 4)):
    results = evaluator(constant_head(params, cls), step)
    best = evaluate.update_best(best, results, step)
    assert results['test_accuracy'] == pytest.approx(np.mean(test.labels == cls))
    if with_validation:
      assert results['val_accuracy'] == pytest.approx(np.mean(val.labels == cls))
  # Validation accuracies 1/5, 3/5, 0: the best is step 20; without validation, the latest.
  want_step, want_cls = (20, 2) if with_validation else (30, 4)
  assert best['best_step'] == want_step
  assert best['best_test_accuracy'] == pytest.approx(np.mean(test.labels == want_cls))
  assert ('best_val_accuracy' in best) == with_validation


def test_validation_is_a_class_balanced_hold_out_of_the_training_subset():
  config = quickstart.get_config()
  config.train_size, config.eval.val_fraction = 200, 0.25
  train_split, val, test = data.load_data(config)
  config.eval.val_fraction = 0.
  whole, none, _ = data.load_data(config)
  assert none is None and len(whole.labels) == 200
  assert (len(train_split.labels), len(val.labels)) == (150, 50)
  # Together the two are exactly the training subset (as a multiset of examples).
  rows = lambda s: sorted(im.tobytes() + bytes([lab]) for im, lab in zip(s.images, s.labels))
  assert sorted(rows(train_split) + rows(val)) == rows(whole)
  counts = np.bincount(val.labels, minlength=10)
  assert counts.max() - counts.min() <= 1 and counts.sum() == 50
  assert len(test.labels) > 0
  config.eval.val_fraction = 0.999
  with pytest.raises(ValueError, match='eval.val_fraction=0.999 leaves no training examples'):
    data.load_data(config)
  config.eval.val_fraction = 1.5
  with pytest.raises(ValueError, match=r'eval.val_fraction=1.5 must be in \[0, 1\)'):
    config_lib.check(config)


def test_a_subset_missing_classes_is_named(caplog):
  """A train_size below the class count, or a hold-out that takes a small subset's only
  examples of some classes, trains on fewer classes than the head has: a warning counts them
  (recounted here from the labels)."""
  config = quickstart.get_config()
  warnings = lambda: [m for m in caplog.messages if 'hold no example' in m]
  for size, fraction in ((5, 0.), (12, 0.1)):
    caplog.clear()
    config.train_size, config.eval.val_fraction = size, fraction
    train_split = data.load_data(config)[0]
    unseen = 10 - len(np.unique(train_split.labels))
    assert unseen > 0 and warnings() == [
        f'The {len(train_split.labels)} training images hold no example of {unseen} of the 10 '
        f'classes (train_size={size}, eval.val_fraction={fraction}): the model never sees '
        'those classes.']
  caplog.clear()
  config.train_size, config.eval.val_fraction = 30, 0.
  assert len(np.unique(data.load_data(config)[0].labels)) == 10 and not warnings()


def test_a_fixed_validation_set_lies_outside_every_nested_subset():
  """eval.val_size: one class-balanced validation set, the same for every train_size, held out
  of the whole split before the nested subsets are drawn."""
  config = quickstart.get_config()
  config.eval.val_size = 100
  rows = lambda s: [im.tobytes() + bytes([lab]) for im, lab in zip(s.images, s.labels)]
  splits = {}
  for size in (50, 200, 600):
    config.train_size = size
    splits[size] = data.load_data(config)
  config.train_size = None
  full, _, _ = data.load_data(config)
  config.eval.val_size = 0
  everything, none, _ = data.load_data(config)
  val = splits[50][1]
  assert none is None and len(full.labels) == len(everything.labels) - 100
  assert sorted(rows(full) + rows(val)) == sorted(rows(everything))  # val + the rest = split
  counts = np.bincount(val.labels, minlength=10)
  assert counts.sum() == 100 and counts.max() - counts.min() <= 1
  for size, (train_split, size_val, _) in splits.items():
    assert len(train_split.labels) == size   # the whole subset trains
    assert rows(size_val) == rows(val)        # the same validation set at every size
    assert not set(rows(train_split)) & set(rows(val))
  assert set(rows(splits[50][0])) <= set(rows(splits[200][0])) <= set(rows(splits[600][0]))
  config.eval.val_size = len(everything.labels)
  with pytest.raises(ValueError, match=f'eval.val_size={len(everything.labels)} leaves no '
                     'training examples'):
    data.load_data(config)
  config.eval.val_size, config.eval.val_fraction = 100, 0.1
  with pytest.raises(ValueError, match='eval.val_fraction=0.1 and eval.val_size=100: set one'):
    config_lib.check(config)
