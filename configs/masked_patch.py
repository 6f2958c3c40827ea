"""Masked patch prediction (ViT paper, appendix B.1.2): self-supervised pre-training on the
images alone, then fine-tuning on a small labeled subset, against training from scratch.

  python -m vit_jax.main --config=configs/masked_patch.py:pretrain --workdir=/tmp/mpp/pretrain
  python -m vit_jax.main --config=configs/masked_patch.py:finetune --workdir=/tmp/mpp/finetune \
      --config.checkpoint.init_from=/tmp/mpp/pretrain
  python -m vit_jax.main --config=configs/masked_patch.py:scratch --workdir=/tmp/mpp/scratch

Presets (CIFAR-10, cifar10.tar.gz in $VIT_JAX_DATA; sized for 2 CPU
cores, the ViT-4 of the `cifar10_cpu` data-scaling study: ViT-Micro/4 at depth 4):
  pretrain  masked patch prediction on all 50,000 training images (their labels are never
            read: the loss needs only the pixels); 50% of the patches corrupted (80% mask
            token, 10% a random patch, 10% unchanged), 3-bit mean colour targets (512
            classes). The reported accuracy is that of the corrupted patches' colours; the
            few-shot numbers probe the mean patch token.
  finetune  the labeled 1,000-image subset of the data-scaling study (10% held out for
            validation), 400 steps of batch 64, from `checkpoint.init_from` (default
            /tmp/mpp/pretrain: the pre-training workdir; its mask token and colour head are
            dropped, a zero head is added).
  scratch   the same run from a random initialisation: the baseline.
Results and run times: experiments/masked_patch/README.md.
"""
from configs import cifar10

LABELED = 1_000  # size of the labeled subset


def get_config(preset: str = 'pretrain'):
  if preset not in ('pretrain', 'finetune', 'scratch'):
    raise ValueError(f"Unknown masked_patch preset {preset!r}: use 'pretrain', 'finetune' or "
                     "'scratch'.")
  config = cifar10.get_config('vit,cpu')
  config.model.num_layers = 4
  config.model.dropout_rate = 0.0
  if preset == 'pretrain':
    config.mpp.enabled = True
    config.batch_size = 128
    config.total_steps = 600
    config.log_every = 50
    config.eval_every = config.checkpoint_every = 300
    config.schedule.warmup_steps = 60
    config.augment.crop_scale = (0.5, 1.0)
  else:
    config.train_size = LABELED
    config.eval.val_fraction = 0.1
    config.batch_size = 64
    config.total_steps = 400
    config.log_every = 100
    config.eval_every = config.checkpoint_every = 200
    config.schedule.warmup_steps = 40
    if preset == 'finetune':
      config.checkpoint.init_from = '/tmp/mpp/pretrain'
  return config
