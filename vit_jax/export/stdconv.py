"""Weight standardisation made explicit, for formats that convolve with a stored kernel.

Our `StdConv` (the ResNet's and the hybrid's convolutions) standardises its kernel each time
it is used: w -> (w - mean) / (std + 1e-5) over each output channel's (H, W, I) entries. That
is a function of the parameters alone, so an export can hold the standardised kernels and
convolve with them plainly (ONNX), or hold kernels that another framework's standardisation
maps onto ours (timm, see `timm.py`).
"""
import contextlib
from typing import Iterator

import flax.linen as nn
import jax
import numpy as np

from vit_jax import pretrained
from vit_jax.export.source import Params, Source
from vit_jax.models import resnet


def _is_kernel_param(context, args) -> bool:
  return (isinstance(context.module, resnet.StdConv) and context.method_name == 'param'
          and args and args[0] == 'kernel')


def kernel_paths(source: Source) -> list[str]:
  """Flat paths ('block1/unit1/conv1/kernel', ...) of the model's StdConv kernels, found by
  tracing the model (no computation)."""
  paths = []

  def record(next_fun, args, kwargs, context):
    if _is_kernel_param(context, args):
      paths.append('/'.join((*context.module.scope.path, 'kernel')))
    return next_fun(*args, **kwargs)
  images = jax.ShapeDtypeStruct((1, source.image_size, source.image_size, source.channels),
                                np.float32)
  with nn.intercept_methods(record):
    jax.eval_shape(lambda p, x: source.model.apply({'params': p}, x, train=False),
                   source.params, images)
  return sorted(set(paths))


def standardized_kernels(source: Source) -> dict[str, np.ndarray]:
  """{path: the kernel (H, W, I, O) float32 as StdConv convolves with it} (`resnet.standardize`
  itself, so the values are the JAX model's)."""
  flat = pretrained.flatten(source.params)
  return {p: np.asarray(resnet.standardize(flat[p]), np.float32) for p in kernel_paths(source)}


def standardized_params(source: Source) -> Params:
  """`source.params` with every StdConv kernel replaced by its standardised value."""
  flat = dict(pretrained.flatten(source.params))
  flat.update(standardized_kernels(source))
  return pretrained.unflatten(flat)


@contextlib.contextmanager
def plain_convolutions() -> Iterator[None]:
  """Within the block, StdConv convolves with its stored kernel as is (a plain convolution):
  apply the model to `standardized_params` to compute what it computes on the raw ones."""

  def stored(next_fun, args, kwargs, context):
    if _is_kernel_param(context, args):
      return nn.Module.param(context.module, *args, **kwargs)
    return next_fun(*args, **kwargs)
  with nn.intercept_methods(stored):
    yield
