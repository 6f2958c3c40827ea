"""Run outputs: `metrics.jsonl`, TensorBoard event files (tensorboardX, no TensorFlow), the
progress line and the profiler trace."""
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any
import weakref

from absl import logging
import jax

from vit_jax import files


def read_jsonl(path: str) -> list[dict]:
  """All complete records of a `metrics.jsonl` (a torn last line from a crash is skipped)."""
  if not files.exists(path):
    return []
  records = []
  for line in files.read_text(path).splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      logging.warning('Skipping an incomplete line in %s.', path)
  return records


def _tensorboardx() -> Any:
  """tensorboardX's event-file writer, protocol buffers and summaries, imported without
  PyTorch: where torch is installed, tensorboardX imports it only to accept torch tensors (we
  log floats), which costs every training process about a second and a few hundred MB."""
  hidden = 'torch' not in sys.modules
  if hidden:
    sys.modules['torch'] = None  # `import torch` raises ImportError, as if not installed
  try:
    import tensorboardX.event_file_writer  # pylint: disable=g-import-not-at-top
    import tensorboardX.proto.event_pb2  # pylint: disable=g-import-not-at-top
    import tensorboardX.summary  # pylint: disable=g-import-not-at-top
  finally:
    if hidden:
      del sys.modules['torch']
  return tensorboardX


class EventFile:
  """A TensorBoard event file, `<folder>/events.out.tfevents.<seconds>.<host>.<nanoseconds>`,
  written in the caller's thread: tensorboardX's SummaryWriter writes from a thread of its
  own, and its flush() does not wait for the scalars just added, so a copy made after it
  (the upload to an object store) would lack the last log step. The nanoseconds give a run
  resumed within the same second on the same host a file of its own that sorts after the
  first (TensorBoard reads a folder's files in name order).

  The file starts with a SessionLog.START event at the run's `first_step`: TensorBoard takes
  the first START it reads as the start and each later one as a restart, dropping the events
  of earlier files from that step on (those an interrupted run wrote after its last
  checkpoint)."""

  def __init__(self, folder: str, first_step: int):
    tensorboardx = _tensorboardx()
    self._pb, self._scalar = tensorboardx.proto.event_pb2, tensorboardx.summary.scalar
    self._writer = tensorboardx.event_file_writer.EventsWriter(
        os.path.join(folder, 'events'), f'.{time.time_ns()}')
    self._writer.write_event(self._pb.Event(
        wall_time=time.time(), step=first_step,
        session_log=self._pb.SessionLog(status=self._pb.SessionLog.START)))
    self._writer.flush()

  def write(self, step: int, scalars: dict[str, float]) -> None:
    """Appends `scalars` {tag: value} at `step` and flushes the file."""
    for tag, value in scalars.items():
      self._writer.write_event(self._pb.Event(wall_time=time.time(), step=step,
                                              summary=self._scalar(tag, value)))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


def _local_events_folder(workdir: str) -> str:
  """A new local folder for the TensorBoard event file of a run whose `workdir` is on an
  object store, named after the workdir: it first removes the folders of earlier runs there
  (on this host), which a run killed without cleanup leaves; the workdir's lock keeps a second
  run out while one is running."""
  prefix = f'vit_jax-events-{hashlib.sha256(workdir.encode()).hexdigest()[:16]}-'
  for folder in glob.glob(os.path.join(glob.escape(tempfile.gettempdir()), prefix + '*')):
    shutil.rmtree(folder, ignore_errors=True)
  return tempfile.mkdtemp(prefix=prefix)


class MetricsWriter:
  """Appends {'step': s, **metrics} to `<workdir>/metrics.jsonl` and TensorBoard scalars.

  On resume from step `resume_step`, records after that step (written by the interrupted run
  after its last checkpoint) are dropped, so the file describes exactly one trajectory.
  Only the writing process (process 0) creates files. An object store cannot append, so there
  each write uploads the whole file again (one small file, written at log steps only), and
  the TensorBoard event file is written to a local folder and uploaded whole with it
  (through `files`, so a store that stops answering is one error of the run's, not uploads
  that tensorboardX retries when the process exits).
  """

  def __init__(self, workdir: str, resume_step: int = 0, active: bool = True):
    self.active = active
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self._file = self._events = None
    if not active:
      return
    self._lines = [json.dumps(r) + '\n' for r in read_jsonl(self.path)
                   if r.get('step', 0) <= resume_step]
    with files.atomic_open(self.path) as f:
      f.writelines(self._lines)
    local = files.is_local(workdir)
    self._file = open(self.path, 'a') if local else None
    if not local:
      self._events = _local_events_folder(workdir)
      # removed by close(), or when the writer is collected or the process exits (an error)
      self._remove_events = weakref.finalize(self, shutil.rmtree, self._events, True)
    self._event_file = EventFile(workdir if local else self._events, resume_step + 1)

  def _upload_events(self) -> None:
    """Copies the local event file to the object-store workdir, whole."""
    for name in os.listdir(self._events):
      with open(os.path.join(self._events, name), 'rb') as source, files.atomic_open(
          os.path.join(os.path.dirname(self.path), name), 'wb') as target:
        target.write(source.read())

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.active:
      return
    line = json.dumps({'step': step, **metrics}) + '\n'
    if self._file:
      self._file.write(line)
      self._file.flush()
    else:
      self._lines.append(line)
      with files.atomic_open(self.path) as f:
        f.writelines(self._lines)
    self._event_file.write(step, metrics)
    if self._events:
      self._upload_events()

  def close(self) -> None:
    if self._file:
      self._file.close()
    if self.active:
      self._event_file.close()
    if self._events:
      self._upload_events()
      self._remove_events()
      self._events = None


class ProfileTrace:
  """A JAX profiler trace of training steps a..b (inclusive; `steps` = (a, b), None: none)
  into `<workdir>/profile/plugins/profile/<time>/` (TensorBoard's profile plugin reads it).
  Every process traces its own devices. A run resumed after step a traces nothing. As a
  context manager, leaving it ends a trace still running (a run stopped by an error inside
  steps a..b), so the process can trace again."""

  def __init__(self, workdir: str, steps: tuple[int, int] | None):
    self.directory = os.path.join(workdir, 'profile')
    self._steps, self._on = steps, False

  def __enter__(self) -> 'ProfileTrace':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()

  def before(self, step: int) -> None:
    """Call before dispatching `step`."""
    if self._steps and step == self._steps[0]:
      jax.profiler.start_trace(self.directory)
      self._on = True

  def after(self, step: int, state: Any) -> None:
    """Call after dispatching `step` (its output `state`): ends the trace after step b, once
    the step has run."""
    if self._on and step == self._steps[1]:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    """Ends a trace still running (a run stopped inside the steps)."""
    if self._on:
      jax.profiler.stop_trace()
      self._on = False
      logging.info('Profiler trace of steps %d-%d written to %s.', *self._steps,
                   self.directory)


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  return f'{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}'


def progress_line(step: int, total: int, metrics: dict[str, float], eta_seconds: float) -> str:
  """One line of progress, e.g.
  'step 100/500 (20%) | loss 1.234 | accuracy 0.560 | lr 1.0e-03 | 12,345 img/s | ETA 0:01:23'."""
  parts = [f'step {step}/{total} ({100 * step // total}%)']
  for key in ('loss', 'accuracy', 'grad_norm'):
    if key in metrics:
      parts.append(f'{key} {metrics[key]:.4g}')
  if 'lr' in metrics:
    parts.append(f'lr {metrics["lr"]:.2e}')
  if 'images_per_sec' in metrics:
    parts.append(f'{metrics["images_per_sec"]:,.0f} img/s')
  parts.append(f'ETA {format_duration(eta_seconds)}')
  return ' | '.join(parts)
