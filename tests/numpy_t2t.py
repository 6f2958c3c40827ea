"""An independent NumPy forward pass of T2T-ViT (Yuan et al., arXiv 2101.11986), written from
the paper and its reference code: soft split (PyTorch `nn.Unfold`), single-head token
transformers, re-structurization, projection, class token, the fixed 1D sinusoid table and a
ViT encoder without qkv biases, with exact GELU and LayerNorm eps 1e-5.

Used by the tests to check the Flax model's numbers. Works on our parameter tree (unrolled).
"""
import numpy as np

from numpy_vit import attention, gelu_exact, layer_norm, softmax

EPS = 1e-5


def unfold(x, k, s, p):
  """PyTorch nn.Unfold semantics on NHWC: (B, h, w, c) -> (B, h', w', c * k * k), features
  ordered (channel, kernel row, kernel col)."""
  b, h, w, c = x.shape
  x = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
  out = np.zeros((b, oh, ow, c * k * k), x.dtype)
  for i in range(oh):
    for j in range(ow):
      patch = x[:, i * s:i * s + k, j * s:j * s + k, :]  # (b, k, k, c)
      out[:, i, j] = patch.transpose(0, 3, 1, 2).reshape(b, -1)
  return out


def token_transformer(x, p):
  """One head, logits scaled by c_in^-0.5, the values as the attention's residual:
  (B, N, c_in) -> (B, N, token_dim)."""
  y = layer_norm(x, p['norm1'], eps=EPS)
  q, k, v = np.split(y @ p['qkv']['kernel'], 3, -1)
  a = softmax(q @ k.transpose(0, 2, 1) / np.sqrt(x.shape[-1]))
  h = v + (a @ v) @ p['proj']['kernel'] + p['proj']['bias']
  z = gelu_exact(layer_norm(h, p['norm2'], eps=EPS) @ p['fc1']['kernel'] + p['fc1']['bias'])
  return h + z @ p['fc2']['kernel'] + p['fc2']['bias']


def sinusoid_table(n, d):
  """pe[pos, 2i] = sin(pos / 10000^(2i / d)), pe[pos, 2i + 1] = cos(the same angle)."""
  pe = np.zeros((n, d))
  for pos in range(n):
    for i in range(0, d, 2):
      pe[pos, i] = np.sin(pos / 10_000**(i / d))
      if i + 1 < d:
        pe[pos, i + 1] = np.cos(pos / 10_000**(i / d))
  return pe


def t2t_forward(params, images, *, soft_split, classifier='token'):
  """Returns logits (B, classes)."""
  x = images.astype(np.float64)
  b = x.shape[0]
  for i, (k, s, p) in enumerate(soft_split):
    x = unfold(x, k, s, p)
    _, h, w, c = x.shape
    if i < len(soft_split) - 1:
      tokens = token_transformer(x.reshape(b, h * w, c), params[f'attention{i + 1}'])
      x = tokens.reshape(b, h, w, -1)  # re-structurization
  x = x.reshape(b, h * w, -1) @ params['project']['kernel'] + params['project']['bias']
  if classifier == 'token':
    x = np.concatenate([np.broadcast_to(params['cls'], (b, 1, x.shape[-1])), x], 1)
  x = x + sinusoid_table(x.shape[1], x.shape[2])
  enc = params['Transformer']
  for i in range(sum(name.startswith('encoderblock_') for name in enc)):
    blk = enc[f'encoderblock_{i}']
    mhsa = dict(blk['MultiHeadDotProductAttention_0'])
    for name in ('query', 'key', 'value'):  # no qkv bias
      assert 'bias' not in mhsa[name]
      mhsa[name] = dict(mhsa[name], bias=0.)
    x = x + attention(layer_norm(x, blk['LayerNorm_0'], eps=EPS), mhsa)[0]
    mlp = blk['MlpBlock_0']
    y = gelu_exact(layer_norm(x, blk['LayerNorm_1'], eps=EPS) @ mlp['Dense_0']['kernel']
                   + mlp['Dense_0']['bias'])
    x = x + y @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias']
  x = layer_norm(x, enc['encoder_norm'], eps=EPS)
  x = x[:, 0] if classifier == 'token' else x.mean(1)
  return x @ params['head']['kernel'] + params['head']['bias']
