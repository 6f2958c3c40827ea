"""Export to Hugging Face, timm, ONNX and npz: each checked against independent computations
(the NumPy reference ViT, a PyTorch re-implementation of timm's forward), the round trips,
the CLI on a trained run, and the errors."""
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import onnxruntime
import pytest
from safetensors import numpy as safetensors_numpy
import torch
import transformers

from configs import quickstart
from conftest import init, randomize
from numpy_vit import gelu_exact, gelu_tanh, vit_forward
from vit_jax import checkpoint, data, export, files, pretrained, train
from vit_jax.export import hf, layout, timm
from vit_jax.models import get_model

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# An odd width and head count, patch 4, class token, tanh GELU; and patch 8, mean pooling,
# exact GELU, scanned layers (unstacked for export), one channel.
SHAPES = {
    'token': dict(hidden_size=36, mlp_dim=60, num_heads=3, num_layers=2, patch_size=4),
    'gap': dict(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2, patch_size=8,
                classifier='gap', gelu_approximate=False, scan=True),
}
CHANNELS = {'token': 3, 'gap': 1}


def numpy_logits(model, params, images):
  """The NumPy reference ViT (tests/numpy_vit.py) with `model`'s pooling and GELU."""
  return vit_forward(params, images, patch_size=model.patch_size, classifier=model.classifier,
                     gelu=gelu_tanh if model.gelu_approximate else gelu_exact)[0]


@pytest.fixture(scope='module')
def sources():
  out = {}
  for name, shape in SHAPES.items():
    model = get_model('ViT-Ti_16', num_classes=5, **shape)
    params, _ = init(model, 16, channels=CHANNELS[name])
    out[name] = export.Source.from_model(name, model, randomize(params, scale=0.1),
                                         image_size=16, class_names=tuple('abcde'))
  return out


@pytest.fixture(scope='module')
def exports(sources, tmp_path_factory):
  """{(source, format): export folder} for every combination the formats support."""
  out = {}
  for fmt, names in (('hf', ['token']), ('timm', ['token', 'gap']), ('onnx', ['gap']),
                     ('npz', ['token'])):
    for name in names:
      out[name, fmt] = str(tmp_path_factory.mktemp('exports') / f'{name}-{fmt}')
      export.export_source(sources[name], fmt, out[name, fmt])
  return out


def test_sources_are_checked_against_the_numpy_reference(sources):
  for source in sources.values():
    np.testing.assert_allclose(source.logits(source.images),
                               numpy_logits(source.model, source.params, source.images),
                               atol=2e-5)


def test_hf_export_loads_with_from_pretrained_and_matches(sources, exports):
  source, folder = sources['token'], exports['token', 'hf']
  model = transformers.ViTForImageClassification.from_pretrained(folder).eval()
  rng = np.random.default_rng(5)
  images = rng.uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)
  with torch.no_grad():
    got = model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).logits
  np.testing.assert_allclose(got.numpy(), numpy_logits(source.model, source.params, images),
                             atol=1e-4)
  config = json.load(open(os.path.join(folder, 'config.json')))
  assert config['layer_norm_eps'] == 1e-6 and config['hidden_act'] == 'gelu_pytorch_tanh'
  assert model.config.id2label == dict(enumerate('abcde'))
  manifest = json.load(open(os.path.join(folder, 'export.json')))
  assert max(manifest['verification']['max_abs_diff'].values()) < 1e-4
  assert sorted(manifest['files']) == ['config.json', 'model.safetensors',
                                       'preprocessor_config.json']


def test_hf_preprocessor_feeds_what_our_evaluation_feeds(sources, exports):
  processor = transformers.AutoImageProcessor.from_pretrained(exports['token', 'hf'])
  images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
  got = processor(list(images), return_tensors='np')['pixel_values'].transpose(0, 2, 3, 1)
  want = data.preprocess_eval(jnp.asarray(images), image_size=16)
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_hf_and_timm_round_trips_are_bitwise(sources, exports):
  for name, fmt, load in (('token', 'hf', hf.load), ('token', 'timm', timm.load),
                          ('gap', 'timm', timm.load)):
    model, params = load(exports[name, fmt])
    want = pretrained.flatten(sources[name].params)
    got = pretrained.flatten(params)
    assert sorted(got) == sorted(want), (name, fmt)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=f'{name} {fmt} {key}')
    assert (model.classifier, model.gelu_approximate) == (
        sources[name].model.classifier, sources[name].model.gelu_approximate)


def test_import_a_random_hf_model_built_offline_gives_its_logits():
  config = transformers.ViTConfig(hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=40, image_size=8, patch_size=4,
                                  num_channels=3, num_labels=3)  # HF defaults: gelu, eps 1e-12
  torch.manual_seed(0)
  hf_model = transformers.ViTForImageClassification(config).eval()
  model, params = hf.import_state_dict(hf_model.state_dict(), config)  # 5.x key names
  images = np.random.default_rng(1).uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  with torch.no_grad():
    want = hf_model(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).logits
  got = model.apply({'params': params}, images, train=False)
  np.testing.assert_allclose(got, want.numpy(), atol=1e-4)
  assert not model.gelu_approximate


def timm_forward(state, kwargs, images):
  """timm's VisionTransformer forward written from its source, on its own key names:
  fused qkv reshaped (B, N, 3, heads, head_dim), final norm on every token, then token or
  mean pooling (fc_norm=False), GELU per act_layer. images (B, H, W, C) -> logits."""
  t = {k: torch.from_numpy(v) for k, v in state.items()}
  ln = lambda x, p: torch.nn.functional.layer_norm(x, x.shape[-1:], t[f'{p}.weight'],
                                                   t[f'{p}.bias'], eps=1e-6)
  lin = lambda x, p: x @ t[f'{p}.weight'].T + t[f'{p}.bias']
  act = {'gelu': 'none', 'gelu_tanh': 'tanh'}[kwargs['act_layer']]
  x = torch.nn.functional.conv2d(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()),
                                 t['patch_embed.proj.weight'], t['patch_embed.proj.bias'],
                                 stride=kwargs['patch_size'])
  x = x.flatten(2).transpose(1, 2)
  if kwargs['class_token']:
    x = torch.cat([t['cls_token'].expand(x.shape[0], -1, -1), x], 1)
  x = x + t['pos_embed']
  b, n, d = x.shape
  heads = kwargs['num_heads']
  for i in range(kwargs['depth']):
    q, k, v = lin(ln(x, f'blocks.{i}.norm1'), f'blocks.{i}.attn.qkv').reshape(
        b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    a = torch.softmax(q @ k.transpose(-2, -1) * (d // heads) ** -0.5, -1) @ v
    x = x + lin(a.transpose(1, 2).reshape(b, n, d), f'blocks.{i}.attn.proj')
    h = torch.nn.functional.gelu(lin(ln(x, f'blocks.{i}.norm2'), f'blocks.{i}.mlp.fc1'),
                                 approximate=act)
    x = x + lin(h, f'blocks.{i}.mlp.fc2')
  x = ln(x, 'norm')
  x = x[:, 0] if kwargs['global_pool'] == 'token' else x.mean(1)
  return lin(x, 'head').numpy()


def test_timm_export_matches_a_reimplementation_of_timms_forward(sources, exports):
  for name in ('token', 'gap'):
    source, folder = sources[name], exports[name, 'timm']
    kwargs = json.load(open(os.path.join(folder, 'timm_config.json')))
    model = source.model
    assert kwargs['global_pool'] == {'token': 'token', 'gap': 'avg'}[name]
    assert kwargs['class_token'] == (name == 'token') and kwargs['fc_norm'] is False
    assert int(kwargs['embed_dim'] * kwargs['mlp_ratio']) == model.mlp_dim
    assert (kwargs['in_chans'], kwargs['img_size'], kwargs['num_classes']) == (
        CHANNELS[name], 16, 5)
    state = safetensors_numpy.load_file(os.path.join(folder, 'model.safetensors'))
    assert ('cls_token' in state) == (name == 'token') and 'fc_norm.weight' not in state
    assert state['blocks.1.attn.qkv.weight'].shape == (3 * model.hidden_size, model.hidden_size)
    images = source.images[:4]
    np.testing.assert_allclose(timm_forward(state, kwargs, images), source.logits(images),
                               atol=1e-4)


def test_onnx_export_has_a_dynamic_batch_and_matches(sources, exports):
  source = sources['gap']
  session = onnxruntime.InferenceSession(os.path.join(exports['gap', 'onnx'], 'model.onnx'))
  (inp,) = session.get_inputs()
  assert inp.name == 'images' and isinstance(inp.shape[0], str) and inp.shape[1:] == [16, 16, 1]
  for batch in (1, 5):
    images = np.random.default_rng(batch).uniform(-1, 1, (batch, 16, 16, 1)).astype(np.float32)
    got = session.run(['logits'], {'images': images})[0]
    np.testing.assert_allclose(got, numpy_logits(source.model, source.params, images), atol=1e-4)


def test_npz_export_has_the_published_names_and_matches(sources, exports):
  source = sources['token']
  arrays = files.read_npz(os.path.join(exports['token', 'npz'], 'model.npz'))
  assert 'Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel' in arrays
  assert 'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel' in arrays
  params = pretrained.to_linen_names(pretrained.unflatten(arrays))
  images = source.images[:3]
  np.testing.assert_allclose(numpy_logits(source.model, params, images), source.logits(images),
                             atol=2e-5)


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A finished 2-step quickstart run (ViT-Nano/2, one layer, 8x8 grayscale digits)."""
  config = quickstart.get_config()
  config.model.num_layers = 1
  config.total_steps = config.log_every = config.eval_every = config.checkpoint_every = 2
  config.batch_size, config.eval.fewshot_shots = 32, ()
  workdir = tmp_path_factory.mktemp('run')
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def run_cli(*args):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, '-m', 'vit_jax.export', *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def test_cli_exports_a_trained_run_and_hf_carries_its_labels(digits_run, tmp_path):
  proc = run_cli(f'--workdir={digits_run}', '--format=npz', f'--out={tmp_path / "npz"}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert 'largest absolute logit difference' in proc.stdout
  manifest = json.loads((tmp_path / 'npz' / 'export.json').read_text())
  assert manifest['step'] == 2 and manifest['class_names'] == [str(d) for d in range(10)]
  assert "8 images of the 'digits' test split" in manifest['verification']['max_abs_diff']
  with pytest.raises(FileNotFoundError, match=r'No checkpoint for step 7 .* there are \[2\]'):
    export.export(digits_run, 'hf', str(tmp_path / 'x'), step=7)
  assert not (tmp_path / 'x').exists()

  export.export(digits_run, 'hf', str(tmp_path / 'hf'))  # in-process: torch is loaded already
  model = transformers.ViTForImageClassification.from_pretrained(str(tmp_path / 'hf')).eval()
  assert model.config.id2label[7] == '7' and model.config.num_channels == 1
  test = data.load_split('digits', 'test')
  pixels = transformers.AutoImageProcessor.from_pretrained(str(tmp_path / 'hf'))(
      list(test.images[:6]), return_tensors='pt')['pixel_values']
  _, ours, params = checkpoint.load_run(digits_run)
  want = ours.apply({'params': params}, data.preprocess_eval(jnp.asarray(test.images[:6]),
                                                             image_size=8), train=False)
  with torch.no_grad():
    np.testing.assert_allclose(model(pixel_values=pixels).logits.numpy(), want, atol=1e-4)


def zero_params(model, image_size):
  """Zero parameters of the right shapes for (S, S, 3) images, without compiling `init`."""
  return pretrained.unflatten({k: np.zeros(v, np.float32) for k, v in
                               layout.param_shapes(model, image_size, 3).items()})


def test_unsupported_combinations_are_one_clear_error(sources, tmp_path):
  with pytest.raises(export.UnsupportedError, match=r"--format=hf cannot export gap \(vit\): "
                     r"classifier='gap'"):
    export.export_source(sources['gap'], 'hf', str(tmp_path / 'a'))
  resnet = get_model('BiT-R14x0.25-small', num_classes=3)
  source = export.Source.from_model('BiT-R14x0.25-small', resnet, zero_params(resnet, 8),
                                    image_size=8, images=np.zeros((1, 8, 8, 3)))
  for fmt, reason in (('hf', 'only plain ViTs'), ('timm', 'only plain ViTs'), ('onnx', 'StdConv')):
    with pytest.raises(export.UnsupportedError,
                       match=rf'--format={fmt} cannot export BiT-R14x0.25-small \(resnet\).*'
                       f'{reason}'):
      export.export_source(source, fmt, str(tmp_path / 'a'))
  pre_logits = get_model('ViT-Ti_16', num_classes=3, representation_size=8,
                         **dict(SHAPES['token'], num_layers=1))
  source = export.Source.from_model('pre', pre_logits, zero_params(pre_logits, 8), image_size=8,
                                    images=np.zeros((1, 8, 8, 3)))
  with pytest.raises(export.UnsupportedError, match='representation_size=8'):
    export.export_source(source, 'timm', str(tmp_path / 'a'))
  with pytest.raises(ValueError, match=r"--format='tf' is not one of \('hf', 'timm'"):
    export.export_source(source, 'tf', str(tmp_path / 'a'))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep').write_text('')
  with pytest.raises(FileExistsError, match='already exists and is not empty'):
    export.export_source(source, 'npz', str(tmp_path / 'full'))
  assert sorted(os.listdir(tmp_path)) == ['full']


def test_a_failed_verification_writes_nothing(sources, tmp_path, monkeypatch):
  from vit_jax.export import npz
  runner = npz.runner
  monkeypatch.setattr(npz, 'runner', lambda source, directory: (
      lambda x: runner(source, directory)[0](x) + 1e-3, 'perturbed'))
  with pytest.raises(export.VerificationError,
                     match=r'largest absolute logit difference 0.001 > tolerance 0.0001'):
    export.export_source(sources['token'], 'npz', str(tmp_path / 'out'))
  assert os.listdir(tmp_path) == []


def test_timm_import_names_what_does_not_fit(exports):
  state = safetensors_numpy.load_file(os.path.join(exports['token', 'timm'], 'model.safetensors'))
  state['fc_norm.weight'] = np.ones(36, np.float32)
  with pytest.raises(ValueError, match='fc_norm'):
    timm.import_state_dict(state, num_heads=3)
  del state['fc_norm.weight'], state['blocks.0.attn.proj.bias']
  state['blocks.0.attn.qkv.weight'] = state['blocks.0.attn.qkv.weight'][:-1]
  with pytest.raises(ValueError, match=r'missing \(1\): blocks.0.attn.proj.bias; wrong shape '
                     r'\(1\): blocks.0.attn.qkv.weight: \(107, 36\), expected \(108, 36\)'):
    timm.import_state_dict(state, num_heads=3)
