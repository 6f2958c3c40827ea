"""`vit_jax.malloc`: a command restarts once, at `import vit_jax`, with the allocator it names,
which then keeps a freed 64 MiB block mapped (or backs it with huge pages), checked by the page
faults of touching it; other processes do not restart; a user's choice and the opt-out are
kept."""
import ctypes.util
import os
import subprocess
import sys

from vit_jax import malloc

# Prints one 'start' line per process image, its LD_PRELOAD and GLIBC_TUNABLES, whether TCMalloc
# is mapped into it, and the page faults of touching a 64 MiB block malloc'd after an equal
# block was touched and freed (glibc unmaps blocks above 32 MiB on free; TCMalloc reuses them).
CHILD = r'''
import ctypes, os, resource
print('start', flush=True)
from vit_jax import malloc
malloc.restart_with_fast_malloc()
print('LD_PRELOAD', os.environ.get('LD_PRELOAD', '-'))
print('GLIBC_TUNABLES', os.environ.get('GLIBC_TUNABLES', '-'))
print('tcmalloc', int('tcmalloc' in open('/proc/self/maps').read()))
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
size = 64 << 20
first = libc.malloc(size)
ctypes.memset(first, 1, size)
libc.free(first)
block = libc.malloc(size)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
ctypes.memset(block, 1, size)
print('faults', resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
'''
SMALL_PAGES = (64 << 20) // os.sysconf('SC_PAGE_SIZE')
with open('/sys/kernel/mm/transparent_hugepage/enabled', encoding='utf-8') as f:
  HUGE_PAGES_MODE = f.read().split('[')[1].split(']')[0]  # 'always', 'madvise' or 'never'
CHOSEN = ('LD_PRELOAD', 'GLIBC_TUNABLES', malloc.SYSTEM_MALLOC)


def run_child(**env: str) -> dict[str, str]:
  """The child's report ('starts': processes started) with `env` instead of our variables."""
  env = {**{k: v for k, v in os.environ.items() if k not in CHOSEN}, **env}
  out = subprocess.run([sys.executable, '-c', CHILD], env=env, check=True, capture_output=True,
                       text=True).stdout.split('\n')
  return {**dict(line.split(' ', 1) for line in out if ' ' in line),
          'starts': out.count('start')}


def test_restarts_once_with_an_allocator_that_keeps_pages_mapped():
  added = malloc.malloc_environment({})
  child = run_child()
  assert child['starts'] == (2 if added else 1)
  assert child['LD_PRELOAD'] == added.get('LD_PRELOAD', '-')
  assert child['GLIBC_TUNABLES'] == added.get('GLIBC_TUNABLES', '-')
  assert child['tcmalloc'] == ('1' if 'LD_PRELOAD' in added else '0')
  if added:  # TCMalloc: no faults; huge pages: one per 2 MiB (when the kernel allows them)
    assert int(child['faults']) < 0.1 * SMALL_PAGES or (
        'GLIBC_TUNABLES' in added and HUGE_PAGES_MODE == 'never')


def test_opt_out_and_a_users_choice_are_kept():
  child = run_child(VIT_JAX_SYSTEM_MALLOC='1')
  assert (child['starts'], child['LD_PRELOAD'], child['tcmalloc']) == (1, '-', '0')
  if HUGE_PAGES_MODE != 'always':  # glibc maps the block afresh, in 4 KiB pages
    assert int(child['faults']) >= 0.9 * SMALL_PAGES
  child = run_child(GLIBC_TUNABLES='glibc.malloc.hugetlb=0')
  assert (child['starts'], child['GLIBC_TUNABLES']) == (1, 'glibc.malloc.hugetlb=0')
  assert malloc.malloc_environment({'LD_PRELOAD': 'libjemalloc.so.2'}) == {}


def test_huge_pages_without_tcmalloc_keep_the_users_tunables(monkeypatch):
  monkeypatch.setattr(ctypes.util, 'find_library', lambda name: None)
  monkeypatch.setattr(malloc, '_glibc_version', lambda: (2, 36))
  assert malloc.malloc_environment({'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1'}) == {
      'GLIBC_TUNABLES': 'glibc.malloc.trim_threshold=1:glibc.malloc.hugetlb=1'}
  monkeypatch.setattr(malloc, '_glibc_version', lambda: (2, 31))
  assert malloc.malloc_environment({}) == {}


def test_only_a_command_of_this_package_restarts_when_it_imports_vit_jax():
  assert malloc.is_command(['python', '-m', 'vit_jax.main', '--config=c.py'])
  assert malloc.is_command(['python', '-u', '-X', 'importtime', '-m', 'vit_jax.sweep'])
  assert not malloc.is_command(['python', '-m', 'pytest', 'tests'])
  assert not malloc.is_command(['python', '-c', 'import vit_jax', '-m', 'vit_jax.main'])
  assert not malloc.is_command(['python', 'script.py', '-m', 'vit_jax.main'])
  env = {k: v for k, v in os.environ.items() if k not in CHOSEN}
  # -X importtime reports every import of each process image: vit_jax.malloc once per start.
  starts = lambda *args: sum(line.endswith(' vit_jax.malloc') for line in subprocess.run(
      [sys.executable, '-X', 'importtime', *args], env=env, check=True, capture_output=True,
      text=True).stderr.splitlines())
  assert starts('-m', 'vit_jax.files') == (2 if malloc.malloc_environment(env) else 1)
  assert starts('-c', 'import vit_jax') == 1
