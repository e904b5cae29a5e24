"""Lead self-energies from the lead's eigenmodes against closed forms and decimation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_transport import chain, random_device
from test_transport_leads import device_with_identical_leads

from hamjax.transport import self_energy, sweep, transmission
from hamjax.transport.surface import (
    fixed_point_residual,
    resolve_lead_method,
    surface_green,
    surface_green_pair,
)

TOL = 1e-10  # eigen against decimation, relative to the largest entry


def close(x, reference, tol=TOL):
    x, reference = np.asarray(x), np.asarray(reference)
    np.testing.assert_allclose(x, reference, rtol=0, atol=tol * np.abs(reference).max())


def random_lead(b, seed, overlap=True):
    rng = np.random.default_rng(seed)

    def cplx(scale):
        return scale * (rng.normal(size=(b, b)) + 1j * rng.normal(size=(b, b)))

    h00 = cplx(1.0)
    h00 = (h00 + h00.conj().T) / 2
    h01 = cplx(0.6)
    s00, s01 = np.eye(b), np.zeros((b, b))
    if overlap:
        d = cplx(0.03)
        s00 = s00 + (d + d.conj().T) / 2
        s01 = cplx(0.03)
    return sweep.LeadBlocks(
        *(jnp.asarray(x, jnp.complex128) for x in (h00, s00, h01, s01)),
        jnp.asarray(h01.conj().T),
        jnp.asarray(s01.conj().T),
        jnp.zeros(b),
    )


def blocks_at(lead, energy, eta, side):
    return sweep._lead_matrices(lead, energy + 1j * eta, side)


def both_methods(blocks):
    return [surface_green(*blocks, 60, m) for m in ("decimation", "eigen")]


# ---------------------------------------------------------------------------- chain
@pytest.mark.parametrize("side", ["left", "right"])
def test_chain_closed_form_inside_and_outside_the_band(side):
    """Sigma = (E - i sqrt(4t^2 - E^2)) / 2 inside the band, (E - sign(E) sqrt(E^2 - 4t^2))
    / 2 outside (t = 1.3 eV), at eta = 1e-12 where decimation needs ~40 steps."""
    t = 1.3
    zero, hop = np.zeros((1, 1)), -t * np.ones((1, 1))
    for energy in (-2.4, -0.9, 0.0, 0.7, 1.95, 2.9, -4.0):
        inside = abs(energy) < 2 * t
        if inside:
            exact = (energy - 1j * np.sqrt(4 * t**2 - energy**2)) / 2
        else:
            exact = (energy - np.sign(energy) * np.sqrt(energy**2 - 4 * t**2)) / 2
        sig_e, res_e = self_energy(energy, zero, hop, eta=1e-12, side=side, method="eigen")
        sig_d, res_d = self_energy(energy, zero, hop, eta=1e-12, side=side)
        assert complex(sig_e[0, 0]) == pytest.approx(exact, abs=1e-10)
        assert float(res_e) < 1e-12
        if energy == 0.0:
            # E at the eigenvalue of the one-site cell h00 = 0, within eta: decimation's
            # known failure (round-off destroys g, flagged by its residual); the modes
            # never invert a00 and stay exact
            assert float(res_d) > 1e-2
        else:
            assert complex(sig_e[0, 0]) == pytest.approx(complex(sig_d[0, 0]), abs=1e-10)


def test_chain_at_the_band_edge_and_in_the_gap():
    """At E = 2t exactly the decaying and growing modes meet at lambda = -1 (split by
    sqrt(eta)); Sigma = t - t sqrt(-2i eta / t) + O(eta). In the gap the mode is
    evanescent. The residual stays at round-off and both methods agree."""
    t, eta = 1.0, 1e-8
    zero, hop = np.zeros((1, 1)), -t * np.ones((1, 1))
    for energy in (2.0, -2.0, 2.0 + 1e-9, 3.5):
        sig_e, res_e = self_energy(energy, zero, hop, eta=eta, method="eigen")
        sig_d, res_d = self_energy(energy, zero, hop, eta=eta)
        z = energy + 1j * eta
        # exact at complex z: the root of Sigma^2 - z Sigma + t^2 = 0 with Im Sigma < 0
        roots = np.roots([1, -z, t**2])
        exact = roots[np.argmin(roots.imag)]
        assert complex(sig_e[0, 0]) == pytest.approx(exact, abs=1e-10)
        assert complex(sig_e[0, 0]) == pytest.approx(complex(sig_d[0, 0]), abs=1e-10)
        assert float(res_e) < 1e-12 and float(res_d) < 1e-12


# ---------------------------------------------------------------------------- general leads
@pytest.mark.parametrize("energy", [-1.7, 0.2, 1.1])
def test_random_lead_with_overlap_equals_decimation_both_sides(energy):
    lead = random_lead(16, seed=3)
    for side in ("left", "right"):
        blocks = blocks_at(lead, energy, 1e-6, side)
        g_dec, g_eig = both_methods(blocks)
        close(g_eig, g_dec)
        a00, a_out, a_in = blocks
        assert float(fixed_point_residual(g_eig, a00, a_out @ g_eig @ a_in)) < 1e-10
    # shared: one eigen-decomposition gives both leads
    left, right = blocks_at(lead, energy, 1e-6, "left"), blocks_at(lead, energy, 1e-6, "right")
    g_l, g_r = surface_green_pair(*left, *right, 60, "eigen")
    close(g_l, surface_green(*left, 60))
    close(g_r, surface_green(*right, 60))


def singular_lead(b, n_pad, seed):
    """A lead whose coupling has zero rows and columns (orbitals 0 and 3 talk to their own
    cell only, orbital 5 couples only forward: rank-deficient h01 and s01) and ``n_pad``
    padding orbitals as :class:`~hamjax.transport.sweep.LeadBlocks` carries them."""
    lead = random_lead(b, seed)
    h01 = np.asarray(lead.h01).copy()
    s01 = np.asarray(lead.s01).copy()
    for m in (h01, s01):
        m[[0, 3], :] = 0
        m[:, [0, 3]] = 0
        m[:, 5] = 0
    pad = np.zeros(b + n_pad)

    def grow(x):
        out = np.zeros((b + n_pad, b + n_pad), complex)
        out[:b, :b] = x
        return jnp.asarray(out)

    pad[b:] = 1.0
    return sweep.LeadBlocks(
        grow(lead.h00),
        grow(lead.s00),
        grow(h01),
        grow(s01),
        grow(h01.conj().T),
        grow(s01.conj().T),
        jnp.asarray(pad),
    )


@pytest.mark.parametrize("energy", [-0.8, 0.45])
def test_singular_coupling_and_padding(energy):
    """Zero rows of the coupling give modes with lambda = 0 (right) or infinite lambda
    (nu = 0, mu = 0 for the left lead); both must be counted in the right lead's set."""
    lead = singular_lead(8, 3, seed=6)
    left, right = blocks_at(lead, energy, 1e-7, "left"), blocks_at(lead, energy, 1e-7, "right")
    for blocks in (left, right):
        g_dec, g_eig = both_methods(blocks)
        close(g_eig, g_dec)
    g_l, g_r = surface_green_pair(*left, *right, 60, "eigen")
    close(g_l, surface_green(*left, 60))
    close(g_r, surface_green(*right, 60))
    # the padding orbitals stay decoupled: g = 1 there, 0 off their diagonal
    np.testing.assert_allclose(np.asarray(g_r)[8:, 8:], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(np.asarray(g_r)[:8, 8:], 0, atol=1e-12)


# ---------------------------------------------------------------------------- transmission
@pytest.mark.parametrize("share", [True, False])
def test_transmission_equals_decimation(share):
    h, s = device_with_identical_leads(seed=5, complex_=True)
    layers = (3, 3, 4, 2, 3, 3)
    energies = np.linspace(-3.0, 3.0, 25)
    ref = transmission(h, s, layers, energies, eta=1e-6, share_leads=share)
    eig = transmission(h, s, layers, energies, eta=1e-6, share_leads=share, lead_method="eigen")
    np.testing.assert_allclose(eig.transmission, ref.transmission, rtol=0, atol=1e-11)
    assert np.max(np.asarray(eig.residual_left)) < 1e-10
    assert np.max(np.asarray(eig.residual_right)) < 1e-10
    assert np.max(np.asarray(ref.transmission)) > 0.1


def test_transmission_with_padded_unequal_leads_equals_decimation():
    """Different left and right leads (3 and 5 orbitals, the left one padded to 5)."""
    layers = [3, 3, 4, 2, 5, 5]
    h, s = random_device(layers, 3, complex_=True)
    energies = np.linspace(-2.5, 2.5, 11)
    ref = transmission(h, s, layers, energies, eta=1e-6)
    eig = transmission(h, s, layers, energies, eta=1e-6, lead_method="eigen")
    np.testing.assert_allclose(eig.transmission, ref.transmission, rtol=0, atol=1e-11)


def test_chain_with_impurity_exact_formula_at_tiny_eta():
    """T = (4t^2 - E^2) / (4t^2 - E^2 + eps^2) at eta = 1e-12 eV (t = 1, eps = 0.6)."""
    energies = np.array([-1.7, -0.4, 0.3, 1.85])
    onsite = np.zeros(9)
    onsite[4] = 0.6
    t = transmission(
        chain(9, onsite=onsite), None, [1] * 9, energies, eta=1e-12, lead_method="eigen"
    ).transmission
    np.testing.assert_allclose(t, (4 - energies**2) / (4 - energies**2 + 0.36), atol=1e-9)


LAYERS = (3, 3, 4, 2, 3, 3)
ENERGIES = np.array([-1.2, 0.3, 1.4])
WEIGHTS = np.array([1.0, -0.6, 0.35])


def weighted_t(h, s, method):
    t = transmission(h, s, LAYERS, ENERGIES, eta=1e-6, lead_method=method).transmission
    return jnp.sum(t * WEIGHTS)


def test_gradient_equals_decimation_and_central_differences():
    h, s = device_with_identical_leads(seed=5)
    rng = np.random.default_rng(2)
    d = rng.normal(size=h.shape) * (h != 0)
    d = (d + d.T) / 2
    grads = {
        m: jax.grad(weighted_t, argnums=(0, 1))(jnp.asarray(h), jnp.asarray(s), m)
        for m in ("decimation", "eigen")
    }
    for ref, eig in zip(grads["decimation"], grads["eigen"], strict=True):
        close(eig, ref, 1e-8)
    analytic = float(jnp.sum(grads["eigen"][0] * d))
    step = 1e-5
    plus = float(weighted_t(h + step * d, s, "eigen"))
    minus = float(weighted_t(h - step * d, s, "eigen"))
    numeric = (plus - minus) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    assert abs(numeric) > 1e-3


def test_method_choice():
    """ "eigen" where no eigensolver runs is an error; "auto" then decimates."""
    assert resolve_lead_method("eigen", "cpu") == "eigen"
    with pytest.raises(ValueError, match="eigen"):
        resolve_lead_method("eigen", "tpu")
    assert resolve_lead_method("auto", "tpu", 1e-9) == "decimation"
    assert resolve_lead_method("auto", "cpu", 1e-9, scale=1.0) == "eigen"
    assert resolve_lead_method("auto", "cpu", 1e-5, scale=1.0) == "decimation"
    with pytest.raises(ValueError, match="lead_method"):
        resolve_lead_method("qz", "cpu")


def test_kpoint_transmission_exact_where_decimation_fails():
    """Square-lattice strip periodic across (hopping -1 eV): T(E, k_y) is 1 where E lies in
    the chain's band shifted by -2 cos(2 pi k_y). At k_y = -1/8 and E = 0 the decimated
    cell of 3 lead sites has an eigenvalue at E (-sqrt(2) + sqrt(2)), decimation's failure
    (residual ~1, flagged); the eigenmodes stay exact there and agree elsewhere."""
    from hamjax.transport import transmission_kpoints

    images = np.stack([chain(6), -np.eye(6), -np.eye(6)])
    shifts = [(0, 0, 0), (0, 1, 0), (0, -1, 0)]
    energies = np.array([-2.5, 0.0, 1.3, 3.0])
    kw = dict(eta=1e-9, time_reversal=False)
    with pytest.warns(RuntimeWarning, match="E = 0 eV"):
        ref = transmission_kpoints(images, None, shifts, [1] * 6, energies, (1, 4, 1), **kw)
    eig = transmission_kpoints(
        images, None, shifts, [1] * 6, energies, (1, 4, 1), lead_method="eigen", **kw
    )
    ky = eig.kpoints[:, 1]
    exact = (np.abs(energies[None, :] + 2 * np.cos(2 * np.pi * ky)[:, None]) < 2).astype(float)
    np.testing.assert_allclose(eig.transmission_k, exact, atol=1e-8)
    assert np.max(np.asarray(eig.residual_left)) < 1e-12
    assert np.max(np.asarray(eig.residual_right)) < 1e-12
    good = np.asarray(ref.residual_left) < 1e-10
    assert 0 < np.sum(~good) < good.size
    np.testing.assert_allclose(
        np.asarray(eig.transmission_k)[good], np.asarray(ref.transmission_k)[good], atol=1e-10
    )
