"""Surface Green's functions and self-energies of semi-infinite periodic leads.

A lead is the semi-infinite repetition of one principal cell: onsite blocks ``h00, s00`` and
the coupling ``h01, s01`` from a cell to the next one along the transport direction (+x, the
direction of increasing layer index). With ``A = z S - H`` and ``z = E + i eta`` the surface
Green's function ``g`` of the cell that touches the device solves the Dyson fixed point

    g = (a00 - a_out g a_in)^-1,

where ``a_out`` couples the surface cell to the next cell deeper in the lead and ``a_in`` is
the way back. For the right lead (extending to +x) ``a_out = a01 = z s01 - h01``; for the left
lead (extending to -x) ``a_out = a10 = z s01^H - h01^H``. The self-energy the lead adds to the
adjacent device layer is ``Sigma = a_out g a_in`` (the device couples to the lead as the lead
couples to itself).

``g`` is found by Lopez-Sancho decimation (M. P. Lopez Sancho, J. M. Lopez Sancho, J. Rubio,
J. Phys. F 15, 851 (1985)): every iteration doubles the number of cells taken into account,
so about 20 iterations converge it at eta = 1e-5 eV for couplings of a few eV. The loop
stops once the renormalised couplings fall below 1e-8 of the blocks (their square, the size
of any further correction, is then below round-off) or after ``max_iterations``.

Differentiation: the loop itself is never differentiated. Derivatives follow from implicit
differentiation of the fixed point: ``dg - P dg Q = R`` with ``P = g a_out``, ``Q = a_in g``
and ``R = g (-da00 + da_out g a_in + a_out g da_in) g``, a Stein equation solved by doubling
(Smith's method) inside :func:`jax.lax.custom_linear_solve`. So forward mode (``jvp``) and
reverse mode (``grad``) both work, and gradients with respect to lead blocks are exact
derivatives of the converged surface Green's function (not of a truncated iteration).

The Dyson residual ``||(a00 - a_out g a_in) g - 1||_F`` is returned per energy (to first order
it bounds the relative error of g as a fixed point): it stays near 1e-12 where
decimation converged and grows to 1e-2 or more when the energy lies
within ~eta of an eigenvalue of the lead cell pencil ``(h00, s00)``, where round-off destroys
``g``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from hamjax.transport.linalg import matmul

__all__ = [
    "surface_green_function",
    "self_energy",
    "dyson_residual",
    "fixed_point_residual",
    "surface_green",
    "surface_green_pair",
]

DEFAULT_MAX_ITERATIONS = 60
"""Default cap on decimation (and Stein doubling) iterations: 2^60 lead cells."""

_CONVERGED = 1e-13  # Stein doubling stops once its next term is this small (relative)
_DECIMATED = 1e-8
"""Decimation stops once the renormalised couplings are this small relative to the blocks:
every further step corrects the surface block by about their product, 1e-16 relative."""


def _max_abs(x: jax.Array) -> jax.Array:
    return jnp.max(jnp.abs(x), axis=(-2, -1))


def _decimate_both(a00, a_out, a_in, max_iterations):
    """Lopez-Sancho decimation tracking both ends of the chain.

    Returns ``(a00 - Sigma, a00 - Sigma_bar)``: the inverse surface Green's function of the
    lead, and that of the lead with ``a_out`` and ``a_in`` exchanged (the same bulk extending
    the other way), which costs one more subtraction per step.
    """
    b = a00.shape[-1]
    scale = _max_abs(a00) + _max_abs(a_out) + _max_abs(a_in)

    def cond(state):
        k, _, _, _, alpha, beta = state
        small = _max_abs(alpha) + _max_abs(beta) <= _DECIMATED * scale
        return (k < max_iterations) & ~small

    def body(state):
        k, eps_s, eps_bar, eps, alpha, beta = state
        # One LU, both right-hand sides: [g alpha, g beta] with g = eps^-1.
        g_ab = jnp.linalg.solve(eps, jnp.concatenate([alpha, beta], axis=-1))
        # Two wide products instead of four square ones.
        alpha_g = matmul(alpha, g_ab)  # [alpha g alpha | alpha g beta]
        beta_g = matmul(beta, g_ab)  # [beta g alpha | beta g beta]
        agb = alpha_g[..., b:]
        bga = beta_g[..., :b]
        return (
            k + 1,
            eps_s - agb,
            eps_bar - bga,
            eps - agb - bga,
            alpha_g[..., :b],
            beta_g[..., b:],
        )

    state = (jnp.asarray(0), a00, a00, a00, a_out, a_in)
    _, eps_s, eps_bar, _, _, _ = lax.while_loop(cond, body, state)
    return eps_s, eps_bar


def _stein(p, q, r, max_iterations):
    """Solve ``X - p X q = r`` by doubling: ``X = sum_k p^k r q^k``."""
    scale = _max_abs(r)

    def cond(state):
        k, x, pk, qk = state
        done = _max_abs(pk) * _max_abs(qk) * _max_abs(x) <= _CONVERGED * scale
        return (k < max_iterations) & ~done

    def body(state):
        k, x, pk, qk = state
        return (k + 1, x + matmul(matmul(pk, x), qk), matmul(pk, pk), matmul(qk, qk))

    _, x, _, _ = lax.while_loop(cond, body, (jnp.asarray(0), r, p, q))
    return x


@partial(jax.custom_jvp, nondiff_argnums=(3,))
def surface_green(a00, a_out, a_in, max_iterations):
    """Surface Green's function ``g = (a00 - a_out g a_in)^-1`` of a lead from its blocks
    of ``A = z S - H`` at one complex energy (module note): Lopez-Sancho decimation of at
    most ``max_iterations`` steps, differentiated implicitly (forward and reverse mode)."""
    eps_s, _ = _decimate_both(a00, a_out, a_in, max_iterations)
    return jnp.linalg.inv(eps_s)


def _green_tangent(g, primals, tangents, max_iterations):
    """Tangent ``dg`` of the fixed point ``g = (a00 - a_out g a_in)^-1`` (module note)."""
    a00, a_out, a_in = primals
    da00, da_out, da_in = tangents
    ga_in = g @ a_in
    a_out_g = a_out @ g
    r = g @ (-da00 + da_out @ ga_in + a_out_g @ da_in) @ g
    p = g @ a_out
    q = a_in @ g

    def matvec(x):
        return x - matmul(matmul(p, x), q)

    return lax.custom_linear_solve(
        matvec,
        r,
        solve=lambda _, rhs: _stein(p, q, rhs, max_iterations),
        transpose_solve=lambda _, rhs: _stein(p.T, q.T, rhs, max_iterations),
    )


@surface_green.defjvp
def _surface_jvp(max_iterations, primals, tangents):
    g = surface_green(*primals, max_iterations)
    return g, _green_tangent(g, primals, tangents, max_iterations)


@partial(jax.custom_jvp, nondiff_argnums=(6,))
def surface_green_pair(a00_l, out_l, in_l, a00_r, out_r, in_r, max_iterations):
    """Surface Green's functions ``(g_l, g_r)`` of a left and a right lead of the same bulk
    material, from one decimation run.

    Both leads are given as for :func:`surface_green`; they must be the same bulk, i.e.
    ``(a00_l, out_l, in_l) == (a00_r, in_r, out_r)`` (the left lead couples outwards with the
    right lead's way back). The primal values then come from one Lopez-Sancho run on the right
    lead's blocks that tracks both ends of the chain (:func:`_decimate_both`), half the work of
    two :func:`surface_green` calls. Tangents are taken per lead from its own blocks and
    tangents, so derivatives with respect to the left and the right lead stay separate (a
    perturbation of one lead alone is not assumed to move the other).
    """
    eps_r, eps_l = _decimate_both(a00_r, out_r, in_r, max_iterations)
    return jnp.linalg.inv(eps_l), jnp.linalg.inv(eps_r)


@surface_green_pair.defjvp
def _surface_pair_jvp(max_iterations, primals, tangents):
    g_l, g_r = surface_green_pair(*primals, max_iterations)
    dg_l = _green_tangent(g_l, primals[:3], tangents[:3], max_iterations)
    dg_r = _green_tangent(g_r, primals[3:], tangents[3:], max_iterations)
    return (g_l, g_r), (dg_l, dg_r)


def _as_complex(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "hamjax.transport works in complex128: enable float64 first with "
            "jax.config.update('jax_enable_x64', True)"
        )
    return x.astype(jnp.complex128)


def _lead_matrices(energy, onsite, hopping, overlap_onsite, overlap_hopping, eta, side):
    """``(a00, a_out, a_in)`` of a lead at one energy (eV)."""
    onsite = _as_complex(onsite)
    hopping = _as_complex(hopping)
    b = onsite.shape[-1]
    s00 = (
        jnp.eye(b, dtype=jnp.complex128) if overlap_onsite is None else _as_complex(overlap_onsite)
    )
    s01 = (
        jnp.zeros((b, b), jnp.complex128)
        if overlap_hopping is None
        else _as_complex(overlap_hopping)
    )
    z = jnp.asarray(energy, jnp.complex128) + 1j * eta
    a00 = z * s00 - onsite
    a01 = z * s01 - hopping
    a10 = z * s01.conj().T - hopping.conj().T
    if side == "right":
        return a00, a01, a10
    if side == "left":
        return a00, a10, a01
    raise ValueError(f"side must be 'left' or 'right', got {side!r}")


def fixed_point_residual(g: jax.Array, a00: jax.Array, sigma: jax.Array) -> jax.Array:
    """:func:`dyson_residual` ``||(a00 - sigma) g - 1||_F`` for a self-energy
    ``sigma = a_out g a_in`` already at hand (no gradient)."""
    g, a00, sigma = (lax.stop_gradient(x) for x in (g, a00, sigma))
    r = matmul(a00 - sigma, g) - jnp.eye(g.shape[-1], dtype=g.dtype)
    return jnp.linalg.norm(r)


def dyson_residual(g: jax.Array, a00: jax.Array, a_out: jax.Array, a_in: jax.Array) -> jax.Array:
    """Dyson residual ``R = ||(a00 - a_out g a_in) g - 1||_F`` (no gradient).

    Since ``g - (a00 - a_out g a_in)^-1 = -(a00 - a_out g a_in)^-1 (that - 1)``, R bounds
    the relative error ``||g - (a00 - a_out g a_in)^-1||_2 / ||g||_2`` of the fixed point
    to first order; it needs one product where that error needs an inversion.
    """
    return fixed_point_residual(g, a00, a_out @ g @ a_in)


def surface_green_function(
    energy,
    onsite,
    hopping,
    overlap_onsite=None,
    overlap_hopping=None,
    *,
    eta: float = 1e-5,
    side: str = "right",
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> tuple[jax.Array, jax.Array]:
    """Surface Green's function of a semi-infinite lead at one energy.

    Args:
        energy: energy E in eV (scalar; ``jax.vmap`` for many).
        onsite: ``h00`` [b, b], the lead cell's Hamiltonian in eV.
        hopping: ``h01`` [b, b] in eV, coupling of a cell to the next one along +x.
        overlap_onsite: ``s00`` [b, b]; identity if None.
        overlap_hopping: ``s01`` [b, b]; zero if None.
        eta: positive broadening in eV (z = E + i eta).
        side: "right" for a lead extending to +x, "left" for one extending to -x.
        max_iterations: cap on decimation steps (each doubles the cells included).

    Returns:
        ``(g, residual)``: g [b, b] complex128 in 1/eV and the Dyson residual.
    """
    a00, a_out, a_in = _lead_matrices(
        energy, onsite, hopping, overlap_onsite, overlap_hopping, eta, side
    )
    g = surface_green(a00, a_out, a_in, max_iterations)
    return g, dyson_residual(g, a00, a_out, a_in)


def self_energy(
    energy,
    onsite,
    hopping,
    overlap_onsite=None,
    overlap_hopping=None,
    *,
    eta: float = 1e-5,
    side: str = "right",
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
) -> tuple[jax.Array, jax.Array]:
    """Self-energy ``Sigma = a_out g a_in`` (eV) a lead adds to the layer it touches.

    Same arguments as :func:`surface_green_function`. For the chain with onsite 0 and hopping
    -t, ``Sigma(E) = (E - i sqrt(4 t^2 - E^2)) / 2`` inside the band.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> import numpy as np
    >>> sigma, _ = self_energy(0.7, np.zeros((1, 1)), -np.ones((1, 1)), eta=1e-9)
    >>> print(f"{complex(sigma[0, 0]):.8f}")
    0.35000000-0.93674970j

    Returns:
        ``(sigma, residual)``: Sigma [b, b] complex128 in eV and the Dyson residual.
    """
    a00, a_out, a_in = _lead_matrices(
        energy, onsite, hopping, overlap_onsite, overlap_hopping, eta, side
    )
    g = surface_green(a00, a_out, a_in, max_iterations)
    sigma = a_out @ g @ a_in
    return sigma, fixed_point_residual(g, a00, sigma)
