"""The published parameter format: the `.npz` files of the original ViT checkpoints.

They are flat `.npz` files with `/`-joined keys such as
`Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel`. Two naming generations exist:
pre-Linen numbers auto-named submodules with one counter per parent (`LayerNorm_0`,
`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), Linen with one counter per type
(`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`). big_vision files
prefix the tree with `params/`. All load here, never with pickle. Scanned models hold their
layers stacked in one `encoderblock` (`stack_layers`); the files hold them unrolled.

`save_npz` writes the format; `fit` adapts a tree read from it to a model (naming, layer
layout, position embedding resolution, input channels, head). Reading a file or a run's
checkpoint and fitting it is `vit_jax.checkpoint.load_pretrained`.
"""
import os
import re
from typing import Any
import urllib.parse

from absl import logging
from flax import traverse_util
import numpy as np
import scipy.ndimage

from vit_jax import files
from vit_jax.data.split import CHANNELS, LUMA

Params = dict[str, Any]

# The original checkpoints pre-trained on ImageNet-21k, published as <model name>.npz under
# I21K_URL (gs://vit_models/imagenet21k; fine-tuned ones in imagenet21k+imagenet2012, augreg, ...).
I21K_URL = 'https://storage.googleapis.com/vit_models/imagenet21k/'
I21K_MODELS = ('ViT-B_16', 'ViT-B_32', 'ViT-L_16', 'ViT-L_32', 'ViT-H_14', 'R26+ViT-B_32',
               'R50+ViT-B_16', 'R50+ViT-L_32')


def published_url(path: str) -> str | None:
  """Where the published ImageNet-21k checkpoint that `path` names by its file name (e.g.
  'ViT-B_16.npz', as configs/finetune.py names it) downloads from; None for other names."""
  name = os.path.basename(path)
  if name.endswith('.npz') and name.removesuffix('.npz') in I21K_MODELS:
    return I21K_URL + urllib.parse.quote(name)
  return None


# Linen name -> pre-Linen name inside an encoder block (creation order within the block).
_PRE_LINEN_BLOCK = {
    'LayerNorm_0': 'LayerNorm_0',
    'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
    'LayerNorm_1': 'LayerNorm_2',
    'MlpBlock_0': 'MlpBlock_3',
}


def flatten(tree: Params) -> dict[str, Any]:
  """Nested dict -> {'a/b/c': leaf}: the keys of the `.npz` format."""
  return traverse_util.flatten_dict(tree, sep='/')


def unflatten(flat: dict[str, Any]) -> Params:
  """{'a/b/c': leaf} -> nested dict."""
  return traverse_util.unflatten_dict(flat, sep='/')


def to_linen_names(tree: Params) -> Params:
  """Renumbers `<type>_<n>` keys per type, at every level (pre-Linen -> Linen; idempotent)."""
  if not isinstance(tree, dict):
    return tree
  numbered = [k for k in tree if re.fullmatch(r'.+_\d+', k)]
  numbered.sort(key=lambda k: (k.rsplit('_', 1)[0], int(k.rsplit('_', 1)[1])))
  renamed, counts = {}, {}
  for key in numbered:
    prefix = key.rsplit('_', 1)[0]
    renamed[key] = f'{prefix}_{counts.get(prefix, 0)}'
    counts[prefix] = counts.get(prefix, 0) + 1
  return {renamed.get(k, k): to_linen_names(v) for k, v in tree.items()}


def to_pre_linen_names(tree: Params) -> Params:
  """Inverse of `to_linen_names` for our models: renames encoder-block children."""
  if not isinstance(tree, dict):
    return tree
  return {k: ({_PRE_LINEN_BLOCK.get(c, c): to_pre_linen_names(v) for c, v in sub.items()}
              if k.startswith('encoderblock') and isinstance(sub, dict)
              else to_pre_linen_names(sub))
          for k, sub in tree.items()}


def read_npz(path: str) -> Params:
  """Reads a flat `.npz` checkpoint into a nested dict of NumPy arrays (no pickle)."""
  return unflatten(files.read_npz(path))


def save_npz(path: str, params: Params, *, naming: str = 'pre_linen') -> None:
  """Writes `params` as a flat `.npz` in the published format, atomically.

  Args:
    path: destination file.
    params: parameter tree of one of our models (unrolled layers, as `unstack_layers` gives).
    naming: 'pre_linen' (like the published ViT files) or 'linen'.
  """
  if naming not in ('pre_linen', 'linen'):
    raise ValueError(f"naming={naming!r} must be 'pre_linen' or 'linen'.")
  tree = unstack_layers(to_numpy(params))
  if naming == 'pre_linen':
    tree = to_pre_linen_names(tree)
  files.write_npz(path, flatten(tree))


def to_numpy(tree: Any) -> Any:
  """Nested mapping of arrays -> nested dict of NumPy arrays; abstract leaves (shape and dtype
  only, as `jax.eval_shape` gives) stay as they are."""
  if isinstance(tree, dict) or hasattr(tree, 'items'):
    return {k: to_numpy(v) for k, v in tree.items()}
  return np.asarray(tree) if hasattr(tree, '__array__') else tree


def stack_layers(tree: Params) -> Params:
  """`encoderblock_{i}` subtrees -> one `encoderblock` with a leading layer axis (for scan)."""
  if not isinstance(tree, dict):
    return tree
  blocks = sorted((k for k in tree if re.fullmatch(r'encoderblock_\d+', k)),
                  key=lambda k: int(k.split('_')[1]))
  out = {k: stack_layers(v) for k, v in tree.items() if k not in blocks}
  if blocks:
    flats = [flatten(tree[k]) for k in blocks]
    out['encoderblock'] = unflatten({p: np.stack([f[p] for f in flats]) for p in flats[0]})
  return out


def unstack_layers(tree: Params) -> Params:
  """Inverse of `stack_layers`: one `encoderblock` -> `encoderblock_{i}` subtrees."""
  if not isinstance(tree, dict):
    return tree
  out = {k: unstack_layers(v) for k, v in tree.items() if k != 'encoderblock'}
  if 'encoderblock' in tree:
    flat = flatten(tree['encoderblock'])
    for i in range(len(next(iter(flat.values())))):
      out[f'encoderblock_{i}'] = unflatten({p: v[i] for p, v in flat.items()})
  return out


def resize_posemb(posemb: np.ndarray, num_tokens: int, num_prefix: int) -> np.ndarray:
  """Resizes a learned position embedding (1, N, D) to (1, num_tokens, D).

  The first `num_prefix` rows (the class token) are kept; the rest, a square grid, is zoomed
  bilinearly with `scipy.ndimage.zoom(order=1)` to the new square grid, as the original code does.
  """
  prefix, grid = posemb[:, :num_prefix], posemb[0, num_prefix:]
  old, new = int(np.sqrt(len(grid))), int(np.sqrt(num_tokens - num_prefix))
  if old * old != len(grid) or new * new != num_tokens - num_prefix:
    raise ValueError(f'Cannot resize position embeddings from {posemb.shape[1]} to {num_tokens} '
                     f'tokens: the grids ({len(grid)} -> {num_tokens - num_prefix} tokens after '
                     f'{num_prefix} class token(s)) must be square.')
  logging.info('Resizing position embedding grid %dx%d -> %dx%d.', old, old, new, new)
  grid = scipy.ndimage.zoom(grid.reshape(old, old, -1), (new / old, new / old, 1), order=1)
  return np.concatenate([prefix, grid.reshape(1, new * new, -1)], axis=1)


def adapt_input_channels(kernel: np.ndarray, channels: int) -> np.ndarray:
  """A ViT's patch-embedding kernel (P, P, C, D) for images of `channels` channels, computing
  on them exactly what `kernel` computes on its own kind: colour (C = 3) to grayscale, the sum
  over C (a grayscale image seen as colour has three equal channels); grayscale to colour,
  copies weighted by `LUMA` (a colour image seen as its luma), as `data.split.convert_channels`
  converts images (up to its rounding to levels). ValueError for other channel counts."""
  have = kernel.shape[2]
  if (have, channels) == (3, 1):
    return kernel.sum(axis=2, keepdims=True)
  if (have, channels) == (1, 3):
    return kernel * np.asarray(LUMA, kernel.dtype)[:, None]
  raise ValueError(f'A kernel of {have}-channel images cannot be adapted to {channels} channels.')


# Parameters of pre-training that a fine-tuned model may lack -> why they are dropped.
_PRETRAINING_ONLY = {
    'pre_logits/': 'the model has no representation layer',
    'mask_token': 'masked patch prediction only',
    'mpp_head/': 'masked patch prediction only',
}


_LISTED = 10  # keys listed per kind of problem in `fit`'s error


def _encoder_shape(flat: dict[str, Any]) -> dict[str, int]:
  """The Transformer encoder's `model.*` sizes (num_layers, hidden_size, mlp_dim, num_heads)
  read off a flat tree in the model's layout (scanned or unrolled); {} without an encoder."""
  scanned = 'Transformer/encoderblock/LayerNorm_0/scale' in flat
  block = 'Transformer/encoderblock/' if scanned else 'Transformer/encoderblock_0/'
  if block + 'LayerNorm_0/scale' not in flat:
    return {}
  sizes = {'num_layers': flat[block + 'LayerNorm_0/scale'].shape[0] if scanned else len(
      {m[1] for k in flat if (m := re.match(r'Transformer/encoderblock_(\d+)/', k))})}
  for name, key, axis in [('hidden_size', 'LayerNorm_0/scale', -1),
                          ('mlp_dim', 'MlpBlock_0/Dense_0/kernel', -1),
                          ('num_heads', 'MultiHeadDotProductAttention_0/query/kernel', -2)]:
    if block + key in flat:
      sizes[name] = flat[block + key].shape[axis]
  return {k: int(v) for k, v in sizes.items()}


def _encoder_hint(flat: dict[str, Any], expected: dict[str, Any]) -> str:
  """': its encoder has num_layers=4 (the model: 12); ...' naming the encoder sizes in which
  the checkpoint `flat` and the model `expected` (flat trees) differ, or ''."""
  theirs, ours = _encoder_shape(flat), _encoder_shape(expected)
  differ = {k: v for k, v in theirs.items() if k in ours and v != ours[k]}
  if not differ:
    return ''
  return (': its encoder has ' + ', '.join(f'{k}={v} (the model: {ours[k]})'
                                           for k, v in differ.items())
          + '; to fine-tune a model of its shape, add '
          + ' '.join(f'--config.model.{k}={v}' for k, v in differ.items()))


def _channels_hint(flat: dict[str, Any], expected: dict[str, Any]) -> str:
  """'; it was trained on 3-channel images, ...' when the ResNet root (of a hybrid or a BiT
  ResNet) of the checkpoint `flat` and the model `expected` (flat trees) takes images of other
  channel counts, or ''."""
  key = 'conv_root/kernel'
  if key not in flat or key not in expected:
    return ''
  theirs, ours = flat[key].shape[2], expected[key].shape[2]
  if theirs == ours:
    return ''
  return (f'; it was trained on {theirs}-channel images, the model is built for the dataset\'s '
          f'{ours}-channel ones (a weight-standardised ResNet root has no exact adaptation, '
          "unlike a plain ViT's patch embedding)" + (
              f": set data.channels={theirs} to read the dataset's images as "
              f"{'colour' if theirs == 3 else 'grayscale'}" if theirs in CHANNELS else ''))


def fit(tree: Params, init_params: Params, *, source: str, reset_head: bool | None = None,
        strict: bool = True) -> Params:
  """Fits a published-format parameter tree (as read from a `.npz` or a run's checkpoint by
  `vit_jax.checkpoint.load_pretrained`) to a model: a tree shaped like `init_params`.

  Handles both naming generations, big_vision's `params/` prefix, GroupNorm parameters stored
  as (1, 1, 1, C), scanned vs unrolled layers, and adapts the checkpoint to the model:
  - position embeddings are resized to the model's grid (`resize_posemb`);
  - a plain ViT's patch embedding of colour images is adapted to a model of grayscale ones
    and back (`adapt_input_channels`);
  - `pre_logits` is dropped when the model has none (built without `representation_size`),
    and so are masked patch prediction's `mask_token` and `mpp_head`;
  - the head is taken from `init_params` (zero-initialised) when `reset_head` is True, or
    when it is None and the class count differs.

  Args:
    tree: the nested parameters read from `source`.
    source: where `tree` came from, for the messages.
    init_params: the model's initialised parameters (the `params` collection), or their
      shapes from `jax.eval_shape` (a reset head is then zeros).
    reset_head: see above.
    strict: if False, keys in the checkpoint that the model lacks are ignored (logged).

  Returns:
    A nested dict of NumPy arrays with exactly `init_params`' structure, shapes and dtypes.

  Raises:
    ValueError: naming every missing, unexpected (when strict) and wrongly-shaped key.
  """
  path = source
  expected = flatten(to_numpy(init_params))
  if 'params' in tree and isinstance(tree['params'], dict):
    tree = tree['params']
  tree = to_linen_names(tree)
  scanned = any(k.startswith('Transformer/encoderblock/') for k in expected)
  tree = stack_layers(tree) if scanned else unstack_layers(tree)
  flat = flatten(tree)

  for part, why in _PRETRAINING_ONLY.items():
    if not any(k.startswith(part) for k in expected):
      dropped = [k for k in flat if k.startswith(part)]
      if dropped:
        logging.info('Dropping %s from %s (%s).', part.rstrip('/'), path, why)
      flat = {k: v for k, v in flat.items() if k not in dropped}
  head = {k for k in expected if k.startswith('head/')}
  if reset_head is None:
    reset_head = any(k not in flat or flat[k].shape != expected[k].shape for k in head)
  if reset_head:
    logging.info('Replacing the head of %s with the model\'s zero-initialised head.', path)
    flat.update({k: np.asarray(expected[k]) if hasattr(expected[k], '__array__')
                 else np.zeros(expected[k].shape, expected[k].dtype) for k in head})
  key = 'Transformer/posembed_input/pos_embedding'
  if key in flat and key in expected and flat[key].shape != expected[key].shape:
    flat[key] = resize_posemb(flat[key], expected[key].shape[1], int('cls' in expected))
  key = 'embedding/kernel'  # a plain ViT's first layer (a hybrid's sees the ResNet's features)
  if (key in flat and key in expected and 'conv_root/kernel' not in expected
      and {have := flat[key].shape[2], channels := expected[key].shape[2]} == {1, 3}):
    logging.info('Adapting the patch embedding of %s from %d- to %d-channel images.', path,
                 have, channels)
    flat[key] = adapt_input_channels(flat[key], channels)
  for k, v in flat.items():  # pre-Linen GroupNorm parameters are stored as (1, 1, 1, C)
    if k in expected and re.search(r'(^|/)gn[^/]*/(scale|bias)$', k) and v.ndim > 1:
      flat[k] = v.reshape(-1) if v.size == expected[k].size else v

  natural = lambda key: [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', key)]
  missing = sorted(set(expected) - set(flat), key=natural)
  unexpected = sorted(set(flat) - set(expected), key=natural)
  mismatched = sorted((f'{k}: checkpoint {flat[k].shape} vs model {expected[k].shape}'
                       for k in set(flat) & set(expected) if flat[k].shape != expected[k].shape),
                      key=natural)
  if missing or mismatched or (unexpected and strict):
    problems = [f'{title} ({len(keys)}):\n  ' + '\n  '.join(keys[:_LISTED])
                + (f'\n  ... and {len(keys) - _LISTED} more' if len(keys) > _LISTED else '')
                for title, keys in [('missing from the checkpoint', missing),
                                    ('unexpected in the checkpoint', unexpected),
                                    ('shape mismatch', mismatched)] if keys]
    raise ValueError(f'Checkpoint {path} does not fit the model{_encoder_hint(flat, expected)}'
                     f'{_channels_hint(flat, expected)}.\n' + '\n'.join(problems))
  if unexpected:
    logging.warning('Ignoring %d checkpoint keys the model lacks: %s', len(unexpected), unexpected)
  return unflatten({k: flat[k].astype(expected[k].dtype) for k in expected})
