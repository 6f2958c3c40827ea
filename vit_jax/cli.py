"""Shared command-line plumbing: flag parsing with readable config errors, usage errors and
Ctrl-C as one line each, quiet logging, the XLA CPU option our commands set, and `run`, which
starts an absl command with all of them; `ArgumentParser` for the commands that take
positional arguments (argparse)."""
import argparse
import contextlib
import difflib
import functools
import logging as std_logging
import os
import re
import sys
import traceback
from typing import Callable, Iterator

from absl import app
from absl import flags
from absl import logging
import ml_collections

from vit_jax import config as config_lib
from vit_jax import files
from vit_jax import starting

# Set by our command-line entry points (not by `import vit_jax`), before JAX starts its backend,
# which reads XLA_FLAGS once: no YNNPACK fusions, so XLA runs matmuls through its Eigen kernels.
# On a 2-core AVX-512 machine this takes 8% less CPU time for a ViT train step and 17-19% less
# for the forward pass (BENCHMARKS.md). GPUs ignore it.
CPU_FLAG = 'xla_cpu_experimental_ynn_fusion_type'

# What a command ends with one `Error:` line, not a traceback: bad input, a missing file or
# [extra], a run that diverged, a directory another process is using.
COMMAND_ERRORS = (ValueError, OSError, ImportError, FloatingPointError, files.LockedError)


def set_cpu_flag() -> None:
  """Adds `--xla_cpu_experimental_ynn_fusion_type=` to XLA_FLAGS unless the flag is already
  there (a user's value is kept). Call before JAX starts a backend."""
  if CPU_FLAG not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --{CPU_FLAG}='.strip()


def _config_spec(argv: list[str]) -> str:
  """The value of the last `--config=<spec>` or `--config <spec>` in `argv` ('' without
  one)."""
  spec = ''
  for arg, after in zip(argv[1:], [*argv[2:], '']):
    if arg.startswith('--config='):
      spec = arg.split('=', 1)[1]
    elif arg == '--config':
      spec = after
  return spec


def _keys(field: str) -> list[str]:
  """The keys of an override's field path: 'models.ViT-4.lr' and "models['ViT-4'].lr" are
  ['models', 'ViT-4', 'lr']."""
  return [quoted or plain for quoted, plain in
          re.findall(r"""\[\s*['"]([^'"]*)['"]\s*\]|([^.\[\]]+)""", field)]


def _unknown_override(argv: list[str]) -> str | None:
  """The message for the first `--config.<field>=` override of `argv` that names no field of
  the loaded config (the field and its section's fields), or None."""
  try:  # the flags are not set after a failed parse: load the config file again
    config = config_lib.load_file(_config_spec(argv))
  except Exception:  # pylint: disable=broad-except (the parse error is reported instead)
    return None
  for arg in argv[1:]:
    if not arg.startswith('--config.'):
      continue
    path = _keys(arg[len('--config.'):].split('=', 1)[0])
    node = config
    for depth, key in enumerate(path):
      if not isinstance(node, ml_collections.ConfigDict) or key not in node:
        where = 'top-level fields' if not depth else f'fields of {".".join(path[:depth])}'
        fields = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
        # A name a typo away, but not one that differs in its numbers only (ViT-4, ViT-8).
        digits = lambda name: re.sub(r'\d+', '#', name)
        close = [name for name in difflib.get_close_matches(key, fields, n=3, cutoff=0.75)
                 if digits(name) != digits(key)][:1]
        meant = f' (did you mean {".".join([*path[:depth], *close])!r}?)' if close else ''
        return (f'--config.{".".join(path)}: the config has no field '
                f'{".".join(path[:depth + 1])!r}{meant}; its {where} are {fields}.')
      node = node[key]
  return None


def _message(error: Exception, argv: list[str]) -> str:
  """One line for a flag or config error: an unknown override field, a config file without
  get_config(), the exception a config file's get_config() raised (config_flags appends its
  traceback; a preset for a file without presets), a value given to a whole section
  (--config.model=ViT-B_16), or the error itself."""
  if unknown := _unknown_override(argv):
    return unknown
  text = str(error)
  if "has no attribute 'get_config'" in text:
    return f'--config={_config_spec(argv)}: the file defines no get_config().'
  if 'Error whilst parsing config file' in text:
    flag = text.split(': Error whilst parsing config file')[0].removeprefix('flag ')
    cause = [line for line in text.splitlines() if line.strip()][-1]
    if 'get_config() takes 0 positional arguments' in cause:  # a preset for a file without
      name, file = flag.split('=', 1)[0], flag.split('=', 1)[1].rsplit(':', 1)[0]
      return f'{flag}: {file} has no presets; use {name}={file}.'
    return f'{flag}: {re.sub(r"^[A-Za-z]*(Error|Exception): ", "", cause)}'
  if section := re.match(r'flag (--config\.[\w.]+)=.*as a ConfigDict', text):
    return (f'{section[1]} is a section of the config, not a value: set its fields, '
            f'{section[1]}.<field>=<value>.')
  if isinstance(error, flags.Error):
    return f'{text}\nPass --helpshort for the flags.'
  if 'Could not parse' in text and (quoted := _quoted_override(argv)):
    return quoted
  return f'in --config or a --config.<field> override: {text}'


def _quoted_override(argv: list[str]) -> str | None:
  """For an override whose field path holds a key that is not a Python name (a sweep's model
  label such as 'ViT-4'), the message that shows how to write it (models['ViT-4'].lr)."""
  for arg in argv[1:]:
    field, _, value = arg.removeprefix('--config.').partition('=')
    keys = field.split('.')
    bad = [k for k in keys[1:] if not k.isidentifier()]
    if arg.startswith('--config.') and '[' not in field and bad:
      written = keys[0] + ''.join(f'.{k}' if k.isidentifier() else f"['{k}']" for k in keys[1:])
      return (f'--config.{field}: {bad[0]!r} is not a Python name, so the field cannot be '
              f'written with dots; quote it: "--config.{written}={value}".')
  return None


def _broken_file(error: Exception, argv: list[str]) -> str:
  """One line for a config file that cannot be loaded (missing, or raising as it is
  imported, a SyntaxError included): the --config value, the error and the file's line."""
  spec = _config_spec(argv)
  path = spec.split(':', 1)[0]
  if not os.path.isfile(path):
    return f'--config={spec}: no such file.'
  if isinstance(error, SyntaxError):
    line = error.lineno
  else:
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if os.path.abspath(f.filename) == os.path.abspath(path)]
    line = frames[-1].lineno if frames else None
  where = f' at line {line}' if line else ''
  detail = str(getattr(error, 'msg', None) or error).strip().splitlines() or ['']
  return f'--config={spec}: the file failed to load{where}: {type(error).__name__}: {detail[-1]}.'


def parse_flags(argv: list[str]) -> list[str]:
  """absl flag parsing that turns config errors (unknown fields, bad overrides, errors raised
  inside a config file, a config file that is missing or fails to import) into one `Error:`
  line instead of a traceback; the config file can import its neighbours
  (`config.importable`). Pass as `app.run(main, flags_parser=parse_flags)`."""
  try:
    with config_lib.importable(_config_spec(argv)):
      args = flags.FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, ValueError, TypeError) as e:
    sys.exit(f'Error: {_message(e, argv)}')
  except Exception as e:  # pylint: disable=broad-except (a config file is code: anything)
    sys.exit(f'Error: {_broken_file(e, argv)}')
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  try:  # a file config_flags could not open leaves a value that raises OSError when used
    getattr(config, 'keys', None)
  except OSError as e:
    sys.exit(f'Error: {_broken_file(e, argv)}')
  if config is not None and not isinstance(config, ml_collections.ConfigDict):
    sys.exit(f'Error: --config={_config_spec(argv)}: get_config() returned '
             f'{type(config).__name__}, not an ml_collections.ConfigDict.')
  return args


def _only_our_info(record: std_logging.LogRecord) -> bool:
  """Keeps warnings and errors from everyone, INFO lines only from vit_jax (orbax and friends
  log every checkpoint step at INFO)."""
  ours = os.sep + 'vit_jax' + os.sep in record.pathname
  return record.levelno >= std_logging.WARNING or ours


def setup_logging() -> None:
  """INFO progress lines from vit_jax, warnings from everything else."""
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_only_our_info)


INTERRUPTED = ('Stopped by Ctrl-C; every file is renamed into place when complete, so none is '
               'half-written.')


@contextlib.contextmanager
def ends_on_ctrl_c(interrupted: str = INTERRUPTED) -> Iterator[None]:
  """Runs the body as a command's main work: Ctrl-C gets Python's KeyboardInterrupt again
  (`vit_jax.starting` hands over), and one the body does not handle itself ends the command
  with the one line `interrupted` on stderr and exit status 130, not a traceback."""
  starting.hand_over()
  try:
    yield
  except KeyboardInterrupt:
    print(interrupted, file=sys.stderr, flush=True)
    sys.exit(130)


class ArgumentParser(argparse.ArgumentParser):
  """argparse with a bad argument ending the command in one `Error:` line, as the absl commands
  do (`run`), not the usage text with 'error:' last."""

  def error(self, message: str):
    sys.exit(f'Error: {message}\nPass --help for the options.')


def _usage_error_as_one_line(main: Callable[[list[str]], None]) -> Callable[[list[str]], None]:
  """`main` with its `app.UsageError` (a required flag missing, stray arguments) ending the
  command with one `Error:` line, not absl's usage text (the module docstring and every flag)
  with the error last."""
  @functools.wraps(main)
  def checked(argv: list[str]) -> None:
    try:
      main(argv)
    except app.UsageError as e:
      sys.exit(f'Error: {e}\nPass --helpshort for the flags.')
  return checked


def run(main: Callable[[list[str]], None], interrupted: str = INTERRUPTED) -> None:
  """Runs an absl command's `main`: the XLA CPU option set, flags parsed by `parse_flags`, a
  usage error as one `Error:` line, a Ctrl-C it does not handle itself (while it parses its
  flags and sets up, or a second one while it stops) ending it with `interrupted`
  (`ends_on_ctrl_c`)."""
  set_cpu_flag()
  with ends_on_ctrl_c(interrupted):
    app.run(_usage_error_as_one_line(main), flags_parser=parse_flags)
