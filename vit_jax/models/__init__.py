"""Model zoo registry: `get_model(name, num_classes=..., **overrides)`.

Names and sizes live in `vit_jax/models/registry.py`. Every module is called as
`model.apply(variables, images, train=False)` on NHWC float images and returns float32 logits.
"""
import dataclasses

from flax import traverse_util
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models import registry
from vit_jax.models.resnet import ResNet
from vit_jax.models.t2t import T2TViT
from vit_jax.models.vit import VisionTransformer, forward_with_intermediates

FAMILIES: dict[str, type[nn.Module]] = {
    'vit': VisionTransformer,
    'resnet': ResNet,
    't2t': T2TViT,
}


def model_fields(family: str) -> list[str]:
  """Constructor arguments a config may set for a model family."""
  return [f.name for f in dataclasses.fields(FAMILIES[family])
          if f.name not in ('parent', 'name', 'num_classes')]


def config_overrides(model_config) -> dict:
  """The overrides of a config's `model` section: every field but `name` (None = the
  registry's value)."""
  return {k: v for k, v in model_config.items() if k != 'name'}


def config_fields(model_config) -> dict:
  """`resolved_fields` of a config's `model` section."""
  return resolved_fields(model_config.name, **config_overrides(model_config))


def resolved_fields(name: str, **overrides) -> dict:
  """The registry's fields of model `name` with `overrides` applied (None keeps the registry's
  value); 'family' is 'vit', 'hybrid' (a ViT on a ResNet stem), 'resnet' or 't2t'."""
  fields = registry.get_model_config(name).to_dict()
  fields.update({k: v for k, v in overrides.items() if v is not None})
  if fields['family'] == 'vit' and fields.get('resnet_layers'):
    fields['family'] = 'hybrid'
  return fields


_SIZES = ('hidden_size', 'mlp_dim', 'num_heads', 'num_layers', 'representation_size',
          'resnet_width', 'token_dim')
_DTYPES = ('float32', 'bfloat16', 'float16')


def _check_values(kwargs: dict, name: str) -> None:
  """Raises ValueError naming a size that is not a positive integer, a dropout rate outside
  [0, 1) or an unsupported dtype."""
  for key in _SIZES:
    value = kwargs.get(key)
    if value is not None and (not isinstance(value, int) or value < 1):
      raise ValueError(f'{key}={value!r} must be a positive integer ({name}).')
  patch = kwargs.get('patch_size')
  if patch is not None and not all(isinstance(p, int) and p > 0
                                   for p in jax.tree_util.tree_leaves(patch)):
    raise ValueError(f'patch_size={patch!r} must be positive ({name}).')
  for key in ('dropout_rate', 'attention_dropout_rate'):
    if key in kwargs and not 0 <= kwargs[key] < 1:
      raise ValueError(f'{key}={kwargs[key]!r} must be in [0, 1) ({name}).')
  dtype = kwargs.get('dtype')
  if dtype is not None and (dtype if isinstance(dtype, str) else jnp.dtype(dtype).name
                            ) not in _DTYPES:
    raise ValueError(f'dtype={dtype!r} must be one of {_DTYPES} ({name}).')


def get_model(name: str, *, num_classes: int, **overrides) -> nn.Module:
  """Builds a registered model (see `registry.py` for the names) with overrides.

  Args:
    name: e.g. 'ViT-B_16' or 'ViT-B/16', 'R50+ViT-B_16', 'BiT-R50x1', 'T2T-ViT-14'.
    num_classes: size of the zero-initialised head.
    **overrides: constructor arguments of the family's module, e.g. num_layers=24,
      patch_size=4, dtype=jnp.bfloat16 (or 'bfloat16'). None keeps the registry's value, so a
      config can carry a slot for every field (`vit_jax.config.model_config`).

  Raises:
    ValueError: unknown name (lists the known ones), unknown override (lists the valid ones),
      or inconsistent sizes (names the fields and values).
  """
  config = registry.get_model_config(name)
  overrides = {k: v for k, v in overrides.items() if v is not None}
  family = config.family
  fields = model_fields(family)
  unknown = sorted(set(overrides) - set(fields))
  if unknown:
    raise ValueError(f'Unknown model override(s) {unknown} for {name!r} ({family}); '
                     f'valid: {fields}.')
  kwargs = {k: v for k, v in config.items() if k not in ('family', 'name')}
  kwargs.update(overrides)
  _check_values(kwargs, name)
  if isinstance(kwargs.get('dtype'), str):
    kwargs['dtype'] = jnp.dtype(kwargs['dtype'])
  for key in ('resnet_layers', 'soft_split', 'patch_size'):
    if isinstance(kwargs.get(key), list):  # ConfigDict / JSON give lists; modules hash tuples
      kwargs[key] = tuple(tuple(v) if isinstance(v, list) else v for v in kwargs[key])
  if 'hidden_size' in kwargs and kwargs['hidden_size'] % kwargs['num_heads']:
    raise ValueError(f'num_heads={kwargs["num_heads"]} must divide '
                     f'hidden_size={kwargs["hidden_size"]} ({name}).')
  if not isinstance(num_classes, int) or num_classes < 1:
    raise ValueError(f'num_classes must be a positive integer, got {num_classes!r}.')
  return FAMILIES[family](num_classes=num_classes, **kwargs)


def param_shapes(model: nn.Module, image_size: int | tuple[int, int], channels: int
                 ) -> dict[str, tuple[int, ...]]:
  """{'a/b': shape} of `model`'s parameters for (S, S, C) images, without computing them."""
  size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  images = jax.ShapeDtypeStruct((1, *size, channels), np.float32)
  params = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), images)['params']
  return {k: tuple(v.shape) for k, v in traverse_util.flatten_dict(params, sep='/').items()}


def input_channels(model: nn.Module, params, image_size: int, name: str) -> int:
  """The channels C of the (S, S, C) images that `params` (a nested dict, unrolled layers if
  `model` is) were made for, checked by shape."""
  shapes = {k: np.shape(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  for channels in (3, 1, 4, 2):
    if param_shapes(model, image_size, channels) == shapes:
      return channels
  raise ValueError(f'The parameters do not fit {name} on {image_size}x{image_size} images with '
                   '1 to 4 channels (wrong image_size, model overrides or checkpoint).')


__all__ = ['FAMILIES', 'ResNet', 'T2TViT', 'VisionTransformer', 'config_fields', 'config_overrides',
           'forward_with_intermediates', 'get_model', 'input_channels', 'model_fields',
           'param_shapes', 'resolved_fields']
