"""The ViT paper's fine-tuning recipe (section 4.1, appendix B.1.1), from a published `.npz` or
one of our run workdirs, at a new resolution.

  python -m vit_jax.main --config=configs/finetune.py:B_16,cifar10 --workdir=<dir> \
      --config.checkpoint.init_from=ViT-B_16.npz

The published ImageNet-21k checkpoints download as <model name>.npz, e.g.
`wget https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz`.
Presets `<model>,<dataset>`: model is any ViT size/patch (B_16, L_16, ...) or a hybrid
(R50+B_16); dataset in cifar10 (cifar10.tar.gz in $VIT_JAX_DATA, 10k
steps), cifar100 (tfds:cifar100, 10k steps), i1k (a prepared record directory at $VIT_JAX_I1K,
default /data/imagenet2012, see configs/pretrain.py; 20k steps), digits (the
embedded dataset, 500 steps, for a quick check on a CPU). Every image is read as colour
(data.channels=3), as the published checkpoints were trained: the grayscale digits too.
Recipe: SGD with momentum 0.9, batch 512, lr 0.03 (the paper sweeps 0.003, 0.01, 0.03, 0.06:
`--config.optim.lr=...`), 500 warm-up steps then cosine decay, no weight decay, gradient
clipping at 1, 384 px. The position embeddings are resized bilinearly to the new grid, the head
is replaced by a zero-initialised one for the new classes, and a pre-training `pre_logits`
layer is dropped.
Expected (paper, Table 5 / B.1.1): ViT-B/16 pre-trained on ImageNet-21k reaches about 98.9% on
CIFAR-10; needs a GPU or TPU (10k steps of batch 512 at 384 px).
"""
from configs import cifar10
from vit_jax import config as config_lib
from vit_jax.data import records

# dataset -> (source, steps, image size)
DATASETS = {
    'cifar10': (f'folder:{cifar10.CIFAR10}', 10_000, 384),
    'cifar100': ('tfds:cifar100', 10_000, 384),
    'i1k': ('records:' + records.preset_dir('VIT_JAX_I1K'), 20_000, 384),
    'digits': ('digits', 500, 32),
}


def get_config(arg: str = 'B_16,cifar10'):
  model, dataset = config_lib.model_and_dataset(arg, 'finetune', DATASETS)
  source, steps, image_size = DATASETS[dataset]
  name = model.replace('+', '+ViT-') if '+' in model else f'ViT-{model}'

  config = config_lib.defaults()
  config.model = config_lib.model_config(name)
  config.dataset = source
  config.image_size = image_size
  config.batch_size = 512
  config.total_steps = steps
  config.log_every = 50
  config.eval_every = config.checkpoint_every = max(steps // 10, 100)
  config.optim.name = 'sgd'
  config.optim.lr = 0.03
  config.optim.momentum = 0.9
  config.optim.weight_decay = 0.0
  config.optim.grad_clip_norm = 1.0
  config.schedule.warmup_steps = min(500, steps // 10)
  config.schedule.decay = 'cosine'
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.flip = dataset != 'digits'
  config.data.channels = 3
  if dataset == 'i1k':
    config.data.workers = 8
  config.checkpoint.init_from = f'{name}.npz'
  return config
