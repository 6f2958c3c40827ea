"""vit_jax: Vision Transformer scale experiments in JAX/Flax.

Importing the package sets one XLA CPU option (before JAX starts its backend, which reads
XLA_FLAGS once): `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions), so XLA
runs matmuls through its Eigen kernels. On the 2-core AVX-512 machine of BENCHMARKS.md this
takes 8% less CPU time for a ViT train step and 17-19% less for the forward pass. GPUs ignore
it; a value of the same flag already in XLA_FLAGS is kept.
"""
import os

_CPU_FLAG = 'xla_cpu_experimental_ynn_fusion_type'
if _CPU_FLAG not in os.environ.get('XLA_FLAGS', ''):
  os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} --{_CPU_FLAG}='.strip()
