"""Fermi-Dirac filling of discrete levels: the chemical potential that holds N electrons.

Plain NumPy, so that any part of hamjax can use it without importing JAX (the reference
engines' worker processes among them).
"""

from __future__ import annotations

import numpy as np

__all__ = ["filling_level"]


def filling_level(levels, weights, electrons: float, kt: float) -> float:
    """Chemical potential mu with ``sum_n 2 w_n / (1 + exp((e_n - mu) / kt)) = electrons``.

    Bisection to 1e-14 in the units of ``levels`` (NumPy; ``kt > 0`` in the same units). The
    weights count each level's share: 1 for plain levels, ``1 / n_k`` for bands on ``n_k``
    k-points, a Mulliken weight for a region's share of a level.
    """
    levels = np.asarray(levels, dtype=float)
    weights = np.broadcast_to(np.asarray(weights, dtype=float), levels.shape)

    def count(mu):
        return float(np.sum(2.0 * weights / (1.0 + np.exp(np.clip((levels - mu) / kt, -700, 700)))))

    lo, hi = float(levels.min()) - 50 * kt, float(levels.max()) + 50 * kt
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if count(mid) < electrons:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-14:
            break
    return 0.5 * (lo + hi)
