"""ViT: numbers against an independent NumPy forward pass, options, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_VIT, init, randomize
from numpy_vit import attention as numpy_attention
from numpy_vit import vit_forward
from vit_jax import pretrained
from vit_jax.models import forward_with_intermediates, get_model
from vit_jax.models import vit

pytestmark = pytest.mark.slow  # every test compiles a model


@pytest.mark.parametrize('classifier,representation_size', [('token', None), ('gap', None),
                                                            ('token', 16)])
def test_matches_numpy_reference(classifier, representation_size):
  model = get_model('ViT-Ti_16', num_classes=5, classifier=classifier,
                    representation_size=representation_size, **TINY_VIT)
  params, images = init(model, 16)
  params = randomize(params)
  logits = model.apply({'params': params}, images)
  ref, _ = vit_forward(jax.tree_util.tree_map(np.asarray, params), np.asarray(images),
                       patch_size=4, classifier=classifier)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_parameter_names_follow_original_vit_jax(tiny_vit):
  _, params, _ = tiny_vit
  flat = pretrained.flatten(params)
  block = 'Transformer/encoderblock_1/'
  assert flat['embedding/kernel'].shape == (4, 4, 3, 32)
  assert flat['cls'].shape == (1, 1, 32)
  assert flat['Transformer/posembed_input/pos_embedding'].shape == (1, 17, 32)
  assert flat[block + 'MultiHeadDotProductAttention_0/query/kernel'].shape == (32, 4, 8)
  assert flat[block + 'MultiHeadDotProductAttention_0/query/bias'].shape == (4, 8)
  assert flat[block + 'MultiHeadDotProductAttention_0/out/kernel'].shape == (4, 8, 32)
  for name in ['LayerNorm_0/scale', 'LayerNorm_1/bias', 'MlpBlock_0/Dense_0/kernel',
               'MlpBlock_0/Dense_1/bias']:
    assert block + name in flat
  assert 'Transformer/encoder_norm/scale' in flat and flat['head/kernel'].shape == (32, 5)


def test_head_is_zero_initialised():
  model = get_model('ViT-Ti_16', num_classes=3, **TINY_VIT)
  params, images = init(model, 16)
  assert not np.any(params['head']['kernel']) and not np.any(params['head']['bias'])
  assert not np.any(model.apply({'params': params}, images))


def test_intermediates_match_reference_and_fast_path(tiny_vit):
  model, params, images = tiny_vit
  logits, inter = forward_with_intermediates(model, {'params': params}, images)
  np.testing.assert_allclose(logits, model.apply({'params': params}, images), atol=1e-5)
  weights = inter['attention_weights']
  assert weights.shape == (2, 2, 4, 17, 17)  # (layers, batch, heads, tokens, tokens)
  np.testing.assert_allclose(weights.sum(-1), 1, rtol=1e-5)
  _, ref = vit_forward(jax.tree_util.tree_map(np.asarray, params), np.asarray(images),
                       patch_size=4)
  np.testing.assert_allclose(weights, np.stack(ref), atol=1e-5)
  assert inter['block_outputs'].shape == (2, 2, 17, 32)
  assert inter['pre_logits'].shape == (2, 32)
  np.testing.assert_allclose(inter['pre_logits'] @ params['head']['kernel']
                             + params['head']['bias'], logits, atol=1e-5)


def test_scan_matches_unrolled_from_same_weights(tiny_vit):
  model, params, images = tiny_vit
  scanned = get_model('ViT-Ti_16', num_classes=5, scan=True, **TINY_VIT)
  scan_shapes = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), images)['params']
  stacked = pretrained.stack_layers(jax.tree_util.tree_map(np.asarray, params))
  assert jax.tree_util.tree_structure(stacked) == jax.tree_util.tree_structure(scan_shapes)
  # Compiled (as in training), both give bitwise the same logits.
  np.testing.assert_array_equal(jax.jit(scanned.apply)({'params': stacked}, images),
                                jax.jit(model.apply)({'params': params}, images))
  # Intermediates come out stacked the same way.
  _, a = forward_with_intermediates(model, {'params': params}, images)
  _, b = forward_with_intermediates(scanned, {'params': stacked}, images)
  np.testing.assert_allclose(a['attention_weights'], b['attention_weights'], atol=1e-6)


@pytest.mark.parametrize('scan', [False, True])
def test_remat_keeps_values_and_gradients(tiny_vit, scan):
  model, params, images = tiny_vit
  if scan:
    params = pretrained.stack_layers(jax.tree_util.tree_map(np.asarray, params))
  plain = get_model('ViT-Ti_16', num_classes=5, scan=scan, **TINY_VIT)
  remat = get_model('ViT-Ti_16', num_classes=5, scan=scan, remat_policy='full', **TINY_VIT)
  loss = lambda m: jax.grad(lambda p: jnp.sum(m.apply({'params': p}, images)**2))(params)
  for a, b in zip(jax.tree_util.tree_leaves(loss(plain)), jax.tree_util.tree_leaves(loss(remat))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_close_to_float32_with_float32_params(tiny_vit):
  model, params, images = tiny_vit
  bf16 = get_model('ViT-Ti_16', num_classes=5, dtype=jnp.bfloat16, **TINY_VIT)
  shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), images)['params']
  assert all(s.dtype == jnp.float32 for s in jax.tree_util.tree_leaves(shapes))
  ref = model.apply({'params': params}, images)
  out = bf16.apply({'params': params}, images)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, ref, atol=0.05 * float(jnp.abs(ref).max()))


@pytest.mark.parametrize('impl', [None, 'xla'])
def test_attention_matches_explicit_numpy_softmax(impl):
  """The training/inference path (weights not stored in `intermediates`) against
  softmax(Q K^T / sqrt(d)) V written out in NumPy, on the same random parameters. (For
  'cudnn', see the next test.)"""
  layer = vit.MultiHeadDotProductAttention(num_heads=4, implementation=impl)
  x = np.random.default_rng(0).normal(size=(2, 7, 32)).astype(np.float32)
  params = randomize(layer.init(jax.random.PRNGKey(0), x)['params'])
  want, _ = numpy_attention(x.astype(np.float64), jax.tree_util.tree_map(np.asarray, params))
  np.testing.assert_allclose(layer.apply({'params': params}, x), want, rtol=1e-4, atol=1e-5)


def test_the_cudnn_branch_hands_the_kernel_the_right_operands(monkeypatch):
  """The 'cudnn' branch on CPU: jax.nn.dot_product_attention, called as the branch calls it
  but run by its XLA implementation, must give the NumPy attention (layouts (B, N, K, H), the
  1/sqrt(d) scaling applied once). The cuDNN kernel itself needs a GPU."""
  calls = []
  real = jax.nn.dot_product_attention
  def on_xla(*args, implementation=None, **kwargs):
    calls.append(implementation)
    return real(*args, implementation='xla', **kwargs)
  monkeypatch.setattr(jax.nn, 'dot_product_attention', on_xla)
  layer = vit.MultiHeadDotProductAttention(num_heads=4, implementation='cudnn')
  x = np.random.default_rng(1).normal(size=(2, 7, 32)).astype(np.float32)
  params = randomize(layer.init(jax.random.PRNGKey(0), x)['params'])
  want, _ = numpy_attention(x.astype(np.float64), jax.tree_util.tree_map(np.asarray, params))
  np.testing.assert_allclose(layer.apply({'params': params}, x), want, rtol=1e-4, atol=1e-5)
  assert calls == ['cudnn', 'cudnn']  # init and apply both took the branch


def test_dropout_only_in_training(tiny_vit):
  _, params, images = tiny_vit
  model = get_model('ViT-Ti_16', num_classes=5, dropout_rate=0.3, attention_dropout_rate=0.3,
                    **TINY_VIT)
  run = lambda seed: model.apply({'params': params}, images, train=True,
                                 rngs={'dropout': jax.random.PRNGKey(seed)})
  assert not np.allclose(run(0), run(1))
  np.testing.assert_array_equal(run(0), run(0))
  np.testing.assert_array_equal(model.apply({'params': params}, images),
                                model.apply({'params': params}, images))


def test_sincos2d_posemb_has_no_parameters_and_matches_formula():
  model = get_model('ViT-Ti_16', num_classes=5, posemb='sincos2d', **TINY_VIT)
  params, images = init(model, 16)
  assert 'posembed_input' not in params['Transformer']
  assert model.apply({'params': randomize(params)}, images).shape == (2, 5)
  pe = vit.posemb_sincos_2d(2, 3, 8)
  omega = 1 / 10_000**(np.arange(2) / 1)
  for row in range(2):
    for col in range(3):
      want = np.concatenate([np.sin(col * omega), np.cos(col * omega),
                             np.sin(row * omega), np.cos(row * omega)])
      np.testing.assert_allclose(pe[row * 3 + col], want, rtol=1e-6)


def test_sincos1d_matches_transformer_formula():
  pe = vit.posemb_sincos_1d(5, 6)
  for pos in range(5):
    for i in range(6):
      angle = pos / 10_000**(2 * (i // 2) / 6)
      assert pe[pos, i] == pytest.approx(np.sin(angle) if i % 2 == 0 else np.cos(angle),
                                         abs=1e-6)


def test_patch_size_must_divide_image():
  model = get_model('ViT-Ti_16', num_classes=5, **TINY_VIT)
  with pytest.raises(ValueError, match=r'patch_size=4 does not divide the image size 18x18'):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 18, 18, 3)))


def test_heads_must_divide_width():
  with pytest.raises(ValueError, match=r'num_heads=5 must divide hidden_size=32'):
    get_model('ViT-Ti_16', num_classes=5, **dict(TINY_VIT, num_heads=5))
  module = vit.VisionTransformer(num_classes=2, hidden_size=32, num_heads=5, mlp_dim=8,
                                 num_layers=1, patch_size=4)
  with pytest.raises(ValueError, match=r'num_heads=5 must divide hidden_size=32'):
    module.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


@pytest.mark.parametrize('field,value,message', [
    ('classifier', 'cls', "classifier='cls' must be 'token' or 'gap'"),
    ('posemb', 'rope', "posemb='rope' must be 'learn' or 'sincos2d'"),
    ('remat_policy', 'some', "remat_policy='some' is not one of"),
    ('attention_impl', 'flash', "attention_impl='flash' is not one of"),
])
def test_bad_options_name_the_field(field, value, message):
  model = get_model('ViT-Ti_16', num_classes=2, **dict(TINY_VIT, **{field: value}))
  with pytest.raises(ValueError, match=message):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))


def _train_step_hlo_size(num_layers: int, scan: bool) -> int:
  """Lines of the StableHLO of a gradient step of a tiny ViT with `num_layers` layers (with
  full rematerialisation), what XLA has to compile."""
  model = get_model('ViT-Ti_16', num_classes=5, scan=scan, remat_policy='full',
                    **{**TINY_VIT, 'num_layers': num_layers})
  images = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), images)
  loss = lambda p, x: jnp.sum(model.apply(p, x, train=True))
  return len(jax.jit(jax.grad(loss)).lower(params, images).as_text().splitlines())


def test_scanned_program_size_is_flat_in_depth():
  """Compile time follows program size: with scan, 36 layers are as big a program as 12
  (measured compile times: experiments/scale/README.md); unrolled, it grows with depth."""
  assert _train_step_hlo_size(36, scan=True) == _train_step_hlo_size(12, scan=True)
  assert _train_step_hlo_size(12, scan=False) > 1.8 * _train_step_hlo_size(6, scan=False)
