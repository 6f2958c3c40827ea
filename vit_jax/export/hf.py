"""Hugging Face transformers `ViTForImageClassification`: export and import.

Export writes `config.json`, `model.safetensors` and `preprocessor_config.json` into a folder
that `ViTForImageClassification.from_pretrained(folder)` and
`AutoImageProcessor.from_pretrained(folder)` load. The weights use the key layout of the
published Hub ViT checkpoints (`vit.encoder.layer.{i}.attention.attention.query.weight`, ...),
which transformers 4.x loads as is and 5.x renames on load (`vit.layers.{i}.attention.q_proj`);
import accepts both layouts.

Only plain ViTs with a class token and no pre-logits layer have an equivalent here:
ViTForImageClassification classifies the class token's final state with one Linear layer.
The processor resizes to the training image size (bilinear, PIL) and maps [0, 255] to [-1, 1]
(rescale 1/255, mean = std = 0.5), which is what our evaluation feeds the model.
"""
import os
import re
from typing import Any, Callable, Mapping

from absl import logging
import numpy as np

from vit_jax import files, models, pretrained
from vit_jax.export import layout
from vit_jax.export.source import Source
from vit_jax.export.verify import VerificationError

WEIGHTS = 'model.safetensors'
GELU = {True: 'gelu_pytorch_tanh', False: 'gelu'}  # our gelu_approximate -> hidden_act
_TANH_GELUS = ('gelu_pytorch_tanh', 'gelu_new')  # HF activations equal to the tanh GELU
LAYER_NORM_EPS = 1e-6
# transformers 5.x module names -> the Hub checkpoints' (and 4.x) names.
_TO_HUB_NAMES = [(r'^vit\.layers\.', 'vit.encoder.layer.'),
                 (r'\.attention\.q_proj\.', '.attention.attention.query.'),
                 (r'\.attention\.k_proj\.', '.attention.attention.key.'),
                 (r'\.attention\.v_proj\.', '.attention.attention.value.'),
                 (r'\.attention\.o_proj\.', '.attention.output.dense.'),
                 (r'\.mlp\.fc1\.', '.intermediate.dense.'),
                 (r'\.mlp\.fc2\.', '.output.dense.')]


def _entries(num_layers: int) -> list[layout.Entry]:
  """Our flat parameter paths <-> Hub ViTForImageClassification keys."""
  entries = [
      layout.entry('embedding/kernel', 'vit.embeddings.patch_embeddings.projection.weight',
                   'conv'),
      layout.entry('embedding/bias', 'vit.embeddings.patch_embeddings.projection.bias'),
      layout.entry('cls', 'vit.embeddings.cls_token'),
      layout.entry('Transformer/posembed_input/pos_embedding',
                   'vit.embeddings.position_embeddings'),
      *layout.norm('Transformer/encoder_norm', 'vit.layernorm'),
      *layout.dense('head', 'classifier')]
  for i in range(num_layers):
    ours, theirs = f'Transformer/encoderblock_{i}', f'vit.encoder.layer.{i}'
    attention = f'{ours}/MultiHeadDotProductAttention_0'
    entries += [
        *layout.norm(f'{ours}/LayerNorm_0', f'{theirs}.layernorm_before'),
        *[e for name in ('query', 'key', 'value')
          for e in layout.dense(f'{attention}/{name}', f'{theirs}.attention.attention.{name}',
                                bias_kind='flat')],
        *layout.dense(f'{attention}/out', f'{theirs}.attention.output.dense', 'linear_out'),
        *layout.norm(f'{ours}/LayerNorm_1', f'{theirs}.layernorm_after'),
        *layout.dense(f'{ours}/MlpBlock_0/Dense_0', f'{theirs}.intermediate.dense'),
        *layout.dense(f'{ours}/MlpBlock_0/Dense_1', f'{theirs}.output.dense')]
  return entries


def check(source: Source) -> None:
  """Raises UnsupportedError for models ViTForImageClassification cannot represent."""
  source.require_plain_vit('hf', 'ViTForImageClassification')
  if source.model.classifier != 'token':
    raise source.unsupported('hf', f"classifier={source.model.classifier!r}: "
                             "ViTForImageClassification classifies the class token only; use "
                             "--format=timm, onnx or npz")


def config(source: Source) -> dict[str, Any]:
  """The `config.json` of a ViTForImageClassification matching `source`'s model."""
  model = source.model
  labels = source.class_names or tuple(f'LABEL_{i}' for i in range(source.num_classes))
  return {
      'architectures': ['ViTForImageClassification'], 'model_type': 'vit',
      'hidden_size': model.hidden_size, 'num_hidden_layers': model.num_layers,
      'num_attention_heads': model.num_heads, 'intermediate_size': model.mlp_dim,
      'hidden_act': GELU[model.gelu_approximate], 'layer_norm_eps': LAYER_NORM_EPS,
      'hidden_dropout_prob': 0.0, 'attention_probs_dropout_prob': 0.0, 'qkv_bias': True,
      'image_size': source.image_size, 'patch_size': model.patch_size,
      'num_channels': source.channels, 'torch_dtype': 'float32',
      'id2label': {str(i): name for i, name in enumerate(labels)},
      'label2id': {name: i for i, name in enumerate(labels)},
  }


def preprocessor_config(source: Source) -> dict[str, Any]:
  """`preprocessor_config.json`: resize to S x S (bilinear), then x / 255 * 2 - 1."""
  return {
      'image_processor_type': 'ViTImageProcessor', 'do_resize': True,
      'size': {'height': source.image_size, 'width': source.image_size}, 'resample': 2,
      'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
      'image_mean': [0.5] * source.channels, 'image_std': [0.5] * source.channels,
  }


def state_dict(source: Source) -> dict[str, np.ndarray]:
  """`source`'s parameters as a Hub-layout ViTForImageClassification state dict."""
  return layout.to_state_dict(pretrained.flatten(source.params),
                              _entries(source.model.num_layers))


def write(source: Source, directory: str) -> None:
  from safetensors import numpy as safetensors_numpy
  with files.atomic_open(os.path.join(directory, WEIGHTS), 'wb') as f:
    f.write(safetensors_numpy.save(state_dict(source), metadata={'format': 'pt'}))
  files.write_json(os.path.join(directory, 'config.json'), config(source))
  files.write_json(os.path.join(directory, 'preprocessor_config.json'),
                   preprocessor_config(source))


def runner(source: Source, directory: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
  """The exported folder loaded by `ViTForImageClassification.from_pretrained`, as a function
  of NHWC float32 images; fails if any weight is missing, unexpected or mis-shaped."""
  del source
  import torch
  import transformers
  transformers.utils.logging.disable_progress_bar()
  model, info = transformers.ViTForImageClassification.from_pretrained(
      directory, output_loading_info=True)
  problems = {k: v for k, v in info.items() if v}
  if problems:
    raise VerificationError(f'transformers loaded the export with problems: {problems}')
  model.eval()

  def run(images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
      pixels = torch.from_numpy(np.array(images.transpose(0, 3, 1, 2), np.float32))
      return model(pixel_values=pixels).logits.numpy()
  return run, (f'transformers {transformers.__version__} '
               'ViTForImageClassification.from_pretrained')


def model_from_config(hf_config: Mapping[str, Any] | Any):
  """Our ViT for a ViTConfig (or its dict); returns (model, image_size, channels)."""
  cfg = dict(hf_config.to_dict() if hasattr(hf_config, 'to_dict') else hf_config)
  act = cfg.get('hidden_act', 'gelu')
  if act not in ('gelu', *_TANH_GELUS):
    raise ValueError(f'hidden_act={act!r} has no equivalent in our ViT (exact GELU: "gelu", '
                     f'tanh GELU: {_TANH_GELUS}).')
  if not cfg.get('qkv_bias', True):
    raise ValueError('qkv_bias=False has no equivalent in our ViT (it has query/key/value '
                     'biases).')
  eps = cfg.get('layer_norm_eps', 1e-12)
  if eps != LAYER_NORM_EPS:
    logging.warning('layer_norm_eps=%g in the Hugging Face config; our ViT uses %g (logits '
                    'differ by far less than float32 tolerance for normal activations).',
                    eps, LAYER_NORM_EPS)
  num_classes = len(cfg['id2label']) if cfg.get('id2label') else cfg.get('num_labels', 2)
  model = layout.vit_for_weights(
      num_classes=num_classes, hidden_size=cfg.get('hidden_size', 768),
      mlp_dim=cfg.get('intermediate_size', 3072), num_heads=cfg.get('num_attention_heads', 12),
      num_layers=cfg.get('num_hidden_layers', 12), patch_size=cfg.get('patch_size', 16),
      classifier='token', gelu_approximate=act != 'gelu')
  return model, cfg.get('image_size', 224), cfg.get('num_channels', 3)


def import_state_dict(state: Mapping[str, Any], hf_config: Mapping[str, Any] | Any):
  """Hugging Face ViTForImageClassification weights -> (our model, params).

  Args:
    state: a state dict (torch tensors or NumPy arrays) in either key layout.
    hf_config: its ViTConfig, or the config as a dict.
  """
  model, image_size, channels = model_from_config(hf_config)
  arrays = {}
  for key, value in state.items():
    for pattern, replacement in _TO_HUB_NAMES:
      key = re.sub(pattern, replacement, key)
    arrays[key] = value.detach().cpu().numpy() if hasattr(value, 'detach') else np.asarray(value)
  flat = layout.from_state_dict(arrays, _entries(model.num_layers),
                                models.param_shapes(model, image_size, channels),
                                'the Hugging Face checkpoint')
  return model, pretrained.unflatten(flat)


def load(directory: str):
  """A `save_pretrained` / exported folder (config.json + model.safetensors) -> (model,
  params). Pickle-based `pytorch_model.bin` files are refused."""
  from safetensors import numpy as safetensors_numpy
  weights = os.path.join(directory, WEIGHTS)
  if not os.path.exists(weights):
    raise FileNotFoundError(f'{directory} has no {WEIGHTS} (pickled pytorch_model.bin files are '
                            'not read; save with safe_serialization=True).')
  return import_state_dict(safetensors_numpy.load_file(weights),
                           files.read_json(os.path.join(directory, 'config.json')))
