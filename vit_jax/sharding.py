"""Device mesh from config, partition rules for parameters and optimizer state, global batches.

Mesh axes: `data` (batch only), `fsdp` (batch, and parameters / optimizer state sharded along
their largest divisible dimension), `model` (Megatron-style tensor parallelism: attention
heads and MLP hidden units). The batch is sharded over every axis except `model`.

Activations are constrained too (`constrain`), inside the train step that enters its mesh,
whenever the mesh shards parameters (an `fsdp` or `model` axis): the residual stream, the
attention heads and the MLP hidden units of every block stay split over the batch axes, and
with a `model` axis the heads and hidden units are split over it as well. Without them XLA's
SPMD partitioner is free to follow the parameters' `fsdp` split into the activations (split the
hidden dimension and gather the batch) inside scanned blocks, which replicates activations:
38 GB of temporaries per device instead of 2 GB for ViT-B/16 on 256 devices. Outside a mesh
(init, evaluation, analyses) and on data-only meshes the constraints are no-ops.
"""
import math
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ('data', 'fsdp')
FSDP_AXIS = 'fsdp'
MODEL_AXIS = 'model'
KNOWN_AXES = BATCH_AXES + (MODEL_AXIS,)

# Tensor parallelism over `model`: regex on the '/'-joined parameter path -> spec of the
# trailing dimensions (a scanned layer axis in front stays unsharded). Column-parallel query/
# key/value and first MLP layer, row-parallel attention output and second MLP layer.
TENSOR_PARALLEL_RULES = (
    (r'MultiHeadDotProductAttention_0/(query|key|value)/kernel$', (None, MODEL_AXIS, None)),
    (r'MultiHeadDotProductAttention_0/(query|key|value)/bias$', (MODEL_AXIS, None)),
    (r'MultiHeadDotProductAttention_0/out/kernel$', (MODEL_AXIS, None, None)),
    (r'MlpBlock_0/Dense_0/kernel$', (None, MODEL_AXIS)),
    (r'MlpBlock_0/Dense_0/bias$', (MODEL_AXIS,)),
    (r'MlpBlock_0/Dense_1/kernel$', (MODEL_AXIS, None)),
)
FSDP_MIN_SIZE = 2**10  # smaller arrays stay replicated: sharding them costs more than it saves


def make_mesh(spec: Sequence[Sequence[Any]], devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  """Builds a Mesh from `config.mesh`, a sequence of (axis name, size); one size may be -1.

  Raises:
    ValueError: unknown or repeated axis names, more than one -1, or sizes that do not
      multiply to the device count (the message names `mesh` and the counts).
  """
  devices = list(jax.devices() if devices is None else devices)
  try:
    names = [str(name) for name, _ in spec]
    sizes = [int(size) for _, size in spec]
  except (TypeError, ValueError) as e:
    raise ValueError(f'mesh={spec!r} must be a sequence of (axis name, size) pairs.') from e
  unknown = sorted(set(names) - set(KNOWN_AXES))
  if unknown or len(set(names)) != len(names) or not names:
    raise ValueError(f'mesh={spec!r}: axis names must be distinct, from {KNOWN_AXES}; '
                     f'unknown: {unknown}.')
  if sizes.count(-1) > 1 or any(s < 1 and s != -1 for s in sizes):
    raise ValueError(f'mesh={spec!r}: sizes must be positive, with at most one -1.')
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f'mesh={spec!r} cannot fill {len(devices)} devices: the fixed axes '
                       f'need a multiple of {known}.')
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f'mesh={spec!r} spans {math.prod(sizes)} devices but '
                     f'{len(devices)} {"is" if len(devices) == 1 else "are"} available (use -1 '
                     'for one axis to take the rest).')
  return Mesh(np.asarray(devices).reshape(sizes), tuple(names))


def batch_axes(mesh: Mesh | jax.sharding.AbstractMesh) -> tuple[str, ...]:
  """The mesh axes the batch is sharded over."""
  return tuple(a for a in mesh.axis_names if a != MODEL_AXIS)


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of arrays whose leading dimension is the batch."""
  return NamedSharding(mesh, P(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def constrain(x: jax.Array, *dims: str | None) -> jax.Array:
  """Sharding constraint on an activation under FSDP and tensor parallelism.

  `dims` names every dimension of `x`: 'batch' (split over the batch axes), 'model' (split over
  the `model` axis if the mesh has one) or None. A no-op unless the current (abstract) mesh has
  an `fsdp` or `model` axis: the train step enters its mesh with
  `jax.sharding.use_abstract_mesh`; everything else runs without one.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or not {FSDP_AXIS, MODEL_AXIS} & set(mesh.axis_names):
    return x
  if len(dims) != x.ndim:
    raise ValueError(f'constrain: {len(dims)} dimension names for an array of shape {x.shape}.')
  axis = lambda d: (batch_axes(mesh) if d == 'batch' else
                    d if d in mesh.axis_names else None)
  return jax.lax.with_sharding_constraint(x, P(*map(axis, dims)))


def check_tensor_parallel(mesh: Mesh, model_fields: dict[str, Any]) -> None:
  """Raises ValueError naming the config field when the `model` axis cannot split the
  attention heads or MLP hidden units of the model (`models.resolved_fields`)."""
  size = dict(mesh.shape).get(MODEL_AXIS, 1)
  for field in ('num_heads', 'mlp_dim'):
    value = model_fields.get(field)
    if size > 1 and value is not None and value % size:
      raise ValueError(f'model.{field}={value} is not divisible by the {MODEL_AXIS!r} mesh '
                       f'axis size {size} (mesh={tuple(mesh.shape.items())}): tensor '
                       f'parallelism splits the {field} over it; choose a {MODEL_AXIS!r} '
                       'size that divides both model.num_heads and model.mlp_dim.')


def path_str(path) -> str:
  """A pytree key path as 'a/b/c' (the form the partition rules match)."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
  return '/'.join(parts)


def partition_spec(path: str, shape: tuple[int, ...],
                   mesh: Mesh | jax.sharding.AbstractMesh) -> P:
  """PartitionSpec of one parameter (or optimizer-state array mirroring it) on `mesh`."""
  spec = [None] * len(shape)
  if MODEL_AXIS in mesh.axis_names:
    for pattern, trailing in TENSOR_PARALLEL_RULES:
      if re.search(pattern, path) and len(trailing) <= len(shape):
        spec[len(shape) - len(trailing):] = trailing
        break
  for dim, axis in enumerate(spec):
    if axis is not None and shape[dim] % mesh.shape[axis]:
      raise ValueError(f'{path} dimension {dim} of shape {shape} is not divisible by the '
                       f'{axis!r} mesh axis size {mesh.shape[axis]}.')
  if FSDP_AXIS in mesh.axis_names and math.prod(shape) >= FSDP_MIN_SIZE:
    n = mesh.shape[FSDP_AXIS]
    free = [d for d in range(len(shape)) if spec[d] is None and shape[d] % n == 0]
    if free:
      spec[max(free, key=lambda d: shape[d])] = FSDP_AXIS
  return P(*spec)


def fsdp_replicated(tree: Any, mesh: Mesh | jax.sharding.AbstractMesh) -> list[tuple[str, Any]]:
  """[(path, leaf)] of the arrays in `tree` of at least FSDP_MIN_SIZE elements that stay whole
  on every `fsdp` device because no free dimension is divisible by the `fsdp` axis size (for
  example the (D, K, D/K) attention kernels of ViT-g/14, D = 1408 = 2^7 x 11, when fsdp = 256).
  Empty without an `fsdp` axis. A smaller `fsdp` axis that divides the widths, with `data`
  taking the remaining devices, avoids them."""
  if FSDP_AXIS not in mesh.axis_names:
    return []
  rows = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = tuple(leaf.shape)
    if (math.prod(shape) >= FSDP_MIN_SIZE
        and FSDP_AXIS not in partition_spec(path_str(path), shape, mesh)):
      rows.append((path_str(path), leaf))
  return rows


def tree_shardings(tree: Any, mesh: Mesh) -> Any:
  """NamedShardings for every array leaf of `tree` (params, optimizer state, train state)."""
  return jax.tree_util.tree_map_with_path(
      lambda path, leaf: NamedSharding(
          mesh, partition_spec(path_str(path), tuple(leaf.shape), mesh)), tree)


def global_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
  """This process's rows of the global batch -> one global array sharded over the batch axes."""
  return jax.make_array_from_process_local_data(batch_sharding(mesh), local)
