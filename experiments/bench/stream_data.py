"""ImageNet-like data for the streaming pipeline's benchmark, and its memory check (BENCHMARKS.md).

  python experiments/bench/stream_data.py --make=/tmp/inet [--images=192]
  taskset -c 0 python -m vit_jax.bench data --model=ViT-Ti_16 --batch=32 \
      --dataset=records:/tmp/inet/records --workers=0
  python experiments/bench/stream_data.py --memory=100

--make writes `--images` JPEGs of about 400 x 350 px (quality 90, sizes drawn around that, 10
classes) under <dir>/src and prepares them with the converter into <dir>/records, which
`python -m vit_jax.bench data --dataset=records:<dir>/records` then times through the training
loop's own input path (grain, `--workers` processes). --memory=N: the peak RSS of a short
training run (4 steps, ViT-Nano at 32 px) on a prepared dataset of N training images and on one
of 10 x N (the same 16 validation images). Prints one JSON object per measurement.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np
import PIL
from PIL import Image

from vit_jax.data import prepare


def write_images(root: str, count: int, seed: int = 0, split: str = 'train') -> None:
  rng = np.random.default_rng(seed)
  for i in range(count):
    h, w = rng.integers(300, 400), rng.integers(350, 450)
    yy, xx = np.mgrid[:h, :w] / max(h, w)
    base = np.stack([200 * yy, 150 * xx, 100 * (1 - yy * xx)], -1)
    pixels = base + 40 * np.sin(rng.uniform(5, 40) * xx + rng.uniform(5, 40) * yy)[..., None]
    pixels = np.clip(pixels + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    folder = os.path.join(root, split, f'n{i % 10:08d}')
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(pixels).save(os.path.join(folder, f'{i:05d}.JPEG'), quality=90)


def peak_rss_of_training(tmp: str, images: int) -> int:
  """Peak RSS in bytes of a 4-step training run (its own process) on `images` images."""
  src, out = os.path.join(tmp, f'src{images}'), os.path.join(tmp, f'records{images}')
  write_images(src, images)
  write_images(src, 16, seed=1, split='val')
  prepare.prepare(src, out, progress=False)
  code = ('import resource, runpy, sys; sys.argv = sys.argv[1:]\n'
          'try:\n  runpy.run_module("vit_jax.main", run_name="__main__")\n'
          'finally:\n  print("RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,'
          ' file=sys.stderr)')
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  proc = subprocess.run(
      [sys.executable, '-c', code, 'vit_jax.main', '--config=configs/quickstart.py',
       f'--workdir={os.path.join(tmp, f"run{images}")}', f'--config.dataset=records:{out}',
       '--config.image_size=32', '--config.batch_size=16', '--config.total_steps=4',
       '--config.log_every=2', '--config.eval_every=4', '--config.checkpoint_every=4',
       '--config.eval.batch_size=16', '--config.eval.fewshot_shots=()'],
      cwd=root, capture_output=True, text=True, check=True)
  return int(proc.stderr.split('RSS ')[-1].split()[0])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--make', metavar='DIR', help='write and prepare the ImageNet-like set')
  parser.add_argument('--images', type=int, default=192)
  parser.add_argument('--memory', type=int, help='N: peak RSS of training on N and 10 x N')
  args = parser.parse_args()
  if bool(args.make) == bool(args.memory):
    parser.error('give one of --make=<dir> and --memory=<N>.')
  if args.make:
    write_images(os.path.join(args.make, 'src'), args.images)
    write_images(os.path.join(args.make, 'src'), 16, seed=1, split='val')
    prepare.prepare(os.path.join(args.make, 'src'), os.path.join(args.make, 'records'),
                    progress=False)
    print(f'records:{os.path.join(args.make, "records")}')
    return
  env = {'python': platform.python_version(), 'pillow': PIL.__version__,
         'cpu': platform.processor() or platform.machine(), 'load': os.getloadavg()[0],
         'date': time.strftime('%Y-%m-%d')}
  with tempfile.TemporaryDirectory() as tmp:
    for n in (args.memory, 10 * args.memory):
      print(json.dumps({'stage': 'peak RSS of training', 'train_images': n,
                        'bytes': peak_rss_of_training(tmp, n), **env}))


if __name__ == '__main__':
  main()
