"""Benchmarks: `python -m vit_jax.bench train|infer|data --model=<name> ...` (see __main__.py).

Modules: `timing` (alternating timing, medians and spread), `worker` (one subject per
process, stepped on demand), `jax_side` (our real train step, forward pass and input pipeline),
`torch_ref` (the PyTorch references), `original_ref` (the original vision_transformer code of a
given checkout), `report` (table and JSON output). FLOP counts and peak FLOP/s per device come
from `vit_jax.flops`.

This file imports nothing: `__main__` sets environment variables before JAX starts.
"""
