"""The PyTorch reference: the same ViT, batch and optimizer in PyTorch, as steps to time.

CPU: Hugging Face transformers' `ViTForImageClassification` with SDPA attention, random init,
float32 (bfloat16 through `torch.autocast`), `torch.set_num_threads` set to the cores this
process may use (what XLA's CPU thread pool uses). GPU: timm's `VisionTransformer` under
`torch.compile`, bfloat16 autocast, SDPA (timm's fused attention), on CUDA.

Training step: forward, mean cross-entropy, backward, global-norm gradient clipping at
`optim.grad_clip_norm` and `torch.optim.AdamW` with the config's learning rate, betas and weight
decay on matrices only (our `optax.adamw` with a >1-D mask; the learning-rate schedule is left
out: a constant rate costs the same). Inputs are float images already in [-1, 1]: our step
also runs the random-resized-crop augmentation on device, the reference does not.
"""
import functools
import os
import sys
from typing import Callable

import ml_collections


def _import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('--vs=torch needs PyTorch: pip install -e ".[export]" (torch and '
                      'transformers).') from e
  return torch


def check_fields(fields: dict) -> None:
  """Raises ValueError unless the model is a plain ViT with a class-token head and learned
  position embeddings (what the reference models build)."""
  unsupported = {k: fields.get(k) for k, ok in (
      ('family', 'vit'), ('classifier', 'token'), ('representation_size', None),
      ('posemb', 'learn')) if fields.get(k, ok) != ok}
  if unsupported:
    raise ValueError(f'--vs=torch has no PyTorch reference for {unsupported}; it covers plain '
                     "ViTs with classifier='token', posemb='learn' and no representation_size.")


def hf_vit(fields: dict, image_size: int, num_classes: int):
  """transformers' ViT with SDPA attention, shaped like our model (tanh GELU, eps 1e-6)."""
  try:
    import transformers  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('--vs=torch on CPU needs transformers: pip install -e ".[export]".') from e
  config = transformers.ViTConfig(
      hidden_size=fields['hidden_size'], num_hidden_layers=fields['num_layers'],
      num_attention_heads=fields['num_heads'], intermediate_size=fields['mlp_dim'],
      hidden_act='gelu_pytorch_tanh' if fields.get('gelu_approximate', True) else 'gelu',
      hidden_dropout_prob=0., attention_probs_dropout_prob=0., layer_norm_eps=1e-6,
      image_size=image_size, patch_size=fields['patch_size'], num_channels=3,
      num_labels=num_classes, qkv_bias=True, attn_implementation='sdpa')
  return transformers.ViTForImageClassification(config)


def timm_vit(fields: dict, image_size: int, num_classes: int, torch):
  """timm's ViT (fused SDPA attention), shaped like our model."""
  try:
    from timm.models import vision_transformer  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError('--vs=torch on a GPU compares against timm + torch.compile: pip install '
                      'timm (it needs a torchvision build for this torch).') from e
  gelu = functools.partial(torch.nn.GELU, approximate='tanh' if fields.get(
      'gelu_approximate', True) else 'none')
  return vision_transformer.VisionTransformer(
      img_size=image_size, patch_size=fields['patch_size'], num_classes=num_classes,
      embed_dim=fields['hidden_size'], depth=fields['num_layers'], num_heads=fields['num_heads'],
      mlp_ratio=fields['mlp_dim'] / fields['hidden_size'], qkv_bias=True, class_token=True,
      global_pool='token', act_layer=gelu)


def threads() -> int:
  """The cores this process may run on: XLA's CPU thread pool size, and torch's threads."""
  return len(os.sched_getaffinity(0))


def has_fast_bf16(cpuinfo: str = '/proc/cpuinfo') -> bool:
  """Whether the CPU multiplies bfloat16 in hardware (AMX-BF16 or AVX512-BF16), the case where
  PyTorch's bfloat16 autocast (oneDNN) is its fastest CPU path."""
  try:
    with open(cpuinfo) as f:
      flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), [])
  except OSError:
    return False
  return 'amx_bf16' in flags or 'avx512_bf16' in flags


def reference_steps(mode: str, fields: dict, *, image_size: int, batch: int, num_classes: int,
                    bf16: bool, optim: dict, gpu: bool) -> tuple[Callable[[], None], dict]:
  """Returns (step, description) for mode 'train' or 'infer'; `step()` runs one call and waits
  for it. bf16: bfloat16 autocast. optim: lr, b1, b2, weight_decay, grad_clip_norm (our
  config.optim's values)."""
  check_fields(fields)
  torch = _import_torch()
  torch.manual_seed(0)
  if gpu:
    if not torch.cuda.is_available():
      raise RuntimeError('JAX runs on a GPU but this torch has no CUDA: install a CUDA torch '
                         'build to compare on the GPU.')
    device = torch.device('cuda')
    model = timm_vit(fields, image_size, num_classes, torch).to(device)
    name, sync = 'timm VisionTransformer + torch.compile', torch.cuda.synchronize
    library = 'timm', sys.modules['timm'].__version__
  else:
    device = torch.device('cpu')
    torch.set_num_threads(threads())
    model = hf_vit(fields, image_size, num_classes)
    name, sync = 'transformers ViTForImageClassification (sdpa)', lambda: None
    library = 'transformers', sys.modules['transformers'].__version__
  autocast = lambda: torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)
  call = torch.compile(model) if gpu else model
  logits = (lambda x: call(x)) if gpu else (lambda x: call(pixel_values=x).logits)
  images = torch.rand(batch, 3, image_size, image_size, device=device) * 2 - 1  # NCHW, as both use
  labels = torch.arange(batch, device=device) % num_classes

  if mode == 'infer':
    model.eval()

    def step():
      with torch.inference_mode(), autocast():
        logits(images)
      sync()
  else:
    model.train()
    opt = ml_collections.ConfigDict(optim)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{'params': [p for p in params if p.ndim > 1], 'weight_decay': opt.weight_decay},
              {'params': [p for p in params if p.ndim <= 1], 'weight_decay': 0.}]
    optimizer = torch.optim.AdamW(groups, lr=opt.lr, betas=(opt.b1, opt.b2),
                                  **({'fused': True} if gpu else {}))

    def step():
      with autocast():
        loss = torch.nn.functional.cross_entropy(logits(images), labels)
      loss.backward()
      if opt.grad_clip_norm:
        torch.nn.utils.clip_grad_norm_(params, opt.grad_clip_norm)
      optimizer.step()
      optimizer.zero_grad(set_to_none=True)
      sync()
  describe = {'implementation': name, 'torch': torch.__version__, library[0]: library[1],
              'threads': torch.get_num_threads(), 'device': str(device),
              'num_params': sum(p.numel() for p in model.parameters()),
              'dtype': 'bfloat16 autocast' if bf16 else 'float32'}
  return step, describe
