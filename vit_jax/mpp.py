"""Masked patch prediction: the ViT paper's self-supervised objective (appendix B.1.2).

Per image, `corrupt_fraction` of the patches are corrupted: of those, `mask_fraction` have
their embedding replaced by the learned `mask_token`, `random_fraction` by the embedding of a
random patch of the batch, and the rest are left unchanged. The model predicts the mean colour
of every corrupted patch, each channel quantised to 3 bits (512 classes for RGB, 8 for
grayscale), from that patch's output token; the loss is the cross-entropy over corrupted
patches only.

The patch embedding is a linear map of the patch's pixels (a stride-P convolution) and the
position embedding is added after it, so putting another patch's pixels in place of a patch
gives exactly that patch's embedding: the random replacement happens on the pixels here, the
mask token inside the model (`VisionTransformer(masked_patch_prediction=True)` called with
`mask=`).

Shapes: images (B, H, W, C) in [-1, 1]; P patch size; M = (H / P) * (W / P) patches, numbered
row-major like the model's tokens.
"""
import jax
import jax.numpy as jnp

from vit_jax.models import config_overrides, resolved_fields

COLOR_BITS = 3  # bits per channel of the predicted mean colour


def num_colors(channels: int) -> int:
  """Number of target classes: 2**(3 * channels) (512 for RGB)."""
  return 2**(COLOR_BITS * channels)


def to_patches(images: jax.Array, patch: int) -> jax.Array:
  """(B, H, W, C) -> (B, M, P, P, C), patches in row-major order."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // patch, patch, w // patch, patch, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch, patch, c)


def from_patches(patches: jax.Array, height: int) -> jax.Array:
  """Inverse of `to_patches`: (B, M, P, P, C) -> (B, H, W, C) for images `height` pixels high."""
  b, m, p, _, c = patches.shape
  rows = height // p
  x = patches.reshape(b, rows, m // rows, p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, height, -1, c)


def color_targets(images: jax.Array, patch: int) -> jax.Array:
  """Mean colour of every patch, 3 bits per channel, as one class: (B, H, W, C) -> (B, M) int32.

  A channel's mean in [-1, 1] maps to level floor((mean + 1) / 2 * 8), clipped to 0..7; the
  class is sum_c level_c * 8**(C - 1 - c) (for RGB: 64 r + 8 g + b).
  """
  mean = jnp.mean(to_patches(images, patch), axis=(2, 3))  # (B, M, C)
  levels = 2**COLOR_BITS
  level = jnp.clip(jnp.floor((mean + 1.) / 2. * levels), 0, levels - 1).astype(jnp.int32)
  weights = levels**jnp.arange(images.shape[-1] - 1, -1, -1)
  return jnp.sum(level * weights, axis=-1)


def corrupt(key: jax.Array, images: jax.Array, patch: int, *, corrupt_fraction: float = 0.5,
            mask_fraction: float = 0.8, random_fraction: float = 0.1
            ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Chooses and corrupts patches.

  Exactly round(corrupt_fraction * M) patches of every image are corrupted (at least one);
  each corrupted patch independently becomes a mask token with probability `mask_fraction`,
  another patch of the batch (uniformly drawn) with probability `random_fraction`, and stays
  as it is otherwise.

  Returns:
    images with the random replacements applied (B, H, W, C); `mask` (B, M) bool, the patches
    the model replaces by its mask token; `corrupted` (B, M) bool, the patches to predict.
  """
  b, h = images.shape[:2]
  patches = to_patches(images, patch)
  m = patches.shape[1]
  k = max(1, round(corrupt_fraction * m))
  order_key, kind_key, source_key = jax.random.split(key, 3)
  ranks = jnp.argsort(jax.random.uniform(order_key, (b, m)), axis=1).argsort(axis=1)
  corrupted = ranks < k
  u = jax.random.uniform(kind_key, (b, m))
  mask = corrupted & (u < mask_fraction)
  replace = corrupted & (u >= mask_fraction) & (u < mask_fraction + random_fraction)
  source = jax.random.randint(source_key, (b, m), 0, b * m)
  others = patches.reshape(b * m, *patches.shape[2:])[source]
  patches = jnp.where(replace[:, :, None, None, None], others, patches)
  return from_patches(patches, h), mask, corrupted


def loss_and_accuracy(logits: jax.Array, targets: jax.Array, corrupted: jax.Array
                      ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cross-entropy and correct predictions over the corrupted patches.

  Args: logits (B, M, num_colors), targets (B, M) int, corrupted (B, M) bool.
  Returns: (sum of losses, number correct, number of corrupted patches), scalars.
  """
  losses = -jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  correct = (jnp.argmax(logits, -1) == targets) & corrupted
  return jnp.sum(jnp.where(corrupted, losses, 0.)), jnp.sum(correct), jnp.sum(corrupted)


def patch_size(config) -> int:
  """The patch size of `config.model`, which must be a plain ViT with square patches.

  Raises:
    ValueError: for another model family or rectangular patches, naming the model.
  """
  fields = resolved_fields(config.model.name, **config_overrides(config.model))
  patch = fields.get('patch_size')
  if isinstance(patch, (tuple, list)):
    patch = patch[0] if patch[0] == patch[1] else None
  if fields['family'] != 'vit' or patch is None:
    raise ValueError(f'mpp.enabled needs a plain ViT with square patches; '
                     f'model.name={config.model.name!r} is a {fields["family"]} model with '
                     f'patch_size={fields.get("patch_size")}.')
  return int(patch)


def objective_args(config) -> dict | None:
  """`patch` and `fractions` for `objective` from a run's config (its fractions checked by
  `vit_jax.config.check`); None without `mpp.enabled`.

  Raises:
    ValueError: naming a model that is not a plain ViT with square patches.
  """
  if not config.mpp.enabled:
    return None
  cfg = config.mpp
  return dict(patch=patch_size(config), fractions=dict(
      corrupt_fraction=cfg.corrupt_fraction, mask_fraction=cfg.mask_fraction,
      random_fraction=cfg.random_fraction))


def objective(model, params, images: jax.Array, key: jax.Array, *, patch: int, train: bool,
              fractions: dict, dropout_key: jax.Array | None = None,
              valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array, jax.Array, dict]:
  """Corrupts `images` (with `key` and the `corrupt` fractions), runs `model` (built with
  masked_patch_prediction=True) and scores its colour predictions.

  `valid` (B,) bool leaves padding examples out of the scores.
  Returns (sum of losses, number correct, number of scored patches, the `features` collection
  with the pooled representation).
  """
  targets = color_targets(images, patch)
  x, mask, corrupted = corrupt(key, images, patch, **fractions)
  if valid is not None:
    corrupted &= valid[:, None]
  rngs = {} if dropout_key is None else {'dropout': dropout_key}
  logits, state = model.apply({'params': params}, x, train=train, mask=mask, rngs=rngs,
                              mutable=['features'])
  return (*loss_and_accuracy(logits, targets, corrupted), state['features'])
