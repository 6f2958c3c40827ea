"""Vision Transformer (Dosovitskiy et al., arXiv 2010.11929) and the ResNet + ViT hybrid.

Parameter names follow the original vit_jax Linen code, so its published checkpoints load:
`embedding`, `cls`, `Transformer/posembed_input/pos_embedding`,
`Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_0, LayerNorm_1,
MlpBlock_0}`, `Transformer/encoder_norm`, `pre_logits`, `head`; with `scan=True` the blocks are
one `Transformer/encoderblock` whose parameters carry a leading layer axis.

Shapes: B batch, H x W image, P patch size, D hidden_size, K heads, N tokens (grid cells plus
one class token with classifier='token').

Attention weights and per-block outputs are sown into the `intermediates` collection; they are
stored only when that collection is mutable (see `forward_with_intermediates`).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import sharding
from vit_jax.models import resnet

Dtype = Any

REMAT_POLICIES = {
    'none': None,  # no rematerialisation
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}
ATTENTION_IMPLEMENTATIONS = (None, 'xla', 'cudnn')


def posemb_sincos_2d(h: int, w: int, dim: int, temperature: float = 10_000.) -> np.ndarray:
  """Fixed 2D sine-cosine position embedding of an h x w grid: (h * w, dim), row-major.

  The four quarters of the channels are sin(x), cos(x), sin(y), cos(y) at geometric frequencies.
  """
  if dim % 4:
    raise ValueError(f'posemb="sincos2d" needs hidden_size divisible by 4, got {dim}.')
  y, x = np.mgrid[:h, :w]
  omega = 1. / temperature**(np.arange(dim // 4) / max(dim // 4 - 1, 1))
  x = x.reshape(-1, 1) * omega
  y = y.reshape(-1, 1) * omega
  return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], axis=1).astype(np.float32)


def posemb_sincos_1d(n: int, dim: int) -> np.ndarray:
  """Transformer's fixed 1D sinusoid table (as T2T-ViT uses): (n, dim).

  Channel 2i holds sin(pos / 10000^(2i/dim)), channel 2i+1 the matching cosine.
  """
  angle = np.arange(n)[:, None] / 10_000**(2 * (np.arange(dim) // 2) / dim)
  return np.where(np.arange(dim) % 2 == 0, np.sin(angle), np.cos(angle)).astype(np.float32)


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `pos_embedding` of shape (1, N, D) to (B, N, D) inputs."""
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pe = self.param('pos_embedding', nn.initializers.normal(stddev=0.02),
                    (1, x.shape[1], x.shape[2]), self.param_dtype)
    return x + pe.astype(x.dtype)


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU -> Dense(D), with dropout: (B, N, D) -> (B, N, D)."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.
  deterministic: bool = True
  gelu_approximate: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda n: nn.Dense(n, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(),
                               bias_init=nn.initializers.normal(stddev=1e-6))
    d = x.shape[-1]
    x = nn.gelu(dense(self.mlp_dim)(x), approximate=self.gelu_approximate)
    x = sharding.constrain(x, 'batch', None, 'model')  # batch split; units over `model`
    x = nn.Dropout(self.dropout_rate)(x, deterministic=self.deterministic)
    x = dense(d)(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=self.deterministic)


class MultiHeadDotProductAttention(nn.Module):
  """Multi-head self-attention: (B, N, D) -> (B, N, D).

  `query`/`key`/`value` kernels are (D, K, D/K), `out` is (K, D/K, D), as in Flax's attention.
  `implementation='cudnn'` runs `jax.nn.dot_product_attention`'s cuDNN kernel, which never
  materialises the weights (B, K, N, N) (unless attention dropout is on or the `intermediates`
  collection is mutable). None and 'xla' compute what that function's XLA path does (float32
  logits and softmax) as two einsums without its grouped-query reshapes, which on CPU saves the
  layout copies of the (B, K, N, N) arrays in the backward pass.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.
  deterministic: bool = True
  implementation: str | None = None
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    d = x.shape[-1]
    if d % self.num_heads:
      raise ValueError(f'num_heads={self.num_heads} must divide hidden_size={d}.')
    if self.implementation not in ATTENTION_IMPLEMENTATIONS:
      raise ValueError(f'attention_impl={self.implementation!r} is not one of '
                       f'{ATTENTION_IMPLEMENTATIONS}.')
    head_dim = d // self.num_heads
    qkv = lambda name, bias: nn.DenseGeneral(
        (self.num_heads, head_dim), dtype=self.dtype, use_bias=bias, name=name,
        kernel_init=nn.initializers.xavier_uniform())(x)
    heads = lambda a: sharding.constrain(a, 'batch', None, 'model', None)  # heads: `model`
    q = heads(qkv('query', self.qkv_bias)) / jnp.sqrt(head_dim).astype(self.dtype)  # (B,N,K,D/K)
    k = heads(qkv('key', self.qkv_bias))
    v = heads(qkv('value', self.qkv_bias))
    dropout = self.dropout_rate > 0 and not self.deterministic
    if self.implementation == 'cudnn' and not (dropout or self.is_mutable_collection(
        'intermediates')):
      y = jax.nn.dot_product_attention(q, k, v, scale=1.0, implementation='cudnn')
    else:  # `jax.nn.dot_product_attention`'s XLA computation, in fewer layout copies
      logits = jnp.einsum('bqkh,bnkh->bkqn', q, k, preferred_element_type=jnp.float32)
      weights = jax.nn.softmax(logits).astype(self.dtype)
      self.sow('intermediates', 'attention_weights', weights)
      weights = nn.Dropout(self.dropout_rate)(weights, deterministic=self.deterministic)
      y = jnp.einsum('bkqn,bnkh->bqkh', weights, v)
    y = heads(y)
    return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, name='out',
                           kernel_init=nn.initializers.xavier_uniform())(y)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block: x + MHSA(LN(x)), then + MLP(LN(.)). (B, N, D) -> (B, N, D)."""
  mlp_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  deterministic: bool = True
  attention_impl: str | None = None
  gelu_approximate: bool = True
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    x = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype)(inputs)
    x = MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.attention_dropout_rate,
        deterministic=self.deterministic, implementation=self.attention_impl,
        qkv_bias=self.qkv_bias)(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=self.deterministic) + inputs
    y = nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype)(x)
    y = MlpBlock(mlp_dim=self.mlp_dim, dtype=self.dtype, dropout_rate=self.dropout_rate,
                 deterministic=self.deterministic, gelu_approximate=self.gelu_approximate)(y)
    out = sharding.constrain(x + y, 'batch', None, None)  # residual stream: batch-split only
    self.sow('intermediates', 'out', out)
    return out


class _ScannedBlock(Encoder1DBlock):
  """Encoder1DBlock in `nn.scan`'s (carry, xs) -> (carry, ys) form; same parameters."""

  def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
    return super().__call__(x), None


class Encoder(nn.Module):
  """Position embedding, `num_layers` blocks and a final LayerNorm: (B, N, D) -> (B, N, D).

  With `learned_posemb=False` the caller adds a fixed position embedding itself.
  `scan=True` compiles one block and loops over stacked parameters (compile time flat in depth);
  `remat_policy` (a key of REMAT_POLICIES) recomputes activations in the backward pass.
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  dtype: Dtype = jnp.float32
  learned_posemb: bool = True
  attention_impl: str | None = None
  gelu_approximate: bool = True
  qkv_bias: bool = True
  layer_norm_eps: float = 1e-6
  scan: bool = False
  remat_policy: str = 'none'

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.remat_policy not in REMAT_POLICIES:
      raise ValueError(f'remat_policy={self.remat_policy!r} is not one of '
                       f'{sorted(REMAT_POLICIES)}.')
    if self.learned_posemb:
      x = AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block_args = dict(
        mlp_dim=self.mlp_dim, num_heads=self.num_heads, dtype=self.dtype,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        deterministic=not train, attention_impl=self.attention_impl,
        gelu_approximate=self.gelu_approximate, qkv_bias=self.qkv_bias,
        layer_norm_eps=self.layer_norm_eps)
    block = _ScannedBlock if self.scan else Encoder1DBlock
    if self.remat_policy != 'none':
      block = nn.remat(block, policy=REMAT_POLICIES[self.remat_policy], prevent_cse=not self.scan)
    if self.scan:
      stack = nn.scan(block, variable_axes={'params': 0, 'intermediates': 0},
                      split_rngs={'params': True, 'dropout': True}, in_axes=nn.broadcast,
                      length=self.num_layers)
      x, _ = stack(name='encoderblock', **block_args)(x, None)
    else:
      for i in range(self.num_layers):
        x = block(name=f'encoderblock_{i}', **block_args)(x)
    return nn.LayerNorm(epsilon=self.layer_norm_eps, dtype=self.dtype, name='encoder_norm')(x)


def pool_and_classify(module: nn.Module, x: jax.Array, *, classifier: str,
                      representation_size: int | None, num_classes: int,
                      head_bias_init: float = 0.) -> jax.Array:
  """Pools encoder tokens (B, N, D) and applies pre_logits and head: -> (B, num_classes) f32.

  Called inside `module`'s compact method, so `pre_logits` and `head` are its parameters.
  The pooled features after `pre_logits` (the few-shot / linear-probe representation) are sown
  as `features/representation`; apply with `mutable=['features']` to get them without the cost
  of materialising attention weights.
  """
  if classifier == 'token':
    x = x[:, 0]
  elif classifier == 'gap':
    x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
  else:
    raise ValueError(f"classifier={classifier!r} must be 'token' or 'gap'.")
  if representation_size is not None:
    x = jnp.tanh(nn.Dense(representation_size, name='pre_logits')(x))
  if not module.is_initializing():
    module.sow('features', 'representation', x)
  x = nn.Dense(num_classes, name='head', kernel_init=nn.initializers.zeros,
               bias_init=nn.initializers.constant(head_bias_init))(x)
  return x.astype(jnp.float32)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


class VisionTransformer(nn.Module):
  """ViT, or the ResNet + ViT hybrid when `resnet_layers` is not None.

  Call: `model.apply(variables, images, train=False)` with images (B, H, W, C) float, returns
  logits (B, num_classes) float32. Parameters are float32; `dtype` sets the compute dtype.

  Attributes:
    num_classes: head size.
    patch_size: P (int or (Ph, Pw)); must divide the image (or the hybrid's feature map).
    hidden_size, mlp_dim, num_heads, num_layers: transformer shape; depth is free.
    classifier: 'token' (class token) or 'gap' (mean over tokens).
    representation_size: width of the tanh `pre_logits` layer, None for none.
    dropout_rate, attention_dropout_rate: dropout after embeddings/branches, on attention weights.
    posemb: 'learn' (learned, `Transformer/posembed_input`) or 'sincos2d' (fixed).
    dtype: compute dtype (jnp.float32 or jnp.bfloat16).
    attention_impl: None, 'xla' or 'cudnn' (`jax.nn.dot_product_attention`).
    scan, remat_policy: see `Encoder`.
    gelu_approximate: tanh GELU as in the published models; False for exact GELU.
    resnet_layers, resnet_width, resnet_stem: hybrid ResNet stages (None: plain ViT), root
      width and stem ('bit' 7x7/2 + max-pool, or 'small' 3x3/1).
    masked_patch_prediction: the self-supervised variant (vit_jax/mpp.py): a learned
      `mask_token` (1, 1, D) replaces the patch embeddings where the call's `mask` (B, M) is
      True, and `mpp_head` maps every patch token to `num_classes` colour logits: the call
      returns (B, M, num_classes) float32. The other parameters keep their names, so the
      encoder fine-tunes as a classifier (the two extra parameters are then dropped).
  """
  num_classes: int
  patch_size: int | tuple[int, int] = 16
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  num_layers: int = 12
  classifier: str = 'token'
  representation_size: int | None = None
  dropout_rate: float = 0.
  attention_dropout_rate: float = 0.
  posemb: str = 'learn'
  dtype: Dtype = jnp.float32
  attention_impl: str | None = None
  scan: bool = False
  remat_policy: str = 'none'
  gelu_approximate: bool = True
  head_bias_init: float = 0.
  resnet_layers: tuple[int, ...] | None = None
  resnet_width: int = 64
  resnet_stem: str = 'bit'
  masked_patch_prediction: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False,
               mask: jax.Array | None = None) -> jax.Array:
    if images.ndim != 4:
      raise ValueError(f'images must be (batch, height, width, channels), got {images.shape}.')
    if self.posemb not in ('learn', 'sincos2d'):
      raise ValueError(f"posemb={self.posemb!r} must be 'learn' or 'sincos2d'.")
    x = images.astype(self.dtype)
    if self.resnet_layers is not None:
      x = resnet.stem_and_stages(x, layers=self.resnet_layers, width=self.resnet_width,
                                 stem=self.resnet_stem, dtype=self.dtype)
    patch = _pair(self.patch_size)
    if x.shape[1] % patch[0] or x.shape[2] % patch[1]:
      what = 'image' if self.resnet_layers is None else 'ResNet feature map'
      raise ValueError(f'patch_size={self.patch_size} does not divide the {what} size '
                       f'{x.shape[1]}x{x.shape[2]} (input {images.shape[1]}x{images.shape[2]}).')
    x = nn.Conv(self.hidden_size, patch, strides=patch, padding='VALID', dtype=self.dtype,
                name='embedding')(x)
    b, h, w, d = x.shape
    x = x.reshape(b, h * w, d)
    if self.masked_patch_prediction:
      if self.resnet_layers is not None:
        raise ValueError('masked_patch_prediction needs a plain ViT: a hybrid\'s tokens are '
                         'not image patches.')
      token = self.param('mask_token', nn.initializers.normal(stddev=0.02), (1, 1, d))
      if mask is not None:
        x = jnp.where(mask[..., None], token.astype(x.dtype), x)
    elif mask is not None:
      raise ValueError('mask= needs a model built with masked_patch_prediction=True.')
    if self.posemb == 'sincos2d':
      x = x + posemb_sincos_2d(h, w, d).astype(self.dtype)
    if self.classifier == 'token':
      cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
      x = jnp.concatenate([jnp.tile(cls.astype(self.dtype), (b, 1, 1)), x], axis=1)
    x = Encoder(
        num_layers=self.num_layers, mlp_dim=self.mlp_dim, num_heads=self.num_heads,
        dropout_rate=self.dropout_rate, attention_dropout_rate=self.attention_dropout_rate,
        dtype=self.dtype, learned_posemb=self.posemb == 'learn',
        attention_impl=self.attention_impl, gelu_approximate=self.gelu_approximate,
        scan=self.scan, remat_policy=self.remat_policy, name='Transformer')(x, train=train)
    if self.masked_patch_prediction:
      patches = x[:, -h * w:]
      if not self.is_initializing():
        self.sow('features', 'representation', jnp.mean(patches, axis=1))
      return nn.Dense(self.num_classes, name='mpp_head')(patches).astype(jnp.float32)
    return pool_and_classify(self, x, classifier=self.classifier,
                             representation_size=self.representation_size,
                             num_classes=self.num_classes, head_bias_init=self.head_bias_init)


def forward_with_intermediates(model: nn.Module, variables: Any, images: jax.Array
                               ) -> tuple[jax.Array, dict[str, Any]]:
  """Runs `model` (train=False) and returns (logits, intermediates) for the analysis tools.

  intermediates['attention_weights']: (L, B, K, N, N) per layer, rows sum to 1;
  intermediates['block_outputs']: (L, B, N, D) after each encoder block;
  intermediates['pre_logits']: (B, F) pooled features before the head.
  Layers come from the `Transformer` encoder (scanned or unrolled alike).
  """
  logits, state = model.apply(variables, images, train=False,
                              mutable=['intermediates', 'features'])
  inter = state['intermediates']
  encoder = inter['Transformer']
  if 'encoderblock' in encoder:  # scanned: leaves already carry a leading layer axis
    blocks = [encoder['encoderblock']]
    stack = lambda leaves: leaves[0]
  else:
    blocks = [encoder[f'encoderblock_{i}'] for i in range(len(encoder))]
    stack = jnp.stack
  out = {
      'attention_weights': stack(
          [b['MultiHeadDotProductAttention_0']['attention_weights'][0] for b in blocks]),
      'block_outputs': stack([b['out'][0] for b in blocks]),
      'pre_logits': state['features']['representation'][0],
  }
  return logits, out
