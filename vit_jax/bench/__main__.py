"""Benchmark command: time our real train step, forward pass or input pipeline.

  python -m vit_jax.bench train|infer|data --model=<name> --batch=<n> --image-size=<px>
      [--dtype=bfloat16] [--vs=torch] [--vs-ref=<dir>] [--steps=10] [--json]
      [--set=<field>=<value> ...]

train / infer: every subject (ours; with --vs=torch the PyTorch reference at our dtype and, on
CPUs with hardware bfloat16, PyTorch with bfloat16 autocast too; with --vs-ref the original
google-research/vision_transformer code of that checkout) runs in a worker process of its own.
Warm-up calls (compilation) are not timed; then the subjects take turns, one step each, for
--steps rounds, each waiting until the previous one's process is idle, so machine load hits
all alike and none spins on the cores of the next. data: the pipeline's stages in this
process, one block of steps after the other (a streamed --dataset runs through the loop's own
grain input path). Prints a table, or with --json one JSON object per measurement. Results and the
commands used: BENCHMARKS.md.
"""
import os
import sys

if any(a.startswith('--vs') for a in sys.argv):
  # JAX takes 75% of a GPU's memory at start by default; leave room for the PyTorch reference.
  os.environ.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', '0.45')

import argparse  # pylint: disable=wrong-import-position
import ast  # pylint: disable=wrong-import-position
import functools  # pylint: disable=wrong-import-position
import json  # pylint: disable=wrong-import-position

import numpy as np  # pylint: disable=wrong-import-position

from vit_jax import cli, data, flops  # pylint: disable=wrong-import-position
from vit_jax.bench import (  # pylint: disable=wrong-import-position
    jax_side, original_ref, report, timing, torch_ref, worker)

cli.set_cpu_flag()  # before JAX starts a backend; the workers inherit XLA_FLAGS

MODES = ('train', 'infer', 'data')
DTYPES = ('float32', 'bfloat16')


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = cli.ArgumentParser(prog='python -m vit_jax.bench', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('mode', choices=MODES)
  parser.add_argument('--model', required=True, help='registry name, e.g. ViT-B/16, ViT-Ti_4')
  parser.add_argument('--batch', type=int, default=32, help='global batch size')
  parser.add_argument('--image-size', type=int, default=224, help='image side in pixels')
  parser.add_argument('--num-classes', type=int, default=1000)
  parser.add_argument('--dtype', choices=DTYPES, default='float32', help='compute dtype')
  parser.add_argument('--vs', choices=('torch',), help='also time the PyTorch reference')
  parser.add_argument('--vs-ref', metavar='DIR', help='also time the original code of this '
                      'google-research/vision_transformer checkout (float32)')
  parser.add_argument('--steps', type=int, default=10, help='timed steps (rounds)')
  parser.add_argument('--warmup', type=int, default=2, help='untimed calls before timing')
  parser.add_argument('--dataset', help="data mode: a config.dataset source, in memory (e.g. "
                      "'folder:datasets/cifar10.tar.gz') or streamed ('records:<prepared "
                      "directory>', 'tfds:<name>'); default: synthetic images")
  parser.add_argument('--workers', type=int, default=0, help='data mode, streamed sources: '
                      'grain worker processes (config.data.workers; 0: threads)')
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='model override, e.g. --set=scan=True --set=remat_policy=dots')
  parser.add_argument('--json', action='store_true', help='one JSON object per measurement')
  args = parser.parse_args(argv)
  if args.workers < 0:
    parser.error(f'--workers={args.workers} must be 0 or more.')
  for flag in ('batch', 'image_size', 'num_classes'):
    if getattr(args, flag) < 1:
      parser.error(f'--{flag.replace("_", "-")}={getattr(args, flag)} must be positive.')
  if args.mode == 'data' and (args.vs or args.vs_ref):
    parser.error('--vs compares train or infer steps; the data mode has no reference.')
  if args.mode != 'data' and (args.dataset or args.workers):
    parser.error(f'--dataset and --workers choose the data mode\'s input; the {args.mode} mode '
                 'times the step on synthetic images.')
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


def _split(args, config) -> data.Split | data.RecordSplit:
  """The data mode's training split, opened as a run opens it (data.kind 'auto': record
  sources stream): the --dataset's, or 16 batches of synthetic images."""
  if args.dataset:
    config.dataset, config.data.workers = args.dataset, args.workers
    return data.open_split(config, config.data.train_split)
  n = 16 * config.batch_size
  return data.Split(jax_side.synthetic_images(n, config.image_size),
                    np.arange(n, dtype=np.int32) % args.num_classes,
                    tuple(map(str, range(args.num_classes))))


def _spec(args: argparse.Namespace, **side) -> dict:
  """A benchmark worker's spec: the measurement's shape and `side`'s own fields."""
  return {'mode': args.mode, 'image_size': args.image_size, 'batch': args.batch,
          'num_classes': args.num_classes, 'warmup': args.warmup, **side}


def measure(args: argparse.Namespace) -> dict:
  """Builds, times and describes one measurement (see BENCHMARKS.md for the fields)."""
  config = jax_side.make_config(args.model, batch=args.batch, image_size=args.image_size,
                                dtype=args.dtype, overrides=args.overrides)
  fields = jax_side.model_fields(config)
  record = {'mode': args.mode, 'model': config.model.name, 'image_size': args.image_size,
            'batch': args.batch, 'dtype': args.dtype, 'num_classes': args.num_classes,
            'model_fields': {k: v for k, v in fields.items() if v is not None}}
  jax_side.build_model(config, args.num_classes)  # its checks, before any worker starts
  if args.vs:
    torch_ref.check_fields(fields)
  if args.vs_ref:
    if fields['family'] != 'vit':
      raise ValueError(f'--vs-ref has no reference for --model={args.model}, a '
                       f'{fields["family"]} model: it times the original code\'s ViT.')
    original_ref.check_checkout(args.vs_ref)
  if args.mode == 'data':
    record.update(report.environment())
    split = _split(args, config)
    record['host_side'] = (f'stream, {args.workers} worker processes' if split.host_augmented
                           else 'in memory, 1 thread')
    train_step = jax_side.train_bench(config, args.num_classes).step  # compiled first: the
    # pipeline's workers start with its iterator and are timed before they can run far ahead
    steps = {**jax_side.pipeline_steps(config, split), 'train': train_step}
    times, cpu = timing.time_in_blocks(steps, args.steps, args.warmup)
    for stage, seconds in times.items():
      record[stage] = report.throughput(seconds, cpu[stage], args.batch)
    # A pipeline delivers in bursts (batches its workers finished together come at once): its
    # rate is the whole block's, images over wall time, not the median batch's.
    record['host']['images_per_sec'] = args.batch * len(times['host']) / times['host'].sum()
    record['dataset'] = args.dataset or 'synthetic'
    record['ratio'] = record['host']['images_per_sec'] / record['train']['images_per_sec']
    return record

  workers = {}
  try:
    workers['ours'] = worker.Worker(_spec(args, side='ours', model=args.model, dtype=args.dtype,
                                          overrides=args.overrides))
    ours = workers['ours'].info
    if args.vs:
      gpu = ours['device'] == 'gpu'
      optimizer = {k: config.optim[k] for k in ('lr', 'b1', 'b2', 'weight_decay',
                                                 'grad_clip_norm')}
      reference = functools.partial(_spec, args, side='torch', fields=fields, optim=optimizer,
                                    gpu=gpu)
      workers['reference'] = worker.Worker(reference(bf16=args.dtype == 'bfloat16'))
      if not gpu and args.dtype == 'float32' and torch_ref.has_fast_bf16():
        workers['reference_bf16'] = worker.Worker(reference(bf16=True))
    if args.vs_ref:
      workers['original'] = worker.Worker(_spec(args, side='original', fields=fields,
                                                ref_dir=args.vs_ref))
    calls = {name: functools.partial(w.call, 'step') for name, w in workers.items()}
    if ours['peak_flops'] is None:  # CPU: the matmul ceiling, in our worker, same rounds
      calls['matmul'] = functools.partial(workers['ours'].call, 'matmul')
    wall, cpu = timing.alternate(
        calls, args.steps, lambda name: workers.get(name, workers['ours']).settle())
    last = {name: w.close() for name, w in workers.items()}
  finally:
    for w in workers.values():
      w.kill()

  if fields['family'] == 'vit':
    per_image, counted = flops.vit_forward_flops(fields, args.image_size,
                                                 args.num_classes), 'analytic'
  else:
    per_image, counted = ours['forward_flops_per_image'], 'XLA, unscanned'
  if args.mode == 'train':
    per_image *= flops.TRAIN_FLOPS_PER_FORWARD
  peak, source = ours['peak_flops'], ours['peak_flops_source']
  if peak is None:
    peak = ours['matmul_flops'] / np.median(wall['matmul'])
    source += f' ({ours["cpu_threads"]} threads)'
  total_peak = peak * ours['num_devices']
  record.update({k: ours[k] for k in report.ENVIRONMENT_FIELDS})
  record.update(flops_per_image=per_image, flops_counted=counted,
                xla_flops_per_image=ours['xla_flops_per_image'],
                peak_flops=peak, peak_flops_source=source, num_params=ours['num_params'],
                memory_bytes=last['ours']['memory_bytes'], memory_source=ours['memory_source'],
                coordinator_pid=os.getpid())
  for name, w in workers.items():
    described = {k: v for k, v in w.info.items() if name != 'ours' and k != 'pid'}
    record[name] = {**described, 'pid': last[name]['pid'], **report.throughput(
        wall[name], cpu[name], args.batch, per_image, total_peak)}
  for name in workers.keys() - {'ours'}:
    record[name].update(report.ratios(record['ours'], record[name]))
  record['load_average_end'] = os.getloadavg()
  return record


def main(argv: list[str]) -> None:
  args = parse_args(argv)
  try:
    record = measure(args)
  except (ValueError, ImportError, RuntimeError, FileNotFoundError) as e:  # WorkerError too
    sys.exit(f'Error: {e}')
  print(json.dumps(record) if args.json else report.table(record), flush=True)


if __name__ == '__main__':
  with cli.ends_on_ctrl_c('Stopped by Ctrl-C.'):
    main(sys.argv[1:])
