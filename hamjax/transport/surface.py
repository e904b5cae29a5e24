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

The eigenmode solution (``method="eigen"``) needs no iteration: Bloch solutions
``psi_n = lambda^n u`` of the bulk solve ``(a_in + lambda a00 + lambda^2 a_out) u = 0``; the
b modes with ``|lambda| < 1`` decay along ``a_out`` (eta > 0 keeps every mode off the unit
circle), and with ``U`` their vectors and ``L = diag(lambda)`` the transfer matrix
``F = U L U^-1`` gives ``g = (a00 + a_out F)^-1`` and ``Sigma = -a_out F`` (the textbook
construction, e.g. Kwant's ``kwant.physics.leads`` and Sanvito et al., Phys. Rev. B 59, 11936
(1999)). JAX has no generalised eigensolver, so the quadratic problem is linearised to the
2b x 2b pencil ``M - lambda N`` with ``M = [[0, 1], [-a_in, -a00]]``, ``N = [[1, 0], [0,
a_out]]`` (eigenvectors ``[u; lambda u]``) and solved as the standard problem
``K = (M - s N)^-1 N`` for a shift s: ``nu = 1 / (lambda - s)``, ``lambda = s + 1 / nu``, so a
singular ``a_out`` (zero rows, padding orbitals) gives ``nu = 0`` instead of an infinite
lambda, and a singular ``a_in`` gives ``lambda = 0``; both are ordinary eigenvalues of K.
``M - s N`` is invertible when ``Q(s) = a_in + s a00 + s^2 a_out`` is; s is the best
conditioned of three fixed points off the unit circle (by the pivots of their LU). The same
eigen-decomposition holds the other lead of the same bulk: with ``mu = 1 / lambda`` its
decaying modes are the b modes with ``|lambda| > 1`` (``nu = 0``, ``mu = 0`` included), their
vectors the lower halves ``lambda u`` of the eigenvectors, finite where the upper halves of
the ``nu = 0`` modes vanish. The cost is one 2b x 2b eigen-decomposition per energy whatever
eta is; decimation's grows with ``log2(1/eta)``. Defective eigenvalues (Jordan blocks within
one lead's set of modes) make ``U`` singular; the Dyson residual then reports it.

Differentiation: the loop itself is never differentiated. Derivatives follow from implicit
differentiation of the fixed point: ``dg - P dg Q = R`` with ``P = g a_out``, ``Q = a_in g``
and ``R = g (-da00 + da_out g a_in + a_out g da_in) g``, a Stein equation solved by doubling
(Smith's method) inside :func:`jax.lax.custom_linear_solve`. So forward mode (``jvp``) and
reverse mode (``grad``) both work, and gradients with respect to lead blocks are exact
derivatives of the converged surface Green's function (not of a truncated iteration).

The Dyson residual ``||(a00 - a_out g a_in) g - 1||_F`` is returned per energy (to first order
it bounds the relative error of g as a fixed point): it stays near 1e-12 where
decimation converged and grows to 1e-2 or more when the energy lies
within ~eta of an eigenvalue of the lead cell pencil ``(h00, s00)``, or of one of the finite
segments of 2^k + 1 cells whose end blocks decimation forms on the way (a chain with onsite
-sqrt(2) eV and hopping -1 eV fails at E = 0, an eigenvalue of three cells), where round-off
destroys ``g``. The eigenmodes invert no such segment and stay exact there.
"""

from __future__ import annotations

import functools
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from hamjax.transport.linalg import matmul

__all__ = [
    "surface_green_function",
    "self_energy",
    "dyson_residual",
    "fixed_point_residual",
    "surface_green",
    "surface_green_pair",
    "LEAD_METHODS",
    "eigen_supported",
    "resolve_lead_method",
]

LEAD_METHODS = ("decimation", "eigen", "auto")
"""Ways to the surface Green's function: Lopez-Sancho decimation, the eigenmodes of the lead
(one eigen-decomposition per energy), or ``"auto"`` (:func:`resolve_lead_method`)."""

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


# Shifts s of the shift-and-invert eigenproblem (module note): off the unit circle, where
# propagating modes lie, at angles unrelated to each other and to simple fractions of pi.
_SHIFTS = (0.55 * np.exp(0.7j), 1.8 * np.exp(2.3j), 0.4 * np.exp(-1.9j))


def _shift_factor(a00, a_out, a_in):
    """``(s, lu, permutation)``: the shift of :data:`_SHIFTS` whose ``Q(s) = a_in + s a00 +
    s^2 a_out`` has the best LU (largest ratio of the smallest to the largest pivot), and
    that LU. One LU per candidate, each of a single matrix (no batched LAPACK on the CPU,
    see :func:`hamjax.transport.sweep._self_energies`)."""
    factors, quality = [], []
    for shift in _SHIFTS:
        q = a_in + shift * a00 + (shift * shift) * a_out
        lu, _, perm = lax.linalg.lu(q)
        pivots = jnp.abs(jnp.diagonal(lu))
        factors.append((lu, perm))
        quality.append(jnp.min(pivots) / jnp.maximum(jnp.max(pivots), 1e-300))
    best = jnp.argmax(jnp.stack(quality))
    shift = jnp.asarray(_SHIFTS, jnp.complex128)[best]
    lu = jnp.stack([f[0] for f in factors])[best]
    perm = jnp.stack([f[1] for f in factors])[best]
    return shift, lu, perm


def _lead_modes(a00, a_out, a_in):
    """Transfer matrices ``(F, F_back)`` of a lead's bulk from one eigen-decomposition.

    ``F = U L U^-1`` from the b modes with ``|lambda| < 1`` of ``(a_in + lambda a00 +
    lambda^2 a_out) u = 0`` (decaying along ``a_out``), ``F_back`` the same for the bulk
    extending the other way (``a_out`` and ``a_in`` exchanged): the b modes with
    ``|lambda| > 1``, eigenvalues ``mu = 1 / lambda``, vectors ``lambda u`` (module note).
    """
    b = a00.shape[-1]
    eye = jnp.eye(b, dtype=a00.dtype)
    shift, lu, perm = _shift_factor(a00, a_out, a_in)
    # (M - s N)^-1 N = [[X1, X2], [1 + s X1, s X2]],
    # [X1 | X2] = -Q(s)^-1 [a00 + s a_out | a_out]
    rhs = jnp.concatenate([a00 + shift * a_out, a_out], axis=-1)
    x = -lax.linalg.triangular_solve(
        lu,
        lax.linalg.triangular_solve(lu, rhs[perm], left_side=True, lower=True, unit_diagonal=True),
        left_side=True,
        lower=False,
    )
    k = jnp.concatenate(
        [x, jnp.concatenate([eye + shift * x[:, :b], shift * x[:, b:]], axis=-1)], axis=0
    )
    nu, vectors = jnp.linalg.eig(k)
    # |lambda| = |1 + s nu| / |nu|, infinite at nu = 0; the b smallest decay along a_out
    size = jnp.abs(1 + shift * nu) / jnp.abs(nu)
    order = jnp.argsort(jnp.where(nu == 0, jnp.inf, size))
    out, back = order[:b], order[b:]
    nu_out, nu_back = nu[out], nu[back]
    lam = (1 + shift * nu_out) / nu_out
    mu = nu_back / (1 + shift * nu_back)
    u_out = vectors[:b, out]
    u_back = vectors[b:, back]

    def transfer(u, eigenvalues):  # u diag(eigenvalues) u^-1 as a solve with u^T
        return jnp.linalg.solve(u.T, (u * eigenvalues[None, :]).T).T

    return transfer(u_out, lam), transfer(u_back, mu)


def _eigen_both(a00, a_out, a_in):
    """Inverse surface Green's functions ``(a00 + a_out F, a00 + a_in F_back)`` of the lead
    and of the same bulk extending the other way (the eigenmode twin of
    :func:`_decimate_both`)."""
    f_out, f_back = _lead_modes(a00, a_out, a_in)
    return a00 + matmul(a_out, f_out), a00 + matmul(a_in, f_back)


def _inverse_surfaces(a00, a_out, a_in, max_iterations, method):
    if method == "decimation":
        return _decimate_both(a00, a_out, a_in, max_iterations)
    if method == "eigen":
        return _eigen_both(a00, a_out, a_in)
    raise ValueError(f"method must be 'decimation' or 'eigen', got {method!r}")


@partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def surface_green(a00, a_out, a_in, max_iterations, method="decimation"):
    """Surface Green's function ``g = (a00 - a_out g a_in)^-1`` of a lead from its blocks
    of ``A = z S - H`` at one complex energy (module note): Lopez-Sancho decimation of at
    most ``max_iterations`` steps (``method="decimation"``) or the lead's eigenmodes
    (``"eigen"``), differentiated implicitly (forward and reverse mode) either way."""
    if method == "eigen":  # only the modes decaying along a_out are needed
        f_out, _ = _lead_modes(a00, a_out, a_in)
        return jnp.linalg.inv(a00 + matmul(a_out, f_out))
    eps_s, _ = _inverse_surfaces(a00, a_out, a_in, max_iterations, method)
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
def _surface_jvp(max_iterations, method, primals, tangents):
    g = surface_green(*primals, max_iterations, method)
    return g, _green_tangent(g, primals, tangents, max_iterations)


@partial(jax.custom_jvp, nondiff_argnums=(6, 7))
def surface_green_pair(a00_l, out_l, in_l, a00_r, out_r, in_r, max_iterations, method="decimation"):
    """Surface Green's functions ``(g_l, g_r)`` of a left and a right lead of the same bulk
    material, from one decimation run or one eigen-decomposition (``method``).

    Both leads are given as for :func:`surface_green`; they must be the same bulk, i.e.
    ``(a00_l, out_l, in_l) == (a00_r, in_r, out_r)`` (the left lead couples outwards with the
    right lead's way back). The primal values then come from the right lead's blocks alone:
    one Lopez-Sancho run that tracks both ends of the chain (:func:`_decimate_both`), half the
    work of two :func:`surface_green` calls, or one eigen-decomposition whose modes decaying
    to the right serve the right lead and the others the left one (:func:`_lead_modes`).
    Tangents are taken per lead from its own blocks and tangents, so derivatives with respect
    to the left and the right lead stay separate (a perturbation of one lead alone is not
    assumed to move the other).
    """
    eps_r, eps_l = _inverse_surfaces(a00_r, out_r, in_r, max_iterations, method)
    return jnp.linalg.inv(eps_l), jnp.linalg.inv(eps_r)


@surface_green_pair.defjvp
def _surface_pair_jvp(max_iterations, method, primals, tangents):
    g_l, g_r = surface_green_pair(*primals, max_iterations, method)
    dg_l = _green_tangent(g_l, primals[:3], tangents[:3], max_iterations)
    dg_r = _green_tangent(g_r, primals[3:], tangents[3:], max_iterations)
    return (g_l, g_r), (dg_l, dg_r)


@functools.lru_cache(maxsize=8)
def eigen_supported(platform: str) -> bool:
    """Whether JAX's nonsymmetric eigensolver (``jnp.linalg.eig``) runs on ``platform``
    ("cpu", "gpu", ...): LAPACK on the CPU; cuSOLVER 11.7.1 or newer (or MAGMA) on NVIDIA
    GPUs, none on TPUs in jax 0.10. Found by compiling a 2 x 2 eigenproblem there once."""
    if platform == "cpu":
        return True
    try:
        device = jax.devices(platform)[0]
        x = jax.device_put(jnp.eye(2, dtype=jnp.complex64), device)
        jax.block_until_ready(jax.jit(jnp.linalg.eig)(x))
    except Exception:  # noqa: BLE001 - any lowering or runtime failure means "not here"
        return False
    return True


# Decimation steps one eigen-decomposition of the 2b x 2b pencil is worth on the CPU: with
# one OpenBLAS thread a complex eig took 0.10 s at 2b = 256 and 25 ms at 128, the time of
# 25-28 decimation steps at b = 128 and 64 (docs/benchmarks.md, "Identical leads").
_EIGEN_STEPS_CPU = 28


def resolve_lead_method(method: str, platform: str, eta: float | None = None, scale=None) -> str:
    """The lead method to run: ``"decimation"`` or ``"eigen"``.

    ``"eigen"`` on a platform without an eigensolver (:func:`eigen_supported`) raises
    ``ValueError``. ``"auto"`` takes the eigenmodes where decimation would need more steps
    than an eigen-decomposition is worth (decimation stops once ``|lambda|^(2^k) < 1e-8``
    for the slowest mode, ``|lambda| ~ 1 - eta / scale``: about ``log2(scale / eta) + 4``
    steps for couplings of ``scale`` eV, against :data:`_EIGEN_STEPS_CPU` on the CPU, so
    eigenmodes below about ``5e-8 * scale``; on accelerators decimation, whose batched LU
    and products keep them busy), else decimation.
    """
    if method not in LEAD_METHODS:
        raise ValueError(f"lead_method must be one of {LEAD_METHODS}, got {method!r}")
    if method == "eigen":
        if not eigen_supported(platform):
            raise ValueError(
                f"lead_method='eigen' needs jnp.linalg.eig, which this jax cannot run on "
                f"{platform!r}; use lead_method='decimation' (or 'auto', which falls back to it)"
            )
        return method
    if method == "decimation" or platform != "cpu" or eta is None:
        return "decimation"
    scale = 1.0 if scale is None else max(float(scale), 1e-300)
    steps = np.log2(max(scale / float(eta), 2.0)) + 4
    return "eigen" if steps > _EIGEN_STEPS_CPU else "decimation"


def _as_complex(x) -> jax.Array:
    x = jnp.asarray(x)
    if not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "hamjax.transport works in complex128: enable float64 first with "
            "jax.config.update('jax_enable_x64', True)"
        )
    return x.astype(jnp.complex128)


def _method(method: str) -> str:
    """``method`` for one lead on the default backend ("auto": decimation)."""
    return resolve_lead_method(method, jax.default_backend())


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
    method: str = "decimation",
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
        max_iterations: cap on decimation steps (each doubles the cells included), and on
            the doubling steps of the derivative's Stein equation.
        method: "decimation" (Lopez-Sancho) or "eigen" (the lead's eigenmodes, module note).

    Returns:
        ``(g, residual)``: g [b, b] complex128 in 1/eV and the Dyson residual.
    """
    a00, a_out, a_in = _lead_matrices(
        energy, onsite, hopping, overlap_onsite, overlap_hopping, eta, side
    )
    g = surface_green(a00, a_out, a_in, max_iterations, _method(method))
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
    method: str = "decimation",
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
    g = surface_green(a00, a_out, a_in, max_iterations, _method(method))
    sigma = a_out @ g @ a_in
    return sigma, fixed_point_residual(g, a00, sigma)
