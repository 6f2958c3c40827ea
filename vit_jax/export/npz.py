"""The original vit_jax checkpoint format: `model.npz`, a flat dict of NumPy arrays with
`/`-joined pre-Linen names (`Transformer/encoderblock_0/MultiHeadDotProductAttention_1/...`),
as the published ViT checkpoints, the original code's and timm's npz loaders read.

Verified by reading the file back with `checkpoint.load_pretrained` and running the model on
those parameters. Every model family is written; the original code and timm read ViTs and
hybrids.
"""
import os
from typing import Callable

import numpy as np

from vit_jax import checkpoint
from vit_jax.export.source import Source, predictor

MODEL = 'model.npz'


def check(source: Source) -> None:
  del source  # our parameter tree of any family is this format


def write(source: Source, directory: str) -> None:
  checkpoint.save_npz(os.path.join(directory, MODEL), source.params)


def runner(source: Source, directory: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
  """The model on the parameters read back from the file, as a function of NHWC images."""
  params = checkpoint.load_pretrained(os.path.join(directory, MODEL), source.params,
                                      reset_head=False)
  return predictor(source.model, params), ('checkpoint.load_pretrained of the file, run in '
                                            'the JAX model')
