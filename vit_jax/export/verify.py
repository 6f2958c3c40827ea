"""Verification of an export: run the exported model and compare its logits with the JAX model's
on a batch of real images and a batch of random inputs (two batch sizes)."""
from typing import Callable

import numpy as np

from vit_jax.export.source import NUM_RANDOM, Source, random_images

TOLERANCE = 1e-4  # largest absolute logit difference accepted in float32


class VerificationError(RuntimeError):
  """The exported model does not compute what the JAX model computes."""


def compare(source: Source, fmt: str, run: Callable[[np.ndarray], np.ndarray], how: str,
            tolerance: float = TOLERANCE) -> dict:
  """Runs `run` (images (B, S, S, C) float32 -> logits (B, classes)) and the JAX model on the
  same inputs; prints the largest absolute difference per batch.

  Returns:
    {'max_abs_diff': {batch description: difference}, 'tolerance', 'verified_with': how}.

  Raises:
    VerificationError: a batch differs by more than `tolerance` (or gives non-finite or
      wrongly shaped logits).
  """
  batches = {source.images_from: source.images,
             f'{NUM_RANDOM} random inputs in [-1, 1]': random_images(source)}
  diffs = {}
  for what, images in batches.items():
    want, got = source.logits(images), np.asarray(run(images))
    if got.shape != want.shape:
      raise VerificationError(f'--format={fmt}: the exported model gives logits of shape '
                              f'{got.shape}, the JAX model {want.shape} ({how}).')
    diffs[what] = float(np.max(np.abs(got.astype(np.float64) - want)))
    print(f'{fmt}: largest absolute logit difference {diffs[what]:.3g} on {what} ({how}).')
  worst = max(diffs.values())
  if not worst <= tolerance:  # also catches NaN
    raise VerificationError(f'--format={fmt} export of {source.name} does not match the JAX '
                            f'model: largest absolute logit difference {worst:.3g} > tolerance '
                            f'{tolerance:g} ({how}). Nothing was written.')
  return {'max_abs_diff': diffs, 'tolerance': tolerance, 'verified_with': how}
