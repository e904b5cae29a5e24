"""Landauer current, spectral current density and a linear potential drop.

Convention: a bias V (volts) sets the lead chemical potentials to

    mu_L = E_F + V / 2,    mu_R = E_F - V / 2     (eV),

and the current of a spin-degenerate Hamiltonian is

    I = (2 e / h) * integral T(E) [f_L(E) - f_R(E)] dE = G0 * integral T (f_L - f_R) dE[eV],

in amperes, with G0 = 2 e^2 / h. I > 0 for V > 0: electrons flow from the left lead into the
right one. A perfect channel (T = 1) carries exactly G0 * V at any temperature
(77.480917 uA at 1 V).

The integral is taken over the piecewise-linear interpolant of T on the given grid: exactly
over the window at temperature 0, and with each grid interval subdivided finely enough to
resolve k_B T otherwise (the plain trapezoid rule when the grid is already finer than k_B T).
The grid must cover ``[mu_R, mu_L]`` plus ~10 k_B T wherever T is nonzero. The result is
linear in T, so ``jax.grad`` of I with respect to T (hence H) is exact.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from hamjax.constants import BOLTZMANN_EV_K, CONDUCTANCE_QUANTUM_S

__all__ = [
    "chemical_potentials",
    "fermi_dirac",
    "spectral_current",
    "current",
    "layer_potentials",
    "linear_potential_drop",
]


def chemical_potentials(bias, fermi_level) -> tuple[jax.Array, jax.Array]:
    """``(mu_L, mu_R) = (E_F + V/2, E_F - V/2)`` in eV for a bias V in volts."""
    bias = jnp.asarray(bias)
    return fermi_level + bias / 2, fermi_level - bias / 2


def fermi_dirac(energy, chemical_potential, temperature: float) -> jax.Array:
    """Occupation ``1 / (1 + exp((E - mu) / k_B T))``; a step (1/2 at E = mu) at T = 0 K."""
    x = jnp.asarray(energy) - chemical_potential
    if temperature == 0:
        return jnp.where(x < 0, 1.0, jnp.where(x > 0, 0.0, 0.5))
    kt = BOLTZMANN_EV_K * temperature
    return 0.5 * (1.0 - jnp.tanh(x / (2.0 * kt)))  # overflow-free form


def _check(energies, transmission, temperature):
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 kelvin, got {temperature}")
    if jnp.ndim(energies) != 1 or jnp.shape(energies) != jnp.shape(transmission)[-1:]:
        raise ValueError(
            f"energies {jnp.shape(energies)} and transmission {jnp.shape(transmission)} must be "
            "[n_E] and [..., n_E]"
        )
    if jnp.shape(energies)[0] < 2:
        raise ValueError("the energy grid needs at least 2 points")
    if not isinstance(energies, jax.core.Tracer) and np.any(np.diff(np.asarray(energies)) <= 0):
        raise ValueError("energies must be strictly increasing")


def spectral_current(
    energies, transmission, bias, *, fermi_level: float, temperature: float = 300.0
) -> jax.Array:
    """Spectral current density ``j(E) = G0 T(E) [f_L(E) - f_R(E)]`` in A/eV.

    Args:
        energies: [n_E] eV. transmission: [n_E]. bias: volts (scalar, or [n_V] giving
            [n_V, n_E]). fermi_level: eV. temperature: kelvin.
    """
    _check(energies, transmission, temperature)
    mu_l, mu_r = chemical_potentials(bias, fermi_level)
    e = jnp.asarray(energies)
    mu_l, mu_r = jnp.asarray(mu_l)[..., None], jnp.asarray(mu_r)[..., None]
    window = fermi_dirac(e, mu_l, temperature) - fermi_dirac(e, mu_r, temperature)
    return CONDUCTANCE_QUANTUM_S * jnp.asarray(transmission) * window


def _window_weights_zero_kelvin(e, mu_l, mu_r):
    """Weights w_j with sum_j w_j T_j = integral_{mu_R}^{mu_L} T_interp(E) dE (signed)."""
    lo, hi = jnp.minimum(mu_l, mu_r), jnp.maximum(mu_l, mu_r)
    sign = jnp.sign(mu_l - mu_r)
    e0, e1 = e[:-1], e[1:]
    h = e1 - e0
    left = jnp.clip(lo, e0, e1)
    right = jnp.clip(hi, e0, e1)
    w_start = ((e1 - left) ** 2 - (e1 - right) ** 2) / (2 * h)
    w_end = ((right - e0) ** 2 - (left - e0) ** 2) / (2 * h)
    zero = jnp.zeros(w_start.shape[:-1] + (1,))
    weights = jnp.concatenate([w_start, zero], -1) + jnp.concatenate([zero, w_end], -1)
    return sign * weights


def current(
    energies, transmission, bias, *, fermi_level: float, temperature: float = 300.0
) -> jax.Array:
    """Landauer current in amperes (spin-degenerate), ``mu_L,R = E_F +/- V/2``.

    Args:
        energies: [n_E] strictly increasing grid in eV.
        transmission: T(E), [n_E].
        bias: V in volts, scalar (or [n_V] for several biases at once, giving [n_V]).
        fermi_level: E_F in eV.
        temperature: lead temperature in kelvin (0 allowed).

    Returns:
        I in amperes, differentiable with respect to T and the bias.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> import numpy as np
    >>> e = np.linspace(-2.0, 2.0, 401)
    >>> print(f"{float(current(e, np.ones_like(e), 1.0, fermi_level=0.0)) * 1e6:.6f} uA")
    77.480917 uA
    """
    _check(energies, transmission, temperature)
    e = jnp.asarray(energies)
    mu_l, mu_r = chemical_potentials(bias, fermi_level)
    mu_l, mu_r = mu_l[..., None], mu_r[..., None]
    if temperature == 0:
        weights = _window_weights_zero_kelvin(e, mu_l, mu_r)
    else:
        weights = _window_weights(e, mu_l, mu_r, temperature, _subdivision(energies, temperature))
    return CONDUCTANCE_QUANTUM_S * jnp.sum(weights * jnp.asarray(transmission), -1)


MAX_SUBDIVISION = 256
"""Most sub-points per grid interval used to resolve the Fermi window at low temperature."""


def _subdivision(energies, temperature: float) -> int:
    """Sub-points per interval: ceil(8 h_max / k_B T), from the concrete grid (1 if traced)."""
    if isinstance(energies, jax.core.Tracer):
        return 1
    h_max = float(np.max(np.diff(np.asarray(energies))))
    return int(min(MAX_SUBDIVISION, max(1, math.ceil(8 * h_max / (BOLTZMANN_EV_K * temperature)))))


def _window_weights(e, mu_l, mu_r, temperature: float, m: int):
    """Weights w_j with sum_j w_j T_j = integral T_interp(E) [f_L - f_R] dE.

    Each grid interval is split into m equal parts (:func:`_subdivision`) and the trapezoid
    rule is applied to the linear interpolant of T times the Fermi window; the rule converges
    exponentially for a Fermi function sampled finer than
    k_B T. With m = 1 this is the plain trapezoid rule on the grid.
    """
    frac = jnp.linspace(0.0, 1.0, m + 1)  # [m + 1]
    trap = jnp.full(m + 1, 1.0 / m).at[0].set(0.5 / m).at[-1].set(0.5 / m)
    e0, h = e[:-1], jnp.diff(e)
    points = e0[:, None] + frac[None, :] * h[:, None]  # [n_E - 1, m + 1]
    window = fermi_dirac(points, mu_l[..., None], temperature) - fermi_dirac(
        points, mu_r[..., None], temperature
    )  # [..., n_E - 1, m + 1]
    c = trap * h[:, None] * window
    w_start = jnp.sum(c * (1.0 - frac), -1)
    w_end = jnp.sum(c * frac, -1)
    zero = jnp.zeros(w_start.shape[:-1] + (1,))
    return jnp.concatenate([w_start, zero], -1) + jnp.concatenate([zero, w_end], -1)


def layer_potentials(layers: Sequence[int], bias) -> jax.Array:
    """Potential energy (eV) per layer for a linear drop across the device region.

    Layers 0 and 1 (the left lead cell and its copy, which together define the default left
    lead) sit at ``+V/2``, layers N-2 and N-1 at ``-V/2``, and the potential falls linearly
    over the layer index in between. Needs at least 4 layers.
    """
    n = len(layers)
    if n < 4:
        raise ValueError(
            f"a linear potential drop needs at least 4 layers (2 per lead side), got {n}"
        )
    frac = np.clip((np.arange(n) - 1.0) / (n - 3.0), 0.0, 1.0)
    return jnp.asarray(bias) * (0.5 - jnp.asarray(frac))


def linear_potential_drop(hamiltonian, overlap, layers: Sequence[int], bias):
    """H with a linear electrostatic potential drop: ``H_ij += S_ij (U_i + U_j) / 2``.

    ``U`` (eV) is :func:`layer_potentials` per orbital: ``+V/2`` on the left lead cells, ``-V/2``
    on the right ones, linear in between, matching ``mu_L,R = E_F +/- V/2``. Works on NumPy,
    JAX (differentiable in H, S and V) and scipy.sparse input; the default leads (first and
    last two layers) are shifted rigidly with their chemical potentials. Explicit
    :class:`~hamjax.transport.Lead` blocks are not touched: shift them yourself by
    ``+/- V/2 * s00`` and ``+/- V/2 * s01``.

    Args:
        hamiltonian: [n, n] eV. overlap: [n, n] or None (identity). layers: sizes (sum n).
        bias: volts.

    Returns:
        The shifted Hamiltonian, same kind as the input.
    """
    u_layer = layer_potentials(layers, bias)
    if sp.issparse(hamiltonian):
        u = np.repeat(np.asarray(u_layer), layers)
        s = sp.identity(len(u), format="csr") if overlap is None else sp.csr_matrix(overlap)
        mean = sp.diags(u) @ s * 0.5 + s @ sp.diags(u) * 0.5
        return (sp.csr_matrix(hamiltonian) + mean).asformat(hamiltonian.format)
    xp = jnp if isinstance(hamiltonian, jax.Array) or isinstance(bias, jax.Array) else np
    u = (
        xp.repeat(xp.asarray(u_layer), np.asarray(layers), total_repeat_length=sum(layers))
        if xp is jnp
        else np.repeat(np.asarray(u_layer), layers)
    )
    if overlap is None:
        return hamiltonian + xp.diag(u)
    return hamiltonian + overlap * (u[:, None] + u[None, :]) / 2
