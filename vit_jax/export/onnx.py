"""ONNX export with jax2onnx: `model.onnx`, input `images` (B, S, S, C) float32 NHWC in
[-1, 1] with a dynamic batch dimension B, output `logits` (B, classes) float32.

The parameters are baked into the graph as initializers (spilled into `model.onnx.data` when
large). Verified with onnxruntime on two batch sizes. Every family converts: the ResNet's and
the hybrid's weight-standardised convolutions are written as plain convolutions with the
already-standardised kernels (`stdconv`), since jax2onnx (0.17) converts Flax's `nn.Conv` from
its stored kernel and would skip the standardisation.
"""
import os
from typing import Callable

import numpy as np

from vit_jax.export import stdconv
from vit_jax.export.source import Source

MODEL = 'model.onnx'


def check(source: Source) -> None:
  del source  # every registry model converts


def write(source: Source, directory: str) -> None:
  """Converts the model into `directory/model.onnx` (jax2onnx writes the file itself; the
  folder is renamed into place only after verification)."""
  from jax2onnx import to_onnx
  model, params = source.model, stdconv.standardized_params(source)
  with stdconv.plain_convolutions():
    to_onnx(lambda images: model.apply({'params': params}, images, train=False),
            inputs=[('B', source.image_size, source.image_size, source.channels)],
            model_name=source.name.replace('/', '_'), return_mode='file',
            output_path=os.path.join(directory, MODEL), input_names=['images'],
            output_names=['logits'])


def runner(source: Source, directory: str) -> tuple[Callable[[np.ndarray], np.ndarray], str]:
  """An onnxruntime session (CPU) on the exported file, as a function of NHWC images."""
  del source
  import onnxruntime
  session = onnxruntime.InferenceSession(os.path.join(directory, MODEL),
                                         providers=['CPUExecutionProvider'])

  def run(images: np.ndarray) -> np.ndarray:
    return session.run(['logits'], {'images': np.asarray(images, np.float32)})[0]
  return run, f'onnxruntime {onnxruntime.__version__} InferenceSession'
