"""One benchmark subject in a process of its own, stepped on demand.

A worker is started as a script, `python .../vit_jax/bench/worker.py '<spec JSON>'`, builds
its subject (`spec['side']`: 'ours' = our train step or forward pass, 'torch' = the PyTorch
reference, 'original' = the original vision_transformer code), runs the warm-up calls, then
answers one JSON line per line read on stdin: a step name -> {'wall': s, 'cpu': s} for one
call, waited for; 'quit' -> a last line, and exits. Its first line is {'ready': description},
or {'error': message} if the subject cannot be built. CPU time is the worker's process time
(all its threads) during the call.

`Worker` is the coordinator's handle. Separate processes matter on CPU: in one process the
PyTorch reference's OpenMP threads keep spinning after each of its steps and take cycles from
XLA's threads in the next one; `Worker.settle` waits for a worker to go idle before the next
subject runs. This file imports only the standard library at the top: the 'original' side must
not import our `vit_jax` (the original's package has the same name).
"""
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WorkerError(RuntimeError):
  """A worker could not build its subject or died; the message says why."""


class Worker:
  """A started worker process (ready, warmed up) and its description."""

  def __init__(self, spec: dict[str, Any]):
    self._stderr = tempfile.TemporaryFile(mode='w+')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (_ROOT, os.environ.get('PYTHONPATH')) if p))
    self._proc = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), json.dumps(spec)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=env)
    self.pid = self._proc.pid
    self.info = self._receive()['ready']

  def _receive(self) -> dict:
    line = self._proc.stdout.readline()
    message = json.loads(line) if line else {}
    if 'error' in message or not message:
      self._proc.wait()
      self._stderr.seek(0)
      tail = self._stderr.read()[-2000:]
      raise WorkerError(message.get('error') or f'a benchmark worker (pid {self.pid}) exited '
                        f'with code {self._proc.returncode}: {tail}')
    return message

  def _send(self, command: str) -> dict:
    self._proc.stdin.write(command + '\n')
    self._proc.stdin.flush()
    return self._receive()

  def call(self, step: str) -> tuple[float, float]:
    """Runs one call of `step` in the worker: (wall seconds, worker CPU seconds)."""
    result = self._send(step)
    return result['wall'], result['cpu']

  def settle(self, timeout: float = 3.0, poll: float = 0.01) -> None:
    """Waits until the worker uses no more CPU (its threads have stopped spinning), or at
    most `timeout` seconds. Without /proc (not Linux) it waits 0.2 s."""
    try:
      last, quiet, end = _cpu_ticks(self.pid), 0, time.monotonic() + timeout
      while quiet < 3 and time.monotonic() < end:
        time.sleep(poll)
        now = _cpu_ticks(self.pid)
        quiet, last = (quiet + 1 if now == last else 0), now
    except OSError:
      time.sleep(0.2)

  def close(self) -> dict:
    """Stops the worker; returns its last line (e.g. the device's peak memory)."""
    try:
      return self._send('quit')
    finally:
      self._proc.stdin.close()
      self._proc.wait()
      self._stderr.close()

  def kill(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()


def _cpu_ticks(pid: int) -> int:
  """User + system clock ticks of all of a process's threads so far (/proc/<pid>/stat)."""
  with open(f'/proc/{pid}/stat') as f:
    fields = f.read().rsplit(')', 1)[1].split()
  return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of the line)


def _build(spec: dict) -> tuple[dict, dict, Any]:
  """(steps by name, description, function returning the last line's extra fields)."""
  side, common = spec['side'], {k: spec[k] for k in ('image_size', 'batch', 'num_classes')}
  if side == 'original':
    import importlib.util  # pylint: disable=import-outside-toplevel
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'original_ref.py')
    module_spec = importlib.util.spec_from_file_location('original_ref', path)
    original_ref = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(original_ref)
    steps, info = original_ref.steps(spec['mode'], spec['fields'], ref_dir=spec['ref_dir'],
                                     **common)
    return steps, info, dict
  sys.path.insert(0, _ROOT)
  if side == 'torch':
    from vit_jax.bench import torch_ref  # pylint: disable=import-outside-toplevel
    step, info = torch_ref.reference_steps(spec['mode'], spec['fields'], bf16=spec['bf16'],
                                           optim=spec['optim'], gpu=spec['gpu'], **common)
    return {'step': step}, info, dict
  from vit_jax.bench import jax_side  # pylint: disable=import-outside-toplevel
  return jax_side.worker_steps(spec)


def _timed(step) -> dict:
  start, start_cpu = time.perf_counter(), time.process_time()
  step()
  return {'wall': time.perf_counter() - start, 'cpu': time.process_time() - start_cpu}


def serve(spec: dict, out) -> None:
  """Builds the subject, warms it up, then answers the coordinator's lines (see above)."""
  try:
    steps, info, last = _build(spec)
    for step in steps.values():
      for _ in range(spec['warmup']):
        step()
  except (ValueError, ImportError, RuntimeError, FileNotFoundError) as e:
    print(json.dumps({'error': str(e)}), file=out, flush=True)
    sys.exit(1)
  print(json.dumps({'ready': {**info, 'pid': os.getpid()}}), file=out, flush=True)
  for line in sys.stdin:
    command = line.strip()
    if command == 'quit':
      print(json.dumps({'pid': os.getpid(), **last()}), file=out, flush=True)
      return
    print(json.dumps(_timed(steps[command])), file=out, flush=True)


def main() -> None:
  # Answers go to a copy of stdout; anything else printed (libraries, XLA) goes to stderr.
  out = os.fdopen(os.dup(1), 'w')
  os.dup2(2, 1)
  sys.stdout = sys.stderr
  sys.path.remove(os.path.dirname(os.path.abspath(__file__)))  # no top-level bench modules
  serve(json.loads(sys.argv[1]), out)


if __name__ == '__main__':
  main()
