"""Benchmark command: time our real train step, forward pass or input pipeline.

  python -m vit_jax.bench train|infer|data --model=<name> --batch=<n> --image-size=<px>
      [--dtype=bfloat16] [--vs=torch] [--steps=10] [--json] [--set=<field>=<value> ...]

Warm-up calls (compilation) are not timed; then every subject runs once per round, in turn, for
--steps rounds, so machine load hits ours and the reference alike. Prints a table, or with
--json one JSON object per measurement. Results and the commands used: BENCHMARKS.md.
"""
import os
import sys

if any(a.startswith('--vs') for a in sys.argv):
  # JAX takes 75% of a GPU's memory at start by default; leave room for the PyTorch reference.
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.45')

import argparse  # pylint: disable=wrong-import-position
import ast  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position

import jax  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from vit_jax import cli, data, flops  # pylint: disable=wrong-import-position
from vit_jax.bench import (  # pylint: disable=wrong-import-position
    jax_side, report, timing, torch_ref)

cli.set_cpu_flag()  # before JAX starts a backend

MODES = ('train', 'infer', 'data')
DTYPES = ('float32', 'bfloat16')


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog='python -m vit_jax.bench', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('mode', choices=MODES)
  parser.add_argument('--model', required=True, help='registry name, e.g. ViT-B/16, ViT-Ti_4')
  parser.add_argument('--batch', type=int, default=32, help='global batch size')
  parser.add_argument('--image-size', type=int, default=224, help='image side in pixels')
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--dtype', choices=DTYPES, default='float32', help='compute dtype')
  parser.add_argument('--vs', choices=('torch',), help='also time the PyTorch reference')
  parser.add_argument('--steps', type=int, default=10, help='timed steps (rounds)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls before timing')
  parser.add_argument('--dataset', help="data mode: a config.dataset source (e.g. "
                      "'folder:../shared/datasets/cifar10.tar.gz'); default: synthetic images")
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='model override, e.g. --set=scan=True --set=remat_policy=dots')
  parser.add_argument('--json', action='store_true', help='one JSON object per measurement')
  args = parser.parse_args(argv)
  for flag in ('batch', 'image_size', 'num_classes'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")}={getattr(args, flag)} must be positive.')
  if args.mode == 'data' and args.vs:
    parser.error('--vs compares train or infer steps; the data mode has no reference.')
  args.overrides = {}
  for item in args.set:
    key, sep, value = item.partition('=')
    if not sep:
      parser.error(f'--set={item!r} must be <field>=<value>.')
    try:
      args.overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      args.overrides[key] = value  # a bare string such as remat_policy=dots
  return args


def _split(args, config) -> data.Split:
  """The data mode's training split: the --dataset's, or 16 batches of synthetic images."""
  if args.dataset:
    return data.load_split(args.dataset, 'train')
  n = 16 * config.batch_size
  return data.Split(jax_side.synthetic_images(n, config.image_size),
                    np.arange(n, dtype=np.int32) % args.num_classes,
                    tuple(map(str, range(args.num_classes))))


def measure(args: argparse.Namespace) -> dict:
  """Builds, times and describes one measurement (see BENCHMARKS.md for the fields)."""
  config = jax_side.make_config(args.model, batch=args.batch, image_size=args.image_size,
                                dtype=args.dtype, overrides=args.overrides)
  fields = jax_side.model_fields(config)
  if fields['family'] != 'vit':
    raise ValueError(f'--model={args.model} is a {fields["family"]} model; the benchmark '
                     'covers plain ViTs (ViT-<size>_<patch>).')
  record = {'mode': args.mode, 'model': config.model.name, 'image_size': args.image_size,
            'batch': args.batch, 'dtype': args.dtype, 'num_classes': args.num_classes,
            'model_fields': {k: v for k, v in fields.items() if v is not None},
            **report.environment()}
  if args.vs:
    torch_ref.check_fields(fields)  # before anything compiles
  if args.mode == 'data':
    steps = jax_side.pipeline_steps(config, _split(args, config))
    steps['train'] = jax_side.train_bench(config, args.num_classes).step
    times, cpu = timing.time_interleaved(steps, args.steps, args.warmup)
    for stage, seconds in times.items():
      record[stage] = report.throughput(seconds, cpu[stage], args.batch)
    record['dataset'] = args.dataset or 'synthetic'
    record['ratio'] = record['host']['images_per_sec'] / record['train']['images_per_sec']
    return record

  build = jax_side.train_bench if args.mode == 'train' else jax_side.infer_bench
  ours = build(config, args.num_classes)
  steps = {'ours': ours.step}
  if args.vs:
    steps['reference'], reference = torch_ref.reference_steps(
        args.mode, fields, config, args.num_classes, gpu=record['device'] == 'gpu')
  per_image = flops.vit_forward_flops(fields, args.image_size, args.num_classes)
  if args.mode == 'train':
    per_image *= flops.TRAIN_FLOPS_PER_FORWARD
  peak, source = flops.datasheet_peak(jax.devices()[0], args.dtype)
  if peak is None:  # CPU: the matmul ceiling, timed in the same rounds as the model
    steps['matmul'], matmul_flops = flops.matmul_step(args.dtype)
  times, cpu = timing.time_interleaved(steps, args.steps, args.warmup)
  if peak is None:
    peak = matmul_flops / np.median(times['matmul'])
    source = (f'measured: {args.dtype} 2048x2048 matmul in the same rounds '
              f'({record["cpu_threads"]} threads)')
  total_peak = peak * record['num_devices']
  record.update(flops_per_image=per_image, xla_flops_per_image=ours.xla_flops / args.batch,
                peak_flops=peak, peak_flops_source=source, num_params=ours.num_params,
                memory_bytes=jax_side.peak_memory(ours.memory_bytes),
                memory_source=ours.memory_source,
                ours=report.throughput(times['ours'], cpu['ours'], args.batch, per_image,
                                       total_peak))
  if args.vs:
    reference.update(report.throughput(times['reference'], cpu['reference'], args.batch,
                                       per_image, total_peak))
    record['reference'] = reference
    record['ratio'] = record['ours']['images_per_sec'] / reference['images_per_sec']
    # Each side's fastest step: on a loaded machine the closest to its unloaded speed.
    record['ratio_best'] = reference['step_time_s']['min'] / record['ours']['step_time_s']['min']
    # CPU seconds per step, theirs / ours: the measure to read on a busy machine with one core.
    record['ratio_cpu_time'] = (reference['cpu_time_s']['median']
                                / record['ours']['cpu_time_s']['median'])
  record['load_average_end'] = os.getloadavg()
  return record


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  try:
    record = measure(args)
  except (ValueError, ImportError, RuntimeError, FileNotFoundError) as e:
    sys.exit(f'Error: {e}')
  print(json.dumps(record) if args.json else report.table(record), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
