"""Throughput of the streaming pipeline's host side on ImageNet-like JPEGs (BENCHMARKS.md).

  taskset -c 0 python experiments/bench/stream_data.py [--images=256] [--workers=0,1,2]

Writes `--images` JPEGs of about 400 x 350 px (quality 90, sizes drawn around that), prepares
them with the converter, then times, back to back (no training step in between, so workers
cannot hide behind it):
- 'transform': decode + Inception random-resized crop (area 8-100%) + flip + resize to 224 of
  every image, in this process (one core under taskset -c 0);
- 'stream, N workers': batches of 32 from `StreamIterator` with N grain worker processes
  (N = 0: threads of this process), after a warm-up batch that starts the workers.
With --memory=N: the peak RSS of a short training run (4 steps, ViT-Nano at 32 px) on a
prepared dataset of N training images and on one of 10 x N (the same 16 validation images).
Prints one JSON object per measurement.
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

from vit_jax.data import pipeline, prepare, records


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
  parser.add_argument('--images', type=int, default=256)
  parser.add_argument('--workers', default='0,1,2')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--image-size', type=int, default=224)
  parser.add_argument('--memory', type=int, help='N: peak RSS of training on N and 10 x N')
  args = parser.parse_args()
  env = {'python': platform.python_version(), 'pillow': PIL.__version__,
         'cpu': platform.processor() or platform.machine(), 'affinity': sorted(os.sched_getaffinity(0)),
         'load': os.getloadavg()[0], 'date': time.strftime('%Y-%m-%d')}
  with tempfile.TemporaryDirectory() as tmp:
    if args.memory:
      for n in (args.memory, 10 * args.memory):
        print(json.dumps({'stage': 'peak RSS of training', 'train_images': n,
                          'bytes': peak_rss_of_training(tmp, n), **env}))
      return
    write_images(os.path.join(tmp, 'src'), args.images)
    prepare.prepare(os.path.join(tmp, 'src'), os.path.join(tmp, 'out'), workers=1,
                    progress=False)
    source = records.RecordSource(os.path.join(tmp, 'out'), 'train')
    blobs = [source[i][0] for i in range(len(source))]
    transform = pipeline.TrainTransform(args.image_size)
    rng = np.random.default_rng(0)
    start, cpu = time.perf_counter(), time.process_time()
    for data in blobs:
      transform(data, rng)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print(json.dumps({'stage': 'transform', 'images_per_sec': len(blobs) / wall,
                      'images_per_cpu_sec': len(blobs) / cpu, **env}))
    split = pipeline.RecordSplit(source)
    batches = len(blobs) // args.batch
    for workers in map(int, args.workers.split(',')):
      it = pipeline.StreamIterator(split, args.batch, 0, transform=transform, workers=workers)
      next(it)  # starts the workers
      start = time.perf_counter()
      for _ in range(batches):
        next(it)
      wall = time.perf_counter() - start
      it.close()
      print(json.dumps({'stage': f'stream, {workers} workers',
                        'images_per_sec': batches * args.batch / wall, **env}))


if __name__ == '__main__':
  main()
