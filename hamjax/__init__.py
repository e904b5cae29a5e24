"""hamjax: equivariant neural-network Hamiltonians and differentiable NEGF transport in JAX.

Importing hamjax changes no JAX setting: entry points (the CLI, scripts, tests) enable
float64 themselves with ``jax.config.update("jax_enable_x64", True)``.
"""

__version__ = "0.1.0"
