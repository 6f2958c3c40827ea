"""Defaults every training config starts from (the config vocabulary of DESIGN.md section 3).

Not a runnable experiment by itself; `quickstart.py`, `cifar10.py`, `pretrain.py` and
`finetune.py` call `get_config()` and change what they need. Every field can be overridden on
the command line, e.g. `--config.model.num_layers=24 --config.mesh="(('data', -1),)"`.
Model fields left at None keep the value the registry gives the named model.
"""
import ml_collections
from ml_collections.config_dict import placeholder

# Every model override a config may set, with its type (None = the registry's value).
MODEL_FIELDS = {
    'hidden_size': int, 'mlp_dim': int, 'num_heads': int, 'num_layers': int, 'patch_size': int,
    'classifier': str, 'representation_size': int, 'dropout_rate': float,
    'attention_dropout_rate': float, 'posemb': str, 'dtype': str, 'attention_impl': str,
    'scan': bool, 'remat_policy': str, 'gelu_approximate': bool, 'head_bias_init': float,
    'resnet_layers': tuple, 'resnet_width': int, 'resnet_stem': str, 'token_dim': int,
    'soft_split': tuple,
}


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
  """`config.model`: a registry name plus a typed slot for every override."""
  unknown = set(overrides) - set(MODEL_FIELDS)
  if unknown:
    raise ValueError(f'Unknown model field(s) {sorted(unknown)}; known: {sorted(MODEL_FIELDS)}.')
  fields = {k: overrides.get(k, placeholder(t)) for k, t in MODEL_FIELDS.items()}
  return ml_collections.ConfigDict(dict(name=name, **fields))


def model_and_dataset(arg: str, file: str, datasets: dict) -> tuple[str, str]:
  """Splits a '<model>,<dataset>' preset; errors name the config `file` and the choices."""
  try:
    model, dataset = arg.split(',')
  except ValueError:
    raise ValueError(f'{file} preset {arg!r} must be "<model>,<dataset>", '
                     f'e.g. "B_16,{next(iter(datasets))}".') from None
  if dataset not in datasets:
    raise ValueError(f'Unknown {file} dataset {dataset!r}; use one of {sorted(datasets)}.')
  return model, dataset


def get_config() -> ml_collections.ConfigDict:
  """Returns the shared defaults (a tiny ViT on the embedded digits)."""
  config = ml_collections.ConfigDict()
  config.model = model_config('ViT-Nano_4', num_layers=4)
  config.dataset = 'digits'           # 'digits' | 'folder:<dir or .tar.gz>' | 'tfds:<name>'
                                      # | 'records:<dir from python -m vit_jax.data.prepare>'
  config.train_size = placeholder(int)  # nested class-balanced subset; None = all
  config.image_size = 8
  config.batch_size = 128             # global batch over all devices and processes
  config.total_steps = 500
  config.seed = 0
  config.log_every = 50
  config.eval_every = 250
  config.checkpoint_every = 250
  config.mesh = (('data', -1),)       # (axis, size) pairs; -1 = the remaining devices

  config.optim = ml_collections.ConfigDict(dict(
      name='adamw',                   # 'adam' | 'adamw' (decoupled decay) | 'sgd' (momentum)
      lr=1e-3, b1=0.9, b2=0.999, momentum=0.9, weight_decay=0.1,
      grad_clip_norm=1.0,             # global-norm clipping; 0 = none
      label_smoothing=0.0,
      grad_accum_steps=1,             # micro-batches per step
      skip_nonfinite=False,           # skip (and count) steps with a non-finite loss/gradient
                                      # instead of stopping the run
  ))
  config.schedule = ml_collections.ConfigDict(dict(
      warmup_steps=50,
      decay='cosine',                 # 'cosine' | 'linear' | 'constant'
      end_lr=0.0,
  ))
  config.augment = ml_collections.ConfigDict(dict(
      crop=True,                      # random resized crop ...
      crop_scale=(0.5, 1.0),          # ... of this fraction of the area
      crop_ratio=(3 / 4, 4 / 3),      # ... and aspect ratio
      flip=False,                     # random horizontal flip (off for digits)
  ))
  config.eval = ml_collections.ConfigDict(dict(
      batch_size=512,
      crop_fraction=1.0,              # central crop kept before resizing to image_size
      fewshot_shots=(1, 5, 10),       # linear probe on pre-logits features, k per class
      fewshot_seeds=3,
      fewshot_l2_reg=2.0**10,
      fewshot_dataset=placeholder(str),  # the probe's dataset (its train and evaluation
                                      # splits) if not the training one, e.g. ImageNet-1k
                                      # 5-shot for a JFT or ImageNet-21k run
      val_fraction=0.0,               # > 0: hold out this much of the training subset
                                      # (class-balanced) and report the best-validation step
  ))
  config.checkpoint = ml_collections.ConfigDict(dict(
      keep=3,                         # last N checkpoints kept
      init_from=placeholder(str),     # a .npz or a run workdir to fine-tune from
      reset_head=placeholder(bool),   # None: reset when the class count differs
  ))
  config.mpp = ml_collections.ConfigDict(dict(
      enabled=False,                  # pre-train by masked patch prediction (vit_jax/mpp.py;
                                      # plain ViTs): labels are not used, and the metrics'
                                      # loss / accuracy are those of the corrupted patches
      corrupt_fraction=0.5,           # patches corrupted per image ...
      mask_fraction=0.8,              # ... of which replaced by the mask token,
      random_fraction=0.1,            # ... by a random patch of the batch (rest unchanged)
  ))
  config.data = ml_collections.ConfigDict(dict(
      cache_dir=placeholder(str),     # decoded-array cache; None = ~/.cache/vit_jax
      subset_seed=0,                  # seed of the nested train_size subsets
      corrupt_images='error',         # an undecodable image file: 'error' | 'skip' (counted
                                      # in result.json as skipped_images)
      kind='auto',                    # 'memory' (decoded whole, augmented on the device) |
                                      # 'stream' (grain, decoded + augmented on the host) |
                                      # 'auto' (stream 'records:' sources, others in memory)
      workers=0,                      # grain worker processes decoding ahead (0: threads)
      tfds_dir=placeholder(str),      # prepared TFDS data; None: $TFDS_DATA_DIR or
                                      # ~/tensorflow_datasets
      train_split='train',            # record sources also take slices: 'train[:99%]',
      eval_split=placeholder(str),    # 'train[102400:]'; None: 'test' in memory, for record
                                      # sources the first of validation, val, test
  ))
  return config
