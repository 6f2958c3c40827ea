"""Augmentation and evaluation preprocessing on the device, inside the jitted step."""
import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def _resize_box(images: jax.Array, corner: jax.Array, size: jax.Array,
                image_size: int) -> jax.Array:
  """Bilinear resize of the box at `corner` (top, left) of `size` (height, width), in pixels,
  of images (..., H, W, C) -> (..., image_size, image_size, C); antialiased when shrinking."""
  scale = image_size / size
  shape = (*images.shape[:-3], image_size, image_size, images.shape[-1])
  return jax.image.scale_and_translate(images, shape, (images.ndim - 3, images.ndim - 2), scale,
                                       -corner * scale, method='linear')


def normalize(images: jax.Array) -> jax.Array:
  """uint8 (..., C) -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1


def _check_range(name: str, value: tuple[float, float], upper: float = np.inf) -> None:
  if not 0 < value[0] <= value[1] <= upper:
    raise ValueError(f'{name}={value} must satisfy 0 < min <= max <= {upper}.')


def augment_from_config(config) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """`augment` with the options of a training config (`image_size` and `augment.*`):
  (images uint8 (B, H, W, C), key) -> (B, image_size, image_size, C) float32."""
  aug = config.augment
  return functools.partial(augment, image_size=config.image_size, crop=aug.crop,
                           crop_scale=tuple(aug.crop_scale), crop_ratio=tuple(aug.crop_ratio),
                           flip=aug.flip)


def augment(images: jax.Array, key: jax.Array, *, image_size: int, crop: bool,
            crop_scale: tuple[float, float], crop_ratio: tuple[float, float],
            flip: bool) -> jax.Array:
  """Training augmentation: (B, H, W, C) uint8 -> (B, image_size, image_size, C) float32 in
  [-1, 1], each image with its own key from `key`.

  crop: Inception-style random resized crop, area fraction ~ U(crop_scale), log aspect ratio
  (width / height) ~ U(log crop_ratio), clipped to the image, uniform position, bilinearly
  resized; otherwise the whole image is resized. flip: horizontal mirror with probability 1/2.
  All options are Python values (static under `jax.jit`).
  """
  if crop:
    _check_range('augment.crop_scale', crop_scale, upper=1.)
    _check_range('augment.crop_ratio', crop_ratio)
  full = jnp.array(images.shape[1:3], jnp.float32)

  def one(image: jax.Array, key: jax.Array) -> jax.Array:
    k_area, k_ratio, k_corner, k_flip = jax.random.split(key, 4)
    size, corner = full, jnp.zeros(2)
    if crop:
      area = jax.random.uniform(k_area, minval=crop_scale[0], maxval=crop_scale[1]) * full.prod()
      ratio = jnp.exp(jax.random.uniform(k_ratio, minval=np.log(crop_ratio[0]),
                                         maxval=np.log(crop_ratio[1])))
      size = jnp.minimum(jnp.sqrt(area * jnp.stack([1 / ratio, ratio])), full)
      corner = jax.random.uniform(k_corner, (2,)) * (full - size)
    image = _resize_box(image, corner, size, image_size)
    if flip:
      image = jnp.where(jax.random.bernoulli(k_flip), image[:, ::-1], image)
    return image
  x = normalize(images)
  return jax.vmap(one)(x, jax.random.split(key, images.shape[0]))


def preprocess_eval(images: jax.Array, *, image_size: int, crop_fraction: float = 1.0
                    ) -> jax.Array:
  """(B, H, W, C) uint8 -> (B, image_size, image_size, C) float32 in [-1, 1]: the central
  crop keeping `crop_fraction` of each side, bilinearly resized to image_size."""
  if not 0 < crop_fraction <= 1:
    raise ValueError(f'eval.crop_fraction={crop_fraction} must be in (0, 1].')
  full = np.array(images.shape[1:3], np.float32)
  size = full * crop_fraction
  x = normalize(images)
  return _resize_box(x, (full - size) / 2, size, image_size)
