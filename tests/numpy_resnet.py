"""An independent NumPy forward pass of the BiT ResNet stem and stages (weight-standardised
convolutions, GroupNorm, bottleneck units with projection shortcuts, post-activation ReLU),
written from the BiT paper (Kolesnikov et al., arXiv 1912.11370) and the original vit_jax hybrid.

Used by the tests to check the Flax hybrid's and ResNet's numbers on our parameter tree.
"""
import math

import numpy as np


def same_padding(size, k, s):
  """(low, high) padding of 'SAME': output ceil(size / s), the extra pixel at the end."""
  total = max((math.ceil(size / s) - 1) * s + k - size, 0)
  return total // 2, total - total // 2


def conv2d(x, kernel, stride):
  """'SAME' convolution, NHWC input, HWIO kernel, written as a sum over kernel offsets."""
  kh, kw = kernel.shape[:2]
  (t, b), (l, r) = same_padding(x.shape[1], kh, stride), same_padding(x.shape[2], kw, stride)
  x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)))
  oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
  out = 0.
  for i in range(kh):
    for j in range(kw):
      window = x[:, i:i + stride * (oh - 1) + 1:stride, j:j + stride * (ow - 1) + 1:stride]
      out = out + window @ kernel[i, j]
  return out


def std_conv(x, kernel, stride=1):
  """Weight standardisation over (height, width, input) per output channel, eps 1e-5 on std."""
  centred = kernel - kernel.mean(axis=(0, 1, 2))
  return conv2d(x, centred / (centred.std(axis=(0, 1, 2)) + 1e-5), stride)


def group_norm(x, p, groups, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mean = g.mean(axis=(1, 2, 4), keepdims=True)
  var = ((g - mean)**2).mean(axis=(1, 2, 4), keepdims=True)
  return ((g - mean) / np.sqrt(var + eps)).reshape(x.shape) * p['scale'] + p['bias']


def max_pool_3x3_s2(x):
  """3x3 max-pool, stride 2, 'SAME' (padding never wins the max)."""
  (t, b), (l, r) = same_padding(x.shape[1], 3, 2), same_padding(x.shape[2], 3, 2)
  x = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), constant_values=-np.inf)
  oh, ow = (x.shape[1] - 3) // 2 + 1, (x.shape[2] - 3) // 2 + 1
  return np.max([x[:, i:i + 2 * (oh - 1) + 1:2, j:j + 2 * (ow - 1) + 1:2]
                 for i in range(3) for j in range(3)], axis=0)


def relu(x):
  return np.maximum(x, 0)


def unit(x, p, stride, groups):
  """Bottleneck: relu(shortcut + gn3(conv3(relu(gn2(conv2(relu(gn1(conv1(x))))))))."""
  shortcut = x
  if 'conv_proj' in p:
    shortcut = group_norm(std_conv(x, p['conv_proj']['kernel'], stride), p['gn_proj'], groups)
  y = relu(group_norm(std_conv(x, p['conv1']['kernel']), p['gn1'], groups))
  y = relu(group_norm(std_conv(y, p['conv2']['kernel'], stride), p['gn2'], groups))
  y = group_norm(std_conv(y, p['conv3']['kernel']), p['gn3'], groups)
  return relu(shortcut + y)


def resnet_features(params, images, *, stem):
  """Root block ('bit': 7x7/2 conv + 3x3/2 max-pool; 'small': 3x3/1 conv) and the stages
  `block1`, `block2`, ... (the first unit of every stage after the first has stride 2):
  (B, H, W, C) -> (B, H', W', 4 * width * 2^(S-1))."""
  width = params['conv_root']['kernel'].shape[-1]
  groups = math.gcd(32, width)
  x = std_conv(images.astype(np.float64), params['conv_root']['kernel'], 2 if stem == 'bit' else 1)
  x = relu(group_norm(x, params['gn_root'], groups))
  if stem == 'bit':
    x = max_pool_3x3_s2(x)
  stages = sorted((k for k in params if k.startswith('block')), key=lambda k: int(k[5:]))
  for s, stage in enumerate(stages):
    units = sorted(params[stage], key=lambda k: int(k[4:]))
    for u, name in enumerate(units):
      x = unit(x, params[stage][name], 2 if s and not u else 1, groups)
  return x
