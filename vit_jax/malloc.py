"""The memory allocator of our commands, chosen at process start.

A process started as one of our commands (`python -m vit_jax.<module>`) restarts once, when
`vit_jax` is imported and before anything heavy is, with an allocator that keeps XLA's CPU
buffers mapped between train steps (`restart_with_fast_malloc`). Importing `vit_jax` in any other
process (a notebook, a test) changes nothing. Only the standard library is used here.
"""
import ctypes.util
import os
import sys

# XLA's CPU runtime frees a train step's temporaries and allocates them again at every step (1.6
# GB for ViT-Ti/16 at batch 32). glibc's malloc hands blocks this large (above 32 MiB, its largest
# mmap threshold) back to the kernel on free, so every step maps them afresh: about 387,000 page
# faults and 0.6-2.8 s of kernel time per step, a quarter of the step's CPU time. TCMalloc keeps
# freed pages mapped and reuses them (no faults). Without it, glibc 2.35+ can back its mappings
# with transparent huge pages (2 MiB), about 900 faults per step, though the kernel's compaction
# for them made some steps cost as much as before (BENCHMARKS.md). Both are read at process start.
TCMALLOC = ('tcmalloc_minimal', 'tcmalloc')
HUGE_PAGES = 'glibc.malloc.hugetlb'
SYSTEM_MALLOC = 'VIT_JAX_SYSTEM_MALLOC'  # set (to anything but '') to keep the process as it is


def _glibc_version() -> tuple[int, ...]:
  """(major, minor) of the C library when it is glibc, else ()."""
  try:
    name, version = (os.confstr('CS_GNU_LIBC_VERSION') or '').split()
    return tuple(map(int, version.split('.')[:2])) if name == 'glibc' else ()
  except (ValueError, OSError):
    return ()


def malloc_environment(env: dict[str, str]) -> dict[str, str]:
  """The variables to set in `env` for a process that keeps XLA's CPU buffers mapped:
  LD_PRELOAD of TCMalloc where the system has it (and TCMalloc's report of allocations above 1
  GiB off, unless set), else GLIBC_TUNABLES with `glibc.malloc.hugetlb=1` added on glibc 2.35+;
  {} when `env` already chose (LD_PRELOAD set, GLIBC_TUNABLES naming glibc.malloc.hugetlb, or
  VIT_JAX_SYSTEM_MALLOC set) or neither applies."""
  tunables = env.get('GLIBC_TUNABLES', '')
  if env.get(SYSTEM_MALLOC) or env.get('LD_PRELOAD') or HUGE_PAGES in tunables:
    return {}
  library = next(filter(None, map(ctypes.util.find_library, TCMALLOC)), None)
  if library:
    return {'LD_PRELOAD': library, 'TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD':
            env.get('TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD', str(1 << 50))}
  if _glibc_version() >= (2, 35):
    return {'GLIBC_TUNABLES': ':'.join(filter(None, [tunables, f'{HUGE_PAGES}=1']))}
  return {}


def is_command(argv: list[str]) -> bool:
  """Whether `argv` (`sys.orig_argv`) starts a module of this package as a command:
  `python [options] -m vit_jax.<module> ...`."""
  args = iter(argv[1:])
  for arg in args:
    if arg == '-m':
      return next(args, '').split('.')[0] == 'vit_jax'
    if arg in ('-X', '-W', '--check-hash-based-pycs'):  # options with a separate value
      next(args, None)
    elif arg == '-c' or not arg.startswith('-'):  # code or a script
      return False
  return False


def restart_with_fast_malloc() -> None:
  """Restarts this process once (same interpreter and arguments, `os.execv`) with
  `malloc_environment`'s variables set, when there are any; child processes inherit them."""
  added = malloc_environment(dict(os.environ))
  if not added or not sys.executable or not sys.orig_argv:
    return
  os.environ.update(added)
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)
