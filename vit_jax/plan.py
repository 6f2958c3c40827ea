"""Plan a run without running it: compile the sharded train step on (simulated) devices and
report per-device memory, FLOPs per step and the sharding of every parameter.

  python -m vit_jax.main --config=configs/pretrain.py:g_14,i21k --plan --plan_devices=256 \
      --config.mesh="(('fsdp', -1), ('model', 4))" --config.model.scan=True

Nothing is allocated: the state and the batch are abstract (`jax.ShapeDtypeStruct` with their
shardings) and only lowered and compiled, so a ViT-g on hundreds of simulated CPU devices fits
in host memory. The numbers are XLA's CPU compilation of the same SPMD program a TPU or GPU
would run; their buffer assignment and fusion differ, so treat them as estimates.
"""
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from vit_jax import config as config_lib
from vit_jax import flops, optim, overview, sharding, train
from vit_jax.models import config_fields

GB = 1e9


def use_simulated_devices(count: int) -> None:
  """Makes JAX start with `count` CPU devices; call before anything touches a device."""
  if count < 1:
    raise ValueError(f'--plan_devices={count} must be positive.')
  jax.config.update('jax_platforms', 'cpu')
  jax.config.update('jax_num_cpu_devices', count)


def _param_rows(abstract: Any) -> list[dict[str, Any]]:
  """[{'path', 'shape', 'spec'}] for every parameter of `abstract` (with shardings), as
  `overview.parameter_rows` names them."""
  return [{'path': name, 'shape': list(shape), 'spec': spec}
          for name, shape, _, spec in overview.parameter_rows(abstract)]


def plan(config: ml_collections.ConfigDict, num_classes: int) -> dict[str, Any]:
  """Compiles `config`'s train step on the current devices (abstract inputs only), for images
  of data.channels channels (no data is read: colour unless it says 1).

  Returns {'model', 'num_classes', 'mesh', 'devices', 'batch_size', 'image_size', 'channels',
  'num_params', 'memory' (bytes per device: arguments, outputs, aliased, temporaries, peak =
  arguments + outputs - aliased + temporaries), 'flops_per_step' (3 x forward FLOPs x batch:
  forward, backward and no rematerialisation), 'compile_seconds', 'params' (path, shape,
  PartitionSpec of every parameter), 'fsdp_replicated' (paths of the large parameters the
  `fsdp` axis cannot split, `sharding.fsdp_replicated`), 'fsdp_replicated_bytes' (their bytes
  on every device, optimizer state not included)}.

  Raises:
    ValueError: the same config errors as training (mesh, batch, model, tensor parallelism).
  """
  config_lib.check(config)
  mesh = sharding.make_mesh(config.mesh)
  config_lib.check_batch(config, mesh)
  channels = config.data.channels or 3
  model = train.build_model(config, num_classes, channels)
  fields = config_fields(config.model)
  sharding.check_tensor_parallel(mesh, fields)
  tx, schedule = optim.make_optimizer(config)
  image_shape = (config.image_size, config.image_size, channels)
  abstract, shardings, _ = train.init_state(model, tx, config, image_shape, mesh)
  step = train.make_train_step(model, tx, schedule, config, mesh, shardings)
  batch = sharding.batch_sharding(mesh)
  images = jax.ShapeDtypeStruct((config.batch_size, *image_shape), jnp.uint8, sharding=batch)
  labels = jax.ShapeDtypeStruct((config.batch_size,), jnp.int32, sharding=batch)
  start = time.time()
  compiled = step.lower(abstract, images, labels).compile()
  seconds = time.time() - start
  whole = sharding.fsdp_replicated(abstract.params, mesh)
  forward = flops.forward_flops(functools.partial(train.build_model, config, num_classes,
                                                  channels), image_shape,
                                fields.get('num_layers'))
  return {
      'model': config.model.name, 'num_classes': num_classes, 'mesh': dict(mesh.shape),
      'devices': mesh.size,
      'batch_size': config.batch_size, 'image_size': config.image_size, 'channels': channels,
      'scan': bool(config.model.scan), 'remat_policy': config.model.remat_policy or 'none',
      'num_params': sum(int(a.size) for a in jax.tree_util.tree_leaves(abstract.params)),
      'memory': flops.compiled_memory(compiled),
      'flops_per_step': flops.train_flops(forward, config.batch_size),
      'compile_seconds': seconds,
      'params': _param_rows(abstract.params),
      'fsdp_replicated': [path for path, _ in whole],
      'fsdp_replicated_bytes': sum(leaf.size * leaf.dtype.itemsize for _, leaf in whole),
  }


def summary(result: dict[str, Any]) -> str:
  """The plan as text: header lines, then the parameter table (`overview.format_table`)."""
  m = result['memory']
  lines = [
      f'{result["model"]}: {result["num_params"]:,} parameters ({result["num_classes"]:,}-class '
      f'head: --plan_num_classes), batch {result["batch_size"]} at {result["image_size"]} px '
      f'with {result["channels"]} channel(s) (data.channels), mesh {result["mesh"]} '
      f'({result["devices"]} devices)',
      f'per device: peak {m["peak"] / GB:.2f} GB = arguments {m["arguments"] / GB:.2f} + outputs '
      f'{m["outputs"] / GB:.2f} - aliased (donated) {m["aliased"] / GB:.2f} + temporaries '
      f'{m["temporaries"] / GB:.2f}',
      f'FLOPs per step (all devices): {result["flops_per_step"]:.3e}; compiled in '
      f'{result["compile_seconds"]:.1f} s',
  ]
  if whole := result['fsdp_replicated']:
    lines.append(f'not split by fsdp (no dimension divisible by its size): {len(whole)} '
                 f'parameters, {result["fsdp_replicated_bytes"] / GB:.3f} GB on every device '
                 f'(plus their optimizer state), e.g. {whole[0]}')
  lines.append('parameter shardings:')
  lines.append(overview.format_table([(p['path'], tuple(p['shape']), math.prod(p['shape']),
                                       p['spec']) for p in result['params']]))
  return '\n'.join(lines)
