"""Quickstart: a small ViT trained from scratch on the embedded 8x8 digits (scikit-learn).

  python -m vit_jax.main --config=configs/quickstart.py --workdir=/tmp/vit_quickstart

ViT-Nano/2 (64 wide, 4 layers, 16 tokens), 1,437 training images, 600 steps of batch 128.
Expected: test accuracy about 0.95 in about 1-2 minutes on 2 CPU cores.
"""
from vit_jax import config as config_lib


def get_config():
  config = config_lib.defaults()
  config.model = config_lib.model_config('ViT-Nano_2', num_layers=4, dropout_rate=0.1)
  config.dataset = 'digits'
  config.image_size = 8
  config.batch_size = 128
  config.total_steps = 600
  config.log_every = 50
  config.eval_every = 300
  config.checkpoint_every = 300
  config.optim.lr = 2e-3
  config.optim.weight_decay = 0.05
  config.schedule.warmup_steps = 50
  config.augment.crop_scale = (0.7, 1.0)
  return config
