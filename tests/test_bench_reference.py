"""The benchmark's PyTorch reference computes what our model computes: its weights, loaded into
our benchmarked model, give its logits."""
import jax
import numpy as np
import pytest
import torch

from vit_jax.bench import torch_ref
from vit_jax.export import hf
from vit_jax.models import get_model, resolved_fields

SMALL = dict(hidden_size=64, mlp_dim=256, num_heads=2, num_layers=2)


@pytest.mark.slow
def test_cpu_reference_model_gives_our_logits():
  fields = resolved_fields('ViT-Ti_4', **SMALL)
  torch.manual_seed(0)
  reference = torch_ref._hf_vit(fields, 32, 10).eval()
  # Non-zero head and biases, and pre-activations of a few units, where the tanh and the exact
  # GELU differ, so every part shows.
  for p in reference.parameters():
    torch.nn.init.normal_(p, mean=0. if p.ndim > 1 else 0.5, std=0.3)
  ours = get_model('ViT-Ti_4', num_classes=10, **SMALL)
  _, params = hf.import_state_dict(reference.state_dict(), reference.config)
  want_shapes = jax.eval_shape(ours.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)))
  assert jax.tree_util.tree_map(np.shape, params) == jax.tree_util.tree_map(
      lambda s: s.shape, want_shapes['params'])
  images = np.random.default_rng(0).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    want = reference(pixel_values=torch.from_numpy(images.transpose(0, 3, 1, 2))).logits.numpy()
  got = jax.jit(ours.apply)({'params': params}, images)
  assert np.std(want) > 0.1
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-4)
