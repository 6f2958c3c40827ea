"""Measurement records (one dict per measurement, JSON-serialisable) and the readable table."""
import datetime
import os
import platform
import sys

import jax
import numpy as np

from vit_jax.bench import timing


def _cpu_model() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      return next((line.split(':', 1)[1].strip() for line in f if line.startswith('model name')),
                  platform.processor())
  except OSError:
    return platform.processor()


ENVIRONMENT_FIELDS = ('device', 'device_kind', 'num_devices', 'cpu_model', 'cpu_threads',
                      'versions', 'xla_flags', 'date', 'load_average')
# The subjects of a train / infer measurement, in table order, and their labels.
SIDES = {'ours': 'ours', 'reference': 'PyTorch', 'reference_bf16': 'PyTorch bf16',
         'original': 'original'}


def environment() -> dict:
  """Device, CPU, thread count, software versions, XLA flags, date and machine load."""
  device = jax.devices()[0]
  versions = {'python': platform.python_version(), 'jax': jax.__version__,
              'jaxlib': sys.modules['jaxlib'].__version__, 'numpy': np.__version__}
  for name in ('flax', 'optax'):
    versions[name] = sys.modules[name].__version__
  return {'device': device.platform, 'device_kind': device.device_kind,
          'num_devices': jax.device_count(), 'cpu_model': _cpu_model(),
          'cpu_threads': len(os.sched_getaffinity(0)),
          'versions': versions, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
          'date': datetime.datetime.now().isoformat(timespec='seconds'),
          'load_average': os.getloadavg()}


def throughput(seconds: np.ndarray, cpu_seconds: np.ndarray, batch: int,
               flops_per_image: float | None = None, peak: float | None = None) -> dict:
  """Step-time and CPU-time summaries, images/s at the median step time and, given the FLOPs
  per image and the peak FLOP/s of all devices together, the model FLOP utilisation."""
  step = timing.summarize(seconds)
  result = {'step_time_s': step, 'cpu_time_s': timing.summarize(cpu_seconds),
            'images_per_sec': batch / step['median']}
  if flops_per_image is not None and peak:
    result['mfu'] = flops_per_image * result['images_per_sec'] / peak
  return result


def ratios(ours: dict, theirs: dict) -> dict:
  """Ours against another subject (> 1: we are faster): images/s at the median step, at each
  side's fastest step, and CPU seconds per step (theirs / ours)."""
  return {'ratio': ours['images_per_sec'] / theirs['images_per_sec'],
          'ratio_best': theirs['step_time_s']['min'] / ours['step_time_s']['min'],
          'ratio_cpu_time': theirs['cpu_time_s']['median'] / ours['cpu_time_s']['median']}


def _gb(n: int | None) -> str:
  return 'n/a' if n is None else f'{n / 2**30:.2f} GiB'


def _line(label: str, r: dict) -> str:
  s = r['step_time_s']
  text = (f'  {label:<13} {s["median"] * 1e3:9.1f} ms/step (IQR {s["iqr_over_median"]:.0%}, '
          f'min {s["min"] * 1e3:.1f}, n={s["n"]}, CPU {r["cpu_time_s"]["median"]:.2f} s)  '
          f'{r["images_per_sec"]:9.1f} img/s')
  if 'mfu' in r:
    text += f'  MFU {r["mfu"]:.1%}'
  return text


def table(m: dict) -> str:
  """A few readable lines for one measurement."""
  head = (f'{m["mode"]} {m["model"]} {m["image_size"]}px batch {m["batch"]} {m["dtype"]} on '
          f'{m["device_kind"]} x{m["num_devices"]} ({m["cpu_threads"]} CPU threads, load '
          f'{" ".join(f"{v:.2f}" for v in m["load_average"])})')
  lines = [head]
  if m['mode'] == 'data':
    for stage in ('host', 'augment', 'train'):
      if stage in m:  # a streamed split is augmented on the host: no 'augment' stage
        lines.append(_line(stage, m[stage]))
    lines.append(f'  host pipeline ({m["host_side"]}) / train step consumption: '
                 f'{m["ratio"]:.2f}x')
    return '\n'.join(lines)
  lines.append(_line('ours', m['ours']) + f'  memory {_gb(m["memory_bytes"])} '
               f'({m["memory_source"]})')
  lines.append(f'  FLOPs/image {m["flops_per_image"] / 1e9:.3f} G {m["flops_counted"]}, '
               f'{m["xla_flops_per_image"] / 1e9:.3f} G XLA; peak {m["peak_flops"] / 1e12:.2f} '
               f'TFLOP/s per device ({m["peak_flops_source"]})')
  for side, label in SIDES.items():
    if side in m and side != 'ours':
      r = m[side]
      lines.append(_line(label, r) + f'  [{r["implementation"]}, {r["dtype"]}'
                   + (f', {r["threads"]} threads]' if 'threads' in r else ']'))
      lines.append(f'    ours / {label}: {r["ratio"]:.2f}x images/s at the median step, '
                   f'{r["ratio_best"]:.2f}x at the fastest, {r["ratio_cpu_time"]:.2f}x in CPU '
                   'time')
  return '\n'.join(lines)


def _ms(r: dict) -> str:
  return f'{r["step_time_s"]["median"] * 1e3:.0f} ({r["step_time_s"]["iqr_over_median"]:.0%})'


def markdown(records: list[dict]) -> str:
  """BENCHMARKS.md tables of JSON records: one row per subject of each model measurement
  (ratio columns: ours / that subject), then the data measurements."""
  rows = ['| mode | model | px | batch | dtype | subject | ms/step (IQR) | img/s | CPU s/step | '
          'MFU | ours / this | at fastest | in CPU time | threads | load (1/5/15 min) |',
          '| --- ' * 15 + '|']
  data_rows = ['| model | px | batch | dataset | host side | host img/s | augment img/s | '
               'train img/s | host / train | load (1/5/15 min) |', '| --- ' * 10 + '|']
  for m in records:
    load = ' '.join(f'{v:.1f}' for v in m['load_average'])
    if m['mode'] == 'data':
      augment = f'{m["augment"]["images_per_sec"]:,.0f}' if 'augment' in m else '-'
      data_rows.append(
          f'| {m["model"]} | {m["image_size"]} | {m["batch"]} | '
          f'{os.path.basename(m["dataset"])} | {m["host_side"]} | '
          f'{m["host"]["images_per_sec"]:,.0f} | '
          f'{augment} | '
          f'{m["train"]["images_per_sec"]:,.1f} | {m["ratio"]:,.0f}x | {load} |')
      continue
    for side, label in SIDES.items():
      if side not in m:
        continue
      r = m[side]
      ratio = (' | '.join(f'{r[k]:.2f}x' for k in ('ratio', 'ratio_best', 'ratio_cpu_time'))
               if side != 'ours' else '- | - | -')
      dtype = m['dtype'] if side == 'ours' else r['dtype']
      rows.append(f'| {m["mode"]} | {m["model"]} | {m["image_size"]} | {m["batch"]} | '
                  f'{dtype} | {label} | {_ms(r)} | {r["images_per_sec"]:,.1f} | '
                  f'{r["cpu_time_s"]["median"]:.2f} | {r["mfu"]:.0%} | {ratio} | '
                  f'{m["cpu_threads"]} | {load} |')
  return '\n'.join(rows if len(data_rows) == 2 else rows + [''] + data_rows)
