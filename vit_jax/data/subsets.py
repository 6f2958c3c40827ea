"""Nested, class-balanced subsets of a labelled split, as index lists (no copies)."""
import numpy as np


def nested_subset(labels: np.ndarray, size: int | None, seed: int) -> np.ndarray:
  """Sorted indices of a class-balanced subset of `size` examples (None: all).

  Every class gets a fixed permutation (one `default_rng(seed)` draw per class, in class
  order); examples are taken by (position in their class's permutation, class). So for one
  seed a smaller subset lies inside every larger one, and per-class counts differ by at most
  one among the classes that still have examples left.
  """
  if size is None:
    return np.arange(len(labels))
  if not 1 <= size <= len(labels):
    raise ValueError(f'train_size={size} must be between 1 and the {len(labels)} available '
                     'training examples.')
  rng = np.random.default_rng(seed)
  rank = np.empty(len(labels), np.int64)
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    rank[members] = np.arange(len(members))
  return np.sort(np.lexsort((labels, rank))[:size])
