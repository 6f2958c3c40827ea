"""The run's TensorBoard event files, read back record by record: a write is in the file when
it returns, and a resumed run, even one resumed within the same second, has a file of its own
that makes TensorBoard drop the interrupted run's steps after its last checkpoint."""
import struct
import time

import pytest

from vit_jax import metrics


def events_of(event_file: bytes) -> list:
  """Every Event protocol buffer of a TensorBoard event file, read with the one tensorboardX
  ships; records are framed as length (8 bytes), its CRC (4), the record, its CRC (4)."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  events, start = [], 0
  while start < len(event_file):
    (length,) = struct.unpack('<Q', event_file[start:start + 8])
    events.append(event_pb2.Event.FromString(event_file[start + 12:start + 12 + length]))
    start += 12 + length + 4
  return events


def _scalars(event) -> list[tuple[int, str, float]]:
  return [(event.step, value.tag, value.simple_value) for value in event.summary.value]


def scalars_of(event_file: bytes) -> list[tuple[int, str, float]]:
  """(step, tag, value) of every scalar in a TensorBoard event file."""
  return [scalar for event in events_of(event_file) for scalar in _scalars(event)]


def as_tensorboard_shows(folder) -> list[tuple[int, str, float]]:
  """The scalars TensorBoard keeps of a folder's event files: it reads them in name order; the
  first SessionLog.START it reads starts the run, each later one is a restart that drops the
  scalars read so far from its step on."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  kept, started = [], False
  for path in sorted(folder.glob('events.out.tfevents.*')):
    for event in events_of(path.read_bytes()):
      if event.session_log.status == event_pb2.SessionLog.START:
        if started:
          kept = [scalar for scalar in kept if scalar[0] < event.step]
        started = True
      kept += _scalars(event)
  return kept


def test_a_write_is_in_the_event_file_when_it_returns(tmp_path):
  writer = metrics.MetricsWriter(str(tmp_path))
  writer.write(10, {'loss': 0.7, 'accuracy': 0.25})
  [events] = tmp_path.glob('events.out.tfevents.*')
  assert scalars_of(events.read_bytes()) == [(10, 'loss', pytest.approx(0.7, rel=1e-7)),
                                             (10, 'accuracy', 0.25)]  # float32 in the file
  writer.close()


def test_a_run_resumed_in_the_same_second_has_its_own_file_and_drops_the_lost_steps(
    tmp_path, monkeypatch):
  monkeypatch.setattr(time, 'time', lambda: 1_800_000_000.5)  # both runs start in this second
  interrupted = metrics.MetricsWriter(str(tmp_path))
  interrupted.write(10, {'loss': 0.7})  # its last checkpoint is at step 10
  interrupted.write(20, {'loss': 0.5})
  interrupted.close()
  resumed = metrics.MetricsWriter(str(tmp_path), resume_step=10)
  resumed.write(20, {'loss': 0.4})
  resumed.close()
  assert len(list(tmp_path.glob('events.out.tfevents.1800000000.*'))) == 2
  assert as_tensorboard_shows(tmp_path) == [(10, 'loss', pytest.approx(0.7, rel=1e-7)),
                                            (20, 'loss', pytest.approx(0.4, rel=1e-7))]
  assert metrics.read_jsonl(str(tmp_path / 'metrics.jsonl')) == [
      {'step': 10, 'loss': 0.7}, {'step': 20, 'loss': 0.4}]


def test_a_run_restarted_before_its_first_checkpoint_drops_all_earlier_steps(tmp_path,
                                                                             monkeypatch):
  monkeypatch.setattr(time, 'time', lambda: 1_800_000_000.5)
  lost = metrics.MetricsWriter(str(tmp_path))
  lost.write(10, {'loss': 0.7})
  lost.close()
  monkeypatch.setattr(time, 'time', lambda: 1_800_000_001.5)  # the restart, a second later
  restarted = metrics.MetricsWriter(str(tmp_path))
  restarted.write(10, {'loss': 0.6})
  restarted.close()
  assert as_tensorboard_shows(tmp_path) == [(10, 'loss', pytest.approx(0.6, rel=1e-7))]
