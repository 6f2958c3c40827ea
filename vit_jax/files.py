"""Atomic, pickle-free file I/O shared by checkpoints, the data cache and run outputs, on any
filesystem `etils.epath` reaches: local paths and object stores such as `gs://bucket/dir`.

Local paths: every write goes to a temporary file in the destination's directory and is renamed
over the destination only once complete (after an fsync), so a crash never leaves a
half-written file behind; the directory lock is an `flock` the operating system releases when
the process dies. Object stores: a write is buffered in memory and uploaded in one request when
complete, and the store makes each upload atomic (readers see the old object or the new one);
the directory lock is a lock object (see `exclusive_lock` for its limits).
"""
import contextlib
import fcntl
import io
import json
import logging as std_logging
import os
import socket
import tempfile
import threading
import time
import zipfile
from typing import Any, Iterator, TextIO

from absl import logging
from etils import epath
import fsspec
import numpy as np

# What a gs:// path needs that the base install lacks.
GCS_EXTRA = ('gs:// paths need the [gcs] extra (gcsfs, google-cloud-storage): pip install -e '
             '".[gcs]"')
# Object-store listings are not cached: another process (a sweep's point, another host) may
# have written since. Without gcsfs, fsspec's ImportError says what to install.
for _protocol in ('gs', 'gcs'):
  fsspec.config.conf.setdefault(_protocol, {}).setdefault('use_listings_cache', False)
  fsspec.register_implementation(_protocol, 'gcsfs.GCSFileSystem', clobber=True,
                                 errtxt=f'{GCS_EXTRA}.')
# gcsfs logs each request error it gives up on, traceback included, and then raises it; the
# raised error reaches the command, which reports it in one `Error:` line.
std_logging.getLogger('gcsfs').addFilter(lambda record: record.funcName != 'retry_request')

# Seconds after which an object-store lock that its holder stopped refreshing counts as stale.
LOCK_LEASE = 120.
# Seconds a request for the lock object is retried while Cloud Storage does not answer.
STORE_TIMEOUT = 120.


def is_local(path: str | os.PathLike) -> bool:
  """Whether `path` is on a local filesystem (no `scheme://` prefix)."""
  return '://' not in os.fspath(path)


def absolute(path: str | os.PathLike) -> str:
  """`path` made absolute if local; a `gs://...` path unchanged."""
  return os.path.abspath(path) if is_local(path) else os.fspath(path)


def exists(path: str | os.PathLike) -> bool:
  return epath.Path(path).exists()


def isdir(path: str | os.PathLike) -> bool:
  return epath.Path(path).is_dir()


def makedirs(path: str | os.PathLike) -> None:
  """Creates the folder `path` and any missing parents (local or object store).

  Raises:
    FileExistsError: a file stands where `path` or one of its parents must be a folder.
  """
  folder = epath.Path(path)
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except (FileExistsError, NotADirectoryError) as e:
    file = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
    raise FileExistsError(f'{os.fspath(path)} is a file, not a folder.' if file == folder else
                          f'{os.fspath(path)} cannot be made a folder: {os.fspath(file)} is a '
                          'file.') from e


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
  """`os.walk` of a local or object-store directory: (folder, subfolder names, file names),
  folders as full paths (`gs://...` included). Local symbolic links to folders are followed
  (datasets are often put together from linked class folders), except one that leads back up
  the path it hangs from (a loop)."""
  if is_local(path):
    for folder, subdirs, names in os.walk(path, followlinks=True):
      rel = os.path.relpath(folder, path)
      parts = [] if rel == '.' else rel.split(os.sep)
      chain = {os.path.realpath(os.path.join(path, *parts[:i])) for i in range(len(parts) + 1)}
      subdirs[:] = [d for d in subdirs if os.path.realpath(os.path.join(folder, d)) not in chain]
      yield folder, subdirs, names
    return
  scheme = path.split('://')[0]
  for folder, subdirs, names in epath.Path(path).walk():
    folder = os.fspath(folder)
    yield folder if '://' in folder else f'{scheme}://{folder}', list(subdirs), list(names)


def read_text(path: str | os.PathLike) -> str:
  return epath.Path(path).read_text()


def rename(source: str | os.PathLike, target: str | os.PathLike) -> None:
  """Moves a file or directory (atomically on local paths; object stores copy and delete)."""
  if is_local(source):
    os.replace(source, target)
  else:
    epath.Path(source).rename(target)


@contextlib.contextmanager
def atomic_open(path: str, mode: str = 'w') -> Iterator[TextIO]:
  """Opens a temporary file that replaces `path` when the block exits without error."""
  if not is_local(path):
    buffer = io.BytesIO() if 'b' in mode else io.StringIO()
    yield buffer
    value = buffer.getvalue()
    target = epath.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(value) if 'b' in mode else target.write_text(value)
    return
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  try:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f'.{os.path.basename(path)}.',
                               suffix='.tmp')
  except OSError as e:  # named by the file asked for, not the temporary one
    raise type(e)(e.errno, e.strerror, path) from None
  try:
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # what open() would give, not mkstemp's owner-only 0600
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


class LockedError(RuntimeError):
  """Another process holds the directory's lock."""


@contextlib.contextmanager
def exclusive_lock(directory: str, what: str) -> Iterator[None]:
  """Holds `<directory>/.lock` exclusively for the block, so two runs or sweeps never write
  the same directory; on a local path the operating system releases it if the process dies.

  On `gs://` the lock is an object created only if absent (a generation-0 precondition, so two
  creators cannot both succeed) holding the holder's host, pid and a time refreshed every
  LOCK_LEASE / 4 seconds; it is deleted at the end of the block. Limits: a process killed
  without cleanup leaves the object, which the next holder takes over when its host and pid
  are this host and a process that no longer exists, or when it was not refreshed for
  LOCK_LEASE seconds (so a rerun on another host after a crash waits up to LOCK_LEASE); a
  holder whose refreshes stall for LOCK_LEASE (a frozen VM) can lose the lock unawares.

  Raises:
    LockedError: naming the directory and the holder.
  """
  if not is_local(directory):
    with _object_lock(os.fspath(directory), what):
      yield
    return
  makedirs(directory)
  with open(os.path.join(directory, '.lock'), 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder, _, pid = f.read().strip().rpartition(': ')  # '<what>: pid <n>' ('pid <n>' before)
      raise _locked(directory, what, holder or what, pid) from None
    f.seek(0)
    f.truncate()
    f.write(f'{what}: pid {os.getpid()}')
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def _locked(directory: str, what: str, holder: str, where: str) -> LockedError:
  """The error for a `what` (e.g. 'training run') that finds `directory` held by a `holder`
  (e.g. 'sweep') at `where` (its pid, or host and pid)."""
  return LockedError(f'{"Another" if holder == what else "A"} {holder} is running in '
                     f'{directory} ({where}); wait for it to finish or use another directory.')


def _write_holder(blob, generation: int, retry, what: str) -> None:
  """Uploads this `what` (host, pid, time, what) as the holder in the lock object `blob` if the
  object's generation is `generation` (0: only if there is none)."""
  holder = {'host': socket.gethostname(), 'pid': os.getpid(), 'time': time.time(), 'what': what}
  blob.upload_from_string(json.dumps(holder), if_generation_match=generation, retry=retry)


def _stale(holder: dict) -> bool:
  """Whether a lock object's holder is gone: a dead process on this host, or no refresh for
  LOCK_LEASE seconds."""
  if holder.get('host') == socket.gethostname():
    try:
      os.kill(int(holder['pid']), 0)
    except ProcessLookupError:
      return True
    except (OSError, KeyError, ValueError):
      pass
  return time.time() - float(holder.get('time', 0)) > LOCK_LEASE


@contextlib.contextmanager
def _object_lock(directory: str, what: str) -> Iterator[None]:
  """`exclusive_lock` on a `gs://` directory (google-cloud-storage, for its preconditions).
  A refresh that fails is logged and tried again; a lock taken over by another process (this
  one did not refresh it for LOCK_LEASE seconds) is logged as an error and left to it.

  Raises:
    PermissionError: no Google Cloud credentials, or the account may not write there.
    FileNotFoundError: the bucket does not exist.
    ConnectionError: Cloud Storage did not answer for STORE_TIMEOUT seconds.
    ImportError: the [gcs] extra is not installed.
  """
  try:
    # pylint: disable=g-import-not-at-top
    from google.api_core import exceptions
    from google.auth import exceptions as auth_exceptions
    from google.cloud import storage
  except ImportError as e:
    raise ImportError(f'{directory}: {GCS_EXTRA} ({e}).') from e
  bucket, _, prefix = directory.removeprefix('gs://').partition('/')
  try:
    client = storage.Client()
  except auth_exceptions.DefaultCredentialsError as e:
    raise PermissionError(f'{directory}: no Google Cloud credentials found on this machine '
                          '(gcloud auth application-default login, or set '
                          'GOOGLE_APPLICATION_CREDENTIALS).') from e
  blob = client.bucket(bucket).blob(f'{prefix.rstrip("/")}/.lock'.lstrip('/'))
  retry = storage.retry.DEFAULT_RETRY.with_timeout(STORE_TIMEOUT)
  try:
    _take(blob, retry, directory, what)
  except exceptions.RetryError as e:
    raise ConnectionError(f'{directory}: Cloud Storage did not answer within '
                          f'{STORE_TIMEOUT:g} s ({e.cause}); check the network.') from e
  stop, lost = threading.Event(), threading.Event()

  def refresh():
    while not stop.wait(LOCK_LEASE / 4):
      try:
        _write_holder(blob, blob.generation, retry, what)
      except exceptions.PreconditionFailed:
        logging.error('Another process took over the lock of %s (not refreshed for %g s): two '
                      'processes may now write there.', directory, LOCK_LEASE)
        lost.set()
        return
      except (exceptions.GoogleAPIError, OSError) as e:
        logging.warning('Could not refresh the lock of %s (%s); trying again in %g s.',
                        directory, e, LOCK_LEASE / 4)

  thread = threading.Thread(target=refresh, daemon=True)
  thread.start()
  try:
    yield
  finally:
    stop.set()
    thread.join()
    try:
      if not lost.is_set():  # a lock taken over is the new holder's
        blob.delete(if_generation_match=blob.generation, retry=retry)
    except exceptions.PreconditionFailed:
      pass  # taken over since the last refresh
    except (exceptions.GoogleAPIError, OSError) as e:
      logging.warning('Could not delete the lock object of %s (%s); the next run there takes '
                      'it over (at once from this host, after %g s from another).', directory,
                      e, LOCK_LEASE)


def _take(blob, retry, directory: str, what: str) -> None:
  """Creates the lock object `blob`, or takes it over from a stale holder.

  Raises:
    FileNotFoundError, PermissionError, LockedError: as `_object_lock`.
  """
  from google.api_core import exceptions  # pylint: disable=g-import-not-at-top
  try:
    _write_holder(blob, 0, retry, what)
    return
  except exceptions.NotFound as e:
    raise FileNotFoundError(f'{directory}: the bucket {blob.bucket.name} does not exist.') from e
  except exceptions.Forbidden as e:
    raise PermissionError(f'{directory}: this account may not write to the bucket '
                          f'{blob.bucket.name} ({e.message}).') from e
  except exceptions.PreconditionFailed:
    pass
  blob.reload(retry=retry)
  generation = blob.generation
  holder = json.loads(blob.download_as_bytes(if_generation_match=generation, retry=retry))
  if not _stale(holder):
    raise _locked(directory, what, holder.get('what', what),
                  f'host {holder.get("host")}, pid {holder.get("pid")}')
  try:
    _write_holder(blob, generation, retry, what)
  except exceptions.PreconditionFailed:
    raise LockedError(f'Another {what} took the lock of {directory} just now; wait for it '
                      'to finish or use another directory.') from None


def write_json(path: str, obj: Any) -> None:
  with atomic_open(path) as f:
    json.dump(obj, f, indent=2, sort_keys=True)
    f.write('\n')


def read_json(path: str) -> Any:
  """The JSON value in `path`.

  Raises:
    ValueError: naming `path`, when it is not valid JSON (e.g. a damaged file).
  """
  try:
    return json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f'{path} is not readable JSON: {e}') from e


def write_npz(path: str, arrays: dict[str, np.ndarray]) -> None:
  """Writes a flat dict of numeric (or unicode) arrays as `.npz`; never pickles."""
  bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray) or v.dtype == object]
  if bad:
    raise ValueError(f'Cannot save non-numeric arrays {bad} to {path}.')
  with atomic_open(path, 'wb') as f:
    np.savez(f, allow_pickle=False, **arrays)


def read_npz(path: str) -> dict[str, np.ndarray]:
  """Reads a flat `.npz` into {key: array}, refusing pickled objects with a clear error."""
  if not epath.Path(path).is_file():
    raise FileNotFoundError(f'File not found: {path}')
  content = io.BytesIO(epath.Path(path).read_bytes())
  if not zipfile.is_zipfile(content):
    raise ValueError(f'{path} is not a readable .npz file (not a zip archive).')
  try:
    with np.load(content, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except ValueError as e:
    if 'allow_pickle' in str(e):
      raise ValueError(f'{path} holds pickled Python objects; refusing to load it (only plain '
                       'numeric arrays are accepted).') from e
    raise ValueError(f'{path} is not a readable .npz file: {e}') from e
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise ValueError(f'{path} is not a readable .npz file: {e}') from e
