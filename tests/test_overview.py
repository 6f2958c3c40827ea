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


def test_the_transformer_blocks_that_agree_are_one_row():
  mesh = jax.make_mesh((1,), ('fsdp',))
  split = NamedSharding(mesh, P('fsdp', None))
  block = lambda i: {'LayerNorm_0': {'scale': np.zeros(4, np.float32)},
                     'Dense_0': {'kernel': jax.ShapeDtypeStruct(
                         (4, 8), jnp.float32, sharding=split if i != 1 else None)}}
  tree = {'Transformer': {f'encoderblock_{i}': block(i) for i in range(12)},
          'head': {'bias': np.zeros(3, np.float32)}}
  rows = overview.parameter_rows(tree)
  assert [r[0] for r in rows[:4]] == ['Transformer/encoderblock_0/Dense_0/kernel',
                                      'Transformer/encoderblock_0/LayerNorm_0/scale',
                                      'Transformer/encoderblock_1/Dense_0/kernel',
                                      'Transformer/encoderblock_1/LayerNorm_0/scale']
  # LayerNorm scales agree in all 12 blocks (one row where block 0's was); block 1's kernel is
  # sharded otherwise, so the kernels stay one row each, in tree order.
  kernel = lambda i: (f'Transformer/encoderblock_{i}/Dense_0/kernel', '(4, 8)', 32,
                      'replicated' if i == 1 else "('fsdp', None)")
  assert overview.group_blocks(rows) == [
      kernel(0),
      ('Transformer/encoderblock_0..11/LayerNorm_0/scale', '12 x (4,)', 48, 'replicated'),
      *[kernel(i) for i in (1, 10, 11, *range(2, 10))],
      ('head/bias', '(3,)', 3, 'replicated')]
  lines = overview.parameter_table(tree).splitlines()
  assert [c.strip() for c in lines[-1].split(' | ')] == ['total', '', f'{12 * 36 + 3:,}',
                                                         '25 arrays']
