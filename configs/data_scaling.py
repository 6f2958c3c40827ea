"""Data-scaling study: model size and family against training-set size (ViT paper, Figs. 3/4).

  python -m vit_jax.sweep --config=configs/data_scaling.py:digits --workdir=/tmp/scaling_digits

Every point trains one model on one nested, class-balanced subset of the training split with
the same number of steps, holds out 10% of the subset (class-balanced) for early stopping and
reports test and few-shot accuracy at the best validation step. The sweep writes
`results.csv`, figures and `REPORT.md` into its workdir; rerunning skips finished points.

Presets:
  digits       embedded 8x8 digits; ResNet vs ViT depth 4 and 8 on 150 / 400 / 1000 / all
               (1,438) images. About 6 minutes on 2 CPU cores.
  smoke        seconds, for the tests.
  cifar10      CIFAR-10 (../shared/datasets/cifar10.tar.gz or $VIT_JAX_CIFAR10); BiT ResNet,
               a hybrid and ViT-Ti/4 at depth 12, 24, 36 on 1k..50k images, 2,500 steps of
               batch 256. About 20-30 minutes on one H100.
  cifar10_cpu  the same study narrowed for 2 CPU cores (ResNet R14x0.25, hybrid and
               ViT-Micro/4 at depth 2, 4, 8 on 1k..50k images without the 20k point; 400
               steps of batch 64, evaluated half-way and at the end): about 2 hours.
  paper        the ViT paper's study (ViT-B/32, L/16, L/32, b/32, ResNet50x1, ResNet152x2 on
               JFT subsets of 9M / 30M / 90M / 300M); for pods: use --dry_run to list it.

Another image-folder dataset needs only overrides, e.g.
  --config.base.dataset=folder:/data/mnist.tar.gz
(images are resized to base.image_size; subset sizes above the dataset's size fail alone and
are reported).
"""
import ml_collections
from ml_collections.config_dict import placeholder

from configs import cifar10, pretrain
from vit_jax import config as config_lib


def _entry(name: str, lr: float | None = None, **overrides) -> ml_collections.ConfigDict:
  """One model of the sweep: a registry name with overrides, optionally its own learning rate."""
  return ml_collections.ConfigDict(dict(model=config_lib.model_config(name, **overrides),
                                        lr=placeholder(float) if lr is None else lr))


def _digits(steps: int, sizes: tuple, models: dict) -> ml_collections.ConfigDict:
  base = config_lib.defaults()
  base.dataset, base.image_size, base.batch_size = 'digits', 8, 64
  base.total_steps = steps
  base.log_every = base.eval_every = max(steps // 4, 1)
  base.checkpoint_every = steps
  base.optim.lr, base.optim.weight_decay = 2e-3, 0.05
  base.schedule.warmup_steps = steps // 10
  base.augment.crop_scale = (0.7, 1.0)
  base.eval.fewshot_shots, base.eval.fewshot_seeds = (1, 5, 10), 3
  return ml_collections.ConfigDict(dict(base=base, models=models, train_sizes=sizes))


def get_config(preset: str = 'digits') -> ml_collections.ConfigDict:
  """Returns the sweep: `base` (a training config), `models` (label -> entry) and
  `train_sizes` (None = the whole training split)."""
  if preset == 'digits':
    sweep = _digits(400, (150, 400, 1000, None), {
        'ResNet': _entry('BiT-R14x0.25-small'),
        'ViT-4': _entry('ViT-Nano_2', num_layers=4),
        'ViT-8': _entry('ViT-Nano_2', num_layers=8),
    })
  elif preset == 'smoke':
    sweep = _digits(4, (60, 120), {
        'ResNet': _entry('BiT-R14x0.25-small'),
        'ViT-1': _entry('ViT-Nano_2', num_layers=1),
    })
    sweep.base.eval.fewshot_shots, sweep.base.eval.fewshot_seeds = (1,), 1
  elif preset in ('cifar10', 'cifar10_cpu'):
    cpu = preset == 'cifar10_cpu'
    base = cifar10.get_config('vit,cpu' if cpu else 'vit')
    base.batch_size, base.total_steps = (64, 400) if cpu else (256, 2_500)
    base.log_every = 100
    # Early stopping picks the best of the evaluations; on CPU each one costs about a quarter
    # of the training, so the CPU variant evaluates half-way and at the end only.
    base.eval_every = base.checkpoint_every = base.total_steps // (2 if cpu else 4)
    base.schedule.warmup_steps = base.total_steps // 10
    base.eval.fewshot_seeds = 3
    vit, width = ('ViT-Micro_4', 16) if cpu else ('ViT-Ti_4', 32)
    hybrid = 'R8+ViT-Micro_4-small' if cpu else 'R8+ViT-Ti_4-small'
    depths = (2, 4, 8) if cpu else (12, 24, 36)
    models = {
        'ResNet': _entry('BiT-R14x0.25-small' if cpu else 'BiT-R26x0.5-small'),
        'Hybrid': _entry(hybrid, num_layers=depths[0], resnet_width=width),
        **{f'ViT-{d}': _entry(vit, num_layers=d) for d in depths},
    }
    sizes = (1_000, 2_000, 5_000, 10_000, 50_000) if cpu else (
        1_000, 2_000, 5_000, 10_000, 20_000, 50_000)
    sweep = ml_collections.ConfigDict(dict(base=base, models=models, train_sizes=sizes))
  elif preset == 'paper':
    base = pretrain.get_config('B_32,jft')
    models = {
        'ResNet50x1': _entry('BiT-R50x1', lr=1e-3),
        'ResNet152x2': _entry('BiT-R152x2', lr=1e-3),
        'ViT-b/32': _entry('ViT-b_32', lr=pretrain.JFT_LR['B'], representation_size=384),
        'ViT-B/32': _entry('ViT-B_32', lr=pretrain.JFT_LR['B'], representation_size=768),
        'ViT-L/32': _entry('ViT-L_32', lr=pretrain.JFT_LR['L_32'], representation_size=1024),
        'ViT-L/16': _entry('ViT-L_16', lr=pretrain.JFT_LR['L_16'], representation_size=1024),
    }
    sweep = ml_collections.ConfigDict(dict(
        base=base, models=models,
        train_sizes=(9_000_000, 30_000_000, 90_000_000, 300_000_000)))
  else:
    raise ValueError(f"Unknown data_scaling preset {preset!r}: use 'digits', 'smoke', "
                     "'cifar10', 'cifar10_cpu' or 'paper'.")
  sweep.base.eval.val_fraction = 0.1
  sweep.name = preset
  return sweep
