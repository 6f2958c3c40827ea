"""Regenerates experiments/scale/plans.json and the table in experiments/scale/README.md.

  python experiments/scale/make_table.py [--models B_16,L_16,H_14,g_14] [--devices 64,256,1024]
      [--compile_times]

Every point runs `python -m vit_jax.main --plan` in its own process (the simulated device count
is fixed when JAX starts): the ViT paper's pre-training recipe (configs/pretrain.py, i21k: Adam,
global batch 4096, 224 px, 21,843 classes) with bfloat16 compute (float32 parameters and
optimizer state), scanned layers with full rematerialisation, under three meshes. Points already
in plans.json are kept, so an interrupted run continues. --compile_times also compiles ViT-B/16
with 12 and 36 layers, scanned and unrolled (compile_times.json).

The `fsdp` axis is gcd(devices, hidden size) (gcd(devices / 4, hidden size) beside a `model`
axis of 4) and `data` takes the remaining devices: an `fsdp` size that divides no dimension of
a parameter leaves it whole on every device (`sharding.fsdp_replicated`), as 256 would the
attention kernels of ViT-g/14 (hidden size 1408 = 2^7 x 11).
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from vit_jax.models import registry  # pylint: disable=wrong-import-position
from vit_jax import files  # pylint: disable=wrong-import-position

STRATEGIES = ('data parallel', 'FSDP', 'FSDP + TP4')
TENSOR_PARALLEL = 4
CAPACITIES_GB = (16, 32, 80)
I21K_CLASSES = 21_843
BEGIN, END = '<!-- table:begin -->', '<!-- table:end -->'


def mesh_for(strategy: str, devices: int, hidden_size: int) -> tuple[tuple[str, int], ...]:
  """The mesh of one strategy on `devices` for a model of width `hidden_size`."""
  if strategy == 'data parallel':
    return (('data', devices),)
  model = TENSOR_PARALLEL if strategy == 'FSDP + TP4' else 1
  fsdp = math.gcd(devices // model, hidden_size)
  mesh = (('data', devices // model // fsdp), ('fsdp', fsdp))
  return mesh + ((('model', model),) if model > 1 else ())


def plan_point(model: str, devices: int, *flags: str) -> dict:
  """Runs the plan of one point (config overrides `flags`) in a subprocess; returns its JSON
  without the per-parameter rows, plus the 1-minute load average when it finished."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'plan.json')
    cmd = [sys.executable, '-m', 'vit_jax.main', f'--config=configs/pretrain.py:{model},i21k',
           '--plan', f'--plan_devices={devices}', f'--plan_num_classes={I21K_CLASSES}',
           f'--plan_json={out}', '--config.model.remat_policy=full',
           '--config.model.dtype=bfloat16', *flags]
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      return {'error': proc.stderr.strip().splitlines()[-1]}
    result = files.read_json(out)
    result.pop('params')
    return {**result, 'load_average': os.getloadavg()[0]}


def compile_times(path: str) -> str:
  """Compiles ViT-B/16's train step with 12 and 36 layers, scanned and unrolled, on one device
  (batch 8); keeps finished points in `path`; returns the markdown table."""
  points = files.read_json(path) if os.path.exists(path) else {}
  rows = ['| layers | layers are | compile s | load average |', '| --- | --- | --- | --- |']
  for scan in (True, False):
    for layers in (12, 36):
      key = f'{layers}|{"scan" if scan else "unrolled"}'
      if key not in points:
        print('compiling', key, flush=True)
        points[key] = plan_point('B_16', 1, "--config.mesh=(('data', 1),)",
                                 '--config.batch_size=8', f'--config.model.scan={scan}',
                                 f'--config.model.num_layers={layers}')
        files.write_json(path, points)
      p = points[key]
      rows.append(f'| {layers} | {key.split("|")[1]} | {p["compile_seconds"]:.1f} | '
                  f'{p["load_average"]:.1f} |')
  return '\n'.join(rows)


def replace_block(path: str, begin: str, end: str, body: str) -> None:
  """Rewrites the text between the markers `begin` and `end` of the file `path`."""
  with open(path) as f:
    text = f.read()
  before, rest = text.split(begin)
  after = rest.split(end)[1]
  with files.atomic_open(path) as f:
    f.write(f'{before}{begin}\n{body}\n{end}{after}')


def table(points: dict) -> str:
  head = ('| model | params | devices | mesh | per-device batch | peak GB / device | fits '
          + ' / '.join(f'{c} GB' for c in CAPACITIES_GB) + ' | TFLOPs / step | compile s |')
  rows = [head, '| ' + ' | '.join(['---'] * 9) + ' |']
  order = lambda item: (int(item[0].split('|')[1]), item[1].get('num_params', 0),
                        STRATEGIES.index(item[0].split('|')[2]))
  for key, p in sorted(points.items(), key=order):
    model, devices, strategy = key.split('|')
    if 'error' in p:
      rows.append(f'| ViT-{model} | | {devices} | {strategy} | | error: {p["error"]} | | | |')
      continue
    peak = p['memory']['peak'] / 1e9
    dp = p['devices'] // p['mesh'].get('model', 1)
    fits = ' / '.join('yes' if peak <= c else 'no' for c in CAPACITIES_GB)
    mesh = ' x '.join(f'{axis} {size}' for axis, size in p['mesh'].items() if size > 1)
    rows.append(f'| ViT-{model} | {p["num_params"] / 1e6:.0f} M | {devices} | {strategy}: '
                f'{mesh} | {p["batch_size"] // dp} | {peak:.2f} | {fits} | '
                f'{p["flops_per_step"] / 1e12:,.0f} | {p["compile_seconds"]:.0f} |')
  return '\n'.join(rows)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--models', default='B_16,L_16,H_14,g_14')
  parser.add_argument('--devices', default='64,256,1024')
  parser.add_argument('--compile_times', action='store_true',
                      help='Also measure compile time against depth (scan vs unrolled).')
  args = parser.parse_args()
  path = os.path.join(HERE, 'plans.json')
  points = files.read_json(path) if os.path.exists(path) else {}
  for devices in map(int, args.devices.split(',')):
    for model in args.models.split(','):
      hidden_size = registry.get_model_config(f'ViT-{model}').hidden_size
      for strategy in STRATEGIES:
        key = f'{model}|{devices}|{strategy}'
        if key not in points:
          print('planning', key, flush=True)
          mesh = mesh_for(strategy, devices, hidden_size)
          points[key] = plan_point(model, devices, f'--config.mesh={mesh}',
                                   '--config.model.scan=True')
          files.write_json(path, points)
  readme = os.path.join(HERE, 'README.md')
  replace_block(readme, BEGIN, END, table(points))
  if args.compile_times:
    replace_block(readme, '<!-- compile:begin -->', '<!-- compile:end -->',
                  compile_times(os.path.join(HERE, 'compile_times.json')))


if __name__ == '__main__':
  main()
