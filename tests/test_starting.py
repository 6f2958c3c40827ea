"""Ctrl-C while a command starts (`vit_jax.starting`): one line and exit status 130 instead of a
traceback from an import; the command's own handling takes over before its main work
(`vit_jax.cli.ends_on_ctrl_c`); an ignored SIGINT stays ignored."""
import signal
import subprocess
import sys

import pytest

from conftest import child_env, with_site_hook
from vit_jax import cli, starting

# Sends Ctrl-C (SIGINT to this process) when the command first imports NumPy, which every
# command does while it starts (through JAX, matplotlib or its own modules).
CTRL_C_AT_NUMPY_IMPORT = '''
import os, signal, sys

class CtrlCAtNumpy:
  def find_spec(self, name, path=None, target=None):
    if name == 'numpy':
      sys.meta_path.remove(self)
      os.kill(os.getpid(), signal.SIGINT)
    return None

sys.meta_path.insert(0, CtrlCAtNumpy())
'''
COMMANDS = ('vit_jax.main', 'vit_jax.sweep', 'vit_jax.analyze', 'vit_jax.export',
            'vit_jax.data.prepare', 'vit_jax.scaling', 'vit_jax.bench')


@pytest.mark.parametrize('command', COMMANDS)
def test_ctrl_c_while_a_command_imports_is_one_line(command, tmp_path):
  env = with_site_hook(child_env(1), tmp_path / 'hook', CTRL_C_AT_NUMPY_IMPORT)
  stopped = subprocess.run([sys.executable, '-m', command], capture_output=True, text=True,
                           env=env, timeout=120)
  assert stopped.returncode == 130, stopped.stderr[-2000:]
  assert stopped.stderr.splitlines() == [starting.MESSAGE]
  assert stopped.stdout == ''


def test_the_command_takes_over_ctrl_c_before_its_main_work(capsys):
  starting.install()
  try:
    assert signal.getsignal(signal.SIGINT) is starting.stop
    with pytest.raises(SystemExit) as stop:
      with cli.ends_on_ctrl_c('Stopped here.'):
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.raise_signal(signal.SIGINT)
        pytest.fail('Ctrl-C did not interrupt the body')
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
  assert stop.value.code == 130
  assert capsys.readouterr().err == 'Stopped here.\n'


def test_an_ignored_ctrl_c_stays_ignored():
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  try:
    starting.install()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    starting.hand_over()
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
  finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
