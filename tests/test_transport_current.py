"""Landauer current, potential drop and the input errors of the transport solver."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp

from hamjax.constants import BOLTZMANN_EV_K, CONDUCTANCE_QUANTUM_S
from hamjax.transport import (
    Lead,
    current,
    linear_potential_drop,
    spectral_current,
    transmission,
)


def chain(n, t=1.0):
    return -t * (np.eye(n, k=1) + np.eye(n, k=-1))


@pytest.fixture(scope="module")
def perfect_channel():
    """A chain with hopping -3 eV (band +-6 eV): one perfect channel over [-5, 5] eV."""
    energies = np.linspace(-5.0, 5.0, 2000)  # even count: E = 0 (lead pencil eigenvalue) avoided
    t = transmission(chain(11, t=3.0), None, [1] * 11, energies, eta=1e-6).transmission
    return energies, t


@pytest.mark.parametrize("temperature", [0.0, 4.0, 300.0, 1000.0])
def test_perfect_channel_carries_g0_times_bias_at_any_temperature(perfect_channel, temperature):
    energies, t = perfect_channel
    amps = float(current(energies, t, 1.0, fermi_level=0.0, temperature=temperature))
    assert amps * 1e6 == pytest.approx(77.480917, abs=2e-6)
    assert amps == pytest.approx(CONDUCTANCE_QUANTUM_S * 1.0, rel=1e-7)


def test_current_sign_linearity_and_zero_kelvin_window():
    energies = np.linspace(-1.0, 1.0, 41)  # grid step 0.05: the window ends fall between points
    t = 0.3 + 0.2 * energies  # piecewise linear, so the 0 K integral is exact
    for bias in (0.13, -0.37):
        amps = float(current(energies, t, bias, fermi_level=0.02, temperature=0.0))
        lo, hi = 0.02 - abs(bias) / 2, 0.02 + abs(bias) / 2
        exact = np.sign(bias) * CONDUCTANCE_QUANTUM_S * (0.3 * (hi - lo) + 0.1 * (hi**2 - lo**2))
        assert amps == pytest.approx(exact, rel=1e-12)
    assert float(current(energies, t, 0.0, fermi_level=0.0, temperature=300.0)) == 0.0


def test_spectral_current_integrates_to_current_and_matches_fermi_functions():
    energies = np.linspace(-1.5, 1.5, 601)
    t = np.exp(-(energies**2))
    j = np.asarray(spectral_current(energies, t, 0.4, fermi_level=0.1, temperature=77.0))
    kt = BOLTZMANN_EV_K * 77.0
    f = lambda mu: 1 / (1 + np.exp((energies - mu) / kt))  # noqa: E731
    np.testing.assert_allclose(
        j, CONDUCTANCE_QUANTUM_S * t * (f(0.3) - f(-0.1)), rtol=1e-12, atol=1e-16
    )
    amps = float(current(energies, t, 0.4, fermi_level=0.1, temperature=77.0))
    assert amps == pytest.approx(np.trapezoid(j, energies), rel=1e-3)
    # independent reference: adaptive quadrature of the smooth integrand
    from scipy.integrate import quad

    exact, _ = quad(
        lambda e: (
            np.exp(-(e**2)) * (1 / (1 + np.exp((e - 0.3) / kt)) - 1 / (1 + np.exp((e + 0.1) / kt)))
        ),
        -1.5,
        1.5,
        points=[-0.1, 0.3],
    )
    assert amps == pytest.approx(CONDUCTANCE_QUANTUM_S * exact, rel=1e-5)


def test_current_is_differentiable_in_bias_and_transmission():
    energies = np.linspace(-1.0, 1.0, 201)
    t = jnp.asarray(0.5 + 0.1 * energies)
    # dI/dV at 0 K = G0 * (T(mu_L) + T(mu_R)) / 2
    didv = jax.grad(lambda v: current(energies, t, v, fermi_level=0.2, temperature=0.0))(0.3)
    expected = CONDUCTANCE_QUANTUM_S * ((0.5 + 0.1 * 0.35) + (0.5 + 0.1 * 0.05)) / 2
    assert float(didv) == pytest.approx(expected, rel=1e-10)


def test_linear_potential_drop_shifts_leads_rigidly():
    """Perfect chain under a drop: the leads are shifted chains, T equals the overlap of
    both shifted bands, and the shift enters as S_ij (U_i + U_j) / 2."""
    n, bias = 11, 0.6
    h = chain(n)
    s = np.eye(n) + 0.1 * (np.eye(n, k=1) + np.eye(n, k=-1))
    hd = linear_potential_drop(h, s, [1] * n, bias)
    u = np.concatenate([[0.3, 0.3], 0.3 - 0.6 * np.arange(1, 8) / 8, [-0.3, -0.3]])
    np.testing.assert_allclose(np.diag(hd), u)
    np.testing.assert_allclose(np.diag(hd, 1), -1 + 0.1 * (u[:-1] + u[1:]) / 2)
    hs = linear_potential_drop(sp.csr_matrix(h), sp.csr_matrix(s), [1] * n, bias)
    np.testing.assert_allclose(hs.toarray(), hd)
    hj = linear_potential_drop(jnp.asarray(h), jnp.asarray(s), [1] * n, bias)
    np.testing.assert_allclose(np.asarray(hj), hd)
    # outside the overlap of the two shifted lead bands nothing is transmitted
    e = np.array([2.5])  # the left band (shifted up) reaches higher than the right one
    left_top = (0.3 - 2 * (-1 + 0.1 * 0.3)) / (1 - 0.2)  # k = pi edge with overlap
    right_top = (-0.3 - 2 * (-1 - 0.1 * 0.3)) / (1 - 0.2)
    assert right_top < e[0] < left_top
    assert float(transmission(hd, s, [1] * n, e, eta=1e-9)[0][0]) < 1e-9


# ---------------------------------------------------------------------------- bad input
def good_device():
    layers = (2, 2, 3, 2, 2)
    n = sum(layers)
    rng = np.random.default_rng(0)
    lay = np.repeat(np.arange(len(layers)), layers)
    near = np.abs(lay[:, None] - lay[None, :]) <= 1
    m = np.where(near, rng.normal(size=(n, n)), 0)
    return (m + m.T) / 2, np.eye(n), layers, near


ENERGIES = np.array([0.1])


def test_rejects_non_hermitian_h():
    h, s, layers, _ = good_device()
    h[0, 3] += 0.5
    with pytest.raises(ValueError, match=r"not Hermitian.*H\[0,3\].*layers 0 and 1"):
        transmission(h, s, layers, ENERGIES)


def test_rejects_overlap_not_positive_definite():
    h, s, layers, _ = good_device()
    s[4, 4] = -0.5
    with pytest.raises(ValueError, match=r"S is not positive definite.*layer 2"):
        transmission(h, s, layers, ENERGIES)


def test_rejects_layers_not_summing_to_n():
    h, s, _, _ = good_device()
    with pytest.raises(ValueError, match=r"layers sum to 10 .* n = 11"):
        transmission(h, s, (2, 2, 2, 2, 2), ENERGIES)
    with pytest.raises(ValueError, match="layer 1 has size 0"):
        transmission(h, s, (2, 0, 5, 2, 2), ENERGIES)


def test_rejects_couplings_beyond_neighbouring_layers_naming_them():
    h, s, layers, _ = good_device()
    h[0, 9] = h[9, 0] = 0.2  # layer 0 to layer 4
    with pytest.raises(ValueError, match=r"couples layers that are not neighbours: layers 0-4"):
        transmission(h, s, layers, ENERGIES)
    h, s, layers, _ = good_device()
    s[2, 7] = s[7, 2] = 0.01  # layer 1 to layer 3, in S
    with pytest.raises(ValueError, match=r"S couples layers .* 1-3"):
        transmission(sp.csr_matrix(h), sp.csr_matrix(s), layers, ENERGIES)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_nan_and_inf(bad):
    h, s, layers, _ = good_device()
    h[5, 5] = bad
    with pytest.raises(ValueError, match=r"H has 1 NaN or inf entries, first at \(5, 5\)"):
        transmission(h, s, layers, ENERGIES)
    h, s, layers, _ = good_device()
    with pytest.raises(ValueError, match="energies contain NaN or inf"):
        transmission(h, s, layers, np.array([0.0, bad]))


def test_rejects_mismatched_shapes():
    h, s, layers, _ = good_device()
    with pytest.raises(ValueError, match=r"S has shape \(10, 10\) but H has shape \(11, 11\)"):
        transmission(h, s[:10, :10], layers, ENERGIES)
    with pytest.raises(ValueError, match="square"):
        transmission(h[:, :10], None, layers, ENERGIES)
    with pytest.raises(ValueError, match="1-D"):
        transmission(h, s, layers, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"left lead \w+ has shape \(3, 3\).*\(2, 2\)"):
        transmission(
            h, s, layers, ENERGIES, leads=(Lead(np.eye(3), np.eye(3)), Lead(np.eye(2), np.eye(2)))
        )
    with pytest.raises(ValueError, match="layers 0 and 1"):
        transmission(chain(5), None, (1, 2, 1, 1), ENERGIES)
    with pytest.raises(ValueError, match="strictly increasing"):
        current(np.array([0.0, 0.0, 1.0]), np.ones(3), 0.1, fermi_level=0.0)
