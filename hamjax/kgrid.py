"""k-point grids of a lattice: Monkhorst-Pack points and their time-reversal reduction.

Fractional coordinates in reciprocal lattice units; pure numpy, shared by the references
(electron counts on a k-grid) and transport (:func:`hamjax.transport.transmission_kpoints`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["grid_sizes", "monkhorst_pack", "time_reversal_reduce"]


def grid_sizes(kgrid) -> tuple[int, int, int]:
    """``kgrid`` as three positive integers ``(n1, n2, n3)``; ValueError naming it otherwise."""
    try:
        sizes = tuple(int(n) for n in kgrid)
        exact = all(float(n) == int(n) for n in kgrid)
    except (TypeError, ValueError) as err:
        raise ValueError(f"kgrid must be three integers (n1, n2, n3), got {kgrid!r}") from err
    if len(sizes) != 3 or not exact:
        raise ValueError(f"kgrid must be three integers (n1, n2, n3), got {kgrid!r}")
    if min(sizes) <= 0:
        raise ValueError(f"kgrid sizes must be positive, got {sizes}")
    return sizes


def _grid_numerators(sizes, gamma_centred: bool) -> np.ndarray:
    """``[n_k, 3]`` integers m with k = m / (2 n) per axis, in the grid order."""
    axes = []
    for n in sizes:
        r = np.arange(n)
        if gamma_centred:
            m = 2 * r
            m = np.where(m > n, m - 2 * n, m)  # r / n wrapped into (-1/2, 1/2]
        else:
            m = 2 * r - n + 1  # Monkhorst-Pack: (2 r - n + 1) / (2 n), r = 0 .. n-1
        axes.append(m)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([x.reshape(-1) for x in mesh], axis=1)


def monkhorst_pack(kgrid: Sequence[int], *, gamma_centred: bool = False) -> np.ndarray:
    """Fractional k-points of an ``n1 x n2 x n3`` grid, ``[n1 n2 n3, 3]``, equal weights.

    The default is the standard Monkhorst-Pack grid ``k = (2 r - n + 1) / (2 n)``,
    ``r = 0 .. n-1`` per axis: symmetric about Gamma, containing Gamma for odd ``n`` and
    shifted off it by half a step for even ``n``. ``gamma_centred=True`` gives ``k = r / n``
    folded into (-1/2, 1/2] instead, which contains Gamma for every ``n``. The two grids
    are the same for odd ``n``.

    Args:
        kgrid: ``(n1, n2, n3)`` positive grid sizes.
        gamma_centred: use the Gamma-centred grid.

    Returns:
        ``[n_k, 3]`` float64 fractional coordinates (reciprocal lattice units), the last axis
        running fastest.
    """
    sizes = grid_sizes(kgrid)
    return _grid_numerators(sizes, gamma_centred) / (2.0 * np.asarray(sizes))


def time_reversal_reduce(
    kgrid: Sequence[int], *, gamma_centred: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """The grid of :func:`monkhorst_pack` with each pair ``(k, -k)`` (modulo reciprocal
    lattice vectors) kept once: the first of the pair in grid order, with twice the weight.
    Points equal to their own negative (Gamma, zone-boundary points) keep a single weight.

    Returns:
        ``(kpoints [n_irr, 3], weights [n_irr])``, weights summing to 1.
    """
    sizes = grid_sizes(kgrid)
    numerators = _grid_numerators(sizes, gamma_centred)
    period = 2 * np.asarray(sizes)
    keys = [tuple(int(x) for x in m) for m in np.mod(numerators, period)]
    position = {key: index for index, key in enumerate(keys)}
    keep, weights = [], []
    seen = set()
    for index, key in enumerate(keys):
        if index in seen:
            continue
        partner = position[tuple(int(x) for x in np.mod(-np.asarray(key), period))]
        seen.update((index, partner))
        keep.append(index)
        weights.append(1.0 if partner == index else 2.0)
    weights = np.asarray(weights) / len(keys)
    return numerators[keep] / (2.0 * np.asarray(sizes)), weights


# ----------------------------------------------------------------------------- input
