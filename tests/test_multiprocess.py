"""Multi-process runs: two processes on localhost, 4 simulated CPU devices each (gloo CPU
collectives), form one 8-device mesh through `jax.distributed` and train exactly as one
8-device process; process 0 alone writes the run's files; checkpoints written by the two
processes are restored by the two processes and by a single process; SIGTERM to one process
stops both at the same step."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT, child_env
from imagenet_tree import make_tree
from vit_jax import checkpoint, distributed, metrics, pretrained
from vit_jax.data import prepare

pytestmark = pytest.mark.slow  # trains, sweeps or compiles whole programs

# SGD: Adam turns the rounding noise of gradients that are zero in exact arithmetic (the key
# bias) into full-size steps, so its parameters would not compare (see test_sharding.py).
SMOKE = ['--config.optim.name=sgd', '--config.total_steps=4', '--config.batch_size=32',
         '--config.log_every=1', '--config.eval_every=4', '--config.checkpoint_every=2',
         '--config.model.num_layers=1',
         '--config.eval.fewshot_shots=()', "--config.mesh=(('data', 2), ('fsdp', 4))"]
TIMEOUT = 300


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def start_main(workdir, num_processes: int, devices_per_process: int, *flags: str
               ) -> tuple[list[subprocess.Popen], list[str]]:
  """Starts the quickstart smoke config (then `flags`) in `num_processes` processes of
  `devices_per_process` devices; returns the processes and the names of their log files."""
  cmd = [sys.executable, '-m', 'vit_jax.main', '--config=configs/quickstart.py',
         f'--workdir={workdir}', *SMOKE, *flags]
  port = _free_port()
  env = dict(child_env(devices_per_process), JAX_CPU_COLLECTIVES_IMPLEMENTATION='gloo')
  procs, logs = [], []
  for i in range(num_processes):
    args = [] if num_processes == 1 else [
        f'--coordinator_address=localhost:{port}', f'--num_processes={num_processes}',
        f'--process_id={i}']
    log = open(f'{workdir}.log{i}', 'w')
    logs.append(log.name)
    procs.append(subprocess.Popen(cmd + args, cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
    log.close()
  return procs, logs


def run_main(workdir, num_processes: int, devices_per_process: int, *flags: str,
             started: tuple | None = None) -> list[str]:
  """Runs (or, given `started` by `start_main`, waits for) the processes; returns their logs
  after checking that every one exited 0. Processes still running at the timeout are killed."""
  procs, logs = started or start_main(workdir, num_processes, devices_per_process, *flags)
  try:
    for proc in procs:
      proc.wait(timeout=TIMEOUT)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  texts = [open(name).read() for name in logs]
  for proc, text in zip(procs, texts):
    assert proc.returncode == 0, text[-4000:]
  return texts


def losses(workdir) -> dict[int, float]:
  records = [r for r in metrics.read_jsonl(f'{workdir}/metrics.jsonl') if 'loss' in r]
  steps = [r['step'] for r in records]
  assert len(steps) == len(set(steps)), f'metrics written more than once: {steps}'
  return {r['step']: r['loss'] for r in records}


def params(workdir, step: int) -> dict[str, np.ndarray]:
  manager = checkpoint.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  try:
    return pretrained.flatten(manager.restore_params(step))
  finally:
    manager.close()


def assert_same(a: dict, b: dict) -> None:
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-7, err_msg=str(key))


def test_two_processes_train_like_one_and_resume(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  run_main(one, 1, 8)
  logs = run_main(two, 2, 4)
  assert all('8 global devices' in log for log in logs)
  reference = losses(one)
  assert reference.keys() == {1, 2, 3, 4}
  assert losses(two) == pytest.approx(reference, rel=1e-5)
  # Only process 0 wrote the run's files: one TensorBoard file, one record per step (above).
  assert len([f for f in os.listdir(two) if f.startswith('events.out.tfevents')]) == 1
  assert (two / 'result.json').exists() and (two / 'config.json').exists()
  assert ['Final test accuracy' in log for log in logs] == [True, False]  # one report
  assert_same(params(two, 4), params(one, 4))  # written by two processes, read by one

  # Damage the step-4 checkpoint: process 0 moves it aside, both resume from step 2.
  for root, _, names in os.walk(two / 'checkpoints' / '4' / 'state'):
    for name in names:
      if root.endswith(os.sep + 'd'):  # the array data files
        (two / root / name).write_bytes(b'damaged')
  os.remove(two / 'result.json')
  logs = run_main(two, 2, 4)
  assert 'Resumed from step 2' in logs[0]
  assert (two / 'checkpoints' / 'corrupt-4').is_dir()
  assert losses(two) == pytest.approx(reference, rel=1e-5)
  assert_same(params(two, 4), params(one, 4))


def test_sigterm_to_one_process_checkpoints_every_process_at_one_step(tmp_path):
  # Long enough that the signal comes well before the end (it is sent at the first log line).
  long = ['--config.total_steps=100', '--config.log_every=10', '--config.checkpoint_every=50',
          '--config.eval_every=100']
  one, two = tmp_path / 'one', tmp_path / 'two'
  run_main(one, 1, 8, *long)
  started = start_main(two, 2, 4, *long)
  deadline = time.time() + TIMEOUT
  while not losses(two):  # training has started: process 0 wrote a progress line
    if time.time() > deadline or any(p.poll() is not None for p in started[0]):
      for p in started[0]:
        p.kill()
      pytest.fail('the run wrote no progress line')
    time.sleep(0.02)
  started[0][1].send_signal(signal.SIGTERM)  # process 1 only
  logs = run_main(two, 2, 4, started=started)  # both exit 0
  saved = [int(log.split('SIGTERM: saved a checkpoint at step ')[1].split(';')[0])
           for log in logs]
  assert saved[0] == saved[1] and saved[0] < 100 and saved[0] % 10 == 0, saved  # a log step
  assert 'Stopped by SIGTERM at step' in logs[0] and not (two / 'result.json').exists()
  assert max(int(s) for s in os.listdir(two / 'checkpoints') if s.isdigit()) == saved[0]
  logs = run_main(two, 2, 4, *long)
  assert f'Resumed from step {saved[0]} ' in logs[0]
  assert losses(two) == pytest.approx(losses(one), rel=1e-5)
  assert_same(params(two, 100), params(one, 100))


def test_two_processes_stream_their_rows_of_prepared_records_and_train_like_one(tmp_path):
  make_tree(tmp_path / 'src', classes=3, per_class={'train': 8, 'val': 3})
  prepare.prepare(str(tmp_path / 'src'), str(tmp_path / 'records'), workers=1, progress=False)
  stream = [f'--config.dataset=records:{tmp_path / "records"}', '--config.image_size=16',
            '--config.model.patch_size=4', '--config.batch_size=16',
            '--config.eval.batch_size=8', '--config.augment.flip=True']
  one, two = tmp_path / 'one', tmp_path / 'two'
  run_main(one, 1, 8, *stream)
  run_main(two, 2, 4, *stream)
  reference = losses(one)
  assert reference.keys() == {1, 2, 3, 4}
  assert losses(two) == pytest.approx(reference, rel=1e-5)
  assert_same(params(two, 4), params(one, 4))


@pytest.mark.parametrize('mode,flags,environ,expected', [
    ('auto', (None, None, None), {}, False),
    ('auto', ('localhost:1234', 2, 0), {}, True),
    ('auto', (None, None, None), {'JAX_COORDINATOR_ADDRESS': 'h:1'}, True),
    ('auto', (None, None, None), {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n[1-2]',
                                  'SLURM_NTASKS': '2', 'SLURM_PROCID': '1',
                                  'SLURM_LOCALID': '0'}, True),
    ('auto', (None, None, None), {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'n1',
                                  'SLURM_NTASKS': '1', 'SLURM_PROCID': '0',
                                  'SLURM_LOCALID': '0'}, False),
    ('on', (None, None, None), {}, True),
    ('off', (None, None, None), {'JAX_COORDINATOR_ADDRESS': 'h:1'}, False),
])
def test_when_a_process_joins_a_multi_process_run(mode, flags, environ, expected):
  assert distributed.should_initialize(mode, *flags, environ=environ) is expected


def test_contradictory_distributed_flags_are_refused():
  with pytest.raises(ValueError, match='--distributed=off contradicts'):
    distributed.should_initialize('off', 'localhost:1', 2, 0, environ={})


def test_a_coordinator_address_without_a_port_is_refused_before_jax_sees_it():
  with pytest.raises(ValueError, match=re.escape(
      "--coordinator_address='node1' must be host:port: process 0's address and a free port, "
      'e.g. 10.130.0.2:8476.')):
    distributed.should_initialize('auto', 'node1', 2, 0, environ={})
  with pytest.raises(ValueError, match=r"^\$JAX_COORDINATOR_ADDRESS='node1:' must be"):
    distributed.should_initialize('on', None, None, None,
                                  environ={'JAX_COORDINATOR_ADDRESS': 'node1:'})
  for address in ('node1:8476', '[::1]:8476', '10.130.0.2:8476'):
    assert distributed.should_initialize('auto', address, 2, 0, environ={})
