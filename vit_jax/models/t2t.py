"""T2T-ViT (Yuan et al., arXiv 2101.11986) with the "transformer" Tokens-to-Token module.

Tokens-to-Token: soft split (overlapping unfold, features ordered channel-major like PyTorch's
`nn.Unfold`) -> token transformer (one head, MLP ratio 1, token dim 64) -> re-structurization
(tokens back to an image) -> soft split -> ... -> linear projection to the backbone width.
Then a class token, a fixed 1D sinusoid position embedding and the ViT encoder (no qkv bias,
exact GELU, LayerNorm eps 1e-5, as in the reference code).

Shapes: images (B, H, W, C); soft split i with (kernel k, stride s, padding p) maps a
(B, h, w, c) image to (B, h', w', c * k * k) with h' = (h + 2p - k) // s + 1. The default splits
((7, 4, 2), (3, 2, 1), (3, 2, 1)) shrink 224 to 14 (16x); for 32x32 inputs use for example
((3, 1, 1), (3, 2, 1), (3, 2, 1)) (32 -> 8).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models import vit

Dtype = Any
SoftSplit = tuple[tuple[int, int, int], ...]


def soft_split(x: jax.Array, kernel: int, stride: int, padding: int) -> jax.Array:
  """Overlapping unfold: (B, h, w, c) -> (B, h', w', c * kernel * kernel), channel-major."""
  return jax.lax.conv_general_dilated_patches(
      x, (kernel, kernel), (stride, stride), ((padding, padding), (padding, padding)),
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


class TokenTransformer(nn.Module):
  """The T2T module's single-head transformer layer: (B, N, c_in) -> (B, N, token_dim).

  Attention projects to token_dim and, since input and output widths differ, its residual is
  the attention's own value vectors; logits are scaled by c_in^-0.5 as in the reference code.
  """
  token_dim: int = 64
  mlp_ratio: float = 1.
  dtype: Dtype = jnp.float32
  gelu_approximate: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c_in = x.shape[-1]
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm1')(x)
    q, k, v = jnp.split(
        nn.Dense(3 * self.token_dim, use_bias=False, dtype=self.dtype, name='qkv')(y), 3, -1)
    weights = jax.nn.softmax(jnp.einsum('bqc,bnc->bqn', q * c_in**-0.5, k))
    x = v + nn.Dense(self.token_dim, dtype=self.dtype, name='proj')(weights @ v)
    y = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name='norm2')(x)
    y = nn.Dense(int(self.token_dim * self.mlp_ratio), dtype=self.dtype, name='fc1')(y)
    y = nn.gelu(y, approximate=self.gelu_approximate)
    return x + nn.Dense(self.token_dim, dtype=self.dtype, name='fc2')(y)


class T2TViT(nn.Module):
  """T2T-ViT: images (B, H, W, C) -> logits (B, num_classes) float32.

  Attributes mirror `VisionTransformer` where they overlap; `soft_split` is the (kernel, stride,
  padding) of each split and `token_dim` the T2T token width.
  """
  num_classes: int
  hidden_size: int = 384
  mlp_dim: int = 1152
  num_heads: int = 6
  num_layers: int = 14
  token_dim: int = 64
  soft_split: SoftSplit = ((7, 4, 2), (3, 2, 1), (3, 2, 1))
  classifier: str = 'token'
  representation_size: int | None = None
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  scan: bool = False
  remat_policy: str = 'none'
  gelu_approximate: bool = False
  head_bias_init: float = 0.

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f'images must be (batch, height, width, channels), got {images.shape}.')
    x = images.astype(self.dtype)
    b = x.shape[0]
    for i, (kernel, stride, padding) in enumerate(self.soft_split):
      if min(x.shape[1:3]) + 2 * padding < kernel:
        raise ValueError(f'soft_split[{i}]={(kernel, stride, padding)} does not fit the '
                         f'{x.shape[1]}x{x.shape[2]} input of that split.')
      x = soft_split(x, kernel, stride, padding)
      _, h, w, c = x.shape
      if i < len(self.soft_split) - 1:  # token transformer, then re-structurization
        tokens = TokenTransformer(self.token_dim, dtype=self.dtype,
                                  gelu_approximate=self.gelu_approximate,
                                  name=f'attention{i + 1}')(x.reshape(b, h * w, c))
        x = tokens.reshape(b, h, w, self.token_dim)
    x = nn.Dense(self.hidden_size, dtype=self.dtype, name='project')(x.reshape(b, h * w, c))
    if self.classifier == 'token':
      cls = self.param('cls', nn.initializers.truncated_normal(0.02), (1, 1, self.hidden_size))
      x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (b, 1, 1)), x], axis=1)
    x = x + vit.posemb_sincos_1d(x.shape[1], self.hidden_size).astype(self.dtype)
    x = vit.Encoder(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, learned_posemb=False, attention_impl=self.attention_impl,
        gelu_approximate=self.gelu_approximate, qkv_bias=False, layer_norm_eps=1e-5,
        scan=self.scan, remat_policy=self.remat_policy, name='Transformer')(x, train=train)
    return vit.pool_and_classify(self, x, classifier=self.classifier,
                                 representation_size=self.representation_size,
                                 num_classes=self.num_classes, head_bias_init=self.head_bias_init)
