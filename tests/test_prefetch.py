"""Device prefetch and the training loop's structure: the next batch is put on the device
before the current step is dispatched, and nothing waits for the device between log steps."""
import jax
from jax._src import array as jax_array
import numpy as np
import pytest

from configs import quickstart
from vit_jax import data, prefetch, sharding, train


def _split(n: int = 10) -> data.Split:
  images = np.arange(n * 2 * 2 * 1, dtype=np.uint8).reshape(n, 2, 2, 1)
  return data.Split(images, np.arange(n, dtype=np.int32), tuple(map(str, range(n))))


@pytest.mark.parametrize('size', [1, 3])
def test_prefetch_yields_the_iterator_batches_ahead_and_resumes_exactly(size):
  split, puts = _split(), []

  def put(batch):
    puts.append(batch)
    return tuple(jax.device_put(a) for a in batch)
  plain = data.TrainIterator(split, 4, seed=1)
  batches = prefetch.DevicePrefetch(data.TrainIterator(split, 4, seed=1), put, size)
  states = []
  for k in range(1, 6):  # crosses epochs (10 examples, batches of 4)
    images, labels = next(batches)
    expected = next(plain)
    np.testing.assert_array_equal(np.asarray(images), expected[0])
    np.testing.assert_array_equal(np.asarray(labels), expected[1])
    assert isinstance(images, jax.Array)
    assert len(puts) == k + size  # `size` batches in flight beyond the one handed out
    assert batches.get_state() == plain.get_state() == {'position': 4 * k}
    states.append(batches.get_state())
  # Resuming from the state after batch 2 gives batches 3, 4, 5 again.
  resumed = prefetch.DevicePrefetch(data.TrainIterator(split, 4, seed=1), put, size)
  resumed.set_state(states[1])
  again = data.TrainIterator(split, 4, seed=1)
  again.set_state(states[1])
  for _ in range(3):
    np.testing.assert_array_equal(np.asarray(next(resumed)[0]), next(again)[0])
  batches.set_state(states[0])  # drops what is in flight
  assert batches.get_state() == states[0]
  np.testing.assert_array_equal(np.asarray(next(batches)[1]), _nth_labels(split, 1))


def _nth_labels(split: data.Split, k: int) -> np.ndarray:
  iterator = data.TrainIterator(split, 4, seed=1)
  for _ in range(k):
    next(iterator)
  return next(iterator)[1]


def test_bad_prefetch_size():
  with pytest.raises(ValueError, match='size=0 must be a positive integer'):
    prefetch.DevicePrefetch(data.TrainIterator(_split(), 4, seed=1), lambda b: b, 0)


@pytest.mark.slow  # trains
def test_training_loop_prefetches_and_syncs_only_at_log_steps(tmp_path, monkeypatch):
  """Records, in order, every batch put on the device, every train-step call and every
  device-to-host transfer (`jax.device_get`, `block_until_ready`, and reading an array's value,
  which `np.asarray`, `float`, `int` and `bool` do); log, evaluation and checkpoint every 3."""
  events = []
  global_batch = sharding.global_batch
  monkeypatch.setattr(sharding, 'global_batch',
                      lambda *a: events.append('put') or global_batch(*a))
  make_train_step = train.make_train_step

  def recording_make_train_step(*args, **kwargs):
    step = make_train_step(*args, **kwargs)
    return lambda *a: events.append('step') or step(*a)
  monkeypatch.setattr(train, 'make_train_step', recording_make_train_step)
  for owner, name in ((jax, 'device_get'), (jax, 'block_until_ready')):
    original = getattr(owner, name)
    monkeypatch.setattr(owner, name, lambda *a, _f=original, **k: events.append('sync') or _f(
        *a, **k))
  value = jax_array.ArrayImpl._value
  monkeypatch.setattr(jax_array.ArrayImpl, '_value',
                      property(lambda self: events.append('sync') or value.fget(self)))

  config = quickstart.get_config()
  config.total_steps, config.batch_size, config.model.num_layers = 7, 16, 1
  config.log_every = config.eval_every = config.checkpoint_every = 3
  config.eval.fewshot_shots = ()
  train.train_and_evaluate(config, str(tmp_path))

  steps = [i for i, e in enumerate(events) if e == 'step']
  assert len(steps) == 7
  for k, at in enumerate(steps, start=1):
    # Batches 1 .. k+1 (images and labels each) are on the device when step k is dispatched.
    assert events[:at].count('put') >= 2 * (k + 1), k
  for k in range(1, 7):
    between = events[steps[k - 1] + 1:steps[k]]
    if k % 3:
      assert 'sync' not in between, f'a host sync between steps {k} and {k + 1}'
    else:  # the log line reads the pending metrics (and evaluation, checkpoint)
      assert 'sync' in between, k
