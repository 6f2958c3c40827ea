"""The parameter table: names, shapes, sizes and shardings of a sharded tree."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from vit_jax import overview


def test_rows_and_table_of_a_sharded_tree():
  mesh = jax.make_mesh((1, 1), ('fsdp', 'model'))
  tree = {'Transformer': {'kernel': jax.ShapeDtypeStruct(
      (6, 4, 2), jnp.float32, sharding=NamedSharding(mesh, P(('fsdp', 'model'), None, None)))},
          'head': {'bias': np.zeros(3, np.float32)}}
  assert overview.parameter_rows(tree) == [
      ('Transformer/kernel', (6, 4, 2), 48, "(('fsdp', 'model'), None, None)"),
      ('head/bias', (3,), 3, 'replicated')]
  lines = overview.parameter_table(tree).splitlines()
  assert [l.split(' | ')[0].strip() for l in lines[2:]] == ['Transformer/kernel', 'head/bias',
                                                            'total']
  assert lines[0].split(' | ')[0].strip() == 'name' and set(lines[1]) == {'-', '+'}
  assert [c.strip() for c in lines[-1].split(' | ')] == ['total', '', '51', '2 arrays']
  bars = lambda line, mark: tuple(i for i, c in enumerate(line) if c == mark)
  assert {bars(l, '|') for l in (lines[0], *lines[2:])} == {bars(lines[1], '+')}  # aligned
