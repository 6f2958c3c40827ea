"""A tiny ImageNet-style tree: `<root>/{train,val}/<wnid>/*.JPEG` of varying sizes and aspect
ratios, some grayscale, some PNG (ImageNet itself has a few PNG and CMYK files named .JPEG)."""
import os

import numpy as np
from PIL import Image


def make_tree(root, classes: int = 3, per_class: dict | None = None, seed: int = 0,
              sizes: tuple[int, int] = (40, 120), grayscale: bool = True) -> dict[str, list]:
  """Writes the tree; returns {split: [(relative path, label), ...]} in class, name order.
  Images are smooth random gradients plus noise (so JPEG and resizing behave as on photos),
  heights and widths drawn from [sizes[0], sizes[1]); with `grayscale`, the second of every
  four of a class is grayscale."""
  per_class = per_class or {'train': 4, 'val': 2}
  rng = np.random.default_rng(seed)
  written = {}
  for split, count in per_class.items():
    for label in range(classes):
      wnid = f'n{label:08d}'
      os.makedirs(os.path.join(root, split, wnid), exist_ok=True)
      for i in range(count):
        h, w = rng.integers(*sizes, size=2)
        yy, xx = np.mgrid[:h, :w] / max(h, w)
        base = rng.uniform(0, 255, (1, 1, 3)) * (1 - yy[..., None]) + 255 * xx[..., None] * .5
        pixels = np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)
        kind = i % 4
        if kind == 1 and grayscale:
          image = image.convert('L')
        name = f'{split}_{label}_{i:03d}.' + ('png' if kind == 2 else 'JPEG')
        image.save(os.path.join(root, split, wnid, name),
                   **({} if kind == 2 else {'quality': 90}))
        written.setdefault(split, []).append((f'{split}/{wnid}/{name}', label))
  return written
