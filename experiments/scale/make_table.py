"""Regenerates experiments/scale/plans.json and the table in experiments/scale/README.md.

  python experiments/scale/make_table.py [--models B_16,L_16,H_14,g_14] [--devices 64,256,1024]

Every point runs `python -m vit_jax.main --plan` in its own process (the simulated device count
is fixed when JAX starts): the ViT paper's pre-training recipe (configs/pretrain.py, i21k: Adam,
global batch 4096, 224 px, 21,843 classes), scanned layers with full rematerialisation, under
three meshes. Points already in plans.json are kept, so an interrupted run continues.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from vit_jax import files  # pylint: disable=wrong-import-position

STRATEGIES = {
    'data parallel': "(('data', -1),)",
    'FSDP': "(('fsdp', -1),)",
    'FSDP + TP4': "(('fsdp', -1), ('model', 4))",
}
CAPACITIES_GB = (16, 32, 80)
I21K_CLASSES = 21_843
BEGIN, END = '<!-- table:begin -->', '<!-- table:end -->'


def plan_point(model: str, devices: int, mesh: str) -> dict:
  """Runs the plan of one point in a subprocess; returns its JSON (without per-parameter rows
  beyond the first block's, to keep plans.json small)."""
  with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, 'plan.json')
    cmd = [sys.executable, '-m', 'vit_jax.main', f'--config=configs/pretrain.py:{model},i21k',
           '--plan', f'--plan_devices={devices}', f'--plan_num_classes={I21K_CLASSES}',
           f'--plan_json={out}', f'--config.mesh={mesh}', '--config.model.scan=True',
           '--config.model.remat_policy=full']
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode:
      return {'error': proc.stderr.strip().splitlines()[-1]}
    return files.read_json(out)


def table(points: dict) -> str:
  head = ('| model | params | devices | mesh | per-device batch | peak GB / device | fits '
          + ' / '.join(f'{c} GB' for c in CAPACITIES_GB) + ' | TFLOPs / step | compile s |')
  rows = [head, '| ' + ' | '.join(['---'] * 9) + ' |']
  for key, p in points.items():
    model, devices, strategy = key.split('|')
    if 'error' in p:
      rows.append(f'| ViT-{model} | | {devices} | {strategy} | | error: {p["error"]} | | | |')
      continue
    peak = p['memory']['peak'] / 1e9
    dp = p['devices'] // p['mesh'].get('model', 1)
    fits = ' / '.join('yes' if peak <= c else 'no' for c in CAPACITIES_GB)
    rows.append(f'| ViT-{model} | {p["num_params"] / 1e6:.0f} M | {devices} | {strategy} | '
                f'{p["batch_size"] // dp} | {peak:.2f} | {fits} | '
                f'{p["flops_per_step"] / 1e12:,.0f} | {p["compile_seconds"]:.0f} |')
  return '\n'.join(rows)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument('--models', default='B_16,L_16,H_14,g_14')
  parser.add_argument('--devices', default='64,256,1024')
  args = parser.parse_args()
  path = os.path.join(HERE, 'plans.json')
  points = files.read_json(path) if os.path.exists(path) else {}
  for model in args.models.split(','):
    for devices in map(int, args.devices.split(',')):
      for strategy, mesh in STRATEGIES.items():
        key = f'{model}|{devices}|{strategy}'
        if key not in points:
          print('planning', key, flush=True)
          points[key] = plan_point(model, devices, mesh)
          points[key].pop('params', None)
          files.write_json(path, points)
  readme = os.path.join(HERE, 'README.md')
  with open(readme) as f:
    text = f.read()
  before, rest = text.split(BEGIN)
  after = rest.split(END)[1]
  with files.atomic_open(readme) as f:
    f.write(f'{before}{BEGIN}\n{table(points)}\n{END}{after}')


if __name__ == '__main__':
  main()
