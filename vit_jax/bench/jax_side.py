"""Our side of the benchmark: the real train step of `vit_jax.train`, the forward pass and the
input pipeline, built from a training config, on device-resident synthetic inputs."""
import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import config as config_lib
from vit_jax import data, flops, optim, sharding, train
from vit_jax.bench import report
from vit_jax.models import config_fields


def make_config(model: str, *, batch: int, image_size: int, dtype: str,
                overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """`vit_jax.config.defaults()` (AdamW, global-norm clipping, random resized crop) with the
  benchmark's model, batch and image size; `overrides` are model fields (e.g. scan=True)."""
  config = config_lib.defaults()
  config.model = config_lib.model_config(model, dtype=dtype, **overrides)
  config.batch_size, config.image_size = batch, image_size
  config_lib.check(config)
  return config


def model_fields(config: ml_collections.ConfigDict) -> dict:
  """The resolved model fields (registry values plus overrides, with `family`)."""
  return config_fields(config.model)


@dataclasses.dataclass
class Bench:
  """One benchmark subject: `step()` runs one call and waits for it; the compiled program's
  XLA cost analysis and memory figures, the device count and parameter count."""
  step: Callable[[], None]
  xla_flops: float          # XLA's cost_analysis() FLOPs of one call
  memory_bytes: int | None  # peak device memory in use, or the compiled program's footprint
  memory_source: str
  num_params: int


def build_model(config, num_classes: int):
  """The benchmarked model. Its own checks (e.g. the patch size must divide the image) run
  here on abstract values, so they fail early without starting a JAX backend."""
  model = train.build_model(config, num_classes, channels=3)
  jax.eval_shape(model.init, jax.ShapeDtypeStruct((2,), jnp.uint32),
                 jax.ShapeDtypeStruct((1, config.image_size, config.image_size, 3), jnp.float32))
  return model


def _compiled_figures(compiled) -> tuple[float, int | None, str]:
  stats = jax.devices()[0].memory_stats()
  if stats and 'peak_bytes_in_use' in stats:
    return flops.compiled_flops(compiled), None, 'memory_stats'  # filled in after the run
  return (flops.compiled_flops(compiled), int(flops.compiled_memory(compiled)['peak']),
          'compiled memory_analysis (arguments+outputs+temp)')


def synthetic_images(batch: int, image_size: int, seed: int = 0) -> np.ndarray:
  """(batch, S, S, 3) uint8 noise: the training step's input before augmentation."""
  return np.random.default_rng(seed).integers(0, 256, (batch, image_size, image_size, 3),
                                              dtype=np.uint8)


def train_bench(config, num_classes: int) -> Bench:
  """The jitted train step of `vit_jax.train.make_train_step` (augmentation, forward,
  backward, optimizer update; donated state) on a device-resident uint8 batch."""
  mesh = sharding.make_mesh(config.mesh)
  config_lib.check_batch(config, mesh)
  model = build_model(config, num_classes)
  tx, schedule = optim.make_optimizer(config)
  shape = (config.image_size, config.image_size, 3)
  _, shardings, init = train.init_state(model, tx, config, shape, mesh)
  state = init()
  images = sharding.global_batch(synthetic_images(config.batch_size, config.image_size), mesh)
  labels = sharding.global_batch(np.arange(config.batch_size, dtype=np.int32) % num_classes,
                                 mesh)
  compiled = train.make_train_step(model, tx, schedule, config, mesh, shardings).lower(
      state, images, labels).compile()
  flops, memory, source = _compiled_figures(compiled)
  num_params = sum(p.size for p in jax.tree_util.tree_leaves(state.params))
  holder = [state]

  def step():
    holder[0], metrics = compiled(holder[0], images, labels)
    jax.block_until_ready((holder[0], metrics))
  return Bench(step, flops, memory, source, num_params)


def infer_bench(config, num_classes: int) -> Bench:
  """The jitted forward pass (train=False) on a device-resident float32 batch in [-1, 1]."""
  mesh = sharding.make_mesh(config.mesh)
  config_lib.check_batch(config, mesh)
  model = build_model(config, num_classes)
  shape = (config.image_size, config.image_size, 3)
  params = jax.jit(model.init, out_shardings=sharding.replicated(mesh))(
      jax.random.PRNGKey(config.seed), jnp.zeros((1, *shape)))
  images = sharding.global_batch(
      synthetic_images(config.batch_size, config.image_size).astype(np.float32) / 127.5 - 1,
      mesh)
  compiled = jax.jit(lambda p, x: model.apply(p, x, train=False)).lower(params, images).compile()
  flops, memory, source = _compiled_figures(compiled)
  num_params = sum(p.size for p in jax.tree_util.tree_leaves(params))
  return Bench(lambda: compiled(params, images).block_until_ready(), flops, memory, source,
               num_params)


def pipeline_steps(config, split: data.Split | data.RecordSplit
                   ) -> dict[str, Callable[[], None]]:
  """The input pipeline's stages as steps of one global batch, read through the training
  loop's interface (`data.train_iterator`): 'host' (a batch drawn and put on the device: from
  the decoded in-memory split, one Python thread; from a streamed split, decoded, cropped,
  flipped and resized by `data.workers` grain processes, or threads with 0) and, in memory
  only, 'augment' (the jitted on-device augmentation the train step runs, alone)."""
  mesh = sharding.make_mesh(config.mesh)
  config_lib.check_batch(config, mesh)
  iterator = data.train_iterator(split, config)
  images = sharding.global_batch(next(iterator)[0], mesh)  # starts a stream's workers

  def host():
    batch_images, batch_labels = next(iterator)
    jax.block_until_ready((sharding.global_batch(batch_images, mesh),
                           sharding.global_batch(batch_labels, mesh)))
  if split.host_augmented:
    return {'host': host}
  augment = jax.jit(data.augment_from_config(config))
  key = jax.random.PRNGKey(0)
  return {'host': host, 'augment': lambda: augment(images, key).block_until_ready()}


def peak_memory(memory_bytes: int | None) -> int | None:
  """The device's peak bytes in use where the backend reports it (GPU), else the given
  compiled-program figure."""
  stats = jax.devices()[0].memory_stats()
  return stats['peak_bytes_in_use'] if stats and 'peak_bytes_in_use' in stats else memory_bytes


def worker_steps(spec: dict) -> tuple[dict[str, Callable[[], None]], dict, Callable[[], dict]]:
  """Our side in a benchmark worker (`worker.py`): ({'step': the train step or forward pass,
  and on devices without a datasheet peak 'matmul': the matmul ceiling}, description,
  function giving the device's peak memory at the end)."""
  config = make_config(spec['model'], batch=spec['batch'], image_size=spec['image_size'],
                       dtype=spec['dtype'], overrides=spec['overrides'])
  build = train_bench if spec['mode'] == 'train' else infer_bench
  ours = build(config, spec['num_classes'])
  steps = {'step': ours.step}
  peak, source = flops.datasheet_peak(jax.devices()[0], spec['dtype'])
  if peak is None:  # CPU: the matmul ceiling, timed in the same rounds as the model
    steps['matmul'], info_flops = flops.matmul_step(spec['dtype'])
    source = f'measured: {spec["dtype"]} 2048x2048 matmul in the same rounds'
  fields = model_fields(config)
  info = {**report.environment(), 'xla_flops_per_image': ours.xla_flops / spec['batch'],
          'num_params': ours.num_params, 'memory_source': ours.memory_source,
          'peak_flops': peak, 'peak_flops_source': source,
          'matmul_flops': None if peak else info_flops,
          # ViTs are counted analytically; other families by XLA (every layer, unscanned)
          'forward_flops_per_image': None if fields['family'] == 'vit' else flops.forward_flops(
              functools.partial(train.build_model, config, spec['num_classes'], 3),
              (config.image_size, config.image_size, 3), fields.get('num_layers'))}
  return steps, info, lambda: {'memory_bytes': peak_memory(ours.memory_bytes)}
