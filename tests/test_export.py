"""Export to Hugging Face, timm, ONNX and npz: every model family x format pair that the
README's support table marks yes is exported and loaded by the other framework itself
(transformers, timm's own classes, onnxruntime), checked against independent computations (the
NumPy reference ViT, timm's forward); every pair it marks no is refused with its reason; the
round trips, the CLI on trained runs, and the errors."""
import functools
import json
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import onnxruntime
from PIL import Image
import pytest
from safetensors import numpy as safetensors_numpy
import timm as timm_lib
from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
from timm.models.resnetv2 import ResNetV2
from timm.models.vision_transformer import VisionTransformer as TimmViT
import torch
import transformers

from configs import quickstart
from conftest import randomize
from numpy_vit import gelu_exact, gelu_tanh, vit_forward
from vit_jax import checkpoint, data, export, files, models, pretrained, train
from vit_jax import config as config_lib
from vit_jax.export import hf, stdconv, timm
from vit_jax.models import get_model, resnet

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# One tiny model per column of the README's support table, on 16x16 images:
# token: an odd width and head count, patch 4, class token, tanh GELU; gap: patch 8, mean
# pooling, exact GELU, scanned layers (unstacked for export), one channel; prelogits: a
# pre-logits layer and the fixed sin-cos position embedding; hybrid: a two-stage BiT stem
# (16 -> 4 -> 2) under a mean-pooled ViT; resnet: a two-stage BiT ResNet, 8 wide (8 groups);
# t2t: two soft splits (16 -> 8 -> 4).
SHAPES = {
    'token': ('ViT-Ti_16', dict(hidden_size=36, mlp_dim=60, num_heads=3, num_layers=2,
                                patch_size=4)),
    'gap': ('ViT-Ti_16', dict(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2,
                              patch_size=8, classifier='gap', gelu_approximate=False,
                              scan=True)),
    'prelogits': ('ViT-Ti_16', dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1,
                                    patch_size=4, representation_size=8, posemb='sincos2d')),
    'hybrid': ('R50+ViT-B_16', dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1,
                                    resnet_layers=(1, 1), resnet_width=8, classifier='gap')),
    'resnet': ('BiT-R26x1', dict(resnet_layers=(1, 1), resnet_width=8)),
    't2t': ('T2T-ViT-7', dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1,
                              token_dim=8, soft_split=((3, 2, 1), (3, 2, 1)))),
}
CHANNELS = {'gap': 1}  # 3 otherwise
# The README's support table: its columns in order, and the reason each "no" must name.
COLUMNS = ('token', 'gap', 'prelogits', 'hybrid', 'resnet', 't2t')
REASONS = {
    ('gap', 'hf'): r"classifier='gap': ViTForImageClassification classifies the class token",
    ('prelogits', 'hf'): r'representation_size=8: ViTForImageClassification has no pre-logits',
    ('hybrid', 'hf'): r'only plain ViTs map onto ViTForImageClassification',
    ('resnet', 'hf'): r'only plain ViTs map onto ViTForImageClassification',
    ('t2t', 'hf'): r'only plain ViTs map onto ViTForImageClassification',
    ('prelogits', 'timm'): r"representation_size=8: timm's VisionTransformer has no pre-logits",
    ('t2t', 'timm'): r'timm has no T2T-ViT',
}


def support_table():
  """{(column, format): 'yes' or 'no'} read from the README's Export section."""
  text = open(os.path.join(ROOT, 'README.md')).read()
  table = {}
  for fmt, cells in re.findall(r'^\| `(\w+)` \| [^|]+ \|((?: [^|]+ \|){6})$', text, re.M):
    for column, cell in zip(COLUMNS, cells.strip(' |').split(' | ')):
      table[column, fmt] = cell.split()[0]
  return table


def numpy_logits(model, params, images):
  """The NumPy reference ViT (tests/numpy_vit.py) with `model`'s pooling and GELU."""
  return vit_forward(params, images, patch_size=model.patch_size, classifier=model.classifier,
                     gelu=gelu_tanh if model.gelu_approximate else gelu_exact)[0]


@pytest.fixture(scope='module')
def sources():
  out = {}
  for name, (registry_name, shape) in SHAPES.items():
    model = get_model(registry_name, num_classes=5, **shape)
    params = zero_params(model, 16, CHANNELS.get(name, 3))  # shapes only: no compilation
    out[name] = export.Source.from_model(name, model, randomize(params, scale=0.1),
                                         image_size=16, class_names=tuple('abcde'))
  return out


@pytest.fixture(scope='module')
def exports(sources, tmp_path_factory):
  """{(source, format): export folder} for every pair the support table marks yes."""
  out = {}
  for (name, fmt), cell in support_table().items():
    if cell == 'yes':
      out[name, fmt] = str(tmp_path_factory.mktemp('exports') / f'{name}-{fmt}')
      export.export_source(sources[name], fmt, out[name, fmt])
  return out


def test_the_support_table_has_every_pair_and_the_tests_know_each_no():
  table = support_table()
  assert sorted(table) == sorted((c, f) for c in COLUMNS for f in export.FORMATS)
  assert sorted(k for k, v in table.items() if v == 'no') == sorted(REASONS)
  assert set(table.values()) == {'yes', 'no'}


def test_every_yes_pair_is_verified_by_the_other_framework(sources, exports):
  how = {'hf': 'ViTForImageClassification.from_pretrained', 'timm': 'timm 1.0',
         'onnx': 'onnxruntime', 'npz': 'checkpoint.load_pretrained'}
  assert len(exports) == 17
  for (name, fmt), folder in exports.items():
    check = json.load(open(os.path.join(folder, 'export.json')))['verification']
    assert how[fmt] in check['verified_with'], (name, fmt)
    assert len(check['max_abs_diff']) == 2 and check['tolerance'] == 1e-4
    assert max(check['max_abs_diff'].values()) <= 1e-4, (name, fmt, check)


def test_every_no_pair_is_refused_naming_the_reason(sources, tmp_path):
  for (name, fmt), reason in REASONS.items():
    with pytest.raises(export.UnsupportedError,
                       match=rf'--format={fmt} cannot export {name} \({sources[name].family}\): '
                       f'{reason}'):
      export.export_source(sources[name], fmt, str(tmp_path / 'a'))
  assert os.listdir(tmp_path) == []


def test_sources_are_checked_against_the_numpy_reference(sources):
  for source in (sources['token'], sources['gap']):
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


def torch_logits(model, images):
  """A torch model (NCHW) on NHWC float32 images -> logits (B, classes) NumPy."""
  with torch.no_grad():
    return model.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()


def test_timm_vit_export_loads_with_create_model_and_matches(sources, exports):
  for name in ('token', 'gap'):
    source, folder = sources[name], exports[name, 'timm']
    kwargs = json.load(open(os.path.join(folder, 'timm_config.json')))
    model = source.model
    assert kwargs['global_pool'] == {'token': 'token', 'gap': 'avg'}[name]
    assert kwargs['class_token'] == (name == 'token') and kwargs['fc_norm'] is False
    assert kwargs['act_layer'] == {'token': 'gelu_tanh', 'gap': 'gelu'}[name]
    assert int(kwargs['embed_dim'] * kwargs['mlp_ratio']) == model.mlp_dim
    assert (kwargs['in_chans'], kwargs['img_size'], kwargs['num_classes']) == (
        CHANNELS.get(name, 3), 16, 5)
    state = safetensors_numpy.load_file(os.path.join(folder, 'model.safetensors'))
    assert ('cls_token' in state) == (name == 'token') and 'fc_norm.weight' not in state
    assert state['blocks.1.attn.qkv.weight'].shape == (3 * model.hidden_size, model.hidden_size)
    timm_model = timm_lib.create_model(**kwargs)  # timm alone, no vit_jax code
    timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    images = source.images[:4]
    np.testing.assert_allclose(torch_logits(timm_model, images),
                               numpy_logits(model, source.params, images), atol=1e-4)


def timm_resnetv2(layers, width, groups, **kwargs):
  """timm's ResNetV2 as our ResNet: post-activation bottlenecks, TF-SAME StdConv2dSame
  (eps 1e-8), GroupNorm with our groups and epsilon 1e-6, 7x7/2 stem and SAME max-pool."""
  return ResNetV2(layers=layers, channels=[4 * width * 2**s for s in range(len(layers))],
                  stem_chs=width, stem_type='same', preact=False,
                  conv_layer=functools.partial(StdConv2dSame, eps=1e-8),
                  norm_layer=functools.partial(GroupNormAct, num_groups=groups, eps=1e-6),
                  **kwargs)


def test_timm_resnet_and_hybrid_load_into_timms_classes_and_match(sources, exports):
  """The exports load strictly into models built here from timm's classes (not through
  vit_jax.export.timm.create_model) and give the JAX model's logits."""
  resnet_model = timm_resnetv2([1, 1], 8, 8, num_classes=5, in_chans=3)
  backbone = timm_resnetv2([1, 1], 8, 8, num_classes=0, global_pool='', in_chans=3)
  hybrid_model = TimmViT(img_size=16, patch_size=1, in_chans=3, num_classes=5, embed_dim=32,
                         depth=1, num_heads=2, mlp_ratio=2, class_token=False,
                         global_pool='avg', fc_norm=False, act_layer='gelu_tanh',
                         embed_layer=functools.partial(HybridEmbed, backbone=backbone))
  for name, timm_model in (('resnet', resnet_model), ('hybrid', hybrid_model)):
    source, folder = sources[name], exports[name, 'timm']
    state = safetensors_numpy.load_file(os.path.join(folder, 'model.safetensors'))
    timm_model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    rng = np.random.default_rng(3)
    images = np.concatenate([source.images[:3], rng.uniform(-1, 1, (2, 16, 16, 3))]
                            ).astype(np.float32)
    np.testing.assert_allclose(torch_logits(timm_model, images), source.logits(images),
                               atol=1e-4, err_msg=name)
    rebuilt = timm.create_model(json.load(open(os.path.join(folder, 'timm_config.json'))))
    assert sorted(rebuilt.state_dict()) == sorted(state)
  assert 'patch_embed.backbone.stages.1.blocks.0.downsample.conv.weight' in state
  assert state['patch_embed.backbone.stem.conv.weight'].shape == (8, 3, 7, 7)


def test_timm_stem_only_hybrid_has_the_layout_of_timms_r_ti_hybrid(tmp_path):
  """R+ViT-Ti/16 (the BiT stem alone under the ViT) exports with the keys of timm's
  vit_tiny_r_s16_p8_224, whose backbone is the stem without a `stem.` prefix."""
  shape = dict(hidden_size=32, mlp_dim=64, num_heads=2, num_layers=1, resnet_width=8,
               patch_size=2)
  model = get_model('R+ViT-Ti_16', num_classes=3, **shape)
  source = export.Source.from_model('R+ViT-Ti_16', model, randomize(zero_params(model, 16)),
                                    image_size=16)
  manifest = export.export_source(source, 'timm', str(tmp_path / 'timm'))
  assert max(manifest['verification']['max_abs_diff'].values()) <= 1e-4
  state = safetensors_numpy.load_file(str(tmp_path / 'timm' / 'model.safetensors'))
  stock = timm_lib.create_model('vit_tiny_r_s16_p8_224', img_size=16, patch_size=2,
                                num_classes=3, embed_dim=32, depth=1, num_heads=2)
  assert sorted(stock.state_dict()) == sorted(state)
  assert state['patch_embed.backbone.conv.weight'].shape == (8, 3, 7, 7)


def test_timm_kernel_makes_timms_weight_standardisation_give_ours():
  """timm standardises (w - mean) / sqrt(var + 1e-8), ours (w - mean) / (std + 1e-5): with the
  exported kernel timm's StdConv2dSame convolves with exactly our standardised kernel, for
  output channels of very different scales (and a zero one); the raw kernel would not."""
  rng = np.random.default_rng(0)
  kernel = (rng.normal(0, 1, (3, 3, 4, 5)) * np.array([1e-3, 1e-2, 0.1, 1, 0])).astype(np.float32)
  ours = np.asarray(resnet.standardize(kernel))
  conv = StdConv2dSame(4, 5, 3, eps=1e-8)
  x = torch.from_numpy(rng.normal(0, 1, (2, 4, 6, 6)).astype(np.float32))
  plain = lambda w: torch.nn.functional.conv2d(
      x, torch.from_numpy(w.transpose(3, 2, 0, 1).copy()), padding=1).numpy()
  with torch.no_grad():
    conv.weight.copy_(torch.from_numpy(timm.timm_kernel(ours).transpose(3, 2, 0, 1)))
    np.testing.assert_allclose(conv(x).numpy(), plain(ours), atol=2e-5)
    conv.weight.copy_(torch.from_numpy(kernel.transpose(3, 2, 0, 1)))
    assert np.abs(conv(x).numpy() - plain(ours)).max() > 1e-2


def test_onnx_of_weight_standardised_models_uses_the_standardised_kernels(sources):
  source = sources['resnet']
  kernels = stdconv.standardized_kernels(source)
  assert sorted(kernels)[:2] == ['block1/unit1/conv1/kernel', 'block1/unit1/conv2/kernel']
  assert len(kernels) == 1 + 2 * 4  # the root and four per unit (conv1-3, conv_proj)
  assert 'embedding/kernel' not in stdconv.standardized_kernels(sources['hybrid'])
  flat = pretrained.flatten(source.params)
  for path, kernel in kernels.items():
    centered = flat[path] - flat[path].mean(axis=(0, 1, 2))
    np.testing.assert_allclose(kernel, centered / (centered.std(axis=(0, 1, 2)) + 1e-5),
                               atol=1e-5)
  params = stdconv.standardized_params(source)
  with stdconv.plain_convolutions():  # traced (and so intercepted) inside the block
    got = jax.jit(lambda p, x: source.model.apply({'params': p}, x, train=False))(
        params, source.images)
  np.testing.assert_allclose(got, source.logits(source.images), atol=1e-5)


def test_onnx_exports_have_a_dynamic_batch_and_match(sources, exports):
  """Batches of 1 and 5 (the export was verified on 8 and 3) against the NumPy reference ViT
  for the plain ViTs, the JAX model otherwise."""
  for name, source in sources.items():
    session = onnxruntime.InferenceSession(os.path.join(exports[name, 'onnx'], 'model.onnx'))
    (inp,) = session.get_inputs()
    channels = CHANNELS.get(name, 3)
    assert inp.name == 'images' and isinstance(inp.shape[0], str)
    assert inp.shape[1:] == [16, 16, channels]
    for batch in (1, 5):
      rng = np.random.default_rng(batch)
      images = rng.uniform(-1, 1, (batch, 16, 16, channels)).astype(np.float32)
      got = session.run(['logits'], {'images': images})[0]
      if name in ('token', 'gap'):
        want = numpy_logits(source.model, source.params, images)
      else:  # the JAX model, padded to the verification's batch of 8 (compiled already)
        want = source.logits(np.concatenate([images, source.images])[:8])[:batch]
      np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)


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


def test_a_run_exported_where_its_data_is_not_keeps_its_class_names(tmp_path):
  """A run's class_names.json gives the export its labels when the dataset cannot be read
  (trained elsewhere, or the data since moved); the check then runs on the embedded digits,
  read as colour for this run's colour model."""
  rng = np.random.default_rng(0)
  for split in ('train', 'test'):
    for name in ('cat', 'dog', 'eel'):
      os.makedirs(tmp_path / 'tree' / split / name)
      for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).save(
            tmp_path / 'tree' / split / name / f'{i}.png')
  config = quickstart.get_config()
  config.dataset, config.model.num_layers = f'folder:{tmp_path / "tree"}', 1
  config.total_steps = config.log_every = config.eval_every = config.checkpoint_every = 2
  config.batch_size, config.eval.fewshot_shots = 4, ()
  config.data.cache_dir = str(tmp_path / 'cache')
  train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert json.loads((tmp_path / 'run' / 'class_names.json').read_text()) == ['cat', 'dog', 'eel']
  os.rename(tmp_path / 'tree', tmp_path / 'moved')
  export.export(str(tmp_path / 'run'), 'npz', str(tmp_path / 'npz'))
  manifest = json.loads((tmp_path / 'npz' / 'export.json').read_text())
  assert manifest['class_names'] == ['cat', 'dog', 'eel']
  assert ("8 images of the embedded digits (the run's dataset is not readable here)" in
          manifest['verification']['max_abs_diff'])


@pytest.fixture(scope='module')
def resnet_run(tmp_path_factory):
  """A finished 2-step run of a tiny BiT ResNet (one 16-wide stage) on the 8x8 digits."""
  config = quickstart.get_config()
  config.model = config_lib.model_config('BiT-R14x0.25', resnet_layers=(1,))
  config.total_steps = config.log_every = config.eval_every = config.checkpoint_every = 2
  config.batch_size, config.eval.fewshot_shots = 32, ()
  workdir = tmp_path_factory.mktemp('resnet_run')
  train.train_and_evaluate(config, str(workdir))
  return str(workdir)


def test_cli_exports_a_trained_resnet_to_timm_and_onnx(resnet_run, tmp_path):
  proc = run_cli(f'--workdir={resnet_run}', '--format=timm', f'--out={tmp_path / "timm"}')
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert re.search(r'largest absolute logit difference \S+ <= 0.0001 \(timm 1\.0', proc.stdout)
  manifest = json.loads((tmp_path / 'timm' / 'export.json').read_text())
  assert manifest['family'] == 'resnet' and manifest['channels'] == 1
  config = json.loads((tmp_path / 'timm' / 'timm_config.json').read_text())
  assert (config['layers'], config['stem_chs'], config['num_groups']) == ([1], 16, 16)
  export.export(resnet_run, 'onnx', str(tmp_path / 'onnx'))
  session = onnxruntime.InferenceSession(str(tmp_path / 'onnx' / 'model.onnx'))
  test = data.load_split('digits', 'test')
  images = np.asarray(data.preprocess_eval(jnp.asarray(test.images[:6]), image_size=8))
  _, ours, params = checkpoint.load_run(resnet_run)
  np.testing.assert_allclose(session.run(['logits'], {'images': images})[0],
                             ours.apply({'params': params}, images, train=False), atol=1e-4)
  with pytest.raises(ValueError, match='holds a timm hybrid or ResNet; only ViT exports'):
    timm.load(str(tmp_path / 'timm'))


def zero_params(model, image_size, channels=3):
  """Zero parameters of the right shapes for (S, S, C) images, without compiling `init`."""
  return pretrained.unflatten({k: np.zeros(v, np.float32) for k, v in
                               models.param_shapes(model, image_size, channels).items()})


def test_resnets_timm_cannot_hold_and_other_errors_are_one_clear_error(sources, tmp_path):
  for name, overrides, reason in (
      ('BiT-R14x0.25-small', {}, r"resnet_stem='small': timm's ResNetV2 stems downsample 4x"),
      ('BiT-R14x0.25', dict(resnet_width=12), r'resnet_width=12: timm\'s ResNetV2 rounds channel '
       'counts to multiples of 8')):
    resnet_model = get_model(name, num_classes=3, **overrides)
    source = export.Source.from_model(name, resnet_model, zero_params(resnet_model, 8),
                                      image_size=8, images=np.zeros((1, 8, 8, 3)))
    with pytest.raises(export.UnsupportedError,
                       match=rf'--format=timm cannot export {name} \(resnet\): {reason}'):
      export.export_source(source, 'timm', str(tmp_path / 'a'))
  with pytest.raises(ValueError, match=r"--format='tf' is not one of \('hf', 'timm'"):
    export.export_source(sources['token'], 'tf', str(tmp_path / 'a'))
  (tmp_path / 'full').mkdir()
  (tmp_path / 'full' / 'keep').write_text('')
  with pytest.raises(FileExistsError, match='already exists and is not empty'):
    export.export_source(sources['token'], 'npz', str(tmp_path / 'full'))
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


def test_timm_export_without_timm_fails_and_writes_nothing(sources, tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'timm', None)  # `import timm` raises ImportError
  with pytest.raises(export.VerificationError, match=r'verified by timm, which is not importable '
                     r".*pip install 'vit_jax\[export\]'"):
    export.export_source(sources['token'], 'timm', str(tmp_path / 'out'))
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
