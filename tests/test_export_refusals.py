"""Export refusals: what cannot be represented, unreadable inputs and failed verifications
are one named error each, and nothing is written."""
import json
import os

import jax
import numpy as np
import pytest

from conftest import TINY_VIT, init, randomize
from vit_jax import export
from vit_jax.export import hf, timm, verify
from vit_jax.models import get_model


def tiny_source(**overrides):
  model = get_model('ViT-Ti_16', num_classes=5, **dict(TINY_VIT, **overrides))
  images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  params = randomize(jax.eval_shape(model.init, jax.random.PRNGKey(0), images)['params'])
  return export.Source.from_model('tiny', model, params, image_size=16, images=images)


@pytest.mark.parametrize('fmt,target', [('hf', 'ViTForImageClassification'),
                                        ('timm', "timm's VisionTransformer")])
def test_sincos_position_embedding_is_refused_for_hf_and_timm(fmt, target, tmp_path):
  source = tiny_source(posemb='sincos2d')
  with pytest.raises(export.UnsupportedError,
                     match=rf"--format={fmt} cannot export tiny \(vit\): posemb='sincos2d': "
                     rf'{target} learns its position embedding; use --format=onnx or npz'):
    export.export_source(source, fmt, str(tmp_path / 'out'))
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize('config,message', [
    ({'hidden_act': 'relu'}, r"hidden_act='relu' has no equivalent in our ViT \(exact GELU: "
                             r"\"gelu\", tanh GELU: \('gelu_pytorch_tanh', 'gelu_new'\)\)"),
    ({'hidden_act': 'quick_gelu'}, "hidden_act='quick_gelu' has no equivalent"),
    ({'qkv_bias': False}, 'qkv_bias=False has no equivalent in our ViT'),
])
def test_hf_configs_our_vit_cannot_hold_are_refused(config, message):
  with pytest.raises(ValueError, match=message):
    hf.model_from_config(dict({'hidden_size': 32, 'num_attention_heads': 4}, **config))


def test_hf_tanh_gelu_names_map_to_the_tanh_gelu():
  for act, approximate in (('gelu', False), ('gelu_new', True), ('gelu_pytorch_tanh', True)):
    model, _, _ = hf.model_from_config({'hidden_act': act, 'hidden_size': 32,
                                        'num_attention_heads': 4})
    assert model.gelu_approximate == approximate, act


def test_timm_activation_without_an_equivalent_is_refused(tmp_path):
  (tmp_path / 'timm_config.json').write_text(json.dumps(
      {'model_name': 'vit_tiny_patch16_224', 'act_layer': 'relu', 'num_heads': 4}))
  with pytest.raises(ValueError, match=r"act_layer='relu' in timm_config.json has no equivalent"):
    timm.load(str(tmp_path))


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=rf'{tmp_path} has no model.safetensors \(pickled '
                     'pytorch_model.bin files are not read'):
    hf.load(str(tmp_path))
  (tmp_path / 'pytorch_model.bin').write_bytes(b'not read')
  with pytest.raises(FileNotFoundError, match='has no model.safetensors'):
    hf.load(str(tmp_path))
  with pytest.raises(FileNotFoundError, match='timm_config.json'):
    timm.load(str(tmp_path))


@pytest.fixture(scope='module')
def source():
  return tiny_source()


def test_verification_refuses_logits_of_the_wrong_shape(source):
  with pytest.raises(verify.VerificationError,
                     match=r'--format=npz: the exported model gives logits of shape \(2, 4\), '
                     r'the JAX model \(2, 5\) \(dropped class\)'):
    verify.compare(source, 'npz', lambda x: source.logits(x)[:, :4], 'dropped class')


def test_verification_refuses_nan_logits(source):
  def nan_in_one(images):
    logits = source.logits(images).copy()
    logits[0, 0] = np.nan
    return logits
  with pytest.raises(verify.VerificationError,
                     match=r'--format=onnx export of tiny does not match the JAX model: largest '
                     r'absolute logit difference nan > tolerance 0.0001 \(one NaN\)'):
    verify.compare(source, 'onnx', nan_in_one, 'one NaN')


def test_verification_passes_the_same_logits_and_reports_the_difference(source):
  result = verify.compare(source, 'npz', source.logits, 'itself')
  assert result['tolerance'] == verify.TOLERANCE and result['verified_with'] == 'itself'
  assert list(result['max_abs_diff'].values()) == [0., 0.]


@pytest.mark.slow
def test_a_diverged_model_with_nan_weights_is_not_exported(tmp_path):
  """NaN parameters give NaN logits on both sides: never within tolerance, nothing written."""
  model = get_model('ViT-Ti_16', num_classes=5, **TINY_VIT)
  params, images = init(model, 16)
  params['head']['bias'] = np.full(5, np.nan, np.float32)
  source = export.Source.from_model('nan', model, params, image_size=16,
                                    images=np.asarray(images))
  with pytest.raises(export.VerificationError, match='largest absolute logit difference nan'):
    export.export_source(source, 'npz', str(tmp_path / 'out'))
  assert os.listdir(tmp_path) == []
