"""The parameter table logged at the start of a run (and printed by plan mode): every
parameter's name, shape, size and sharding, the Transformer's blocks grouped, and the total."""
import re
from typing import Any

import jax
import numpy as np


def parameter_rows(params: Any) -> list[tuple[str, tuple[int, ...], int, str]]:
  """(name, shape, size, sharding) of every leaf of `params` (arrays or ShapeDtypeStructs), in
  tree order; the name joins the tree path with '/', the sharding is the leaf's
  PartitionSpec (one mesh axis name, a tuple of names or None per dimension; 'replicated'
  when none is set)."""
  rows = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = jax.tree_util.keystr(path, simple=True, separator='/')
    spec = getattr(getattr(leaf, 'sharding', None), 'spec', None)
    sharding = str(tuple(spec)) if spec is not None and any(spec) else 'replicated'
    rows.append((name, tuple(leaf.shape), int(np.prod(leaf.shape)), sharding))
  return rows


def group_blocks(rows: list[tuple[str, tuple[int, ...], int, str]]
                 ) -> list[tuple[str, str, int, str]]:
  """`parameter_rows` with the rows of the Transformer's blocks 0..L-1 that differ only in the
  block number (same shape and sharding) as one row: ('Transformer/encoderblock_0..11/
  LayerNorm_0/bias', '12 x (768,)', 9216, 'replicated'), at the place of block 0's row; other
  rows as they are, their shape as text."""
  def split(row):  # ((name with '#' for its block number, shape, sharding), block number)
    block = re.search(r'encoderblock_(\d+)/', row[0])
    return ((row[0].replace(block[0], 'encoderblock_#/'), row[1], row[3]), int(block[1])
            ) if block else (None, None)
  keys = [split(row) for row in rows]
  groups = {}  # split(row)[0] -> the block numbers
  for key, number in keys:
    if key:
      groups.setdefault(key, []).append(number)
  grouped = []
  for row, (key, number) in zip(rows, keys):
    blocks = groups.get(key, [])
    if len(blocks) < 2 or sorted(blocks) != list(range(len(blocks))):
      grouped.append((row[0], str(row[1]), row[2], row[3]))
    elif number == 0:
      grouped.append((key[0].replace('#', f'0..{len(blocks) - 1}'), f'{len(blocks)} x {row[1]}',
                      row[2] * len(blocks), row[3]))
  return grouped


def parameter_table(params: Any) -> str:
  """`parameter_rows` as an aligned text table (`format_table`)."""
  return format_table(parameter_rows(params))


def format_table(numbers: list[tuple[str, tuple[int, ...], int, str]]) -> str:
  """`parameter_rows`-style rows as an aligned text table with a header and a total line, the
  Transformer's blocks grouped (`group_blocks`)."""
  rows = [(n, s, f'{c:,}', p) for n, s, c, p in group_blocks(numbers)]
  total = sum(c for _, _, c, _ in numbers)
  rows = [('name', 'shape', 'size', 'sharding'), *rows,
          ('total', '', f'{total:,}', f'{len(numbers)} arrays')]
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  line = lambda r: ' | '.join(
      (c.rjust(w) if i == 2 else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  return '\n'.join([line(rows[0]), '-+-'.join('-' * w for w in widths), *map(line, rows[1:])])
