"""Data: sources held in memory as decoded uint8 arrays, deterministic batching, augmentation.

Modules: `sources` (`load_split` for 'digits', 'folder:<path>', 'tfds:<name>'), `folder`
(image-folder trees and .tar.gz archives with a decoded-array cache), `split` (the in-memory
`Split`), `subsets` (nested class-balanced subsets, the validation hold-out,
the evaluation sample, `load_data` of a training config), `batches` (the training stream and the
evaluation pass), `transforms` (device-side augmentation and evaluation preprocessing).

Shapes: N examples, B global batch, L = B / process_count local batch, H x W images with
C channels (1 for grayscale, 3 for colour). The host side (`TrainIterator`, `eval_batches`)
yields uint8 images and int32 labels; `augment` and `preprocess_eval` turn them into float32
in [-1, 1] on the device, inside the jitted step.
"""
from vit_jax.data.batches import TrainIterator, eval_batches
from vit_jax.data.sources import CORRUPT_IMAGES, SOURCES, load_split
from vit_jax.data.split import SPLITS, Split
from vit_jax.data.subsets import evenly_spaced, hold_out, load_data, nested_subset
from vit_jax.data.transforms import augment, augment_from_config, preprocess_eval

__all__ = ['CORRUPT_IMAGES', 'SOURCES', 'SPLITS', 'Split', 'TrainIterator', 'augment',
           'augment_from_config', 'eval_batches', 'evenly_spaced', 'hold_out', 'load_data',
           'load_split', 'nested_subset', 'preprocess_eval']
