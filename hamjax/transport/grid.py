"""Adaptive energy grids for the Landauer current of resonant transmissions.

A device with quasi-bound states has T(E) resonances whose width (their coupling to the
leads) can be far below any affordable uniform spacing. The current integrates T against
the Fermi window, so a uniform grid that lands on a resonance's peak counts it over a whole
grid interval, and one that misses it counts nothing: the current then swings with the
spacing (a demo VCM device: factors of 3 between 64 and 4 meV).

:func:`refine_grid` starts from a grid and inserts midpoints, a batch per round, into the
intervals that can change the current most: an interval's score is the window weight at its
midpoint times the change of T across it times its width. Flat stretches of T (zero, or a
plateau of open channels) score nothing however wide; a resonance sampled on its peak, or
seen only in its Lorentzian tails, scores on both sides until it is resolved. Rounds stop
when the points are spent or every remaining score is below ``rtol`` of the current.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from hamjax.transport.current import chemical_potentials, fermi_dirac

__all__ = ["refine_grid"]


def _window(energies: np.ndarray, bias: float, fermi_level: float, temperature: float):
    """``f_L - f_R`` at ``energies`` (eV), ``mu_L,R = E_F +/- V/2``."""
    mu_l, mu_r = chemical_potentials(bias, fermi_level)
    return np.asarray(
        fermi_dirac(energies, mu_l, temperature) - fermi_dirac(energies, mu_r, temperature)
    )


def refine_grid(
    transmission: Callable[[np.ndarray], np.ndarray],
    energies,
    *,
    bias: float,
    fermi_level: float,
    temperature: float = 300.0,
    extra_points: int = 200,
    points_per_round: int = 25,
    rtol: float = 1e-3,
    values=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Refine ``energies`` where T(E) can move the current, and return ``(grid, T)``.

    Args:
        transmission: ``E [n] -> T [n]`` (eV in, dimensionless out), called once per round
            on the new energies only.
        energies: the starting grid (eV), strictly increasing; it must cover the bias
            window and ~10 k_B T on each side.
        bias, fermi_level, temperature: as for :func:`hamjax.transport.current`.
        extra_points: most energies added in all.
        points_per_round: energies added per round (one call of ``transmission``).
        rtol: stop when no interval's score reaches ``rtol`` times the current's integral.
        values: T on ``energies`` if already known (saves the first call).

    Returns:
        The refined grid (sorted) and T on it; pass both to
        :func:`hamjax.transport.current`.
    """
    e = np.asarray(energies, dtype=float)
    if e.ndim != 1 or e.size < 2 or np.any(np.diff(e) <= 0):
        raise ValueError("energies must be a strictly increasing 1-D grid of 2 or more points")
    t = np.asarray(transmission(e) if values is None else values, dtype=float)
    added = 0
    while added < extra_points:
        window = np.abs(_window(0.5 * (e[1:] + e[:-1]), bias, fermi_level, temperature))
        width = np.diff(e)
        area = np.sum(window * 0.5 * (t[1:] + t[:-1]) * width)
        score = window * np.abs(np.diff(t)) * width
        order = np.argsort(score)[::-1]
        take = order[: min(points_per_round, extra_points - added)]
        take = take[score[take] > rtol * max(area, 1e-300)]
        take = take[width[take] > 1e-9]  # below a neV, leave it
        if take.size == 0:
            break
        mids = 0.5 * (e[take] + e[take + 1])
        t_mids = np.asarray(transmission(mids), dtype=float)
        e = np.concatenate([e, mids])
        t = np.concatenate([t, t_mids])
        order = np.argsort(e)
        e, t = e[order], t[order]
        added += mids.size
    return e, t
