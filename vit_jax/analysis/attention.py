"""Attention statistics (ViT paper, Figure 7 right and Appendix D.8)."""
import numpy as np


def _patch_attention(attention: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """(..., N, N) -> (..., h*w, h*w): the patch-to-patch block, rows renormalised to sum 1."""
  n = grid[0] * grid[1]
  block = np.asarray(attention, np.float64)[..., -n:, -n:]
  return block / block.sum(-1, keepdims=True)


def mean_attention_distance(attention: np.ndarray, grid: tuple[int, int],
                            patch_size: int) -> np.ndarray:
  """Mean attention distance in pixels of every head.

  For each query patch: the attention-weighted distance between patch centres over the other
  patches (attention to prefix tokens such as the class token left out, rows renormalised);
  averaged over query patches and images.

  Args:
    attention: (L, B, K, N, N) attention weights (layers, images, heads, queries, keys), the
      last h*w tokens being the patches in row-major order.
    grid: (h, w) patches; patch_size: pixels per patch side.

  Returns:
    (L, K) distances in pixels.
  """
  h, w = grid
  rows, cols = np.divmod(np.arange(h * w), w)
  centres = np.stack([rows, cols], -1) * patch_size
  distance = np.linalg.norm(centres[:, None] - centres[None], axis=-1)  # (h*w, h*w)
  per_query = (_patch_attention(attention, grid) * distance).sum(-1)  # (L, B, K, h*w)
  return per_query.mean(axis=(1, 3))


def attention_rollout(attention: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """Attention rollout (Abnar & Zuidema, 2020) as in the ViT paper.

  Per layer: heads averaged, identity added, rows renormalised; the layers multiplied, the
  last on the left. The map of an image is the row of the class token over the patches, or the
  mean row of the patches when there is no prefix token.

  Args:
    attention: (L, B, K, N, N).
    grid: (h, w) patches (the last h*w tokens).

  Returns:
    (B, h, w) maps, each scaled to a maximum of 1.
  """
  attention = np.asarray(attention, np.float64)
  n = attention.shape[-1]
  joint = np.broadcast_to(np.eye(n), attention.shape[1:2] + (n, n))
  for layer in attention:  # (B, K, N, N)
    a = layer.mean(1) + np.eye(n)
    joint = (a / a.sum(-1, keepdims=True)) @ joint
  h, w = grid
  prefix = n - h * w
  maps = joint[:, 0, prefix:] if prefix else joint.mean(1)
  maps = maps.reshape(-1, h, w)
  return maps / maps.max(axis=(1, 2), keepdims=True)
