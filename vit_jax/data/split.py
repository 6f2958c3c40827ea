"""An in-memory split: decoded uint8 images and integer labels."""
import dataclasses

import numpy as np

SPLITS = ('train', 'test')  # the splits every source has


@dataclasses.dataclass(frozen=True)
class Split:
  """One decoded split held in memory.

  images: (N, H, W, C) uint8; labels: (N,) int32 indices into class_names; skipped: the files
  left out because they could not be decoded (with corrupt_images='skip').
  """
  images: np.ndarray
  labels: np.ndarray
  class_names: tuple[str, ...]
  skipped: tuple[str, ...] = ()

  host_augmented = False  # augmented on the device, inside the jitted step

  @property
  def channels(self) -> int:
    return self.images.shape[-1]

  def take(self, indices: np.ndarray) -> 'Split':
    """The examples at `indices`, same classes."""
    return dataclasses.replace(self, images=self.images[indices], labels=self.labels[indices])
