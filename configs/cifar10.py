"""CIFAR-10 from scratch: ViT, ResNet + ViT hybrid, or BiT ResNet, on 32x32 images.

  python -m vit_jax.main --config=configs/cifar10.py:vit --workdir=/tmp/cifar10_vit
  python -m vit_jax.main --config=configs/cifar10.py:hybrid --workdir=/tmp/cifar10_hybrid
  python -m vit_jax.main --config=configs/cifar10.py:resnet --workdir=/tmp/cifar10_resnet

Append `,cpu` to the preset (e.g. `cifar10.py:vit,cpu`) for a short run sized for 2 CPU cores
(narrower, shallower models, batch 64, 600 steps: about 5 minutes for ViT and ResNet, 10 for
the hybrid).

Data: `folder:` on cifar10.tar.gz in $VIT_JAX_DATA (default `datasets/`), decoded once and
cached; `--config.dataset=tfds:cifar10` where TensorFlow Datasets and the data are installed.
Recipe: AdamW (lr 1e-3, weight decay 0.05), batch 256, 30 epochs (5,850 steps), 500 warm-up
steps then cosine decay, label smoothing 0.1, random resized crop (35-100% of the area) and
horizontal flips. Results and run times: experiments/cifar10/README.md.
"""
from vit_jax import config as config_lib
from vit_jax import data

CIFAR10 = data.dataset_file('cifar10.tar.gz')

# Preset -> (registry name, overrides) for the full run and for the short CPU run.
MODELS = {
    'vit': (('ViT-Ti_4', dict(dropout_rate=0.1)),
            ('ViT-Micro_4', dict(num_layers=6))),
    'hybrid': (('R8+ViT-Ti_4-small', dict(dropout_rate=0.1)),
               ('R8+ViT-Micro_4-small', dict(num_layers=6, resnet_width=16))),
    'resnet': (('BiT-R26x1-small', {}),
               ('BiT-R14x0.25-small', {})),
}


def get_config(arg: str = 'vit'):
  preset, *options = arg.split(',')
  if preset not in MODELS or set(options) - {'cpu'}:
    raise ValueError(f'Unknown cifar10 preset {arg!r}: use one of {sorted(MODELS)}, '
                     'optionally followed by ",cpu".')
  cpu = 'cpu' in options
  name, overrides = MODELS[preset][cpu]
  config = config_lib.defaults()
  config.model = config_lib.model_config(name, **overrides)
  config.dataset = f'folder:{CIFAR10}'
  config.image_size = 32
  config.batch_size = 64 if cpu else 256
  config.total_steps = 600 if cpu else 5_850
  config.log_every = 50 if cpu else 100
  config.eval_every = config.checkpoint_every = 300 if cpu else 1_000
  config.optim.lr = 1e-3
  config.optim.weight_decay = 0.05
  config.optim.label_smoothing = 0.1
  config.schedule.warmup_steps = 50 if cpu else 500
  config.augment.crop_scale = (0.35, 1.0)
  config.augment.flip = True
  config.eval.fewshot_shots = (1, 5, 10, 25)
  return config
