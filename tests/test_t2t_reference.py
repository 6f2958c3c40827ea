"""The whole T2T-ViT forward pass against the NumPy reference (tests/numpy_t2t.py)."""
import jax
import numpy as np
import pytest

from conftest import randomize
from numpy_t2t import t2t_forward
from vit_jax.models import get_model

SMALL = dict(hidden_size=24, mlp_dim=40, num_heads=3, num_layers=2, token_dim=8)


@pytest.mark.parametrize('soft_split,image_size,classifier', [
    (((3, 1, 1), (3, 2, 1), (3, 2, 1)), 12, 'token'),
    (((7, 4, 2), (3, 2, 1)), 16, 'gap'),
])
def test_t2t_matches_numpy_reference(soft_split, image_size, classifier):
  model = get_model('T2T-ViT-7', num_classes=5, soft_split=soft_split, classifier=classifier,
                    **SMALL)
  images = np.random.default_rng(0).uniform(-1, 1, (2, image_size, image_size, 3))
  params = randomize(jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params'],
                     scale=0.3)
  logits = jax.jit(model.apply)({'params': params}, images)
  want = t2t_forward(params, images,
                     soft_split=soft_split, classifier=classifier)
  assert np.std(want) > 0.1  # logits that vary, so a wrong layer shows
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4)
