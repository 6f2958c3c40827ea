"""npz checkpoints: round trips in both naming generations, resize, head, errors."""
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import TINY_VIT, init, randomize
from vit_jax import checkpoint, files, pretrained
from vit_jax.models import get_model

pytestmark = pytest.mark.slow  # every test compiles a model

POSEMB = 'Transformer/posembed_input/pos_embedding'


def as_numpy(tree):
  return jax.tree_util.tree_map(np.asarray, tree)


def test_pre_linen_round_trip_gives_identical_logits(tiny_vit, tmp_path):
  model, params, images = tiny_vit
  path = tmp_path / 'vit.npz'
  checkpoint.save_npz(str(path), params)
  keys = set(np.load(path, allow_pickle=False).files)
  block = 'Transformer/encoderblock_0/'
  assert {block + 'MultiHeadDotProductAttention_1/query/kernel', block + 'LayerNorm_2/scale',
          block + 'MlpBlock_3/Dense_1/bias', block + 'LayerNorm_0/bias', POSEMB} <= keys
  assert not any('MlpBlock_0' in k for k in keys)
  loaded = checkpoint.load_pretrained(str(path), params)
  np.testing.assert_array_equal(model.apply({'params': loaded}, images),
                                model.apply({'params': params}, images))


def test_linen_naming_and_big_vision_prefix_load(tiny_vit, tmp_path):
  _, params, _ = tiny_vit
  flat = pretrained.flatten(as_numpy(params))
  path = tmp_path / 'bv.npz'
  np.savez(path, **{f'params/{k}': v for k, v in flat.items()})
  loaded = pretrained.flatten(checkpoint.load_pretrained(str(path), params))
  assert loaded.keys() == flat.keys()
  for k in flat:
    np.testing.assert_array_equal(loaded[k], flat[k])


def test_scanned_and_unrolled_layouts_convert(tiny_vit, tmp_path):
  model, params, images = tiny_vit
  scanned = get_model('ViT-Ti_16', num_classes=5, scan=True, **TINY_VIT)
  path, _ = _saved(tmp_path, params)
  scan_init = jax.eval_shape(scanned.init, jax.random.PRNGKey(0), images)['params']
  scan_params = checkpoint.load_pretrained(path, scan_init)
  assert scan_params['Transformer']['encoderblock']['LayerNorm_0']['scale'].shape == (2, 32)
  want = jax.jit(model.apply)({'params': params}, images)
  np.testing.assert_array_equal(jax.jit(scanned.apply)({'params': scan_params}, images), want)
  # ... and a scanned model saves in the unrolled published layout.
  checkpoint.save_npz(str(tmp_path / 's.npz'), scan_params)
  back = checkpoint.load_pretrained(str(tmp_path / 's.npz'), params)
  np.testing.assert_array_equal(jax.jit(model.apply)({'params': back}, images), want)


def _saved(tmp_path, params):
  path = tmp_path / 'p.npz'
  checkpoint.save_npz(str(path), params)
  return str(path), params


def bilinear_reference(grid, new):
  """Independent separable linear interpolation with corner-aligned sampling (zoom order=1)."""
  old = grid.shape[0]
  coords = np.arange(new) * (old - 1) / (new - 1)
  rows = np.stack([np.interp(coords, np.arange(old), grid[:, j, c])
                   for j in range(old) for c in range(grid.shape[2])], -1)
  rows = rows.reshape(new, old, grid.shape[2])
  return np.stack([np.stack([np.interp(coords, np.arange(old), rows[i, :, c])
                             for c in range(grid.shape[2])], -1) for i in range(new)])


def test_resize_posemb_matches_independent_bilinear():
  posemb = np.random.default_rng(0).normal(size=(1, 1 + 4 * 4, 6)).astype(np.float64)
  out = pretrained.resize_posemb(posemb, 1 + 7 * 7, num_prefix=1)
  assert out.shape == (1, 50, 6)
  np.testing.assert_array_equal(out[0, 0], posemb[0, 0])  # class token kept apart
  want = bilinear_reference(posemb[0, 1:].reshape(4, 4, 6), 7).reshape(49, 6)
  np.testing.assert_allclose(out[0, 1:], want, atol=1e-12)
  gap = pretrained.resize_posemb(posemb[:, 1:], 7 * 7, num_prefix=0)
  np.testing.assert_allclose(gap[0], want, atol=1e-12)


def test_load_at_new_resolution_resizes_posemb(tiny_vit, tmp_path):
  _, params, _ = tiny_vit
  path, _ = _saved(tmp_path, params)
  big = get_model('ViT-Ti_16', num_classes=5, **TINY_VIT)
  big_params, big_images = init(big, 28)  # 4x4 -> 7x7 grid
  loaded = checkpoint.load_pretrained(path, big_params)
  want = pretrained.resize_posemb(np.asarray(params['Transformer']['posembed_input']
                                             ['pos_embedding']), 50, 1)
  np.testing.assert_array_equal(loaded['Transformer']['posembed_input']['pos_embedding'], want)
  np.testing.assert_array_equal(loaded['head']['kernel'], params['head']['kernel'])
  assert big.apply({'params': loaded}, big_images).shape == (2, 5)


def test_a_colour_checkpoint_fits_a_grayscale_model_and_back(tmp_path):
  """The fitted model computes what the checkpoint's computes on its own kind of image: on a
  grayscale image, what the colour one computes on it repeated in three channels; on a colour
  image, what the grayscale one computes on its luma (ITU-R 601-2 weights)."""
  model = get_model('ViT-Ti_16', num_classes=5, **TINY_VIT)
  luma = lambda rgb: rgb @ np.array([[0.299], [0.587], [0.114]], np.float32)
  for have, want in ((3, 1), (1, 3)):
    path, params = _saved(tmp_path, randomize(init(model, 16, channels=have)[0]))
    loaded = checkpoint.load_pretrained(path, init(model, 16, seed=1, channels=want)[0])
    images = np.random.default_rng(want).uniform(-1, 1, (2, 16, 16, want)).astype(np.float32)
    theirs = np.repeat(images, 3, -1) if have == 3 else luma(images)
    np.testing.assert_allclose(model.apply({'params': loaded}, images),
                               model.apply({'params': params}, theirs),
                               rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match='3-channel images cannot be adapted to 2 channels'):
    pretrained.adapt_input_channels(np.zeros((4, 4, 3, 32)), 2)


def test_a_hybrid_of_other_channels_is_refused_with_the_way_to_read_images_as_its_own(tmp_path):
  """A weight-standardised ResNet root has no exact channel adaptation: the error says so, and
  how to read the images as the checkpoint's kind (data.channels)."""
  model = get_model('R50+ViT-B_16', num_classes=2, hidden_size=32, mlp_dim=32, num_heads=2,
                    num_layers=1, resnet_width=16, resnet_layers=(1,))
  shapes = lambda c: jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                    jnp.zeros((1, 16, 16, c)))['params']
  for have, want, kind in ((3, 1, 'colour'), (1, 3, 'grayscale')):
    path, _ = _saved(tmp_path, init(model, 16, channels=have)[0])
    with pytest.raises(ValueError) as e:
      checkpoint.load_pretrained(path, shapes(want))
    assert str(e.value).split('\n') == [
        f'Checkpoint {path} does not fit the model; it was trained on {have}-channel images, the '
        f"model is built for the dataset's {want}-channel ones (a weight-standardised ResNet "
        f"root has no exact adaptation, unlike a plain ViT's patch embedding): set "
        f"data.channels={have} to read the dataset's images as {kind}.",
        'shape mismatch (1):',
        f'  conv_root/kernel: checkpoint (7, 7, {have}, 16) vs model (7, 7, {want}, 16)']


def test_new_class_count_gets_zero_head_and_pre_logits_follow_the_model(tmp_path):
  model = get_model('ViT-Ti_16', num_classes=5, representation_size=16, **TINY_VIT)
  params, images = init(model, 16)
  params = randomize(params)
  path, _ = _saved(tmp_path, params)
  new = get_model('ViT-Ti_16', num_classes=3, **TINY_VIT)  # no representation layer
  new_init, _ = init(new, 16)
  loaded = checkpoint.load_pretrained(path, new_init)
  assert 'pre_logits' not in loaded
  assert loaded['head']['kernel'].shape == (32, 3) and not np.any(loaded['head']['kernel'])
  np.testing.assert_array_equal(loaded['embedding']['kernel'], params['embedding']['kernel'])
  kept = checkpoint.load_pretrained(path, params)
  np.testing.assert_array_equal(kept['pre_logits']['kernel'], params['pre_logits']['kernel'])
  np.testing.assert_array_equal(kept['head']['kernel'], params['head']['kernel'])
  reset = checkpoint.load_pretrained(path, init(model, 16)[0], reset_head=True)
  assert not np.any(reset['head']['kernel'])


def test_hybrid_groupnorm_stored_as_4d_loads(tmp_path):
  model = get_model('R50+ViT-B_16', num_classes=2, hidden_size=32, mlp_dim=32, num_heads=2,
                    num_layers=1, resnet_width=32, resnet_layers=(1,))
  params, images = init(model, 16)
  params = randomize(params)
  flat = pretrained.flatten(as_numpy(params))
  stored = {k: v.reshape(1, 1, 1, -1) if '/gn' in f'/{k}' else v for k, v in flat.items()}
  assert stored['gn_root/scale'].shape == (1, 1, 1, 32)
  np.savez(tmp_path / 'h.npz', **stored)
  loaded = checkpoint.load_pretrained(str(tmp_path / 'h.npz'), params)
  np.testing.assert_array_equal(model.apply({'params': loaded}, images),
                                model.apply({'params': params}, images))


def _fit_error(path, model) -> str:
  """The message of loading `path` into `model` (of 16x16 images)."""
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))['params']
  with pytest.raises(ValueError) as e:
    checkpoint.load_pretrained(path, shapes)
  return str(e.value)


def test_wrong_architecture_reports_keys_and_shapes(tiny_vit, tmp_path):
  _, params, _ = tiny_vit
  path, _ = _saved(tmp_path, params)
  other = get_model('ViT-Ti_16', num_classes=5, **dict(TINY_VIT, hidden_size=48, num_layers=3))
  msg = _fit_error(path, other)
  first, *lines = msg.split('\n')
  # The first line names the encoder sizes that differ and the overrides that fit the file.
  assert first == (f'Checkpoint {path} does not fit the model: its encoder has num_layers=2 (the '
                   'model: 3), hidden_size=32 (the model: 48); to fine-tune a model of its shape, '
                   'add --config.model.num_layers=2 --config.model.hidden_size=32.')
  # Every key of the third block is missing: 10 listed (in block order), the rest counted.
  third = [k for k in pretrained.flatten(params) if k.startswith('Transformer/encoderblock_1/')]
  assert lines[0] == f'missing from the checkpoint ({len(third)}):'
  assert lines[1] == '  Transformer/encoderblock_2/LayerNorm_0/bias'
  assert lines[11] == f'  ... and {len(third) - 10} more'
  # Listed as mismatched: every array the two models share whose shapes differ, but the head
  # (replaced by the model's zero-initialised one for any other shape).
  ours = pretrained.flatten(jax.eval_shape(other.init, jax.random.PRNGKey(0),
                                           jnp.zeros((1, 16, 16, 3)))['params'])
  differ = [k for k, v in pretrained.flatten(params).items()
            if not k.startswith('head/') and ours[k].shape != v.shape]
  assert len(differ) == 36 and lines[12] == f'shape mismatch ({len(differ)}):'
  assert lines[13] == ('  Transformer/encoder_norm/bias: checkpoint (32,) vs model (48,)')

  # Only the patch size differs: one mismatch, listed in full, and no encoder hint.
  patch = get_model('ViT-Ti_16', num_classes=5, **dict(TINY_VIT, patch_size=2))
  assert _fit_error(path, patch).split('\n') == [
      f'Checkpoint {path} does not fit the model.', 'shape mismatch (1):',
      '  embedding/kernel: checkpoint (4, 4, 3, 32) vs model (2, 2, 3, 32)']


def test_wrong_depth_of_a_scanned_model_is_named(tiny_vit, tmp_path):
  _, params, _ = tiny_vit
  path, _ = _saved(tmp_path, params)
  deeper = get_model('ViT-Ti_16', num_classes=5, **dict(TINY_VIT, num_layers=5, num_heads=2),
                     scan=True)
  first = _fit_error(path, deeper).split('\n')[0]
  assert first.endswith(': its encoder has num_layers=2 (the model: 5), num_heads=4 (the '
                        'model: 2); to fine-tune a model of its shape, add '
                        '--config.model.num_layers=2 --config.model.num_heads=4.')


def test_unexpected_keys_fail_unless_not_strict(tiny_vit, tmp_path):
  _, params, _ = tiny_vit
  flat = pretrained.flatten(as_numpy(params))
  np.savez(tmp_path / 'x.npz', extra=np.zeros(3), **flat)
  with pytest.raises(ValueError, match=r'unexpected in the checkpoint \(1\):\n  extra'):
    checkpoint.load_pretrained(str(tmp_path / 'x.npz'), params)
  loaded = checkpoint.load_pretrained(str(tmp_path / 'x.npz'), params, strict=False)
  assert 'extra' not in loaded


def test_pickled_npz_is_refused(tmp_path):
  np.savez(tmp_path / 'evil.npz', head=np.array([{'a': 1}], dtype=object))
  with pytest.raises(ValueError, match='holds pickled Python objects; refusing'):
    pretrained.read_npz(str(tmp_path / 'evil.npz'))


def test_missing_and_corrupt_files_are_named(tmp_path, tiny_vit):
  _, params, _ = tiny_vit
  with pytest.raises(FileNotFoundError, match='nope.npz'):
    checkpoint.load_pretrained(str(tmp_path / 'nope.npz'), params)
  (tmp_path / 'bad.npz').write_bytes(b'not a zip file')
  with pytest.raises(ValueError, match='bad.npz is not a readable .npz file'):
    checkpoint.load_pretrained(str(tmp_path / 'bad.npz'), params)


@pytest.mark.parametrize('text,message', [
    ('{"model": {"name": "ViT-Ti_4"', 'config.json is not readable JSON: '),  # cut short
    ('{"model": 3}', 'config.json names no model (model.name): not the config.json of a '
     'training run.'),
])
def test_a_damaged_run_config_is_named(tmp_path, text, message):
  (tmp_path / 'config.json').write_text(text)
  with pytest.raises(ValueError, match=re.escape(f'{tmp_path}/{message}')):
    checkpoint.load_run(str(tmp_path))


def test_atomic_writes_get_the_permissions_open_would_give(tmp_path):
  previous = os.umask(0o027)
  try:
    files.write_json(str(tmp_path / 'r.json'), {'a': 1})
  finally:
    os.umask(previous)
  assert (tmp_path / 'r.json').stat().st_mode & 0o777 == 0o640
  assert os.listdir(tmp_path) == ['r.json']  # no temporary file left


def test_a_file_that_cannot_be_written_is_named_in_the_error():
  with pytest.raises(FileNotFoundError) as e:  # /proc takes no new files
    files.write_json('/proc/vit_jax-result.json', {'a': 1})
  assert str(e.value) == "[Errno 2] No such file or directory: '/proc/vit_jax-result.json'"


def test_save_is_atomic_and_keeps_the_old_file_on_failure(tiny_vit, tmp_path):
  _, params, _ = tiny_vit
  path, _ = _saved(tmp_path, params)
  before = (tmp_path / 'p.npz').read_bytes()
  with pytest.raises(ValueError, match="naming='old'"):
    checkpoint.save_npz(path, params, naming='old')
  with pytest.raises(ValueError, match=r"Cannot save non-numeric arrays \['bad/leaf'\]"):
    checkpoint.save_npz(path, {'bad': {'leaf': object()}})
  assert (tmp_path / 'p.npz').read_bytes() == before
  assert sorted(p.name for p in tmp_path.iterdir()) == ['p.npz']


def test_manager_keeps_the_last_n_and_the_best_and_resolves_steps(tmp_path):
  manager = checkpoint.CheckpointManager(str(tmp_path / 'checkpoints'), keep=2)
  for step in range(1, 6):  # validation accuracy peaks at step 2
    best = {'best_step': 2, 'best_val_accuracy': 0.9} if step >= 2 else {}
    manager.save(step, {'params': {'w': jnp.full((3,), float(step))}}, {'best': best},
                 best=best.get('best_step'))
  manager.close()
  manager = checkpoint.CheckpointManager(str(tmp_path / 'checkpoints'))
  assert manager.all_steps() == [2, 4, 5]
  assert [manager.resolve(s) for s in ('best', 'latest', None, 4)] == [2, 5, 5, 4]
  np.testing.assert_array_equal(manager.restore_params('best')['w'], np.full(3, 2.))
  with pytest.raises(FileNotFoundError, match=r'No checkpoint for step 3 .* \[2, 4, 5\]'):
    manager.resolve(3)
  manager.save(6, {'params': {'w': jnp.zeros(3)}}, {'best': {'best_step': 6}})  # no validation
  with pytest.raises(ValueError, match='holds out no validation split'):
    manager.resolve('best')
  manager.close()


def test_a_checkpoint_folder_reads_as_its_step_and_folders_inside_a_run_name_it(tmp_path):
  run = tmp_path / 'run'
  manager = checkpoint.CheckpointManager(str(run / 'checkpoints'))
  for step in (1, 2):
    manager.save(step, {'params': {'w': jnp.full((3,), float(step))}}, {'best': {}})
  manager.close()
  (run / 'config.json').write_text('{"model": {"name": "ViT-Ti_4"}}')
  for folder in (f'{run}/checkpoints/1', f'{run}/checkpoints/1/'):  # what init_from reads
    np.testing.assert_array_equal(checkpoint.read_params(folder)['w'], np.full(3, 1.))
  np.testing.assert_array_equal(checkpoint.read_params(str(run))['w'], np.full(3, 2.))
  inside = f'is not a training run directory (no config.json); it is inside the run {run}: '
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'{run}/checkpoints/1 {inside}give that folder and step 1 (--step=1).')):
    checkpoint.load_run(f'{run}/checkpoints/1')
  with pytest.raises(FileNotFoundError, match=re.escape(
      f'{run}/checkpoints {inside}give that folder.')):
    checkpoint.load_run(f'{run}/checkpoints')
  with pytest.raises(FileNotFoundError, match=re.escape(f'{tmp_path}/nothing does not exist.')):
    checkpoint.load_run(f'{tmp_path}/nothing')


@pytest.mark.parametrize('text,want', [('best', 'best'), ('latest', 'latest'), ('12', 12)])
def test_parse_step(text, want):
  assert checkpoint.parse_step(text) == want


def test_parse_step_refuses_other_words():
  with pytest.raises(ValueError, match=r"--step='last' must be 'best', 'latest' or a step"):
    checkpoint.parse_step('last')
