"""Complex matrix products for the transport loops.

On the CPU, XLA's complex128 GEMM runs at a fraction of its float64 GEMM (rates in
``docs/benchmarks.md``), so :func:`matmul` forms a complex product from four real ones there;
on accelerators it is the plain complex product.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` for complex matrices; four real GEMMs on the CPU (see the module note)."""
    if jax.default_backend() != "cpu" or not (jnp.iscomplexobj(a) and jnp.iscomplexobj(b)):
        return a @ b
    ar, ai = jnp.real(a), jnp.imag(a)
    br, bi = jnp.real(b), jnp.imag(b)
    return lax.complex(ar @ br - ai @ bi, ar @ bi + ai @ br)
