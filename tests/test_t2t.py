"""T2T-ViT: soft split against a NumPy unfold, the token transformer against NumPy, shapes."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from conftest import init, randomize
from numpy_t2t import unfold as numpy_unfold
from numpy_vit import layer_norm, softmax
from vit_jax.models import get_model
from vit_jax.models import t2t


@pytest.mark.parametrize('k,s,p', [(7, 4, 2), (3, 2, 1), (3, 1, 1)])
def test_soft_split_matches_unfold(k, s, p):
  x = np.random.default_rng(0).normal(size=(2, 12, 12, 3)).astype(np.float32)
  np.testing.assert_allclose(t2t.soft_split(jnp.asarray(x), k, s, p), numpy_unfold(x, k, s, p),
                             atol=1e-6)


def test_token_transformer_matches_numpy():
  layer = t2t.TokenTransformer(token_dim=8)
  x = np.random.default_rng(1).normal(size=(2, 5, 12)).astype(np.float32)
  params = randomize(layer.init(jax.random.PRNGKey(0), x)['params'])
  p = jax.tree_util.tree_map(np.asarray, params)
  y = layer_norm(x, p['norm1'], eps=1e-5)
  q, k, v = np.split(y @ p['qkv']['kernel'], 3, -1)
  a = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(12))
  h = v + (a @ v) @ p['proj']['kernel'] + p['proj']['bias']
  z = layer_norm(h, p['norm2'], eps=1e-5) @ p['fc1']['kernel'] + p['fc1']['bias']
  z = 0.5 * z * (1 + erf(z / np.sqrt(2)))  # exact GELU
  want = h + z @ p['fc2']['kernel'] + p['fc2']['bias']
  np.testing.assert_allclose(layer.apply({'params': params}, x), want, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_t2t_on_32px_with_configured_soft_split():
  model = get_model('T2T-ViT-7', num_classes=10, soft_split=((3, 1, 1), (3, 2, 1), (3, 2, 1)),
                    hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2, token_dim=16)
  params, images = init(model, 32)
  assert params['attention1']['qkv']['kernel'].shape == (3 * 9, 3 * 16)
  assert params['attention2']['qkv']['kernel'].shape == (16 * 9, 3 * 16)
  assert params['project']['kernel'].shape == (16 * 9, 32)
  logits, state = model.apply({'params': randomize(params)}, images, mutable=['intermediates'])
  assert logits.shape == (2, 10)
  blocks = state['intermediates']['Transformer']['encoderblock_0']['out'][0]
  assert blocks.shape == (2, 1 + 8 * 8, 32)  # 32 -> 32 -> 16 -> 8, plus the class token


def test_soft_split_too_large_is_named():
  model = get_model('T2T-ViT-7', num_classes=2, soft_split=((7, 4, 0), (9, 2, 1)))
  with pytest.raises(ValueError, match=r'soft_split\[1\]=\(9, 2, 1\) does not fit the 2x2'):
    jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 12, 12, 3)))
