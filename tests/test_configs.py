"""Every config preset builds a valid config and model; the CIFAR-10 preset runs at smoke size."""
import contextlib
import importlib
import os
import re

import jax
import jax.numpy as jnp
import pytest

from conftest import recounted_test_accuracy
from configs import cifar10
from vit_jax import config as config_lib
from vit_jax import data, optim, train
from vit_jax.data import records
from vit_jax.models import config_overrides, get_model

PRESETS = [('quickstart', None)] + [
    ('cifar10', f'{m}{cpu}') for m in cifar10.MODELS for cpu in ('', ',cpu')] + [
    ('pretrain', f'{m},{d}') for m in ('B_32', 'B_16', 'L_32', 'L_16', 'H_14')
    for d in ('i1k', 'i21k', 'jft')] + [
    ('finetune', f'{m},{d}') for m in ('B_16', 'R50+B_16')
    for d in ('cifar10', 'cifar100', 'i1k', 'digits')] + [
    ('masked_patch', p) for p in ('pretrain', 'finetune', 'scratch')]


def load(module, arg):
  config_module = importlib.import_module(f'configs.{module}')
  return config_module.get_config() if arg is None else config_module.get_config(arg)


@pytest.mark.parametrize('module,arg', PRESETS, ids=[f'{m}:{a}' for m, a in PRESETS])
def test_preset_is_valid(module, arg):
  config = load(module, arg)
  config_lib.check(config)
  optim.make_optimizer(config)
  model = get_model(config.model.name, num_classes=10, **config_overrides(config.model))
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                          jnp.zeros((1, config.image_size, config.image_size, 3)))
  assert shapes['params']['head']['kernel'].shape[-1] == 10


def test_pretrain_recipe_numbers():
  config = load('pretrain', 'L_16,jft')
  assert (config.optim.name, config.optim.lr, config.optim.weight_decay) == ('adam', 4e-4, 0.1)
  assert config.batch_size == 4096 and config.schedule.warmup_steps == 10_000
  assert config.model.representation_size == 1024
  assert load('pretrain', 'B_16,i1k').optim.lr == 3e-3
  assert load('pretrain', 'B_16,i21k').total_steps == 14_197_122 * 90 // 4096


@pytest.mark.parametrize('module,arg,message', [
    ('cifar10', 'convnext', "Unknown cifar10 preset 'convnext'"),
    ('pretrain', 'B_16', 'must be "<model>,<dataset>"'),
    ('pretrain', 'B_16,laion', "Unknown pretrain dataset 'laion'"),
    ('finetune', 'B_16,svhn', "Unknown finetune dataset 'svhn'"),
    ('masked_patch', 'mae', "Unknown masked_patch preset 'mae'"),
])
def test_unknown_presets_are_named(module, arg, message):
  with pytest.raises(ValueError, match=message):
    load(module, arg)


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(cifar10.CIFAR10),
                    reason='environment: the CIFAR-10 archive (cifar10.tar.gz in '
                    '$VIT_JAX_DATA, default datasets/) is not on this machine')
def test_cifar10_hybrid_runs_at_smoke_size(tmp_path):
  config = load('cifar10', 'hybrid,cpu')
  config.train_size, config.total_steps, config.batch_size = 100, 2, 16
  config.log_every = config.eval_every = config.checkpoint_every = 2
  config.model.num_layers, config.eval.fewshot_shots = 1, (1,)
  config.data.cache_dir = str(tmp_path / 'cache')
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['train_size'] == 100 and result['step'] == 2
  assert result['test_accuracy'] == pytest.approx(
      recounted_test_accuracy(tmp_path / 'run'), abs=1e-9)


@contextlib.contextmanager
def reloaded_presets(monkeypatch, *names: str):
  """The preset modules configs.<name> reloaded in monkeypatch's environment, and reloaded
  again after the block in the real one."""
  presets = [importlib.reload(importlib.import_module(f'configs.{m}')) for m in names]
  try:
    yield presets
  finally:
    monkeypatch.undo()
    for preset in presets:
      importlib.reload(preset)


def test_real_data_presets_read_from_vit_jax_data(tmp_path, monkeypatch):
  monkeypatch.setenv('VIT_JAX_DATA', str(tmp_path))
  with reloaded_presets(monkeypatch, 'cifar10', 'data_scaling') as presets:
    assert presets[0].get_config('vit').dataset == f'folder:{tmp_path}/cifar10.tar.gz'
    assert presets[1].get_config('mnist').base.dataset == f'folder:{tmp_path}/mnist.tar.gz'
    with pytest.raises(FileNotFoundError, match=re.escape(
        f'{tmp_path}/mnist.tar.gz does not exist (the presets read mnist.tar.gz from '
        f'$VIT_JAX_DATA={tmp_path}; set VIT_JAX_DATA to the folder that holds it).')):
      data.check_present(presets[1].get_config('mnist').base)
    monkeypatch.delenv('VIT_JAX_DATA')
    monkeypatch.chdir(tmp_path)
    assert importlib.reload(presets[0]).CIFAR10 == str(tmp_path / 'datasets' / 'cifar10.tar.gz')
    with pytest.raises(FileNotFoundError, match=re.escape(
        'cifar10.tar.gz does not exist (the presets read cifar10.tar.gz from $VIT_JAX_DATA, not '
        'set: datasets/ under the working directory; set VIT_JAX_DATA')):
      data.check_present(presets[0].get_config('vit'))
    other = presets[0].get_config('vit')  # a path of the user's own: no word on the presets
    other.dataset = f'folder:{tmp_path}/cifar10.tar.gz'
    with pytest.raises(FileNotFoundError, match=r'cifar10.tar.gz does not exist\.$'):
      data.check_present(other)


def test_record_presets_read_from_their_variables(tmp_path, monkeypatch):
  """The ImageNet presets read $VIT_JAX_I1K / $VIT_JAX_I21K; a missing folder's error says
  where the variable pointed and how to prepare it."""
  monkeypatch.setenv('VIT_JAX_I21K', str(tmp_path / 'i21k'))
  monkeypatch.delenv('VIT_JAX_I1K', raising=False)
  monkeypatch.setitem(records.PRESET_DIRS, 'VIT_JAX_I1K', str(tmp_path / 'default'))
  with reloaded_presets(monkeypatch, 'pretrain', 'finetune') as presets:
    i21k = presets[0].get_config('Ti_16,i21k')
    assert i21k.dataset == f'records:{tmp_path}/i21k'
    with pytest.raises(FileNotFoundError, match=re.escape(
        f'{tmp_path}/i21k does not exist (the presets read it from $VIT_JAX_I21K={tmp_path}/i21k;'
        f' prepare it with python -m vit_jax.data.prepare --src=<images> --out={tmp_path}/i21k, '
        'or set VIT_JAX_I21K to the prepared folder).')):
      data.check_present(i21k)
    i1k = presets[1].get_config('B_16,i1k')
    assert i1k.dataset == f'records:{tmp_path}/default'
    with pytest.raises(FileNotFoundError, match=re.escape(
        f'(the presets read it from $VIT_JAX_I1K, not set: {tmp_path}/default; prepare it')):
      data.check_present(i1k)
    other = presets[0].get_config('Ti_16,i21k')  # a path of the user's own: no word on presets
    other.dataset = f'records:{tmp_path}/mine'
    with pytest.raises(FileNotFoundError, match=r'/mine does not exist\.$'):
      data.check_present(other)
