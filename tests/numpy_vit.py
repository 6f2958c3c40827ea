"""An independent NumPy forward pass of the ViT, written from the paper's equations.

Used by the tests to check the Flax model's numbers. Works on our parameter tree (unrolled).
"""
import numpy as np
import scipy.special


def layer_norm(x, p, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean)**2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p['scale'] + p['bias']


def gelu_tanh(x):
  return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))


def gelu_exact(x):
  return 0.5 * x * (1 + scipy.special.erf(x / np.sqrt(2)))


def softmax(x):
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def attention(x, p):
  """x: (B, N, D); kernels (D, K, h). Returns output (B, N, D) and weights (B, K, N, N)."""
  q, k, v = (np.einsum('bnd,dkh->bnkh', x, p[n]['kernel']) + p[n]['bias']
             for n in ('query', 'key', 'value'))
  w = softmax(np.einsum('bqkh,bnkh->bkqn', q, k) / np.sqrt(q.shape[-1]))
  y = np.einsum('bkqn,bnkh->bqkh', w, v)
  return np.einsum('bqkh,khd->bqd', y, p['out']['kernel']) + p['out']['bias'], w


def patchify(images, p):
  """(B, H, W, C) -> (B, H/p * W/p, p * p * C), patches row-major, pixels (row, col, channel)."""
  b, h, w, c = images.shape
  x = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
  return x.reshape(b, (h // p) * (w // p), p * p * c)


def vit_forward(params, images, *, patch_size, classifier='token', gelu=gelu_tanh):
  """Returns logits (B, classes) and the attention weights of every layer."""
  x = patchify(images.astype(np.float64), patch_size)
  kernel = params['embedding']['kernel']
  x = x @ kernel.reshape(-1, kernel.shape[-1]) + params['embedding']['bias']
  if classifier == 'token':
    x = np.concatenate([np.broadcast_to(params['cls'], (x.shape[0], 1, x.shape[-1])), x], 1)
  enc = params['Transformer']
  x = x + enc['posembed_input']['pos_embedding']
  weights = []
  for i in range(sum(k.startswith('encoderblock_') for k in enc)):
    blk = enc[f'encoderblock_{i}']
    y, w = attention(layer_norm(x, blk['LayerNorm_0']), blk['MultiHeadDotProductAttention_0'])
    weights.append(w)
    x = x + y
    mlp = blk['MlpBlock_0']
    y = layer_norm(x, blk['LayerNorm_1'])
    y = gelu(y @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias'])
    x = x + y @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias']
  x = layer_norm(x, enc['encoder_norm'])
  x = x[:, 0] if classifier == 'token' else x.mean(1)
  if 'pre_logits' in params:
    x = np.tanh(x @ params['pre_logits']['kernel'] + params['pre_logits']['bias'])
  return x @ params['head']['kernel'] + params['head']['bias'], weights


def mean_attention_distance(weights, side, patch_size):
  """Per layer and head, the attention-weighted pixel distance between patches of a
  side x side grid (the class token's row and column dropped, each row renormalised), averaged
  over images and query patches: [(K,)] from the (B, K, N, N) weights of `vit_forward`."""
  rows, cols = np.divmod(np.arange(side * side), side)
  distance = patch_size * np.hypot(rows[:, None] - rows[None], cols[:, None] - cols[None])
  out = []
  for w in weights:
    patches = w[..., 1:, 1:] / w[..., 1:, 1:].sum(-1, keepdims=True)  # (B, K, side**2, side**2)
    out.append((patches * distance).sum(-1).mean(axis=(0, 2)))
  return out
