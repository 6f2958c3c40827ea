"""FLOP and memory counts, for training results, plan mode and the benchmark.

From XLA: `compiled_flops` and `compiled_memory` read a compiled program's cost and memory
analysis; `forward_flops` counts one example's forward pass of a model. XLA's cost analysis
counts the body of a loop once, so a model with `num_layers` (which `scan=True` loops over)
is counted from unscanned 1- and 2-layer versions: F(L) = F(1) + (L - 1) (F(2) - F(1)), the
same for a scanned and an unrolled model.

Analytic (`vit_forward_flops`): FLOPs count a multiply-add as 2. Forward FLOPs per image are the
matrix multiplications only (patch embedding, query/key/value/out projections, the two attention
products, MLP, pre-logits, head); LayerNorm, GELU, softmax and residual adds are left out (a few
% at ViT sizes).

Training counts 3x forward (`TRAIN_FLOPS_PER_FORWARD`: the backward pass is two matmuls per
forward matmul), the usual MFU convention: the patch embedding needs no input gradient and the
optimizer's elementwise update is not counted, so the true count differs by a few %.

Peak FLOP/s per device (`datasheet_peak`, or the timed `matmul_step` where no datasheet
applies) give the benchmark's MFU.
"""
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

TRAIN_FLOPS_PER_FORWARD = 3

# Dense (no sparsity) peak FLOP/s per device by `device_kind` substring, first match wins:
# bfloat16 and float32 (TF32 tensor cores, what XLA uses for f32 matmuls on these GPUs by
# default). Vendor datasheets; H200 is the H100 SXM chip with more memory.
PEAK_FLOPS = (
    ('H100 PCIe', {'bfloat16': 756e12, 'float32': 378e12}),
    ('H100', {'bfloat16': 989e12, 'float32': 494.7e12}),
    ('H200', {'bfloat16': 989e12, 'float32': 494.7e12}),
    ('A100', {'bfloat16': 312e12, 'float32': 156e12}),
)


def compiled_flops(compiled) -> float:
  """FLOPs of one call of a compiled program, from XLA's cost analysis."""
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', 0.0))


def compiled_memory(compiled) -> dict[str, int]:
  """Bytes per device of a compiled program: arguments, outputs, aliased (donated),
  temporaries, and peak = arguments + outputs - aliased + temporaries."""
  m = compiled.memory_analysis()
  memory = {'arguments': m.argument_size_in_bytes, 'outputs': m.output_size_in_bytes,
            'aliased': m.alias_size_in_bytes, 'temporaries': m.temp_size_in_bytes}
  memory['peak'] = (memory['arguments'] + memory['outputs'] - memory['aliased']
                    + memory['temporaries'])
  return memory


def xla_forward_flops(model: nn.Module, image_shape: tuple[int, ...]) -> float:
  """FLOPs of one example's forward pass, from XLA's cost analysis of the compiled model
  (a scanned layer counts once: see `forward_flops`)."""
  compiled = jax.jit(lambda p, x: model.apply(p, x, train=False)).lower(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, *image_shape))),
      jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)).compile()
  return compiled_flops(compiled)


def forward_flops(build: Callable[..., nn.Module], image_shape: tuple[int, ...],
                  num_layers: int | None) -> float:
  """FLOPs of one example's forward pass of the model `build(**changes)` returns.

  Args:
    build: makes the model, with `changes` to its fields (here num_layers and scan=None,
      the unscanned default).
    image_shape: (H, W, C) of one example.
    num_layers: the model's layer count, or None for a model without layers to scan (ResNet).
  """
  if num_layers is None:
    return xla_forward_flops(build(), image_shape)
  one, two = (xla_forward_flops(build(num_layers=n, scan=None), image_shape) for n in (1, 2))
  return one + (num_layers - 1) * (two - one)


def train_flops(forward: float, examples: int) -> float:
  """Training FLOPs of `examples` examples at `forward` FLOPs each."""
  return TRAIN_FLOPS_PER_FORWARD * forward * examples


def vit_forward_flops(fields: dict, image_size: int, num_classes: int, channels: int = 3
                      ) -> float:
  """Matmul FLOPs of one image's forward pass through a plain ViT.

  Args:
    fields: the model's resolved fields (`vit_jax.models.resolved_fields`): hidden_size D,
      mlp_dim M, num_layers L, patch_size P, classifier, representation_size R.
    image_size: S; the image is S x S with `channels` C.
    num_classes: K.

  Returns:
    2 * (n P^2 C D + L (4 N D^2 + 2 N^2 D + 2 N D M) + D R + R K) with n = (S / P)^2 patches
    and N = n (+1 with a class token) tokens (R = D and no pre-logits term when R is None).
  """
  if fields['family'] != 'vit':
    raise ValueError(f"FLOP counts cover plain ViT models, not family {fields['family']!r}.")
  d, m, layers = fields['hidden_size'], fields['mlp_dim'], fields['num_layers']
  p = fields['patch_size']
  ph, pw = (p, p) if isinstance(p, int) else p
  patches = (image_size // ph) * (image_size // pw)
  n = patches + (fields.get('classifier', 'token') == 'token')
  r = fields.get('representation_size')
  macs = patches * ph * pw * channels * d
  macs += layers * (4 * n * d * d + 2 * n * n * d + 2 * n * d * m)
  macs += (d * r if r else 0) + (r or d) * num_classes
  return 2. * macs


def matmul_step(dtype: str, size: int = 2048) -> tuple[Callable[[], None], float]:
  """(step, FLOPs per call): a jitted (size x size) @ (size x size) product on the default
  device. Timed beside the model, its FLOP/s is the practical peak where no datasheet figure
  applies (CPUs), measured under the same load."""
  x = jnp.ones((size, size), dtype)
  f = jax.jit(lambda a: a @ a)
  return lambda: f(x).block_until_ready(), 2. * size**3


def datasheet_peak(device: jax.Device, dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s, source) of one device from PEAK_FLOPS; (None, why) when the table has no
  entry (CPUs, unknown GPUs: measure the matmul ceiling instead)."""
  for kind, peaks in PEAK_FLOPS:
    if kind in device.device_kind:
      return peaks[dtype], f'datasheet ({kind}, {dtype} dense)'
  return None, f'{device.device_kind!r} is not in PEAK_FLOPS'
