"""Patch-embedding filters and position embeddings (ViT paper, Figure 7 left and centre)."""
import numpy as np


def filter_components(kernel: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """Principal components of the D patch-embedding filters.

  Args:
    kernel: (P, P, C, D), the embedding convolution; each of the D filters is a P x P x C patch.
    k: number of components (at most min(D, P*P*C)).

  Returns:
    (components (k, P, P, C), each of unit norm and ordered by explained variance;
     explained variance ratio (k,)).
  """
  p1, p2, c, d = kernel.shape
  filters = kernel.reshape(p1 * p2 * c, d).T.astype(np.float64)  # (D, P*P*C)
  centred = filters - filters.mean(0)
  _, s, vt = np.linalg.svd(centred, full_matrices=False)
  k = min(k, len(s))
  variance = s ** 2
  return vt[:k].reshape(k, p1, p2, c), variance[:k] / variance.sum()


def posemb_similarity(posemb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
  """Cosine similarity of every patch's position embedding with every other one.

  Args:
    posemb: (N, D) or (1, N, D) with N = prefix + h * w; the leading prefix tokens (class
      token) are excluded.
    grid: (h, w) patches.

  Returns:
    (h, w, h, w): [i, j] is the similarity map of patch (i, j) with all patches.
  """
  posemb = np.asarray(posemb, np.float64).reshape(-1, posemb.shape[-1])
  h, w = grid
  patches = posemb[len(posemb) - h * w:]
  unit = patches / np.linalg.norm(patches, axis=1, keepdims=True)
  return (unit @ unit.T).reshape(h, w, h, w)
