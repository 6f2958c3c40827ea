"""The ViT paper's pre-training recipes (Dosovitskiy et al. 2020, section 4.1 and appendix B.1).

  python -m vit_jax.main --config=configs/pretrain.py:B_16,i21k --workdir=<dir> \
      [--config.mesh="(('fsdp', -1),)"]

Presets `<model>,<dataset>`: model in B_32, B_16, L_32, L_16, H_14 (any ViT size/patch such as
Ti_16 works too), dataset in i1k (300 epochs, lr 3e-3, weight decay 0.3, dropout 0.1;
evaluated on its labelled 'val' split), i21k (90 epochs, lr 1e-3, weight decay 0.03; no
official split: 102,400 training images, a fixed class-mixed slice, are held out for
evaluation), jft (JFT-300M is not public; 7 epochs, weight decay 0.1, lr 8e-4 for B, 6e-4
L/32, 4e-4 L/16, 3e-4 H/14, 14 epochs for H/14).
Data: prepared record directories (python -m vit_jax.data.prepare --src=<train/<wnid>/*.JPEG,
val/<wnid>/*.JPEG tree or archive> --out=<dir>; README, Data) at $VIT_JAX_I1K, $VIT_JAX_I21K,
$VIT_JAX_JFT (default /data/<name>), streamed by 8 grain worker processes per host
(`--config.data.workers`); evaluation resizes and centre-crops 87.5%.
Common: Adam (beta1 0.9, beta2 0.999), batch 4096, 10k warm-up steps then linear decay,
gradient clipping at global norm 1, 224 px, Inception crop + flip, a tanh pre-logits layer.
These runs need a TPU/GPU pod (the paper: TPUv3 core-days in the thousands); nothing here is
sized for one machine.
"""
from vit_jax import config as config_lib
from vit_jax.data import records
from vit_jax.models import registry

# dataset -> (source, train images, epochs, lr, weight decay, dropout)
DATASETS = {
    'i1k': ('records:' + records.preset_dir('VIT_JAX_I1K'), 1_281_167, 300, 3e-3, 0.3, 0.1),
    'i21k': ('records:' + records.preset_dir('VIT_JAX_I21K'), 14_197_122, 90, 1e-3, 0.03, 0.0),
    'jft': ('records:' + records.preset_dir('VIT_JAX_JFT'), 303_000_000, 7, None, 0.1, 0.0),
}
# dataset -> (training split, evaluation split) where not ('train', its labelled validation)
SPLITS = {'i21k': ('train[102400:]', 'train[:102400]')}
JFT_LR = {'B': 8e-4, 'L_32': 6e-4, 'L_16': 4e-4, 'H_14': 3e-4}
BATCH = 4096


def get_config(arg: str = 'B_16,i21k'):
  model, dataset = config_lib.model_and_dataset(arg, 'pretrain', DATASETS)
  source, images, epochs, lr, weight_decay, dropout = DATASETS[dataset]
  if dataset == 'jft':
    lr = JFT_LR.get(model, JFT_LR.get(model.split('_')[0], 8e-4))
    epochs = 14 if model == 'H_14' else epochs
  name = f'ViT-{model}'
  hidden_size = registry.get_model_config(name).hidden_size  # pre-logits as wide as the model

  config = config_lib.defaults()
  config.model = config_lib.model_config(name, representation_size=hidden_size,
                                     dropout_rate=dropout)
  config.dataset = source
  config.image_size = 224
  config.batch_size = BATCH
  config.total_steps = images * epochs // BATCH
  config.log_every = 100
  config.eval_every = 10_000
  config.checkpoint_every = 2_000
  config.optim.name = 'adam'
  config.optim.lr = lr
  config.optim.weight_decay = weight_decay
  config.optim.grad_clip_norm = 1.0
  config.schedule.warmup_steps = 10_000
  config.schedule.decay = 'linear'
  config.augment.crop_scale = (0.08, 1.0)
  config.augment.flip = True
  config.data.workers = 8
  config.data.train_split, config.data.eval_split = SPLITS.get(dataset, ('train', None))
  config.eval.crop_fraction = 0.875
  config.eval.batch_size = 1024
  config.eval.fewshot_shots = (1, 5, 10, 25)
  return config
