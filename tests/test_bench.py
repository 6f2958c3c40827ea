"""The benchmark harness at tiny size: output fields, FLOP counts, the PyTorch reference,
errors. No timing assertions: timings only have to be positive and add up."""
import contextlib
import io
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imagenet_tree import make_tree
from vit_jax import data, flops, train
from vit_jax.bench import __main__ as bench
from vit_jax.bench import jax_side, report, timing, torch_ref
from vit_jax.data import prepare
from vit_jax.models import get_model, resolved_fields

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

# Small, but matmul-dominated enough for the FLOP checks: 65 tokens of width 64.
SMALL = dict(hidden_size=64, mlp_dim=256, num_heads=2, num_layers=1)
TINY = ['--model=ViT-Ti_4', '--image-size=32', '--batch=4', '--num-classes=10',
        *(f'--set={k}={v}' for k, v in SMALL.items()), '--steps=2', '--warmup=1']


# A stand-in for a google-research/vision_transformer checkout: the bench loads
# vit_jax/models_vit.py of --vs-ref=<dir> without running the package's __init__ (the real one
# imports the LiT models' text dependencies), in a process where our vit_jax is not imported.
FAKE_ORIGINAL = {
    'vit_jax/__init__.py': "raise ImportError('the package __init__ must not run')\n",
    'vit_jax/models_vit.py': '''
import sys
import flax.linen as nn
import jax.numpy as jnp
assert 'vit_jax.bench' not in sys.modules

class VisionTransformer(nn.Module):  # a patch embedding and a linear head, same signature
  num_classes: int
  patches: object
  transformer: object
  hidden_size: int
  representation_size: object = None
  classifier: str = 'token'

  @nn.compact
  def __call__(self, inputs, *, train):
    x = nn.Conv(self.hidden_size, self.patches.size, strides=self.patches.size)(inputs)
    return nn.Dense(self.num_classes)(jnp.mean(x, axis=(1, 2)))
'''}


@pytest.fixture(scope='module')
def train_record(tmp_path_factory):
  """The JSON record of a tiny `train --vs=torch --vs-ref=<fake checkout>` run."""
  checkout = tmp_path_factory.mktemp('original')
  for name, text in FAKE_ORIGINAL.items():
    (checkout / name).parent.mkdir(exist_ok=True)
    (checkout / name).write_text(text)
  with contextlib.redirect_stdout(io.StringIO()) as out:
    bench.main(['train', *TINY, '--vs=torch', f'--vs-ref={checkout}', '--json'])
  return json.loads(out.getvalue())


def run(capsys, *argv) -> str:
  bench.main([*argv])
  return capsys.readouterr().out


def test_forward_flops_of_vit_b16():
  # ViT-B/16 at 224 px is 17.6 GMACs = 35.2 GFLOPs forward (the commonly quoted figure).
  fields = resolved_fields('ViT-B_16')
  assert flops.vit_forward_flops(fields, 224, 1000) == pytest.approx(35.2e9, rel=0.01)


def test_forward_flops_match_xla_cost_analysis():
  """XLA also counts LayerNorm, GELU, softmax and adds, so it is higher by a few %: here
  (width 64, 65 tokens) 2-8%; at ViT-B size the elementwise share is smaller still."""
  model = get_model('ViT-Ti_4', num_classes=10, **SMALL)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      variables, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)).compile()
  xla = compiled.cost_analysis()['flops']
  analytic = flops.vit_forward_flops(resolved_fields('ViT-Ti_4', **SMALL), 32, 10)
  assert 1.0 < xla / analytic < 1.08


def test_train_flops_match_xla_cost_analysis(train_record):
  """3x forward against XLA's count of the whole train step: the patch embedding needs no
  input gradient (less); augmentation, the elementwise backward and AdamW's update add more."""
  assert 1.0 < train_record['xla_flops_per_image'] / train_record['flops_per_image'] < 1.15


def test_train_json_against_torch(train_record):
  record = train_record
  ours, ref = record['ours'], record['reference']
  assert (record['mode'], record['model'], record['batch']) == ('train', 'ViT-Ti_4', 4)
  sides = ['ours', 'reference', 'original'] + ['reference_bf16'] * torch_ref.has_fast_bf16()
  assert set(sides) == set(report.SIDES) & set(record)
  for side in map(record.get, sides):
    step = side['step_time_s']
    assert step['n'] == 2 and 0 < step['min'] <= step['median'] <= step['max']
    assert side['images_per_sec'] == pytest.approx(4 / step['median'])
    assert side['cpu_time_s']['n'] == 2 and side['cpu_time_s']['min'] > 0
    assert side['mfu'] == pytest.approx(
        record['flops_per_image'] * side['images_per_sec'] / record['peak_flops'])
    if side is not ours:
      assert side['ratio'] == pytest.approx(ours['images_per_sec'] / side['images_per_sec'])
      assert side['ratio_best'] == pytest.approx(
          side['step_time_s']['min'] / ours['step_time_s']['min'])
      assert side['ratio_cpu_time'] == pytest.approx(
          side['cpu_time_s']['median'] / ours['cpu_time_s']['median'])
  # The reference has exactly our parameters (same shapes, eps, head).
  assert ref['num_params'] == record['num_params'] and ref['dtype'] == 'float32'
  assert ref['threads'] == record['cpu_threads']
  assert record['original']['implementation'].startswith('google-research/vision_transformer')
  assert record['flops_per_image'] == 3 * flops.vit_forward_flops(
      resolved_fields('ViT-Ti_4', **SMALL), 32, 10)
  assert record['memory_bytes'] > 0 and record['versions']['jax'] == jax.__version__
  header, _, *rows = report.markdown([record]).splitlines()
  assert len(rows) == len(sides)
  assert all(header.count('|') == row.count('|') == 16 for row in rows)
  assert (f'| {ref["ratio"]:.2f}x | {ref["ratio_best"]:.2f}x | '
          f'{ref["ratio_cpu_time"]:.2f}x |') in rows[1]


def test_subjects_run_in_separate_processes_alternately(train_record):
  """Every subject ran in a worker process of its own, none in the coordinating process,
  and all took the same number of timed steps."""
  sides = [s for s in report.SIDES if s in train_record]
  pids = [train_record[s]['pid'] for s in sides] + [train_record['coordinator_pid']]
  assert len(set(pids)) == len(pids) == len(sides) + 1 >= 4
  assert {train_record[s]['step_time_s']['n'] for s in sides} == {2}


@pytest.mark.parametrize('library', ['transformers', 'timm'])
def test_reference_model_matches_ours_on_the_same_weights(library):
  """The PyTorch reference models as the harness builds them (transformers' ViT on CPU, timm's
  on GPU) give the logits of our benchmarked model when given the same weights."""
  import torch  # pylint: disable=import-outside-toplevel
  from vit_jax.export import hf, timm  # pylint: disable=import-outside-toplevel
  config = jax_side.make_config('ViT-Ti_4', batch=2, image_size=32, dtype='float32',
                                overrides=SMALL)
  fields = jax_side.model_fields(config)
  torch.manual_seed(0)
  if library == 'transformers':
    theirs = torch_ref.hf_vit(fields, 32, 10).eval()
    call = lambda x: theirs(pixel_values=x).logits
  else:
    theirs = torch_ref.timm_vit(fields, 32, 10, torch).eval()
    call = theirs
  # Large random weights (non-zero head and biases) put pre-activations where the tanh and the
  # exact GELU differ, so every part of the model shows in the logits.
  for p in theirs.parameters():
    torch.nn.init.normal_(p, mean=0. if p.ndim > 1 else 0.5, std=0.3)
  if library == 'transformers':
    _, params = hf.import_state_dict(theirs.state_dict(), theirs.config)
  else:
    _, params = timm.import_state_dict(theirs.state_dict(), num_heads=fields['num_heads'],
                                       gelu_approximate=True)
  images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  with torch.no_grad():
    expected = call(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()
  assert np.std(expected) > 0.1
  ours = train.build_model(config, 10, channels=3).apply({'params': params}, images, train=False)
  np.testing.assert_allclose(np.asarray(ours), expected, rtol=1e-4, atol=2e-4)


def test_fast_bf16_detection(tmp_path):
  for flags, expected in (('fpu avx512f amx_bf16 amx_tile', True), ('fpu avx512_bf16', True),
                          ('fpu avx2 avx512f', False)):
    (tmp_path / 'cpuinfo').write_text(f'processor\t: 0\nflags\t\t: {flags}\n')
    assert torch_ref.has_fast_bf16(str(tmp_path / 'cpuinfo')) is expected
  assert torch_ref.has_fast_bf16(str(tmp_path / 'missing')) is False


def test_infer_table_bfloat16(capsys):
  out = run(capsys, 'infer', *TINY, '--dtype=bfloat16')
  assert out.startswith('infer ViT-Ti_4 32px batch 4 bfloat16')
  assert 'ours' in out and 'img/s' in out and 'reference' not in out


def _xla_forward(name: str, image_size: int = 32, **fields) -> float:
  """XLA's FLOPs of one image's forward pass through `name` (10 classes), compiled here."""
  model = get_model(name, num_classes=10, **fields)
  shape = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  compiled = jax.jit(lambda v, x: model.apply(v, x, train=False)).lower(
      jax.eval_shape(model.init, jax.random.PRNGKey(0), shape), shape).compile()
  return compiled.cost_analysis()['flops']


@pytest.mark.parametrize('mode, name, fields', [
    ('train', 'BiT-R14x0.25-small', {}),
    # Scanned: the compiled program counts its one block once; the MFU's count has all three.
    ('infer', 'R8+ViT-Nano_4-small', dict(num_layers=3, scan=True))])
def test_resnets_and_hybrids_are_timed_with_xla_flop_counts(capsys, mode, name, fields):
  record = json.loads(run(capsys, mode, f'--model={name}', '--image-size=32', '--batch=4',
                          '--num-classes=10', '--steps=2', '--warmup=1', '--json',
                          *(f'--set={k}={v}' for k, v in fields.items())))
  forward = _xla_forward(name, **dict(fields, scan=None))
  assert record['flops_counted'] == 'XLA, unscanned'
  assert record['flops_per_image'] == pytest.approx(forward * (3 if mode == 'train' else 1),
                                                    rel=1e-6)
  ours = record['ours']
  assert ours['mfu'] == pytest.approx(
      record['flops_per_image'] * ours['images_per_sec'] / record['peak_flops'], rel=1e-9)
  if fields.get('scan'):  # the compiled program's count: about that of one block
    assert record['xla_flops_per_image'] == pytest.approx(
        _xla_forward(name, **dict(fields, num_layers=1, scan=None)), rel=0.02)
    assert record['xla_flops_per_image'] < 0.98 * record['flops_per_image']


def test_data_json(capsys):
  record = json.loads(run(capsys, 'data', *TINY, '--json'))
  assert record['dataset'] == 'synthetic'
  for stage in ('host', 'augment', 'train'):
    assert record[stage]['images_per_sec'] > 0
  assert record['ratio'] == pytest.approx(
      record['host']['images_per_sec'] / record['train']['images_per_sec'])


def test_data_mode_on_prepared_records_times_the_stream(capsys, tmp_path):
  """A records: dataset is read as a run reads it: streamed by grain workers, augmented on the
  host (no device 'augment' stage), every batch of the configured shape."""
  make_tree(tmp_path / 'src', classes=2, per_class={'train': 8, 'val': 2})
  prepare.prepare(str(tmp_path / 'src'), str(tmp_path / 'out'), workers=1, progress=False)
  record = json.loads(run(capsys, 'data', *TINY, f'--dataset=records:{tmp_path / "out"}',
                          '--workers=1', '--json'))
  assert record['host_side'] == 'stream, 1 worker processes' and 'augment' not in record
  assert record['host']['images_per_sec'] > 0 and record['train']['images_per_sec'] > 0
  row = report.markdown([record]).splitlines()[-1].split(' | ')
  host = f'{record["host"]["images_per_sec"]:,.0f}'
  assert row[3:7] == ['out', 'stream, 1 worker processes', host, '-']
  config = jax_side.make_config('ViT-Ti_4', batch=4, image_size=32, dtype='float32',
                                overrides={})
  config.dataset = f'records:{tmp_path / "out"}'
  images, labels = next(data.train_iterator(data.open_split(config, 'train'), config))
  assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (4,)


@pytest.mark.parametrize('argv, message', [
    (['--model=ViT-Q_4'], 'Unknown model name'),
    (['--model=ViT-Ti_4', '--image-size=18'], 'patch_size=4 does not divide'),
    (['--model=ViT-Ti_4', '--set=depth=3'], "Unknown model field(s) ['depth']"),
    (['--model=ViT-Ti_4', '--set=num_heads=5'], 'num_heads=5 must divide'),
    (['--model=ViT-Ti_4', '--batch=3', '--set=classifier=gap', '--vs=torch'],
     'no PyTorch reference'),
    (['--model=ViT-Ti_4', '--vs-ref=/nonexistent'], 'is not a google-research/vision_transformer'),
])
def test_bad_input_names_the_problem(argv, message):
  with pytest.raises(SystemExit) as e:
    bench.main(['train', '--image-size=16', '--set=num_layers=1', *argv])
  assert message in str(e.value)


@pytest.mark.parametrize('flag, message', [
    ('--vs-ref=.', 'no reference for --model=BiT-R14x0.25-small, a resnet model'),
    ('--vs=torch', "--vs=torch has no PyTorch reference for {'family': 'resnet'}")])
def test_the_references_are_vits_only(flag, message):
  with pytest.raises(SystemExit, match=re.escape(message)):
    bench.main(['train', '--image-size=16', '--model=BiT-R14x0.25-small', flag])


@pytest.mark.parametrize('argv,message', [
    (['train', '--batch=0'], '--batch=0 must be positive'),
    (['train', '--set=num_layers'], 'must be <field>=<value>'),
    (['data', '--vs=torch'], 'the data mode has no reference'),
    (['data', '--vs-ref=.'], 'the data mode has no reference'),
    (['train', '--dataset=digits'], "--dataset and --workers choose the data mode's input"),
    (['infer', '--workers=2'], "--dataset and --workers choose the data mode's input"),
    (['infer', '--steps=ten'], "argument --steps: invalid int value: 'ten'"),
    (['fly'], "argument mode: invalid choice: 'fly'"),
])
def test_bad_flag_values_end_in_one_error_line(capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    bench.main([*argv, '--model=ViT-Ti_4'])
  first, *rest = str(e.value).splitlines()
  assert first.startswith('Error: ') and message in first
  assert rest == ['Pass --help for the options.'] and not capsys.readouterr().err  # no usage


def test_pipeline_stages_are_timed_in_blocks_and_summarized():
  calls = []
  steps = {'a': lambda: calls.append('a'), 'b': lambda: calls.append('b')}
  wall, cpu = timing.time_in_blocks(steps, num_steps=3, warmup=2)
  assert calls == ['a'] * 5 + ['b'] * 5
  assert {k: v.shape for k, v in wall.items()} == {k: v.shape for k, v in cpu.items()} == {
      'a': (3,), 'b': (3,)}
  s = timing.summarize(np.array([1., 2., 3., 4., 10.]))
  assert (s['median'], s['p25'], s['p75'], s['min'], s['max'], s['n']) == (3, 2, 4, 1, 10, 5)
  assert s['iqr_over_median'] == pytest.approx(2 / 3)


def test_peak_flops_table():
  class Device:  # what datasheet_peak reads of a jax.Device
    def __init__(self, kind):
      self.device_kind = kind
  assert flops.datasheet_peak(Device('NVIDIA H100 80GB HBM3'), 'bfloat16')[0] == 989e12
  assert flops.datasheet_peak(Device('NVIDIA H100 PCIe'), 'bfloat16')[0] == 756e12
  assert flops.datasheet_peak(Device('NVIDIA H200'), 'float32')[0] == 494.7e12
  assert flops.datasheet_peak(Device('cpu'), 'float32')[0] is None


def test_cpu_matmuls_run_without_ynnpack_fusions():
  """Our commands (and the test suite, tests/conftest.py) turn YNNPACK fusions off
  (`vit_jax.cli.set_cpu_flag`): XLA's CPU backend compiles a dense layer to a plain dot, not a
  `ynn_fusion`."""
  x = jnp.ones((64, 64))
  hlo = jax.jit(lambda a: jax.nn.gelu(a @ a)).lower(x).compile().as_text()
  assert 'ynn_fusion' not in hlo and ' dot(' in hlo
