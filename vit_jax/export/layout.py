"""Our parameter layout <-> PyTorch's, shared by the Hugging Face and timm mappings.

A mapping is a list of `Entry(ours, theirs, kind)`: `ours` is one flat path of our tree (or
several, concatenated on the output axis, as timm's fused qkv), `theirs` a state-dict key, and
`kind` says how the array changes layout:
- 'tensor': unchanged (class token, position embedding, LayerNorm, output biases);
- 'flat': flattened, e.g. a per-head bias (K, D/K) -> (D,);
- 'linear': a kernel whose first axis is the input, (D_in, ...) -> Linear weight (out, D_in),
  e.g. Dense (D_in, D_out) or query (D, K, D/K) -> (D, D);
- 'linear_out': a kernel whose last axis is the output, (..., D_out) -> (D_out, in), e.g. the
  attention output (K, D/K, D) -> (D, D);
- 'conv': HWIO -> OIHW;
- 'linear_1x1': a Dense kernel (D_in, D_out) -> a 1x1 convolution weight (D_out, D_in, 1, 1).

`vit_for_weights` builds the ViT that imported weights go into (`models.param_shapes` gives
its parameter shapes).
"""
import dataclasses
from typing import Mapping

import flax.linen as nn
import numpy as np

from vit_jax.models import get_model


@dataclasses.dataclass(frozen=True)
class Entry:
  ours: tuple[str, ...]
  theirs: str
  kind: str


def entry(ours: str | tuple[str, ...], theirs: str, kind: str = 'tensor') -> Entry:
  return Entry((ours,) if isinstance(ours, str) else tuple(ours), theirs, kind)


def dense(ours: str, theirs: str, kind: str = 'linear', bias_kind: str = 'tensor'
          ) -> list[Entry]:
  """A Dense / DenseGeneral layer `ours` <-> a torch Linear `theirs`."""
  return [entry(f'{ours}/kernel', f'{theirs}.weight', kind),
          entry(f'{ours}/bias', f'{theirs}.bias', bias_kind)]


def norm(ours: str, theirs: str) -> list[Entry]:
  """A LayerNorm `ours` (scale, bias) <-> a torch LayerNorm `theirs` (weight, bias)."""
  return [entry(f'{ours}/scale', f'{theirs}.weight'), entry(f'{ours}/bias', f'{theirs}.bias')]


def to_torch(array: np.ndarray, kind: str) -> np.ndarray:
  """One of our arrays in PyTorch's layout (see the module docstring for `kind`)."""
  if kind == 'tensor':
    return array
  if kind == 'flat':
    return array.reshape(-1)
  if kind == 'linear':
    return array.reshape(array.shape[0], -1).T
  if kind == 'linear_out':
    return array.reshape(-1, array.shape[-1]).T
  if kind == 'conv':
    return array.transpose(3, 2, 0, 1)
  if kind == 'linear_1x1':
    return array.T[:, :, None, None]
  raise ValueError(f'Unknown layout kind {kind!r}.')


def from_torch(array: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
  """Inverse of `to_torch`: back to our layout with our `shape`."""
  if kind == 'conv':
    array = array.transpose(2, 3, 1, 0)
  elif kind in ('linear', 'linear_out'):
    array = array.T
  return np.ascontiguousarray(array.reshape(shape))


def to_state_dict(flat: Mapping[str, np.ndarray], entries: list[Entry]
                  ) -> dict[str, np.ndarray]:
  """Our flat parameters ({'a/b': array}) -> their state dict (contiguous float arrays)."""
  return {e.theirs: np.ascontiguousarray(np.concatenate(
      [to_torch(np.asarray(flat[p]), e.kind) for p in e.ours], axis=0)) for e in entries}


def from_state_dict(state: Mapping[str, np.ndarray], entries: list[Entry],
                    shapes: Mapping[str, tuple[int, ...]], what: str) -> dict[str, np.ndarray]:
  """Their state dict -> our flat parameters with `shapes` ({'a/b': shape}).

  Raises:
    ValueError: naming the keys `what` (e.g. 'the Hugging Face checkpoint') lacks, has in
      excess, or has with the wrong shape.
  """
  missing = sorted(e.theirs for e in entries if e.theirs not in state)
  unexpected = sorted(set(state) - {e.theirs for e in entries})
  flat, mismatched = {}, []
  for e in entries:
    if e.theirs not in state:
      continue
    array = np.asarray(state[e.theirs])
    parts = [to_torch(np.zeros(shapes[p], np.int8), e.kind).shape for p in e.ours]
    expected = (sum(s[0] for s in parts), *parts[0][1:])
    if array.shape != expected:
      mismatched.append(f'{e.theirs}: {array.shape}, expected {expected}')
      continue
    rows = np.cumsum([s[0] for s in parts])[:-1]
    for path, part in zip(e.ours, np.split(array, rows)):
      flat[path] = from_torch(part, e.kind, shapes[path])
  if missing or unexpected or mismatched:
    problems = [f'{title} ({len(keys)}): ' + ', '.join(keys)
                for title, keys in [('missing', missing), ('unexpected', unexpected),
                                    ('wrong shape', mismatched)] if keys]
    raise ValueError(f'The weights in {what} do not fit the model: ' + '; '.join(problems))
  return flat


def vit_for_weights(*, num_classes: int, hidden_size: int, mlp_dim: int, num_heads: int,
                    num_layers: int, patch_size: int | tuple[int, int], classifier: str,
                    gelu_approximate: bool) -> nn.Module:
  """Our ViT with the given architecture (learned position embedding, no pre-logits)."""
  return get_model('ViT-B_16', num_classes=num_classes, hidden_size=hidden_size, mlp_dim=mlp_dim,
                   num_heads=num_heads, num_layers=num_layers, patch_size=patch_size,
                   classifier=classifier, gelu_approximate=gelu_approximate)
