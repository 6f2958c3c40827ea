"""timm: export of ViTs, hybrids and ResNets; import of ViTs.

Export writes `model.safetensors` in timm's key layout and `timm_config.json`, the arguments of
`timm.create_model` that build the matching model. `create_model(config)` builds it (timm
alone, see the README for the same code without vit_jax); the export is verified by exactly
that, `load_state_dict` (strict) and timm's forward.

- ViT: timm's `VisionTransformer` (`patch_embed.proj`, `cls_token`, `pos_embed`,
  `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`; q, k and
  v concatenated head-major on qkv's output axis); `timm.create_model(**config)`.
- Hybrid: the layout of timm's `vit_base_r50_s16_224` / `_384` (the ViT above with a
  `patch_embed.backbone`, timm's non-pre-activation `ResNetV2`, in a `HybridEmbed`); the
  config's `backbone` holds that ResNetV2's arguments, since the registered hybrid names fix
  the stages and width.
- ResNet: timm's `ResNetV2` with `preact=False` (post-activation bottlenecks as ours; the
  `resnetv2_50x1_bit` weights are pre-activation, another function) and a 1x1-conv head, built
  through the `resnetv2_50` registration with our stages and widths.

Both ResNets: `stem.conv` (7x7/2) + `stem.norm` + SAME max-pool ('same' stem, TF padding as
ours), `stages.{s}.blocks.{u}.{conv1, norm1, conv2, norm2, conv3, norm3}` and
`downsample.{conv, norm}` in each stage's first unit; StdConv2dSame convolutions and GroupNorm
with our group count and epsilon (1e-6, Flax's; timm's default is 1e-5).
Weight standardisation: ours is (w - mean) / (std + 1e-5), timm's (w - mean) / sqrt(var + eps)
with eps = 1e-8 (its hybrids'). Each exported kernel is our standardised kernel scaled per
output channel so that timm's standardisation gives exactly our standardised kernel back (see
`timm_kernel`); the scale itself is immaterial to a standardised convolution.

Pooling: classifier='token' -> global_pool='token'; classifier='gap' -> class_token=False,
global_pool='avg' and fc_norm=False, because our final LayerNorm acts on every token before
the mean (timm's default for 'avg' would move it after the pooling, a different function).
GELU: timm's default is the exact GELU; `act_layer` is 'gelu_tanh' for our default
tanh-approximated GELU and 'gelu' for gelu_approximate=False, so the logits match either way.
"""
import functools
import os
from typing import Any, Callable, Mapping

import numpy as np

from vit_jax import files, models, pretrained
from vit_jax.export import layout, stdconv
from vit_jax.export.source import Source
from vit_jax.export.verify import VerificationError

WEIGHTS = 'model.safetensors'
CONFIG = 'timm_config.json'
GELU = {True: 'gelu_tanh', False: 'gelu'}  # our gelu_approximate -> timm act_layer
POOL = {'token': 'token', 'gap': 'avg'}  # our classifier -> timm global_pool
STD_CONV_EPS = 1e-8  # timm's StdConv2dSame eps in its ViT hybrids
GROUP_NORM_EPS = 1e-6  # ours (Flax's GroupNorm default)
_RESNET_FIELDS = ('std_conv_eps', 'num_groups', 'group_norm_eps')  # -> timm layer objects


def _vit_entries(num_layers: int, class_token: bool) -> list[layout.Entry]:
  """Our flat parameter paths <-> timm VisionTransformer keys."""
  entries = [layout.entry('embedding/kernel', 'patch_embed.proj.weight', 'conv'),
             layout.entry('embedding/bias', 'patch_embed.proj.bias'),
             layout.entry('Transformer/posembed_input/pos_embedding', 'pos_embed'),
             *layout.norm('Transformer/encoder_norm', 'norm'),
             *layout.dense('head', 'head')]
  if class_token:
    entries.append(layout.entry('cls', 'cls_token'))
  for i in range(num_layers):
    ours, theirs = f'Transformer/encoderblock_{i}', f'blocks.{i}'
    attention = f'{ours}/MultiHeadDotProductAttention_0'
    qkv = [f'{attention}/{name}' for name in ('query', 'key', 'value')]
    entries += [
        *layout.norm(f'{ours}/LayerNorm_0', f'{theirs}.norm1'),
        layout.entry([f'{p}/kernel' for p in qkv], f'{theirs}.attn.qkv.weight', 'linear'),
        layout.entry([f'{p}/bias' for p in qkv], f'{theirs}.attn.qkv.bias', 'flat'),
        *layout.dense(f'{attention}/out', f'{theirs}.attn.proj', 'linear_out'),
        *layout.norm(f'{ours}/LayerNorm_1', f'{theirs}.norm2'),
        *layout.dense(f'{ours}/MlpBlock_0/Dense_0', f'{theirs}.mlp.fc1'),
        *layout.dense(f'{ours}/MlpBlock_0/Dense_1', f'{theirs}.mlp.fc2')]
  return entries


def _resnet_entries(layers: tuple[int, ...], prefix: str, stem: str) -> list[layout.Entry]:
  """Our ResNet paths <-> timm ResNetV2 (preact=False) keys under `prefix`; `stem` is the
  stem's prefix ('stem.' in a ResNetV2, '' for a stem-only hybrid backbone)."""
  entries = [layout.entry('conv_root/kernel', f'{prefix}{stem}conv.weight', 'conv'),
             *layout.norm('gn_root', f'{prefix}{stem}norm')]
  for s, units in enumerate(layers):
    for u in range(units):
      ours, theirs = f'block{s + 1}/unit{u + 1}', f'{prefix}stages.{s}.blocks.{u}'
      convs = [(f'conv{i}', f'gn{i}', f'conv{i}', f'norm{i}') for i in (1, 2, 3)]
      if u == 0:  # our first unit of every stage projects the residual, as timm's
        convs.append(('conv_proj', 'gn_proj', 'downsample.conv', 'downsample.norm'))
      for conv, gn, their_conv, their_norm in convs:
        entries += [layout.entry(f'{ours}/{conv}/kernel', f'{theirs}.{their_conv}.weight', 'conv'),
                    *layout.norm(f'{ours}/{gn}', f'{theirs}.{their_norm}')]
  return entries


def _entries(source: Source) -> list[layout.Entry]:
  """Our flat parameter paths <-> the timm model's state-dict keys."""
  model = source.model
  if source.family == 'resnet':
    return [*_resnet_entries(model.resnet_layers, '', 'stem.'),
            layout.entry('head/kernel', 'head.fc.weight', 'linear_1x1'),
            layout.entry('head/bias', 'head.fc.bias')]
  entries = _vit_entries(model.num_layers, model.classifier == 'token')
  if source.family == 'hybrid':
    layers = model.resnet_layers
    entries += _resnet_entries(layers, 'patch_embed.backbone.', 'stem.' if layers else '')
  return entries


def check(source: Source) -> None:
  """Raises UnsupportedError for models timm's classes cannot represent."""
  model = source.model
  if source.family == 't2t':
    raise source.unsupported('timm', 'timm has no T2T-ViT; use --format=onnx or npz')
  if source.family in ('vit', 'hybrid'):
    source.require_plain_vit('timm', "timm's VisionTransformer", families=('vit', 'hybrid'))
    if int(model.hidden_size * (model.mlp_dim / model.hidden_size)) != model.mlp_dim:
      raise source.unsupported('timm', f'mlp_dim={model.mlp_dim} is not reproduced by timm\'s '
                               f'int(embed_dim * mlp_ratio) with hidden_size={model.hidden_size}')
  if source.family in ('hybrid', 'resnet'):
    if model.resnet_stem != 'bit':
      raise source.unsupported('timm', f"resnet_stem={model.resnet_stem!r}: timm's ResNetV2 "
                               "stems downsample 4x (7x7/2 conv and max-pool), the 'small' stem "
                               'does not; use --format=onnx or npz')
    if model.resnet_width % 8:
      raise source.unsupported('timm', f'resnet_width={model.resnet_width}: timm\'s ResNetV2 '
                               'rounds channel counts to multiples of 8; use --format=onnx or npz')


def _resnetv2_kwargs(source: Source) -> dict[str, Any]:
  """ResNetV2 arguments (JSON) of `source`'s ResNet; `_RESNET_FIELDS` become layer objects."""
  model = source.model
  layers, width = model.resnet_layers, model.resnet_width
  return {'layers': list(layers), 'channels': [4 * width * 2**s for s in range(len(layers))],
          'stem_chs': width, 'stem_type': 'same', 'preact': False,
          'output_stride': 2 ** (len(layers) + 1), 'in_chans': source.channels,
          'std_conv_eps': STD_CONV_EPS, 'num_groups': np.gcd(32, width).item(),
          'group_norm_eps': GROUP_NORM_EPS}


def create_kwargs(source: Source) -> dict[str, Any]:
  """`timm_config.json`: the `timm.create_model` keyword arguments that build `source`'s
  architecture (every architecture argument is given; the name supplies the layout), plus
  for hybrids and ResNets what `create_model(config)` turns into timm objects first."""
  model = source.model
  if source.family == 'resnet':
    return {'model_name': 'resnetv2_50', 'pretrained': False,
            'num_classes': source.num_classes, 'global_pool': 'avg', **_resnetv2_kwargs(source)}
  kwargs = {
      'model_name': 'vit_base_patch16_224', 'pretrained': False,
      'img_size': source.image_size, 'patch_size': model.patch_size,
      'in_chans': source.channels, 'num_classes': source.num_classes,
      'embed_dim': model.hidden_size, 'depth': model.num_layers, 'num_heads': model.num_heads,
      'mlp_ratio': model.mlp_dim / model.hidden_size, 'qkv_bias': True,
      'class_token': model.classifier == 'token', 'global_pool': POOL[model.classifier],
      'fc_norm': False, 'act_layer': GELU[model.gelu_approximate],
  }
  if source.family == 'hybrid':
    kwargs['backbone'] = _resnetv2_kwargs(source)  # in a HybridEmbed, as vit_base_r50_s16_224
  return kwargs


def create_model(config: Mapping[str, Any]):
  """timm's model (torch.nn.Module) for a `timm_config.json`: `timm.create_model(**config)`,
  where a hybrid's `backbone` first becomes a ResNetV2 in a HybridEmbed and a ResNet's
  `std_conv_eps`, `num_groups` and `group_norm_eps` its StdConv2dSame and GroupNormAct."""
  import timm
  from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
  from timm.models.resnetv2 import create_resnetv2_stem

  def layers(kwargs):
    kwargs = dict(kwargs)
    return kwargs, {
        'conv_layer': functools.partial(StdConv2dSame, eps=kwargs.pop('std_conv_eps')),
        'norm_layer': functools.partial(GroupNormAct, num_groups=kwargs.pop('num_groups'),
                                        eps=kwargs.pop('group_norm_eps'))}
  config = dict(config)
  if 'backbone' in config:
    backbone, objects = layers(config.pop('backbone'))
    if backbone['layers']:
      backbone = timm.create_model('resnetv2_50', num_classes=0, global_pool='', **backbone,
                                   **objects)
    else:  # the stem alone, as timm's vit_tiny_r_s16_p8 hybrids
      backbone = create_resnetv2_stem(backbone['in_chans'], backbone['stem_chs'], 'same',
                                      preact=False, **objects)
    config['embed_layer'] = functools.partial(HybridEmbed, backbone=backbone)
  elif 'std_conv_eps' in config:
    config, objects = layers(config)
    config.update(objects)
  return timm.create_model(**config)


def timm_kernel(standardized: np.ndarray, eps: float = STD_CONV_EPS) -> np.ndarray:
  """The kernel W (H, W, I, O) that timm's StdConv2d(Same) standardises, (W - mean) /
  sqrt(var + eps) per output channel, into `standardized` (ours, mean 0, variance v < 1):
  W = a * standardized with a^2 = eps / (1 - v), since then a^2 v + eps = a^2. (An output
  channel whose raw kernel is constant but not zero standardises, in float32, to a tiny
  constant in ours and to zero in timm; trained or initialised kernels are not constant.)"""
  v = np.var(standardized.astype(np.float64), axis=(0, 1, 2))
  return (standardized * np.sqrt(eps / np.maximum(1 - v, 1e-12))).astype(np.float32)


def state_dict(source: Source) -> dict[str, np.ndarray]:
  """`source`'s parameters as the timm model's state dict."""
  flat = dict(pretrained.flatten(source.params))
  flat.update({path: timm_kernel(kernel)
               for path, kernel in stdconv.standardized_kernels(source).items()})
  return layout.to_state_dict(flat, _entries(source))


def write(source: Source, directory: str) -> None:
  from safetensors import numpy as safetensors_numpy
  with files.atomic_open(os.path.join(directory, WEIGHTS), 'wb') as f:
    f.write(safetensors_numpy.save(state_dict(source), metadata={'format': 'pt'}))
  files.write_json(os.path.join(directory, CONFIG), create_kwargs(source))


def runner(source: Source, directory: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
  """timm's model built from the exported config, with the exported weights loaded strictly,
  as a function of NHWC float32 images."""
  del source
  try:
    import timm
    import torch
    from safetensors import torch as safetensors_torch
  except ImportError as e:
    raise VerificationError(f'--format=timm is verified by timm, which is not importable here '
                            f"({e}); pip install 'vit_jax[export]'. Nothing was written.") from e
  model = create_model(files.read_json(os.path.join(directory, CONFIG)))
  model.load_state_dict(safetensors_torch.load_file(os.path.join(directory, WEIGHTS)))
  model.eval()

  def run(images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
      return model(torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), np.float32))).numpy()
  return run, f'timm {timm.__version__} create_model + load_state_dict'


def import_state_dict(state: Mapping[str, Any], *, num_heads: int, gelu_approximate: bool = False):
  """timm VisionTransformer weights -> (our model, params).

  The architecture is read from the weights' shapes (width, depth, MLP width, patch size,
  channels, classes, class token or average pooling, square image size); the head count and
  the GELU variant (timm's default is exact) cannot be, so they are arguments.
  """
  arrays = {k: v.detach().cpu().numpy() if hasattr(v, 'detach') else np.asarray(v)
            for k, v in state.items()}
  if 'fc_norm.weight' in arrays:
    raise ValueError('The timm weights have fc_norm (a LayerNorm after pooling); our ViT '
                     'normalises tokens before pooling, so it cannot hold them.')
  if 'pos_embed' not in arrays or 'patch_embed.proj.weight' not in arrays:
    raise ValueError('Not timm VisionTransformer weights: pos_embed or patch_embed.proj.weight '
                     'is missing.')
  class_token = 'cls_token' in arrays
  width, channels, *patch = arrays['patch_embed.proj.weight'].shape
  grid = int(round(np.sqrt(arrays['pos_embed'].shape[1] - class_token)))
  model = layout.vit_for_weights(
      num_classes=arrays['head.weight'].shape[0], hidden_size=width,
      mlp_dim=arrays['blocks.0.mlp.fc1.weight'].shape[0], num_heads=num_heads,
      num_layers=sum(k.endswith('.norm1.weight') for k in arrays),
      patch_size=tuple(patch), classifier='token' if class_token else 'gap',
      gelu_approximate=gelu_approximate)
  shapes = models.param_shapes(model, (grid * patch[0], grid * patch[1]), channels)
  flat = layout.from_state_dict(arrays, _vit_entries(model.num_layers, class_token), shapes,
                                'the timm checkpoint')
  return model, pretrained.unflatten(flat)


def load(directory: str):
  """An exported ViT folder (model.safetensors + timm_config.json) -> (our model, params)."""
  from safetensors import numpy as safetensors_numpy
  kwargs = files.read_json(os.path.join(directory, CONFIG))
  if 'num_heads' not in kwargs or 'backbone' in kwargs:
    raise ValueError(f'{directory} holds a timm hybrid or ResNet; only ViT exports are '
                     'imported.')
  if kwargs.get('act_layer', 'gelu') not in GELU.values():
    raise ValueError(f'act_layer={kwargs["act_layer"]!r} in {CONFIG} has no equivalent in our '
                     f'ViT ({sorted(GELU.values())}).')
  return import_state_dict(safetensors_numpy.load_file(os.path.join(directory, WEIGHTS)),
                           num_heads=kwargs['num_heads'],
                           gelu_approximate=kwargs.get('act_layer') == GELU[True])
