"""Masked patch prediction: targets, corruption, the mask token, the loss, pre-training and
fine-tuning from it."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_VIT, init, randomize, recounted_test_accuracy
from numpy_vit import mean_attention_distance, vit_forward
from test_train import smoke_config
from vit_jax import checkpoint, data, export, mpp, train
from vit_jax.analysis import run
from vit_jax.models import config_overrides, get_model

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs


def numpy_patches(images, p):
  """(B, H, W, C) -> (B, M, P*P*C) by explicit loops over the grid, row-major."""
  b, h, w, c = images.shape
  return np.stack([np.stack([images[i, r:r + p, s:s + p].reshape(-1)
                             for r in range(0, h, p) for s in range(0, w, p)])
                   for i in range(b)])


def test_color_targets_of_hand_made_images():
  # One 4x4 RGB image of four 2x2 patches with known mean colours in [-1, 1].
  colours = np.array([[-1., -1., -1.],       # black: levels (0, 0, 0) -> 0
                      [1., 1., 1.],          # white: (7, 7, 7) -> 511
                      [1., -1., -0.3],       # red-ish: (7, 0, floor(0.35*8)=2) -> 448 + 2
                      [0.26, -0.5, 0.]])     # (floor(0.63*8)=5, floor(.25*8)=2, 4) -> 340
  image = np.zeros((1, 4, 4, 3), np.float32)
  for k, (r, s) in enumerate([(0, 0), (0, 2), (2, 0), (2, 2)]):
    image[0, r:r + 2, s:s + 2] = colours[k]
  image[0, 0, 0] += 0.04  # a patch's mean, not its first pixel, decides: still black
  image[0, 0, 1] -= 0.04
  np.testing.assert_array_equal(mpp.color_targets(jnp.asarray(image), 2), [[0, 511, 450, 340]])
  gray = np.full((1, 2, 2, 1), 0.5, np.float32)  # (0.5 + 1) / 2 * 8 = 6
  np.testing.assert_array_equal(mpp.color_targets(jnp.asarray(gray), 2), [[6]])
  assert mpp.num_colors(3) == 512 and mpp.num_colors(1) == 8


def test_patches_round_trip_and_order_match_numpy():
  images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
  patches = mpp.to_patches(jnp.asarray(images), 4)
  np.testing.assert_array_equal(np.asarray(patches).reshape(2, 6, -1), numpy_patches(images, 4))
  np.testing.assert_array_equal(mpp.from_patches(patches, 8), images)


def test_corruption_counts_kinds_and_replacements():
  rng = np.random.default_rng(1)
  images = rng.normal(size=(32, 32, 32, 3)).astype(np.float32)  # 64 patches of 4x4
  out, mask, corrupted = jax.device_get(mpp.corrupt(jax.random.PRNGKey(0), jnp.asarray(images),
                                                    4, corrupt_fraction=0.5))
  assert (corrupted.sum(1) == 32).all()           # exactly half of every image's patches
  assert not (mask & ~corrupted).any()            # mask-token patches are corrupted ones
  before, after = numpy_patches(images, 4), numpy_patches(out, 4)
  changed = (before != after).any(-1)
  assert not (changed & ~(corrupted & ~mask)).any()  # pixels change only for random patches
  pool = {p.tobytes() for p in before.reshape(-1, before.shape[-1])}
  assert all(p.tobytes() in pool for p in after[changed])  # each is a patch of the batch
  n = corrupted.sum()
  random_or_same = corrupted & ~mask
  assert abs(mask.sum() / n - 0.8) < 0.03          # 1,024 corrupted patches: 0.8 / 0.1 / 0.1
  assert abs(changed.sum() / n - 0.1) < 0.025      # (a random patch may be itself: rare)
  assert abs((random_or_same.sum() - changed.sum()) / n - 0.1) < 0.025


def test_random_patch_in_pixels_is_that_patch_embedding(tiny_vit):
  # The pixel-level replacement equals replacing the embedding: the embedding is per patch.
  _, params, _ = tiny_vit
  kernel = np.asarray(params['embedding']['kernel']).reshape(-1, TINY_VIT['hidden_size'])
  images = np.random.default_rng(2).normal(size=(4, 16, 16, 3)).astype(np.float32)
  out, _, _ = mpp.corrupt(jax.random.PRNGKey(3), jnp.asarray(images), 4, mask_fraction=0.,
                          random_fraction=1.)
  embed = lambda x: numpy_patches(np.asarray(x), 4) @ kernel
  before, after = (embed(x).reshape(-1, kernel.shape[1]) for x in (images, out))
  changed = ~np.isclose(before, after).all(-1)
  assert changed.sum() >= 16
  for row in after[changed]:
    assert np.isclose(before, row, atol=1e-5).all(-1).any()


@pytest.fixture(scope='module')
def mpp_vit():
  model = get_model('ViT-Ti_16', num_classes=mpp.num_colors(3), masked_patch_prediction=True,
                    **TINY_VIT)
  params, _ = init(model, 16)
  return model, randomize(params)


def test_mask_token_replaces_patch_embeddings(mpp_vit):
  model, params = mpp_vit
  assert params['mask_token'].shape == (1, 1, 32) and 'mpp_head' in params
  assert 'head' not in params
  rng = np.random.default_rng(4)
  a, b = (jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32) for _ in range(2))
  logits = model.apply({'params': params}, a)
  assert logits.shape == (2, 16, 512) and logits.dtype == jnp.float32
  none = np.zeros((2, 16), bool)
  np.testing.assert_array_equal(model.apply({'params': params}, a, mask=none), logits)
  everything = np.ones((2, 16), bool)  # every patch masked: the image no longer matters
  np.testing.assert_allclose(model.apply({'params': params}, a, mask=everything),
                             model.apply({'params': params}, b, mask=everything), atol=1e-6)
  one = none.copy()
  one[:, 5] = True  # masking one patch changes the outputs
  assert not np.allclose(model.apply({'params': params}, a, mask=one), logits, atol=1e-4)


def test_loss_and_accuracy_match_numpy():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(3, 6, 8)).astype(np.float32)
  targets = rng.integers(0, 8, (3, 6))
  corrupted = rng.random((3, 6)) < 0.5
  targets[corrupted] = np.where(rng.random(corrupted.sum()) < 0.5,
                                logits.argmax(-1)[corrupted], targets[corrupted])
  loss, correct, count = mpp.loss_and_accuracy(jnp.asarray(logits), jnp.asarray(targets),
                                               jnp.asarray(corrupted))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(loss, nll[corrupted].sum(), rtol=1e-5)
  assert correct == (logits.argmax(-1) == targets)[corrupted].sum()
  assert count == corrupted.sum()


def test_pretrain_then_finetune(tmp_path):
  pre = str(tmp_path / 'pretrain')
  result = train.train_and_evaluate(smoke_config(**{'mpp.enabled': True}), pre)
  assert 0 <= result['test_accuracy'] <= 1 and np.isfinite(result['test_loss'])
  saved = checkpoint.read_params(pre)
  assert saved['mpp_head']['kernel'].shape[-1] == mpp.num_colors(1)  # digits are grayscale
  assert 'mask_token' in saved and 'head' not in saved
  _check_analysis_of_the_pretrained_encoder(pre, tmp_path / 'analysis')
  with pytest.raises(ValueError, match='pre-training run: it has no classification head'):
    export.Source.from_run(pre)

  # The classifier takes the encoder; the mask token and colour head are dropped.
  config = smoke_config(**{'checkpoint.init_from': pre})
  model = get_model(config.model.name, num_classes=10, **config_overrides(config.model))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)))['params']
  loaded = checkpoint.load_pretrained(pre, shapes)
  assert 'mask_token' not in loaded and not loaded['head']['kernel'].any()
  np.testing.assert_array_equal(loaded['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']
                                ['kernel'], saved['Transformer']['encoderblock_0']['MlpBlock_0']
                                ['Dense_0']['kernel'])
  result = train.train_and_evaluate(config, str(tmp_path / 'finetune'))
  assert result['step'] == config.total_steps
  assert result['test_accuracy'] == pytest.approx(
      recounted_test_accuracy(tmp_path / 'finetune'), abs=1e-9)
  assert os.path.exists(tmp_path / 'finetune' / 'result.json')


def _check_analysis_of_the_pretrained_encoder(pre, out):
  """The analyses of the encoder run on a pre-training run; those that score class logits are
  skipped (and refused when asked for). The mean attention distance is recomputed with the
  NumPy reference ViT on the 6 evenly spaced test images."""
  results = run.analyze(pre, str(out), num_images=6)
  assert results['skipped'] == ['noise', 'hessian']
  assert sorted(os.listdir(out)) == ['analysis.json', 'distance.png', 'filters.png',
                                     'fourier.png', 'posemb.png', 'rollout.png']
  with pytest.raises(ValueError, match=re.escape(
      "['hessian'] do not apply to ViT-Nano_2 (vit, pre-trained by masked patch prediction: "
      'no class logits).')):
    run.analyze(pre, str(out), only=['hessian'])
  params = checkpoint.read_params(pre)
  test = data.load_split('digits', 'test')
  images = data.preprocess_eval(
      test.images[np.linspace(0, len(test.labels) - 1, 6).astype(int)], image_size=8)
  _, weights = vit_forward(dict(params, head=params['mpp_head']), np.asarray(images),
                           patch_size=2)  # the class token through the colour head: unused
  for layer, want in enumerate(mean_attention_distance(weights, 4, 2)):  # 4x4 patches of 2 px
    np.testing.assert_allclose(results['distance']['pixels'][layer], want, atol=1e-3)


@pytest.mark.parametrize('changes, message', [
    ({'model.name': 'BiT-R14x0.25-small'}, "model.name='BiT-R14x0.25-small' is a resnet"),
    ({'model.name': 'R8+ViT-Nano_4-small'}, 'is a hybrid model'),
    ({'mpp.corrupt_fraction': 0.}, 'mpp.corrupt_fraction=0.0 must be in (0, 1]'),
    ({'mpp.random_fraction': 0.3}, 'mpp.mask_fraction=0.8 + mpp.random_fraction=0.3'),
])
def test_bad_mpp_configs(tmp_path, changes, message):
  config = smoke_config(**{'mpp.enabled': True, **changes})
  with pytest.raises(ValueError, match=None) as e:
    train.train_and_evaluate(config, str(tmp_path))
  assert message in str(e.value)
  assert not os.listdir(tmp_path)


def test_mask_needs_the_mpp_model(tiny_vit):
  model, params, images = tiny_vit
  with pytest.raises(ValueError, match='masked_patch_prediction=True'):
    model.apply({'params': params}, images, mask=np.zeros((2, 16), bool))
