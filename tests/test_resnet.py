"""BiT ResNet and hybrid stem: weight standardisation, GroupNorm, shapes and names."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import init, randomize
from vit_jax import pretrained
from vit_jax.models import get_model
from vit_jax.models import resnet


def test_weight_standardisation_matches_numpy():
  kernel = np.random.default_rng(0).normal(size=(3, 3, 4, 8)).astype(np.float32)
  flat = kernel.reshape(-1, 8)
  want = ((flat - flat.mean(0)) / (flat.std(0) + 1e-5)).reshape(kernel.shape)
  np.testing.assert_allclose(resnet.standardize(jnp.asarray(kernel)), want, rtol=1e-5, atol=1e-6)


def test_stdconv_convolves_with_the_standardised_kernel():
  conv = resnet.StdConv(8, (3, 3), use_bias=False)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 6, 4))
  params = conv.init(jax.random.PRNGKey(1), x)['params']
  want = jax.lax.conv_general_dilated(x, resnet.standardize(params['kernel']), (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  np.testing.assert_allclose(conv.apply({'params': params}, x), want, rtol=1e-5, atol=1e-5)


def test_resnet50_names_and_feature_shapes():
  model = get_model('BiT-R50x1', num_classes=4)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))['params']
  flat = pretrained.flatten(shapes)
  assert flat['conv_root/kernel'].shape == (7, 7, 3, 64)
  assert flat['gn_root/scale'].shape == (64,)
  assert flat['block1/unit1/conv_proj/kernel'].shape == (1, 1, 64, 256)
  assert flat['block4/unit3/conv3/kernel'].shape == (1, 1, 512, 2048)
  assert 'block4/unit2/conv_proj/kernel' not in flat  # projection only where shapes change
  assert flat['head/kernel'].shape == (2048, 4)
  units = {k.split('/')[0]: int(k.split('/')[1][4:]) for k in flat if k.startswith('block')}
  assert [units[f'block{s}'] for s in range(1, 5)] == [3, 4, 6, 3]


class Features(resnet.nn.Module):
  """Runs the stem and stages in a module scope, as ViT and ResNet do."""
  stem: str

  @resnet.nn.compact
  def __call__(self, x):
    return resnet.stem_and_stages(x, layers=(2, 2, 2, 2), width=32, stem=self.stem,
                                  dtype=jnp.float32)


@pytest.mark.parametrize('stem,size,grid', [('bit', 64, 2), ('small', 32, 4)])
def test_stems_downsample_as_documented(stem, size, grid):
  feature_map = jax.eval_shape(
      lambda x: Features(stem).init_with_output(jax.random.PRNGKey(0), x)[0],
      jnp.zeros((2, size, size, 3)))
  assert feature_map.shape == (2, grid, grid, 32 * 8 * 4)


@pytest.mark.slow
def test_narrow_resnet_uses_fewer_groups():
  model = get_model('BiT-R14x0.25-small', num_classes=3)
  params, images = init(model, 16)
  assert params['conv_root']['kernel'].shape == (3, 3, 3, 16)
  assert jax.jit(model.apply)({'params': randomize(params)}, images).shape == (2, 3)


def test_hybrid_has_original_names_and_patch_check():
  model = get_model('R50+ViT-B_16', num_classes=2, hidden_size=32, mlp_dim=32, num_heads=2,
                    num_layers=1, resnet_width=32, resnet_layers=(1, 1, 3))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  flat = pretrained.flatten(shapes)
  assert {'conv_root/kernel', 'gn_root/bias', 'block3/unit3/gn3/scale', 'embedding/kernel',
          'Transformer/encoderblock_0/LayerNorm_0/scale'} <= set(flat)
  assert flat['embedding/kernel'].shape == (1, 1, 32 * 4 * 4, 32)
  bad = model.clone(patch_size=3)
  with pytest.raises(ValueError, match=r'patch_size=3 does not divide the ResNet feature map'):
    jax.eval_shape(bad.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))


def test_bad_stem_is_named():
  model = get_model('BiT-R26x1', num_classes=2, resnet_stem='tiny')
  with pytest.raises(ValueError, match=r"resnet_stem='tiny' must be one of"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
