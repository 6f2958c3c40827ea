"""The ResNet + ViT hybrid and the BiT ResNet, whole forward passes against NumPy references
(tests/numpy_resnet.py for the stem and stages, tests/numpy_vit.py for the transformer)."""
import jax
import numpy as np
import pytest

from conftest import randomize
from numpy_resnet import resnet_features
from numpy_vit import vit_forward
from vit_jax.models import get_model

VIT = dict(hidden_size=16, mlp_dim=24, num_heads=2, num_layers=1)


def random_model(model, image_size):
  """Random parameters (GroupNorm scales around 0.5, so the zero-initialised gn3 matters too)
  and images."""
  images = np.random.default_rng(0).uniform(-1, 1, (2, image_size, image_size, 3))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params']
  return randomize(shapes, scale=0.3), images


@pytest.mark.parametrize('stem,image_size,patch', [('bit', 32, 1), ('small', 16, 2)])
def test_hybrid_matches_numpy_reference(stem, image_size, patch):
  """Two stages (the second strided, both with projection shortcuts) of width 8, then a
  one-layer ViT on the feature map: 32 -> 16 (conv) -> 8 (pool) -> 4, or 16 -> 16 -> 8, then
  patches of `patch`."""
  model = get_model('R50+ViT-B_16', num_classes=5, resnet_layers=(1, 2), resnet_width=8,
                    resnet_stem=stem, patch_size=patch, **VIT)
  params, images = random_model(model, image_size)
  logits = jax.jit(model.apply)({'params': params}, images)
  features = resnet_features(params, images, stem=stem)
  assert features.shape == ((2, 4, 4, 64) if stem == 'bit' else (2, 8, 8, 64))
  want, _ = vit_forward(params, features, patch_size=patch)
  assert np.std(want) > 0.1
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)


def test_resnet_classifier_matches_numpy_reference():
  model = get_model('BiT-R14x0.25-small', num_classes=5, resnet_layers=(1, 1), resnet_width=4)
  params, images = random_model(model, 8)
  logits = jax.jit(model.apply)({'params': params}, images)
  pooled = resnet_features(params, images, stem='small').mean(axis=(1, 2))
  want = pooled @ params['head']['kernel'] + params['head']['bias']
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
