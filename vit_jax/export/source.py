"""What an export starts from: a model and its parameters made ready for export, plus the real
images that verify it.

`Source.from_run(workdir, step)` reads a training run; `Source.from_model(...)` wraps any model
of the registry (the Python API and the tests). Either way the model is rebuilt in float32
with unrolled layers (`scan=False`, no rematerialisation, XLA attention) and its parameters are
unrolled NumPy arrays, so every format sees one `encoderblock_{i}` subtree per layer.
"""
import dataclasses
import functools
import os
from typing import Any, Callable

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vit_jax import checkpoint, data, evaluate, files, pretrained
from vit_jax import config as config_lib
from vit_jax import models
from vit_jax.models import ResNet, T2TViT, VisionTransformer

Params = dict[str, Any]
NUM_IMAGES = 8  # real images in the verification batch
NUM_RANDOM = 3  # random inputs in the second verification batch (another batch size)
_EXPORT_FIELDS = dict(scan=False, remat_policy='none', dtype=jnp.float32, attention_impl=None)


class UnsupportedError(ValueError):
  """A model that a format cannot represent faithfully."""


def family(model: nn.Module) -> str:
  """'vit', 'hybrid' (ResNet stem + ViT), 'resnet' or 't2t'."""
  if isinstance(model, VisionTransformer):
    return 'vit' if model.resnet_layers is None else 'hybrid'
  if isinstance(model, ResNet):
    return 'resnet'
  if isinstance(model, T2TViT):
    return 't2t'
  raise TypeError(f'Cannot export a {type(model).__name__}; only registry models are supported.')


@dataclasses.dataclass(frozen=True)
class Source:
  """A model ready for export.

  name: the registry name (for messages and manifests); model: the float32 unrolled module;
  params: its parameters (NumPy, unrolled); image_size: S; channels: C; class_names: one per
  class, or None when unknown; images: (N, S, S, C) float32 real images in [-1, 1],
  preprocessed as evaluation does; images_from: where they came from; workdir, step: the run.
  """
  name: str
  model: nn.Module
  params: Params
  image_size: int
  channels: int
  class_names: tuple[str, ...] | None
  images: np.ndarray
  images_from: str
  workdir: str | None = None
  step: int | None = None

  @property
  def family(self) -> str:
    return family(self.model)

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  @functools.cached_property
  def logits(self) -> Callable[[np.ndarray], np.ndarray]:
    """The JAX model: images (B, S, S, C) float32 -> logits (B, num_classes)."""
    return predictor(self.model, self.params)

  def unsupported(self, fmt: str, reason: str) -> UnsupportedError:
    return UnsupportedError(f'--format={fmt} cannot export {self.name} ({self.family}): {reason}.')

  def require_plain_vit(self, fmt: str, target: str, families: tuple[str, ...] = ('vit',)
                        ) -> None:
    """Raises UnsupportedError unless the model is a ViT (of `families`) with a learned
    position embedding and no pre-logits layer, what `target` (e.g. timm's VisionTransformer)
    holds."""
    if self.family not in families:
      raise self.unsupported(fmt, f'only plain ViTs map onto {target}; use --format=onnx or npz')
    if self.model.representation_size is not None:
      raise self.unsupported(fmt, f'representation_size={self.model.representation_size}: '
                             f'{target} has no pre-logits layer; use --format=onnx or npz')
    if self.model.posemb != 'learn':
      raise self.unsupported(fmt, f'posemb={self.model.posemb!r}: {target} learns its position '
                             'embedding; use --format=onnx or npz')

  @classmethod
  def from_model(cls, name: str, model: nn.Module, params: Params, *, image_size: int,
                 class_names: tuple[str, ...] | None = None, images: np.ndarray | None = None,
                 config: ml_collections.ConfigDict | None = None,
                 workdir: str | None = None, step: int | None = None) -> 'Source':
    """Wraps `model` and `params` (scanned or unrolled).

    Without `images`, real images come from the evaluation split of the training config
    `config`'s dataset, of image_size (None: the embedded digits; also when the dataset cannot
    be read here), preprocessed as evaluation does; without `class_names`, the dataset's class
    names are used when their number matches the head.
    """
    model = model.clone(**{k: v for k, v in _EXPORT_FIELDS.items() if hasattr(model, k)})
    params = pretrained.unstack_layers(jax.tree_util.tree_map(np.asarray, dict(params)))
    channels = models.input_channels(model, params, image_size, name)
    images_from = 'the given images'
    if images is None:
      config = config if config is not None else _digits(image_size)
      images, names, images_from = sample_images(config, channels)
      if class_names is None and names is not None:
        if len(names) == model.num_classes:
          class_names = names
        else:
          logging.warning('%s has %d classes but the head %d; exporting without label names.',
                          config.dataset, len(names), model.num_classes)
    if class_names is not None and len(class_names) != model.num_classes:
      raise ValueError(f'{len(class_names)} class names for a {model.num_classes}-class head.')
    return cls(name, model, params, image_size, channels,
               None if class_names is None else tuple(class_names),
               np.asarray(images, np.float32), images_from, workdir, step)

  @classmethod
  def from_run(cls, workdir: str, step: checkpoint.Step = None) -> 'Source':
    """A run's checkpoint `step` ('latest' or None, 'best', a number), with its class names
    (`<workdir>/class_names.json`, written by the run; else its dataset's) and images of its
    evaluation split (any kind of dataset: `sample_images`)."""
    step = checkpoint.resolve_step(workdir, step)
    config, model, params = checkpoint.load_run(workdir, step)
    if 'head' not in params:
      raise ValueError(f'{workdir} is a masked patch prediction pre-training run: it has no '
                       'classification head to export; export its fine-tuned run.')
    names = os.path.join(workdir, 'class_names.json')
    return cls.from_model(config.model.name, model, params, image_size=config.image_size,
                          class_names=files.read_json(names) if files.exists(names) else None,
                          config=config, workdir=files.absolute(workdir), step=step)


@functools.lru_cache(maxsize=16)
def _jitted_apply(model: nn.Module) -> Callable:
  """One jitted forward per model, so every parameter set of it (the source's, the ones read
  back from an export) reuses the compilations."""
  return jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))


def predictor(model: nn.Module, params: Params) -> Callable[[np.ndarray], np.ndarray]:
  """The jitted forward pass: images (B, S, S, C) float32 -> logits (B, classes) NumPy."""
  apply = _jitted_apply(model)
  return lambda images: np.asarray(apply(params, jnp.asarray(images, jnp.float32)))


def _digits(image_size: int, crop_fraction: float = 1.) -> ml_collections.ConfigDict:
  """A training config of the embedded digits at image_size."""
  config = config_lib.defaults()
  config.image_size, config.eval.crop_fraction = image_size, crop_fraction
  return config


def sample_images(config: ml_collections.ConfigDict, channels: int
                  ) -> tuple[np.ndarray, tuple[str, ...] | None, str]:
  """NUM_IMAGES images of the evaluation split of the training config `config`'s dataset
  (either kind), evenly spaced over the split (evaluation splits are often sorted by class),
  preprocessed as evaluation does: (N, S, S, C) float32 in [-1, 1], S = config.image_size.

  Falls back to the embedded digits (with a warning) when the dataset cannot be read here.
  Images of the other kind than the model's `channels` are converted (`data.convert_channels`).
  Returns (images, the dataset's class names or None for the fallback, a description).
  """
  try:
    config = data.resolve_kind(config)
    name = data.eval_split_name(config)
    split = data.open_split(config, name)
    names, source = split.class_names, f'the {config.dataset!r} {name} split'
  except (OSError, ImportError, ValueError) as e:
    logging.warning('Cannot read the dataset %r here (%s); verifying on the embedded digits.',
                    config.dataset, e)
    config = _digits(config.image_size, config.eval.crop_fraction)
    split = data.open_split(config, 'test')
    names, source = None, 'the embedded digits (the run\'s dataset is not readable here)'
  images, _ = evaluate.eval_sample(config, split.with_channels(channels), NUM_IMAGES)
  return images, names, f'{len(images)} images of {source}'


def random_images(source: Source, seed: int = 0) -> np.ndarray:
  """NUM_RANDOM uniform [-1, 1] inputs (B, S, S, C) float32, a second batch size."""
  rng = np.random.default_rng(seed)
  shape = (NUM_RANDOM, source.image_size, source.image_size, source.channels)
  return rng.uniform(-1, 1, shape).astype(np.float32)
