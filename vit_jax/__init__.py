"""vit_jax: Vision Transformer scale experiments in JAX/Flax.

Importing the package changes no setting, except in a process started as one of our commands
(`python -m vit_jax.<module>`): that restarts here once, before anything heavy is imported, with
a memory allocator that keeps XLA's CPU buffers mapped (`vit_jax.malloc`), and makes a Ctrl-C
while it starts one line instead of a traceback (`vit_jax.starting`). The commands' entry points
set the XLA CPU option (`vit_jax.cli.set_cpu_flag`).
"""
import sys as _sys

from vit_jax import malloc as _malloc
from vit_jax import starting as _starting

if _malloc.is_command(_sys.orig_argv):
  _malloc.restart_with_fast_malloc()
  _starting.install()
