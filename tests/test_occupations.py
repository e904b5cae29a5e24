"""Fermi levels of hamjax.occupations against the closed form of two levels.

Two spin-degenerate levels e1, e2 with weights w1, w2 hold
``N = 2 w1 x / (x + a1) + 2 w2 x / (x + a2)`` electrons at ``mu = kT ln x``,
``a_i = exp(e_i / kT)``: a quadratic in x, so the Fermi level of any N is known exactly.
"""

import numpy as np
import pytest

from hamjax.occupations import (
    band_fermi_level,
    count_fermi_level,
    electron_count,
    fermi_level_from_orbitals,
    filling_level,
    mulliken_levels,
    population_fermi_level,
)


def two_level_fermi_level(e1, e2, w1, w2, electrons, kt):
    """The root of ``(w1 + w2 - n) x^2 + (w1 a2 + w2 a1 - n (a1 + a2)) x - n a1 a2 = 0``,
    ``n = electrons / 2``, with x > 0 (energies measured from their mean for the exponent)."""
    shift = 0.5 * (e1 + e2)
    a1, a2 = np.exp((e1 - shift) / kt), np.exp((e2 - shift) / kt)
    n = electrons / 2
    a, b, c = w1 + w2 - n, w1 * a2 + w2 * a1 - n * (a1 + a2), -n * a1 * a2
    if abs(a) < 1e-15:
        x = -c / b
    else:
        x = max(r.real for r in np.roots([a, b, c]) if abs(r.imag) < 1e-12)
    return shift + kt * np.log(x)


@pytest.mark.parametrize("electrons", [0.5, 1.0, 2.0, 3.0, 3.7])
def test_filling_level_of_two_levels_is_the_closed_form(electrons):
    levels, kt = np.array([-0.1, 0.15]), 0.04
    mu = filling_level(levels, 1.0, electrons, kt)
    assert mu == pytest.approx(two_level_fermi_level(-0.1, 0.15, 1, 1, electrons, kt), abs=1e-12)
    assert electron_count(levels, 1.0, mu, kt) == pytest.approx(electrons, abs=1e-12)
    # half filling of two levels: exactly the midpoint, whatever the temperature
    assert filling_level(levels, 1.0, 2.0, 0.3) == pytest.approx(0.025, abs=1e-13)


def test_weighted_levels_and_the_population_of_one_site_of_a_dimer():
    """An orthogonal dimer H = [[d, t], [t, -d]] has levels -E, E (E^2 = d^2 + t^2) with
    weights (E - d) / 2E and (E + d) / 2E on site 0: the level at which site 0 holds a
    population is the two-level closed form with those weights."""
    d, t, kt = 0.05, -0.1, 0.02
    e = np.hypot(d, t)
    levels, weights = mulliken_levels(np.array([[d, t], [t, -d]]), np.eye(2), [0])
    np.testing.assert_allclose(levels, [-e, e], atol=1e-15)
    np.testing.assert_allclose(weights, [(e - d) / (2 * e), (e + d) / (2 * e)], atol=1e-15)
    for population in (0.3, 0.8, 1.4):
        mu = population_fermi_level(levels, weights, population, kt)
        exact = two_level_fermi_level(-e, e, weights[0], weights[1], population, kt)
        assert mu == pytest.approx(exact, abs=1e-12)
    with pytest.raises(ValueError, match="outside"):
        population_fermi_level(levels, weights, 2.0, kt)  # site 0 holds at most 2 electrons


def test_mulliken_weights_of_all_orbitals_sum_to_one():
    rng = np.random.default_rng(3)
    h = rng.normal(size=(6, 6))
    s = np.eye(6) + 0.1 * rng.normal(size=(6, 6))
    levels, weights = mulliken_levels(h + h.T, s @ s.T, np.arange(6))
    np.testing.assert_allclose(weights, 1.0, atol=1e-12)
    _, left = mulliken_levels(h + h.T, s @ s.T, [0, 1, 2])
    _, right = mulliken_levels(h + h.T, s @ s.T, [3, 4, 5])
    np.testing.assert_allclose(left + right, 1.0, atol=1e-12)


def test_count_and_orbital_fermi_levels():
    kt = 0.04  # the 0.25 Ha gap at 3 electrons is below 40 kT: Fermi-Dirac filling
    exact = two_level_fermi_level(-0.1, 0.15, 1, 1, 3.0, kt)
    assert count_fermi_level([-0.1, 0.15], 3.0, kt) == pytest.approx(exact, abs=1e-12)
    levels = np.array([-0.3, -0.1, 0.15, 0.4])
    assert count_fermi_level(levels, 3.0, kt) == filling_level(levels, 1.0, 3.0, kt)
    # a gap of 40 kT and more: the mid-gap
    assert count_fermi_level(levels, 4.0, 1e-3) == pytest.approx(0.025, abs=1e-15)
    out = fermi_level_from_orbitals(levels, [2.0, 2.0, 0.0, 0.0], 1e-3)
    assert out["method"] == "mid-gap" and out["gap"] == pytest.approx(0.25)


def test_band_fermi_level_of_two_k_points():
    """One band on two k-points is two levels of weight 1/2 each."""
    bands = np.array([[-0.2], [0.1]])
    kt = 0.05
    for electrons in (0.4, 1.0, 1.5):
        exact = two_level_fermi_level(-0.2, 0.1, 0.5, 0.5, electrons, kt)
        assert band_fermi_level(bands, electrons, kt) == pytest.approx(exact, abs=1e-12)
    assert band_fermi_level(bands, 1.0, 0.0) == pytest.approx(-0.05)  # between the states
    with pytest.raises(ValueError, match="does not fit"):
        band_fermi_level(bands, 2.5, kt)
