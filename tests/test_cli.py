"""`vit_jax.cli.use_huge_pages`: the process restarts once with the tunable in its environment, a
user's GLIBC_TUNABLES is kept, and glibc's malloc then backs large blocks with huge pages (far
fewer page faults)."""
import os
import subprocess
import sys

import pytest

from vit_jax import cli

# Prints one 'start' line per process image, then its GLIBC_TUNABLES and the page faults of
# touching a fresh 64 MiB malloc'd block (glibc maps it with mmap: above its largest mmap
# threshold, 32 MiB), which say whether glibc applied the tunable at the process's start.
CHILD = r'''
import ctypes, os, resource
print('start', flush=True)
from vit_jax import cli
cli.use_huge_pages()
print('GLIBC_TUNABLES', os.environ.get('GLIBC_TUNABLES', ''))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
size = 64 << 20
block = libc.malloc(size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(block, 1, size)
print('faults', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''


def run_child(tunables: str | None) -> tuple[int, str, int]:
  """(processes started, GLIBC_TUNABLES at the last start, page faults touching 64 MiB)."""
  env = {k: v for k, v in os.environ.items() if k != 'GLIBC_TUNABLES'}
  if tunables is not None:
    env['GLIBC_TUNABLES'] = tunables
  out = subprocess.run([sys.executable, '-c', CHILD], env=env, check=True, capture_output=True,
                       text=True).stdout.split('\n')
  fields = dict(line.split(' ', 1) for line in out if ' ' in line)
  return out.count('start'), fields['GLIBC_TUNABLES'], int(fields['faults'])


needs_glibc = pytest.mark.skipif((cli._glibc_version() or (0,)) < (2, 35),  # pylint: disable=protected-access
                                 reason='glibc.malloc.hugetlb needs glibc 2.35 or later')


@needs_glibc
def test_restarts_once_with_the_tunable_and_keeps_the_users():
  assert run_child(None)[:2] == (2, 'glibc.malloc.hugetlb=1')
  assert run_child('glibc.malloc.trim_threshold=1000000')[:2] == (
      2, 'glibc.malloc.trim_threshold=1000000:glibc.malloc.hugetlb=1')
  assert run_child('glibc.malloc.hugetlb=0')[:2] == (1, 'glibc.malloc.hugetlb=0')


@needs_glibc
def test_huge_pages_cut_the_page_faults_of_a_large_block():
  with open('/sys/kernel/mm/transparent_hugepage/enabled', encoding='utf-8') as f:
    if '[never]' in f.read():
      pytest.skip('transparent huge pages are off in this kernel')
  small_pages = (64 << 20) // os.sysconf('SC_PAGE_SIZE')
  assert run_child('glibc.malloc.hugetlb=0')[2] >= 0.9 * small_pages
  assert run_child(None)[2] < 0.1 * small_pages
