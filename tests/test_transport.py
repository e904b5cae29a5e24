"""Transport solver against exact results: chains, impurities, wires, dense inversion."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from hamjax.transport import (
    Lead,
    check_device,
    lead_fermi_level,
    open_channels,
    principal_layers,
    self_energy,
    transmission,
)

ETA = 1e-8  # small lead broadening: T(E) errors are O(eta)


def chain(n_sites: int, t: float = 1.0, onsite=None) -> np.ndarray:
    h = -t * (np.eye(n_sites, k=1) + np.eye(n_sites, k=-1))
    if onsite is not None:
        h = h + np.diag(onsite)
    return h


def square_wire(width: int, length: int, t: float = 1.0) -> np.ndarray:
    """Square-lattice wire, sites ordered column by column (one column = one layer)."""
    cross = -t * (np.eye(width, k=1) + np.eye(width, k=-1))
    h = np.kron(np.eye(length), cross) - t * np.kron(
        np.eye(length, k=1) + np.eye(length, k=-1), np.eye(width)
    )
    return h


def random_device(layers, seed, complex_=False, overlap=True):
    """Random Hermitian block-tridiagonal H (eV) and positive definite S on ``layers``."""
    rng = np.random.default_rng(seed)
    n = sum(layers)
    off = np.concatenate([[0], np.cumsum(layers)])
    layer_of = np.repeat(np.arange(len(layers)), layers)
    near = np.abs(layer_of[:, None] - layer_of[None, :]) <= 1

    def herm(scale):
        m = rng.normal(size=(n, n))
        if complex_:
            m = m + 1j * rng.normal(size=(n, n))
        m = np.where(near, m, 0) * scale
        return (m + m.conj().T) / 2

    h = herm(1.0)
    s = np.eye(n) + herm(0.08) if overlap else None
    del off
    return h, s


def naive_self_energy(energy, h00, h01, s00, s01, eta, side, iterations=6000):
    """Self-energy by plain fixed-point iteration (a finite lead grown one cell at a time)."""
    z = energy + 1j * eta
    a00 = z * s00 - h00
    a01 = z * s01 - h01
    a10 = z * s01.conj().T - h01.conj().T
    a_out, a_in = (a01, a10) if side == "right" else (a10, a01)
    g = np.linalg.inv(a00)
    for _ in range(iterations):
        g = np.linalg.inv(a00 - a_out @ g @ a_in)
    return a_out @ g @ a_in


def dense_green(h, s, layers, energy, eta):
    """Full G, Gamma_L and Gamma_R by dense inversion with naive lead self-energies."""
    n = h.shape[0]
    s = np.eye(n) if s is None else s
    b0, b1 = layers[0], layers[-1]
    sl = naive_self_energy(
        energy, h[:b0, :b0], h[:b0, b0 : 2 * b0], s[:b0, :b0], s[:b0, b0 : 2 * b0], eta, "left"
    )
    sr = naive_self_energy(
        energy,
        h[n - b1 :, n - b1 :],
        h[n - 2 * b1 : n - b1, n - b1 :],
        s[n - b1 :, n - b1 :],
        s[n - 2 * b1 : n - b1, n - b1 :],
        eta,
        "right",
    )
    sigma_l = np.zeros((n, n), complex)
    sigma_r = np.zeros((n, n), complex)
    sigma_l[:b0, :b0] = sl
    sigma_r[n - b1 :, n - b1 :] = sr
    g = np.linalg.inv(energy * s - h - sigma_l - sigma_r)
    gamma_l = 1j * (sigma_l - sigma_l.conj().T)
    gamma_r = 1j * (sigma_r - sigma_r.conj().T)
    return g, gamma_l, gamma_r


# ---------------------------------------------------------------------------- chains
def test_chain_self_energy_exact_values():
    zero, hop = np.zeros((1, 1)), -np.ones((1, 1))
    for side in ("left", "right"):
        s07, r07 = self_energy(0.7, zero, hop, eta=1e-10, side=side)
        s25, r25 = self_energy(2.5, zero, hop, eta=1e-10, side=side)
        assert complex(s07[0, 0]) == pytest.approx(0.35 - 0.9367496998j, abs=1e-9)
        assert complex(s25[0, 0]) == pytest.approx(0.5, abs=1e-9)
        assert float(r07) < 1e-10 and float(r25) < 1e-10


def test_chain_transmits_one_channel_in_band_and_none_outside():
    energies = np.array([-1.9, -1.3, -0.6, 0.21, 0.9, 1.7, 1.95])
    outside = np.array([-3.0, -2.2, 2.05, 2.7])
    h = chain(11)
    t_in = np.asarray(transmission(h, None, [1] * 11, energies, eta=ETA).transmission)
    t_out = np.asarray(transmission(h, None, [1] * 11, outside, eta=ETA).transmission)
    np.testing.assert_allclose(t_in, 1.0, atol=1e-6)
    np.testing.assert_allclose(t_out, 0.0, atol=1e-10)


@pytest.mark.parametrize("eps", [0.3, 1.0, -2.5])
def test_single_impurity_matches_exact_formula(eps):
    energies = np.array([-1.7, -0.8, -0.1, 0.45, 1.2, 1.85])
    onsite = np.zeros(11)
    onsite[5] = eps
    t = np.asarray(transmission(chain(11, onsite=onsite), None, [1] * 11, energies, eta=ETA)[0])
    exact = (4 - energies**2) / (4 - energies**2 + eps**2)
    np.testing.assert_allclose(t, exact, atol=1e-6)


def test_nonorthogonal_chain_with_impurity():
    """Chain with onsite e0, hopping h and overlap s; impurity eps on one site.

    At fixed E, A = E S - H is an orthogonal chain scaled by c = E s - h:
    E' = (E - e0) / c, eps' = eps / c and T = (4 - E'^2) / (4 - E'^2 + eps'^2).
    """
    n, e0, hop, s_nn, eps = 11, 0.4, -1.2, 0.15, 0.7
    h = e0 * np.eye(n) + hop * (np.eye(n, k=1) + np.eye(n, k=-1))
    h[5, 5] += eps
    s = np.eye(n) + s_nn * (np.eye(n, k=1) + np.eye(n, k=-1))
    # band edges from E(k) = (e0 + 2 h cos k) / (1 + 2 s cos k)
    lo, hi = sorted([(e0 + 2 * hop) / (1 + 2 * s_nn), (e0 - 2 * hop) / (1 - 2 * s_nn)])
    energies = np.linspace(lo, hi, 9)[1:-1]
    c = energies * s_nn - hop
    e_eff, eps_eff = (energies - e0) / c, eps / c
    exact = (4 - e_eff**2) / (4 - e_eff**2 + eps_eff**2)
    t = np.asarray(transmission(h, s, [1] * n, energies, eta=ETA).transmission)
    np.testing.assert_allclose(t, exact, atol=1e-6)
    outside = np.array([lo - 0.3, hi + 0.3])
    t_out = np.asarray(transmission(h, s, [1] * n, outside, eta=ETA).transmission)
    np.testing.assert_allclose(t_out, 0.0, atol=1e-10)


def test_square_wire_transmits_number_of_open_modes():
    width, length = 4, 6
    h = square_wire(width, length)
    modes = -2 * np.cos(np.arange(1, width + 1) * np.pi / (width + 1))  # transverse energies
    edges = np.sort(np.concatenate([modes - 2, modes + 2]))
    # energies midway between consecutive mode edges, away from van Hove points
    energies = np.concatenate([(edges[:-1] + edges[1:]) / 2, [edges[0] - 0.3, edges[-1] + 0.3]])
    n_open = np.sum(np.abs(energies[:, None] - modes[None, :]) < 2, axis=1)
    t = np.asarray(transmission(h, None, [width] * length, energies, eta=ETA).transmission)
    np.testing.assert_allclose(t, n_open, atol=1e-6)
    assert set(n_open.tolist()) == {0, 1, 2, 3, 4}


def test_open_channels_of_a_wire_and_of_a_nonorthogonal_chain():
    """A lead's open channels: one per transverse mode with |E - e_m| < 2 for the square
    wire; one inside the band (E - e0) / (E s - h) in (-2, 2) of a non-orthogonal chain."""
    width = 4
    onsite = -(np.eye(width, k=1) + np.eye(width, k=-1))  # transverse chain, hopping -1
    modes = -2 * np.cos(np.arange(1, width + 1) * np.pi / (width + 1))
    edges = np.sort(np.concatenate([modes - 2, modes + 2]))
    energies = np.concatenate([(edges[:-1] + edges[1:]) / 2, [edges[-1] + 0.3]])
    n_open = np.sum(np.abs(energies[:, None] - modes[None, :]) < 2, axis=1)
    wire = Lead(onsite, -np.eye(width))
    np.testing.assert_allclose(open_channels(wire, energies, eta=ETA), n_open, atol=1e-6)
    np.testing.assert_array_equal(open_channels(wire, energies, method="bands"), n_open)

    e0, hop, s_nn = 0.4, -1.2, 0.15
    chain_lead = Lead([[e0]], [[hop]], [[1.0]], [[s_nn]])
    band = sorted([(e0 + 2 * hop) / (1 + 2 * s_nn), (e0 - 2 * hop) / (1 - 2 * s_nn)])
    energies = np.linspace(-4.0, 5.0, 37)
    energies = energies[np.min(np.abs(energies[:, None] - np.array(band)), axis=1) > 0.05]
    inside = np.abs((energies - e0) / (energies * s_nn - hop)) < 2
    assert inside.any() and not inside.all()
    np.testing.assert_allclose(open_channels(chain_lead, energies, eta=ETA), inside, atol=1e-6)
    np.testing.assert_array_equal(open_channels(chain_lead, energies, method="bands"), inside)


def test_lead_fermi_level_of_chains_and_a_wire():
    """Filling n electrons per cell puts E_F at E(k_F), k_F = pi n / 2, on a chain with
    E(k) = (e0 + 2 h cos k) / (1 + 2 s cos k) (monotonic in |k|); on the square wire the
    filled states of all transverse modes add up; half filling of a symmetric band is at
    its centre at any temperature."""
    e0, hop, s_nn = 0.4, -1.2, 0.15
    lead = Lead([[e0]], [[hop]], [[1.0]], [[s_nn]])
    for n in (0.3, 1.0, 1.7):
        k_f = np.pi * n / 2
        exact = (e0 + 2 * hop * np.cos(k_f)) / (1 + 2 * s_nn * np.cos(k_f))
        mu = lead_fermi_level(lead, n, temperature=0.0, n_k=4000)
        assert mu == pytest.approx(exact, abs=5e-3)
    orthogonal = Lead([[0.0]], [[-1.0]])
    assert lead_fermi_level(orthogonal, 1.0, temperature=3000.0) == pytest.approx(0.0, abs=1e-9)

    width = 3  # transverse modes e_m = -2 cos(m pi / 4), each band e_m - 2 cos k
    wire = Lead(-(np.eye(width, k=1) + np.eye(width, k=-1)), -np.eye(width))
    modes = -2 * np.cos(np.arange(1, width + 1) * np.pi / (width + 1))
    mu = lead_fermi_level(wire, 2.0, temperature=0.0, n_k=4000)
    # electrons per cell of band m below mu: (2 / pi) arccos((e_m - mu) / 2), clipped
    per_band = 2 / np.pi * np.arccos(np.clip((modes - mu) / 2, -1, 1))
    assert per_band.sum() == pytest.approx(2.0, abs=5e-3)
    with pytest.raises(ValueError, match="does not fit"):
        lead_fermi_level(orthogonal, 2.5)


def test_open_channels_band_count_equals_perfect_lead_transmission():
    """Two independent counts on a random non-orthogonal multi-orbital lead: the bands
    crossing E and the transmission of the perfect lead, at energies away from band edges."""
    rng = np.random.default_rng(7)
    b = 6
    x = rng.normal(size=(b, b))
    h00 = (x + x.T) / 2
    h01 = 0.6 * rng.normal(size=(b, b))
    s01 = 0.05 * rng.normal(size=(b, b))
    lead = Lead(h00, h01, np.eye(b), s01)
    # band extrema from a fine k grid: keep energies at least 0.02 eV away from all of them
    fine = open_channels(lead, np.linspace(-8, 8, 4001), method="bands", n_k=2000)
    edges = np.linspace(-8, 8, 4001)[np.flatnonzero(np.diff(fine)) + 1]
    energies = np.linspace(-6, 6, 61)
    energies = energies[np.min(np.abs(energies[:, None] - edges[None, :]), axis=1) > 0.02]
    by_bands = open_channels(lead, energies, method="bands", n_k=400)
    by_transmission = open_channels(lead, energies, eta=ETA)
    np.testing.assert_allclose(by_transmission, by_bands, atol=1e-5)
    assert len(set(by_bands.tolist())) >= 3  # several different channel counts were compared


# ---------------------------------------------------------------------------- dense reference
LAYERS_UNEVEN = (3, 3, 5, 2, 4, 1, 3, 3)


@pytest.mark.parametrize("complex_", [False, True])
def test_rgf_equals_dense_inversion_random_nonorthogonal(complex_):
    h, s = random_device(LAYERS_UNEVEN, seed=3, complex_=complex_)
    energies = np.array([-1.1, -0.35, 0.2, 0.8])
    eta = 0.05  # moderate, so the naive lead iteration converges
    res = transmission(h, s, LAYERS_UNEVEN, energies, eta=eta)
    t = np.asarray(res.transmission)
    n = h.shape[0]
    b0, b1 = LAYERS_UNEVEN[0], LAYERS_UNEVEN[-1]
    for k, e in enumerate(energies):
        g, gl, gr = dense_green(h, s, LAYERS_UNEVEN, e, eta)
        t_lr = np.trace(gl @ g @ gr @ g.conj().T).real
        t_rl = np.trace(gr @ g @ gl @ g.conj().T).real
        assert t[k] == pytest.approx(t_lr, abs=1e-10)
        assert t_rl == pytest.approx(t_lr, abs=1e-10)
        # the block formula used by RGF only needs the corner block G_{0, N-1}
        corner = g[:b0, n - b1 :]
        assert t_lr == pytest.approx(
            np.trace(gl[:b0, :b0] @ corner @ gr[n - b1 :, n - b1 :] @ corner.conj().T).real,
            abs=1e-10,
        )
    assert np.all(np.asarray(res.residual_left) < 1e-8)


def test_left_right_symmetry_by_reversing_the_device():
    h, s = random_device(LAYERS_UNEVEN, seed=5, complex_=True)
    energies = np.linspace(-1.5, 1.5, 7)
    flip = np.arange(h.shape[0])[::-1]
    t_lr = np.asarray(transmission(h, s, LAYERS_UNEVEN, energies, eta=1e-6)[0])
    # reversing the orbital order swaps the leads; the conjugate keeps A_{k,k+1} conventions
    t_rl = np.asarray(
        transmission(
            h[np.ix_(flip, flip)], s[np.ix_(flip, flip)], LAYERS_UNEVEN[::-1], energies, eta=1e-6
        )[0]
    )
    np.testing.assert_allclose(t_lr, t_rl, atol=1e-8)


def test_transmission_is_nonnegative_and_bounded_by_channels():
    h, s = random_device(LAYERS_UNEVEN, seed=11)
    energies = np.linspace(-4.0, 4.0, 161)
    t = np.asarray(transmission(h, s, LAYERS_UNEVEN, energies, eta=1e-6, chunk_size=8).transmission)
    assert np.all(t >= -1e-9)
    assert np.all(t <= 3 + 1e-9)  # at most as many channels as orbitals per lead cell
    assert np.max(t) > 0.1  # the device conducts somewhere


def test_padding_and_layer_grouping_do_not_change_t():
    """Same device cut into equal layers and into merged, uneven (padded) layers."""
    layers_fine = (2, 2, 2, 2, 2, 2, 2, 2)
    layers_merged = (2, 2, 6, 2, 2, 2)  # the middle three layers merged: padding 2 -> 6
    h, s = random_device(layers_fine, seed=7, complex_=True)
    energies = np.linspace(-1.2, 1.2, 9)
    t_fine = np.asarray(transmission(h, s, layers_fine, energies, eta=1e-6)[0])
    t_merged = np.asarray(transmission(h, s, layers_merged, energies, eta=1e-6)[0])
    np.testing.assert_allclose(t_fine, t_merged, atol=1e-9)


def test_explicit_leads_equal_default_leads():
    layers = LAYERS_UNEVEN
    h, s = random_device(layers, seed=9)
    energies = np.array([-0.7, 0.1, 0.9])
    b = 3
    left = Lead(h[:b, :b], h[:b, b : 2 * b], s[:b, :b], s[:b, b : 2 * b])
    right = Lead(h[-b:, -b:], h[-2 * b : -b, -b:], s[-b:, -b:], s[-2 * b : -b, -b:])
    t_default = np.asarray(transmission(h, s, layers, energies, eta=1e-6)[0])
    t_explicit = np.asarray(transmission(h, s, layers, energies, eta=1e-6, leads=(left, right))[0])
    np.testing.assert_allclose(t_explicit, t_default, atol=1e-12)


def test_sparse_jax_and_numpy_inputs_agree():
    import jax.numpy as jnp

    layers = LAYERS_UNEVEN
    h, s = random_device(layers, seed=2, complex_=True)
    energies = np.array([-0.5, 0.3])
    t_np = np.asarray(transmission(h, s, layers, energies, eta=1e-6)[0])
    t_sp = np.asarray(
        transmission(sp.csr_matrix(h), sp.csr_matrix(s), layers, energies, eta=1e-6)[0]
    )
    t_jx = np.asarray(transmission(jnp.asarray(h), jnp.asarray(s), layers, energies, eta=1e-6)[0])
    np.testing.assert_allclose(t_sp, t_np, atol=1e-12)
    np.testing.assert_allclose(t_jx, t_np, atol=1e-12)


def test_chunking_does_not_change_t():
    h, s = random_device(LAYERS_UNEVEN, seed=4)
    energies = np.linspace(-1.0, 1.0, 11)
    t_two_calls = np.concatenate(
        [
            np.asarray(transmission(h, s, LAYERS_UNEVEN, e, eta=1e-6)[0])
            for e in (energies[:6], energies[6:])
        ]
    )
    # 11 energies in chunks of 8: the second chunk is padded with repeated energies
    t_chunked = np.asarray(transmission(h, s, LAYERS_UNEVEN, energies, eta=1e-6, chunk_size=8)[0])
    t_one = t_two_calls
    np.testing.assert_allclose(t_chunked, t_one, atol=1e-12)


def test_residual_warning_names_energies():
    """E = 0 exactly at the eigenvalue of a one-site lead cell (h00 = 0) with tiny eta."""
    h = chain(11)
    with pytest.warns(RuntimeWarning, match=r"E = 0 eV"):
        res = transmission(h, None, [1] * 11, [0.0, 0.5], eta=1e-14, residual_tolerance=1e-12)
    assert float(res.residual_left[0]) > 1e-12 >= float(res.residual_left[1])


def test_principal_layers_from_sparsity():
    width, length = 3, 7
    h = square_wire(width, length)
    x = np.repeat(np.arange(length, dtype=float), width)
    layers = principal_layers(x, np.ones(width * length, int), sp.csr_matrix(h))
    assert layers == (width,) * length
    # second-neighbour couplings along x force pairs of columns into one layer
    h2 = h - 0.1 * np.kron(np.eye(length, k=2) + np.eye(length, k=-2), np.eye(width))
    layers2 = principal_layers(x, np.ones(width * length, int), h2)
    check_device(h2, None, layers2)  # only neighbouring layers couple (raises otherwise)
    assert max(layers2) <= 2 * width and len(layers2) >= 3
    with pytest.raises(ValueError, match="not neighbours"):
        check_device(h2, None, (width,) * length)
    with pytest.raises(ValueError, match="ordered along the transport axis"):
        principal_layers(x[::-1], np.ones(width * length, int), h)
