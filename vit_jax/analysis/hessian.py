"""Hessian eigenvalues by power iteration on Hessian-vector products (Park & Kim, Fig. 4)."""
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree


def top_eigenvalues(loss_fn: Callable[[Any], jax.Array], params: Any, k: int = 5,
                    iterations: int = 100, seed: int = 0, tol: float = 1e-6
                    ) -> jax.Array:
  """The k eigenvalues of largest magnitude of the Hessian of `loss_fn` at `params`.

  Power iteration with deflation: eigenvector i is found on H minus the i - 1 components
  already found; Hessian-vector products are forward-over-reverse (`jax.jvp` of `jax.grad`),
  so the Hessian is never formed.

  Args:
    loss_fn: params -> scalar loss (for a mini-batch, regularisation included).
    params: any pytree of float arrays.
    k: eigenvalues wanted; iterations: at most this many per eigenvalue; tol: stop when the
      relative change of the Rayleigh quotient is below it.

  Returns:
    (k,) eigenvalues, largest magnitude first.
  """
  flat, unravel = ravel_pytree(params)
  grad = jax.grad(loss_fn)

  hvp = jax.jit(lambda p, v: ravel_pytree(jax.jvp(grad, (p,), (unravel(v),))[1])[0])

  values, vectors = [], []
  key = jax.random.PRNGKey(seed)
  for _ in range(min(k, flat.size)):
    key, sub = jax.random.split(key)
    v = jax.random.normal(sub, flat.shape, flat.dtype)
    v /= jnp.linalg.norm(v)
    value = 0.
    for _ in range(iterations):
      hv = hvp(params, v)
      for lam, u in zip(values, vectors):  # deflation
        hv -= lam * jnp.dot(u, v) * u
      new_value = float(jnp.dot(v, hv))
      v = hv / jnp.linalg.norm(hv)
      converged = abs(new_value - value) <= tol * abs(new_value)
      value = new_value
      if converged:
        break
    values.append(value)
    vectors.append(v)
  return jnp.array(values)
