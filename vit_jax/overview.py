"""The parameter table logged at the start of a run: every parameter's name, shape, size and
sharding, and the total."""
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


def parameter_table(params: Any) -> str:
  """`parameter_rows` as an aligned text table with a header and a total line."""
  numbers = parameter_rows(params)
  rows = [(n, str(s), f'{c:,}', p) for n, s, c, p in numbers]
  total = sum(c for _, _, c, _ in numbers)
  rows = [('name', 'shape', 'size', 'sharding'), *rows,
          ('total', '', f'{total:,}', f'{len(rows)} arrays')]
  widths = [max(len(r[i]) for r in rows) for i in range(4)]
  line = lambda r: ' | '.join(
      (c.rjust(w) if i == 2 else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths))).rstrip()
  return '\n'.join([line(rows[0]), '-+-'.join('-' * w for w in widths), *map(line, rows[1:])])
