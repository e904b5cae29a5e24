"""Fermi levels and occupations of discrete levels: the one home of hamjax's Fermi-level code.

Every function fills spin-degenerate levels (two electrons per level and unit weight) with
Fermi-Dirac occupations ``2 w_n / (1 + exp((e_n - mu) / kT))`` and solves for the chemical
potential ``mu`` that holds a given number of electrons:

- :func:`electron_count` -- the electrons a set of weighted levels holds at ``mu``;
- :func:`filling_level` -- the ``mu`` at which they hold N electrons (bisection);
- :func:`fermi_level_from_orbitals` -- the Fermi level of an SCF's orbital energies and
  occupations (or the mid-gap of an insulator);
- :func:`count_fermi_level` -- the Fermi level that puts N electrons into a set of levels;
- :func:`mulliken_levels` -- the levels of ``H, S`` and each level's Mulliken weight on a
  subset of orbitals (e.g. the atoms of an electrode);
- :func:`population_fermi_level` -- the level at which that subset holds a given Mulliken
  population;
- :func:`band_fermi_level` -- the Fermi level of bands sampled on k-points, per cell.

Plain NumPy/SciPy, so that any part of hamjax can use it without importing JAX (the reference
engines' worker processes among them). Energies and ``kt`` share one unit (the caller's).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = [
    "band_fermi_level",
    "count_fermi_level",
    "electron_count",
    "fermi_level_from_orbitals",
    "filling_level",
    "mulliken_levels",
    "population_fermi_level",
]


def electron_count(levels, weights, fermi_level: float, kt: float) -> float:
    """Electrons ``sum_n 2 w_n / (1 + exp((e_n - mu) / kt))`` held at ``mu = fermi_level``.

    ``weights`` are each level's share (see :func:`filling_level`), ``kt > 0`` in the units
    of ``levels``. With Mulliken weights on a subset of atoms (:func:`mulliken_levels`) this
    is that subset's Mulliken population.
    """
    levels = np.asarray(levels, dtype=float)
    weights = np.asarray(weights, dtype=float)
    x = np.clip((levels - fermi_level) / kt, -700.0, 700.0)
    return float(np.sum(2.0 * weights / (1.0 + np.exp(x))))


def filling_level(levels, weights, electrons: float, kt: float) -> float:
    """Chemical potential mu with ``sum_n 2 w_n / (1 + exp((e_n - mu) / kt)) = electrons``.

    Bisection to 1e-14 in the units of ``levels`` (NumPy; ``kt > 0`` in the same units). The
    weights count each level's share: 1 for plain levels, ``1 / n_k`` for bands on ``n_k``
    k-points, a Mulliken weight for a region's share of a level.
    """
    levels = np.asarray(levels, dtype=float)
    weights = np.broadcast_to(np.asarray(weights, dtype=float), levels.shape)

    lo, hi = float(levels.min()) - 50 * kt, float(levels.max()) + 50 * kt
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if electron_count(levels, weights, mid, kt) < electrons:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-14:
            break
    return 0.5 * (lo + hi)


def fermi_level_from_orbitals(
    energies_hartree: np.ndarray,
    occupations: np.ndarray,
    temperature_hartree: float,
    *,
    max_occupation: float = 2.0,
    gap_in_kt: float = 40.0,
) -> dict:
    """Fermi level (or mid-gap) from orbital energies and occupations.

    The electron count ``N = sum(occupations)`` is matched by Fermi-Dirac occupations
    ``max_occupation / (1 + exp((e - mu) / kT))`` at the given electronic temperature,
    solved by bisection. When the gap between the highest (more than half) occupied and the
    lowest (less than half) occupied orbital exceeds ``gap_in_kt * kT`` the chemical
    potential is not defined by the occupations to working precision, so the mid-gap is
    returned instead.

    Args:
        energies_hartree: ``[n_orb]`` orbital energies (Hartree).
        occupations: ``[n_orb]`` occupations (electrons per orbital, spin summed).
        temperature_hartree: electronic temperature kT in Hartree (0 for integer filling).

    Returns:
        dict with ``fermi_level`` (Hartree), ``homo``, ``lumo``, ``gap`` (Hartree; lumo/gap
        None when every orbital is filled), ``method`` ("fermi-dirac" or "mid-gap") and
        ``n_electrons``.
    """
    e = np.asarray(energies_hartree, dtype=float)
    occ = np.asarray(occupations, dtype=float)
    order = np.argsort(e)
    e, occ = e[order], occ[order]
    n_el = float(occ.sum())
    half = 0.5 * max_occupation
    filled = occ > half
    homo = float(e[filled].max()) if filled.any() else None
    empty = ~filled
    lumo = float(e[empty].min()) if empty.any() else None
    gap = None if homo is None or lumo is None else lumo - homo
    out = {"homo": homo, "lumo": lumo, "gap": gap, "n_electrons": n_el}
    kt = float(temperature_hartree)
    if gap is not None and (kt <= 0.0 or gap > gap_in_kt * kt):
        out.update(fermi_level=0.5 * (homo + lumo), method="mid-gap")
        return out
    if kt <= 0.0:
        out.update(fermi_level=homo if homo is not None else float(e[0]), method="mid-gap")
        return out

    mu = filling_level(e, 0.5 * max_occupation, n_el, kt)
    out.update(fermi_level=mu, method="fermi-dirac")
    return out


def count_fermi_level(levels, n_electrons: float, kt: float) -> float:
    """Fermi level that puts ``n_electrons`` into ``levels`` (ascending, two per level).

    :func:`fermi_level_from_orbitals` of the levels filled from the bottom: Fermi-Dirac at
    ``kt``, or the mid-gap when the gap at ``n_electrons`` is wider than 40 kT. Where there
    is no such gap this equals :func:`filling_level` with unit weights.
    """
    levels = np.asarray(levels, dtype=float)
    full, rest = divmod(float(n_electrons), 2.0)
    occupations = np.zeros_like(levels)
    occupations[: int(full)] = 2.0
    if rest > 0:
        occupations[int(full)] = rest
    return fermi_level_from_orbitals(levels, occupations, kt)["fermi_level"]


def mulliken_levels(hamiltonian, overlap, orbitals) -> tuple[np.ndarray, np.ndarray]:
    """Levels of ``H c = e S c`` and each level's Mulliken weight on ``orbitals``.

    The weight of level n is ``sum_{mu in orbitals} Re(c_mu^* (S c)_mu)``: its share on
    those orbitals (the weights over all orbitals sum to 1). One generalised
    eigendecomposition of the dense matrices; :func:`electron_count` of the result is the
    Mulliken population of the orbitals, :func:`population_fermi_level` its inverse.

    Returns:
        ``(levels, weights)``, both ``[n_orb]``, levels ascending.
    """
    h, s = np.asarray(hamiltonian), np.asarray(overlap)
    levels, c = scipy.linalg.eigh(h, s)
    orbitals = np.asarray(orbitals, dtype=int)
    weights = np.sum(np.real(c[orbitals].conj() * (s @ c)[orbitals]), axis=0)
    return levels, weights


def population_fermi_level(levels, weights, population: float, kt: float) -> float:
    """Fermi level at which the orbitals behind ``weights`` hold ``population`` electrons.

    ``levels, weights`` from :func:`mulliken_levels`; Fermi-Dirac filling at ``kt``
    (:func:`filling_level`). When the subset is every orbital this is the plain electron
    count (:func:`count_fermi_level` away from a gap).

    Raises:
        ValueError: ``population`` is not strictly between 0 and the ``2 sum(weights)``
            electrons the subset's levels can hold.
    """
    weights = np.asarray(weights, dtype=float)
    if not 0.0 < population < 2.0 * weights.sum():
        raise ValueError(
            f"population {population:g} outside 0 .. {2.0 * weights.sum():g} electrons "
            "that the levels of the electrode atoms hold"
        )
    return filling_level(levels, weights, population, float(kt))


def band_fermi_level(bands, electrons_per_cell: float, kt: float) -> float:
    """Fermi level of bands ``[n_k, b]`` sampled on ``n_k`` k-points, ``electrons_per_cell``
    electrons per cell.

    Solves ``(2 / n_k) sum_{n,k} f((E_n(k) - mu) / kT) = electrons_per_cell`` with Fermi-Dirac
    ``f`` (:func:`filling_level` with weights ``1 / n_k``); ``kt = 0`` fills the lowest
    ``electrons_per_cell * n_k / 2`` states and returns the middle between the last filled
    and the first empty one.

    Raises:
        ValueError: more electrons than the bands hold, or fewer than none.
    """
    bands = np.asarray(bands, dtype=float)
    n_k = bands.shape[0]
    levels = bands.ravel()
    capacity = 2.0 * levels.size / n_k
    if not 0.0 <= electrons_per_cell <= capacity:
        raise ValueError(
            f"electrons_per_cell = {electrons_per_cell} does not fit the lead's "
            f"{levels.size // n_k} bands (0 to {capacity:g} electrons per cell)"
        )
    if kt <= 0.0:
        levels = np.sort(levels)
        full = int(np.floor(electrons_per_cell * n_k / 2.0))  # states to fill over all k
        if full == 0:
            return float(levels[0])
        if full >= levels.size:
            return float(levels[-1])
        return float(0.5 * (levels[full - 1] + levels[full]))
    return filling_level(levels, 1.0 / n_k, electrons_per_cell, kt)
