"""vit_jax: Vision Transformer scale experiments in JAX/Flax.

Importing the package changes no setting: the XLA CPU option our commands use is set by their
entry points (`vit_jax.cli.set_cpu_flag`).
"""
