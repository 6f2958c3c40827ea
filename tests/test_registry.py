"""Registry: published parameter counts, every name builds and runs, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import registry
from conftest import init, randomize
from vit_jax.models import get_model


def count_params(model, image_size):
  """Parameter count from shapes only (`jax.eval_shape`: nothing is allocated)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, image_size, image_size, 3)))['params']
  return sum(int(np.prod(s.shape)) for s in jax.tree_util.tree_leaves(shapes))


@pytest.mark.parametrize('name,expected', [
    ('ViT-Ti_16', 5_717_416), ('ViT-S_16', 22_050_664), ('ViT-B_16', 86_567_656),
    ('ViT-B_32', 88_224_232), ('ViT-L_16', 304_326_632), ('ViT-L_32', 306_535_400),
    ('ViT-H_14', 632_045_800), ('R50+ViT-B_16', 98_659_112),
])
def test_published_parameter_counts(name, expected):
  assert count_params(get_model(name, num_classes=1000), 224) == expected


@pytest.mark.parametrize('name,published', [('T2T-ViT-14', 21.5e6), ('T2T-ViT-19', 39.2e6),
                                            ('T2T-ViT-24', 64.1e6)])
def test_t2t_parameter_counts_within_one_percent(name, published):
  assert abs(count_params(get_model(name, num_classes=1000), 224) / published - 1) < 0.01


def test_both_spellings_and_depth_override():
  a, b = get_model('ViT-B/16', num_classes=3), get_model('ViT-B_16', num_classes=3)
  assert a == b
  for depth in (12, 24, 36):
    model = get_model('ViT-Ti/16', num_classes=10, num_layers=depth)
    assert model.num_layers == depth


def _smoke_overrides(name):
  """Shrinks a registered model to smoke size; returns (overrides, image size)."""
  config = registry.get_model_config(name)
  if config.family == 'resnet':
    return dict(resnet_width=32), 32
  if config.family == 't2t':
    return dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1, token_dim=16), 32
  overrides = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1)
  reduction = config.patch_size
  if 'resnet_layers' in config:
    overrides['resnet_width'] = 32
    stem = 4 if config.resnet_stem == 'bit' else 1
    reduction *= stem * 2**max(len(config.resnet_layers) - 1, 0)
  return overrides, 2 * reduction


def _unique_smoke_models():
  seen, cases = set(), []
  for name in registry.known_names():
    overrides, size = _smoke_overrides(name)
    model = get_model(name, num_classes=7, **overrides)
    if model not in seen:  # width factors collapse at smoke size; run each network once
      seen.add(model)
      cases.append(pytest.param(model, size, id=name))
  return cases


@pytest.mark.slow
@pytest.mark.parametrize('model,size', _unique_smoke_models())
def test_every_registered_model_runs(model, size):
  params, images = init(model, size)
  # Random non-zero parameters (the head is zero-initialised, which gives logits exactly 0).
  logits = jax.jit(model.apply)({'params': randomize(params)}, images)
  assert logits.shape == (2, 7) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))
  # The logits depend on the image and differ between classes.
  assert np.abs(logits[0] - logits[1]).max() > 1e-3 and np.ptp(logits, axis=1).min() > 1e-3


def test_unknown_model_lists_known_names():
  with pytest.raises(ValueError, match=r"Unknown model name 'ViT-Q_16'.*ViT-B_16.*BiT-R50x1"):
    get_model('ViT-Q_16', num_classes=2)


@pytest.mark.parametrize('name, meant', [
    ('ViT-B16', 'ViT-B_16'),          # the patch size without '_'
    ('ViT-Nano4', 'ViT-Nano_4'),
    ('ViT-S8', 'ViT-S_8'),            # not a listed name, but one the registry accepts
    ('vit-b_16', 'ViT-B_16'),         # letter case
    ('bit-r50x1', 'BiT-R50x1'),
    ('R50-ViT-B_16', 'R50+ViT-B_16'),  # a typo away from a listed name
    ('T2T-ViT14', 'T2T-ViT-14'),
    ('ResNet50', None)])              # nothing close: no guess
def test_unknown_model_suggests_the_name_meant(name, meant):
  with pytest.raises(ValueError) as e:
    get_model(name, num_classes=2)
  first = str(e.value).split(' Known names: ')[0]
  if meant is None:
    assert first == f"Unknown model name '{name}'."
  else:
    assert first == f"Unknown model name '{name}'; did you mean '{meant}'?"
    get_model(meant, num_classes=2)  # the guess is accepted


def test_unknown_override_lists_valid_fields():
  with pytest.raises(ValueError, match=r"Unknown model override\(s\) \['depth'\].*num_layers"):
    get_model('ViT-B_16', num_classes=2, depth=3)


def test_num_classes_must_be_positive():
  with pytest.raises(ValueError, match='num_classes must be a positive integer, got 0'):
    get_model('ViT-B_16', num_classes=0)


def test_config_lists_become_tuples():
  model = get_model('R50+ViT-B_16', num_classes=2, resnet_layers=[1, 1])
  assert model.resnet_layers == (1, 1)
