"""Adaptive energy grid: the current of a narrow resonance against its exact value."""

from __future__ import annotations

import numpy as np
import pytest

from hamjax.transport import current, transmission
from hamjax.transport.grid import refine_grid

HOP, LINK, LEVEL = -1.0, -0.08, 0.13  # eV: chain hopping, weak links, the level


def _exact_t(e):
    """One level coupled by LINK to two semi-infinite chains: Breit-Wigner with the exact
    lead self-energy Sigma = LINK^2 g(E), g = (E - i sqrt(4 t^2 - E^2)) / (2 t^2)."""
    e = np.asarray(e, dtype=complex)
    g = (e - 1j * np.sqrt(4 * HOP**2 - e**2)) / (2 * HOP**2)
    sigma = LINK**2 * g
    gamma = -2.0 * sigma.imag  # each lead
    return np.real(gamma**2 / np.abs(e - LEVEL - 2 * sigma) ** 2)


def _device():
    """Two chain sites | the level | two chain sites; each lead repeats its end site with
    the chain's hopping, so sites 1 and 3 are the ends of semi-infinite chains."""
    h = np.diag([0.0, 0.0, LEVEL, 0.0, 0.0])
    h[0, 1] = h[1, 0] = h[3, 4] = h[4, 3] = HOP
    h[1, 2] = h[2, 1] = h[2, 3] = h[3, 2] = LINK
    return h


def test_solver_matches_the_exact_resonance():
    e = np.linspace(-0.4, 0.6, 11)
    t = np.asarray(transmission(_device(), None, [1] * 5, e).transmission)
    np.testing.assert_allclose(t, _exact_t(e), atol=1e-4)


def test_refined_grid_converges_the_current_of_a_narrow_resonance():
    """The resonance (FWHM 2 LINK^2 / |HOP| ~ 13 meV) sits between the points of a 50 meV
    grid: the uniform current is far off, the refined one within 0.5 % of the exact
    integral (the exact T on a 0.05 meV grid)."""
    bias, kw = 0.5, dict(fermi_level=0.0, temperature=300.0)
    fine = np.linspace(-0.6, 0.6, 24001)
    exact = float(current(fine, _exact_t(fine), bias, **kw))
    coarse = np.linspace(-0.6, 0.6, 25)  # 50 meV apart, the level between two points
    uniform = float(current(coarse, _exact_t(coarse), bias, **kw))
    assert abs(uniform / exact - 1) > 0.1
    grid, t = refine_grid(_exact_t, coarse, bias=bias, extra_points=150, **kw)
    assert grid.size <= coarse.size + 150 and np.all(np.diff(grid) > 0)
    np.testing.assert_allclose(t, _exact_t(grid))
    refined = float(current(grid, t, bias, **kw))
    assert refined == pytest.approx(exact, rel=5e-3)


def test_flat_transmission_is_left_alone():
    calls = []

    def ones(e):
        calls.append(len(e))
        return np.ones_like(e)

    grid, _ = refine_grid(ones, np.linspace(-1, 1, 21), bias=1.0, fermi_level=0.0)
    assert grid.size == 21 and calls == [21]


def test_rejects_unsorted_grid():
    with pytest.raises(ValueError, match="strictly increasing"):
        refine_grid(np.ones_like, np.array([0.0, 1.0, 0.5]), bias=1.0, fermi_level=0.0)


def test_refinement_resumes_where_it_stopped():
    """The evaluate stage refines in two calls to read the current half-way: the grid and T
    after n + n points equal those of one call with 2n (n a multiple of the round size)."""
    kw = dict(bias=0.5, fermi_level=0.0, temperature=300.0, points_per_round=10)
    start = np.linspace(-0.6, 0.6, 25)
    once = refine_grid(_exact_t, start, extra_points=60, **kw)
    half = refine_grid(_exact_t, start, extra_points=30, **kw)
    twice = refine_grid(_exact_t, half[0], extra_points=30, values=half[1], **kw)
    assert once[0].size == 25 + 60
    np.testing.assert_array_equal(twice[0], once[0])
    np.testing.assert_array_equal(twice[1], once[1])
