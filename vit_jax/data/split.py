"""An in-memory split: decoded uint8 images and integer labels."""
import dataclasses

import numpy as np

SPLITS = ('train', 'test')  # the splits every source has
CHANNELS = (1, 3)  # grayscale, colour: what data.channels may ask for
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2 luma weights of R, G, B, as Pillow's 'L' mode
_LUMA_16 = np.array([round(w * 2**16) for w in LUMA], np.uint32)  # Pillow's fixed point


def convert_channels(images: np.ndarray, channels: int | None) -> np.ndarray:
  """uint8 images (..., C) -> (..., channels), exactly as Pillow converts an image: grayscale
  (C = 1) to colour ('RGB') repeats it, colour (C = 3) to grayscale ('L') is its `LUMA`
  rounded to a level; unchanged when `channels` is None or C."""
  have = images.shape[-1]
  if channels is None or have == channels:
    return images
  if (have, channels) == (1, 3):
    return np.repeat(images, 3, axis=-1)
  if (have, channels) == (3, 1):
    return ((images @ _LUMA_16 + 2**15) >> 16).astype(np.uint8)[..., None]
  raise ValueError(f'Images of {have} channels cannot be turned into {channels} channels.')


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

  def with_channels(self, channels: int | None) -> 'Split':
    """This split with its images converted to `channels` (`convert_channels`; None or its
    own: itself)."""
    if channels is None or channels == self.channels:
      return self
    return dataclasses.replace(self, images=convert_channels(self.images, channels))
