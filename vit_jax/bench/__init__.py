"""Benchmarks: `python -m vit_jax.bench train|infer|data --model=<name> ...` (see __main__.py).

Modules: `flops` (analytic ViT FLOPs, peak FLOP/s per device), `timing` (interleaved timing,
medians and spread), `jax_side` (our real train step, forward pass and input pipeline),
`torch_ref` (the PyTorch reference), `report` (table and JSON output).

This file imports nothing: `__main__` sets environment variables before JAX starts.
"""
