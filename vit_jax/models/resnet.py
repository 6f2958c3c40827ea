"""BiT-style ResNet: the hybrid's stem and the CNN baseline of the data-scaling study.

Weight-standardised convolutions (`StdConv`) with GroupNorm (32 groups; gcd(32, width) for
narrow nets whose root width is not a multiple of 32), bottleneck units with
post-activation ReLU(residual + y), names as in the original vit_jax hybrid:
`conv_root`, `gn_root`, `block{s}/unit{u}/{conv1, gn1, conv2, gn2, conv3, gn3, conv_proj, gn_proj}`.
Shapes: images (B, H, W, C) -> feature map (B, H/R, W/R, 4 * width * 2^(S-1)) with S stages and
R = 4 * 2^(S-1) for the 'bit' stem (R = 2^(S-1) for the 'small' stem).
"""
from typing import Any

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
STEMS = ('bit', 'small')


def standardize(kernel: jax.Array, eps: float = 1e-5) -> jax.Array:
  """Weight standardisation of an HWIO kernel over its spatial and input axes."""
  centered = kernel - jnp.mean(kernel, axis=(0, 1, 2))
  return centered / (jnp.std(centered, axis=(0, 1, 2)) + eps)


class StdConv(nn.Conv):
  """nn.Conv whose `kernel` is weight-standardised each time it is used."""

  def param(self, name: str, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    return standardize(value) if name == 'kernel' else value


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 (features) -> 3x3 (features, stride) -> 1x1 (4 * features)."""
  features: int
  strides: tuple[int, int] = (1, 1)
  groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = lambda n, k, s, name: StdConv(n, k, strides=s, use_bias=False, dtype=self.dtype,
                                         name=name)
    norm = lambda name, **kw: nn.GroupNorm(self.groups, dtype=self.dtype, name=name, **kw)
    residual = x
    if x.shape[-1] != 4 * self.features or self.strides != (1, 1):
      residual = conv(4 * self.features, (1, 1), self.strides, 'conv_proj')(residual)
      residual = norm('gn_proj')(residual)
    y = nn.relu(norm('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
    y = nn.relu(norm('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
    y = norm('gn3', scale_init=nn.initializers.zeros)(
        conv(4 * self.features, (1, 1), (1, 1), 'conv3')(y))
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`num_units` residual units; the first one carries the stride."""
  num_units: int
  features: int
  first_stride: tuple[int, int]
  groups: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_units):
      stride = self.first_stride if i == 0 else (1, 1)
      x = ResidualUnit(self.features, strides=stride, groups=self.groups, dtype=self.dtype,
                       name=f'unit{i + 1}')(x)
    return x


def stem_and_stages(x: jax.Array, *, layers: tuple[int, ...], width: int, stem: str,
                    dtype: Dtype) -> jax.Array:
  """Root block and stages, created in the calling module's scope (so names are top-level).

  Must be called from inside a compact method. Stage s (1-based) has `layers[s-1]` units of
  width `width * 2^(s-1)`; every stage after the first halves the resolution.
  """
  if stem not in STEMS:
    raise ValueError(f'resnet_stem={stem!r} must be one of {STEMS}.')
  if width < 1:
    raise ValueError(f'resnet_width={width} must be positive.')
  groups = math.gcd(32, width)
  if stem == 'bit':
    x = StdConv(width, (7, 7), strides=(2, 2), use_bias=False, dtype=dtype, name='conv_root')(x)
  else:
    x = StdConv(width, (3, 3), use_bias=False, dtype=dtype, name='conv_root')(x)
  x = nn.relu(nn.GroupNorm(groups, dtype=dtype, name='gn_root')(x))
  if stem == 'bit':
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding='SAME')
  for s, units in enumerate(layers):
    x = ResNetStage(units, width * 2**s, first_stride=(2, 2) if s else (1, 1), groups=groups,
                    dtype=dtype, name=f'block{s + 1}')(x)
  return x


class ResNet(nn.Module):
  """BiT ResNet classifier (the CNN baseline): images (B, H, W, C) -> logits (B, num_classes).

  Global average pooling of the last stage, then a zero-initialised `head`.
  """
  num_classes: int
  resnet_layers: tuple[int, ...] = (3, 4, 6, 3)
  resnet_width: int = 64
  resnet_stem: str = 'bit'
  dtype: Dtype = jnp.float32
  head_bias_init: float = 0.

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # GroupNorm has no train/eval difference and there is no dropout.
    if images.ndim != 4:
      raise ValueError(f'images must be (batch, height, width, channels), got {images.shape}.')
    x = stem_and_stages(images.astype(self.dtype), layers=self.resnet_layers,
                        width=self.resnet_width, stem=self.resnet_stem, dtype=self.dtype)
    x = jnp.mean(x, axis=(1, 2))
    if not self.is_initializing():
      self.sow('features', 'representation', x)
    x = nn.Dense(self.num_classes, name='head', kernel_init=nn.initializers.zeros,
                 bias_init=nn.initializers.constant(self.head_bias_init))(x)
    return x.astype(jnp.float32)
