"""The model size table: every registered model name as an ml_collections ConfigDict.

`vit_jax.models.get_model(name, ...)` builds a module from `get_model_config(name)`. A config
holds `family` (`vit`, `resnet` or `t2t`) and the constructor arguments of that family's module;
any of them can be overridden per run (`--config.model.num_layers=24`).

Accepted names (`_` and `/` are the same, `ViT-B/16` == `ViT-B_16`):
  ViT-{size}_{patch}       any size in VIT_SIZES, any patch size (ViT-B_16, ViT-Ti_4, ViT-H_14)
  R+ViT-Ti_16, R26+ViT-S_32, R26+ViT-B_32, R50+ViT-B_16, R50+ViT-L_32   ResNet + ViT hybrids
                           (the number after `_` is the effective patch size on the image);
                           R8+ViT-{Nano,Micro,Ti}_4-small: small hybrids for 32 px images
  BiT-R{depth}x{factor}    BiT ResNet classifier, depth in RESNET_LAYERS, root width 64 * factor
                           (factor may be fractional for narrow nets: BiT-R26x0.25 is 16 wide);
                           suffix `-small` uses a 3x3/1 stem without pooling, for 8-32 px images
  T2T-ViT-{7,10,12,14,19,24} (also T2T-ViT_t-14): T2T-ViT with the "transformer" T2T module
"""
import difflib
import re

import ml_collections

# hidden_size, mlp_dim, num_heads, num_layers. Nano and Micro are small research sizes;
# `b` is the ViT paper's ViT-b (ViT-B with all hidden dimensions halved).
VIT_SIZES = {
    'Nano': (64, 256, 2, 12),
    'Micro': (128, 512, 4, 12),
    'Ti': (192, 768, 3, 12),
    'S': (384, 1536, 6, 12),
    'b': (384, 1536, 12, 12),
    'B': (768, 3072, 12, 12),
    'L': (1024, 4096, 16, 24),
    'H': (1280, 5120, 16, 32),
    'g': (1408, 6144, 16, 40),
    'G': (1664, 8192, 16, 48),
}

# Hybrids: ViT size, patch size on the ResNet feature map, ResNet stage sizes, stem. The 'bit'
# stem downsamples 4x, the 'small' stem not at all; each stage after the first 2x. The first five
# are the published ones; the `-small` ones suit 32 px images (32 -> 16 -> 8x8 tokens).
HYBRIDS = {
    'R+ViT-Ti_16': ('Ti', 8, (), 'bit'),
    'R26+ViT-S_32': ('S', 1, (2, 2, 2, 2), 'bit'),
    'R26+ViT-B_32': ('B', 1, (2, 2, 2, 2), 'bit'),
    'R50+ViT-B_16': ('B', 1, (3, 4, 9), 'bit'),
    'R50+ViT-L_32': ('L', 1, (3, 4, 6, 3), 'bit'),
    'R8+ViT-Nano_4-small': ('Nano', 2, (1, 1), 'small'),
    'R8+ViT-Micro_4-small': ('Micro', 2, (1, 1), 'small'),
    'R8+ViT-Ti_4-small': ('Ti', 2, (1, 1), 'small'),
}

# Bottleneck units per stage; depth = 3 * sum(units) + 2.
RESNET_LAYERS = {
    14: (1, 1, 1, 1),
    26: (2, 2, 2, 2),
    38: (3, 3, 3, 3),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

# hidden_size, num_layers, num_heads, mlp_ratio (T2T-ViT paper, Table 1).
T2T_SIZES = {
    7: (256, 7, 4, 2),
    10: (256, 10, 4, 2),
    12: (256, 12, 4, 2),
    14: (384, 14, 6, 3),
    19: (448, 19, 7, 3),
    24: (512, 24, 8, 3),
}

# Names that published checkpoints and the papers use; every ViT size works at any patch size.
PUBLISHED = (
    [f'ViT-{s}_{p}' for s, p in [('Ti', 16), ('S', 16), ('S', 32), ('B', 8), ('B', 16),
                                 ('B', 32), ('b', 32), ('L', 16), ('L', 32), ('H', 14),
                                 ('g', 14), ('G', 14)]]
    + list(HYBRIDS)[:5]
    + [f'BiT-R{d}x{f}' for d in (50, 101, 152) for f in (1, 2, 3, 4)]
    + [f'T2T-ViT-{n}' for n in T2T_SIZES])

# Small sizes for research sweeps on 8-32 px images.
RESEARCH = ['ViT-Nano_4', 'ViT-Micro_4', 'ViT-Ti_4', 'ViT-S_4', *list(HYBRIDS)[5:],
            'BiT-R14x0.25-small', 'BiT-R26x0.5-small', 'BiT-R26x1-small']


def known_names() -> list[str]:
  """Names listed in error messages and tested at smoke size."""
  return PUBLISHED + RESEARCH


def _vit(size: str, patch_size: int) -> dict:
  hidden_size, mlp_dim, num_heads, num_layers = VIT_SIZES[size]
  return dict(family='vit', hidden_size=hidden_size, mlp_dim=mlp_dim, num_heads=num_heads,
              num_layers=num_layers, patch_size=patch_size)


def _parse(name: str) -> dict | None:
  """Returns the constructor arguments for `name`, or None if it is not a known name."""
  if name in HYBRIDS:
    size, patch_size, layers, stem = HYBRIDS[name]
    return dict(_vit(size, patch_size), resnet_layers=layers, resnet_stem=stem)
  if m := re.fullmatch(r'ViT-([A-Za-z]+)_(\d+)', name):
    if m[1] in VIT_SIZES:
      return _vit(m[1], int(m[2]))
  if m := re.fullmatch(r'BiT-R(\d+)x(\d+(?:\.\d+)?)(-small)?', name):
    depth, factor = int(m[1]), float(m[2])
    if depth in RESNET_LAYERS and 64 * factor == int(64 * factor) and factor > 0:
      return dict(family='resnet', resnet_layers=RESNET_LAYERS[depth],
                  resnet_width=int(64 * factor), resnet_stem='small' if m[3] else 'bit')
  if m := re.fullmatch(r'T2T-ViT(?:_t)?-(\d+)', name):
    if int(m[1]) in T2T_SIZES:
      hidden_size, num_layers, num_heads, mlp_ratio = T2T_SIZES[int(m[1])]
      return dict(family='t2t', hidden_size=hidden_size, num_layers=num_layers,
                  num_heads=num_heads, mlp_dim=hidden_size * mlp_ratio)
  return None


def _close_name(name: str) -> str | None:
  """The accepted name that `name` (not accepted) most likely meant: a known name in other
  letter case, the name with '_' before its patch size ('ViT-B16'), or a known name a typo
  away ('R50-ViT-B_16'); None when nothing is close."""
  by_case = {known.lower(): known for known in known_names()}
  for guess in (name, re.sub(r'(?<=[A-Za-z])(\d+)$', r'_\1', name)):
    if guess.lower() in by_case:
      return by_case[guess.lower()]
    if _parse(guess) is not None:
      return guess
  close = difflib.get_close_matches(name, known_names(), n=1, cutoff=0.85)
  return close[0] if close else None


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """Returns the ConfigDict for a registered model name (see the module docstring).

  Raises:
    ValueError: naming the unknown model and listing the known names.
  """
  canonical = name.replace('/', '_')
  fields = _parse(canonical)
  if fields is None:
    guess = _close_name(canonical)
    raise ValueError(
        f'Unknown model name {name!r}' + (f'; did you mean {guess!r}?' if guess else '.')
        + f' Known names: {", ".join(known_names())}; any '
        f'ViT-<size>_<patch> with size in {sorted(VIT_SIZES)}, and BiT-R<depth>x<factor>'
        f'[-small] with depth in {sorted(RESNET_LAYERS)}.')
  return ml_collections.ConfigDict(dict(fields, name=canonical))
