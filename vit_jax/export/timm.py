"""timm `VisionTransformer`: export and import.

Export writes `model.safetensors` (timm's key names: `patch_embed.proj`, `cls_token`,
`pos_embed`, `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`,
`head`; q, k and v concatenated head-major on qkv's output axis) and `timm_config.json`, the
keyword arguments of `timm.create_model` that build the matching model:

  model = timm.create_model(**json.load(open('timm_config.json')))
  model.load_state_dict(safetensors.torch.load_file('model.safetensors'))

Pooling: classifier='token' -> global_pool='token'; classifier='gap' -> class_token=False,
global_pool='avg' and fc_norm=False, because our final LayerNorm acts on every token before
the mean (timm's default for 'avg' would move it after the pooling, a different function).
GELU: timm's default is the exact GELU; `act_layer` is set to 'gelu_tanh' for our default
tanh-approximated GELU (timm >= 0.9), so the logits match either way. With an older timm
without 'gelu_tanh', train with gelu_approximate=False for exact parity.

Verification loads the file with timm when timm is importable; otherwise (timm needs
torchvision) it reads the weights back from the file into our model and runs that, and says so.
"""
import os
from typing import Any, Callable, Mapping

import numpy as np

from vit_jax import files, pretrained
from vit_jax.export import layout
from vit_jax.export.source import Source, predictor

WEIGHTS = 'model.safetensors'
CONFIG = 'timm_config.json'
GELU = {True: 'gelu_tanh', False: 'gelu'}  # our gelu_approximate -> timm act_layer
POOL = {'token': 'token', 'gap': 'avg'}  # our classifier -> timm global_pool


def _entries(num_layers: int, class_token: bool) -> list[layout.Entry]:
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


def check(source: Source) -> None:
  """Raises UnsupportedError for models timm's VisionTransformer cannot represent."""
  source.require_plain_vit('timm', "timm's VisionTransformer")
  model = source.model
  if int(model.hidden_size * (model.mlp_dim / model.hidden_size)) != model.mlp_dim:
    raise source.unsupported('timm', f'mlp_dim={model.mlp_dim} is not reproduced by timm\'s '
                             f'int(embed_dim * mlp_ratio) with hidden_size={model.hidden_size}')


def create_kwargs(source: Source) -> dict[str, Any]:
  """The `timm.create_model` keyword arguments that build `source`'s architecture (the base
  name only supplies defaults; every architecture argument is given)."""
  model = source.model
  return {
      'model_name': 'vit_base_patch16_224', 'pretrained': False,
      'img_size': source.image_size, 'patch_size': model.patch_size,
      'in_chans': source.channels, 'num_classes': source.num_classes,
      'embed_dim': model.hidden_size, 'depth': model.num_layers, 'num_heads': model.num_heads,
      'mlp_ratio': model.mlp_dim / model.hidden_size, 'qkv_bias': True,
      'class_token': model.classifier == 'token', 'global_pool': POOL[model.classifier],
      'fc_norm': False, 'act_layer': GELU[model.gelu_approximate],
  }


def state_dict(source: Source) -> dict[str, np.ndarray]:
  """`source`'s parameters as a timm VisionTransformer state dict."""
  model = source.model
  return layout.to_state_dict(pretrained.flatten(source.params),
                              _entries(model.num_layers, model.classifier == 'token'))


def write(source: Source, directory: str) -> None:
  from safetensors import numpy as safetensors_numpy
  with files.atomic_open(os.path.join(directory, WEIGHTS), 'wb') as f:
    f.write(safetensors_numpy.save(state_dict(source), metadata={'format': 'pt'}))
  files.write_json(os.path.join(directory, CONFIG), create_kwargs(source))


def runner(source: Source, directory: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
  """timm's model with the exported weights, as a function of NHWC float32 images; without
  timm, our model with the weights read back from the exported file."""
  try:
    import timm
  except ImportError as e:
    return predictor(*load(directory)), (f'timm is not importable here ({e}): checked by '
                                         f'reading {WEIGHTS} back into our model, not by '
                                         'running timm')
  import torch
  from safetensors import torch as safetensors_torch
  model = timm.create_model(**files.read_json(os.path.join(directory, CONFIG)))
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
  shapes = layout.param_shapes(model, (grid * patch[0], grid * patch[1]), channels)
  flat = layout.from_state_dict(arrays, _entries(model.num_layers, class_token), shapes,
                                'the timm checkpoint')
  return model, pretrained.unflatten(flat)


def load(directory: str):
  """An exported folder (model.safetensors + timm_config.json) -> (our model, params)."""
  from safetensors import numpy as safetensors_numpy
  kwargs = files.read_json(os.path.join(directory, CONFIG))
  if kwargs.get('act_layer', 'gelu') not in GELU.values():
    raise ValueError(f'act_layer={kwargs["act_layer"]!r} in {CONFIG} has no equivalent in our '
                     f'ViT ({sorted(GELU.values())}).')
  return import_state_dict(safetensors_numpy.load_file(os.path.join(directory, WEIGHTS)),
                           num_heads=kwargs['num_heads'],
                           gelu_approximate=kwargs.get('act_layer') == GELU[True])
