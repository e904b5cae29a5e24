"""Identical leads from one decimation: equal to two decimations, gradients still exact."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_transport import random_device

from hamjax.transport import sweep, transmission
from hamjax.transport.surface import surface_green, surface_green_pair

LAYERS = (3, 3, 4, 2, 3, 3)
ENERGIES = np.array([-2.75, 0.5, 1.75, 2.25])
ETA = 1e-6


def device_with_identical_leads(seed, complex_=False):
    """Random Hermitian H and S on ``LAYERS`` whose first two and last two layers repeat one
    lead cell (onsite and cell-to-cell coupling), so both default leads are the same bulk."""
    h, s = random_device(LAYERS, seed, complex_=complex_)
    off = np.concatenate([[0], np.cumsum(LAYERS)])
    b, last = LAYERS[0], len(LAYERS) - 1
    for m in (h, s):
        cell, coupling = m[:b, :b].copy(), m[:b, b : 2 * b].copy()
        for k in (1, last - 1, last):
            m[off[k] : off[k + 1], off[k] : off[k + 1]] = cell
        for k in (0, last - 1):
            m[off[k] : off[k + 1], off[k + 1] : off[k + 2]] = coupling
            m[off[k + 1] : off[k + 2], off[k] : off[k + 1]] = coupling.conj().T
    return h, s


def lead_blocks(h, s, rows, cols, pad_to=None):
    c = jnp.complex128
    return jnp.asarray(h[rows, cols], c), jnp.asarray(s[rows, cols], c)


def test_pair_equals_two_decimations_and_its_tangents():
    rng = np.random.default_rng(4)
    b = 4

    def cplx(scale):
        return scale * (rng.normal(size=(b, b)) + 1j * rng.normal(size=(b, b)))

    h00 = cplx(1.0)
    h00 = (h00 + h00.conj().T) / 2
    h01, s01 = cplx(0.8), cplx(0.05)
    z = 0.3 + 1e-6j
    a00 = z * (np.eye(b) + 0.0) - h00
    a01 = z * s01 - h01
    a10 = z * s01.conj().T - h01.conj().T
    left, right = (a00, a10, a01), (a00, a01, a10)
    g_l, g_r = surface_green_pair(*left, *right, 60)
    np.testing.assert_allclose(
        g_l, surface_green(*left, 60), rtol=0, atol=1e-12 * np.abs(g_l).max()
    )
    np.testing.assert_allclose(
        g_r, surface_green(*right, 60), rtol=0, atol=1e-12 * np.abs(g_r).max()
    )
    # tangents per lead: perturb the left lead's blocks only, then the right lead's only
    d = (cplx(0.1), cplx(0.1), cplx(0.1))
    zero = tuple(jnp.zeros_like(x) for x in d)
    for t_left, t_right in ((d, zero), (zero, d)):
        _, (dg_l, dg_r) = jax.jvp(
            lambda *xs: surface_green_pair(*xs, 60), (*left, *right), (*t_left, *t_right)
        )
        _, ref_l = jax.jvp(lambda *xs: surface_green(*xs, 60), left, t_left)
        _, ref_r = jax.jvp(lambda *xs: surface_green(*xs, 60), right, t_right)
        np.testing.assert_allclose(dg_l, ref_l, atol=1e-10 * np.abs(ref_l).max() + 1e-14)
        np.testing.assert_allclose(dg_r, ref_r, atol=1e-10 * np.abs(ref_r).max() + 1e-14)


def test_identical_leads_detected_on_the_values():
    h, s = device_with_identical_leads(seed=1)
    n_layers, b = 4, 3
    c = jnp.complex128
    blocks = sweep.DeviceBlocks(
        jnp.asarray([h[3 * k : 3 * k + 3, 3 * k : 3 * k + 3] for k in range(n_layers)], c),
        jnp.asarray([s[3 * k : 3 * k + 3, 3 * k : 3 * k + 3] for k in range(n_layers)], c),
        jnp.asarray([h[3 * k : 3 * k + 3, 3 * k + 3 : 3 * k + 6] for k in range(3)], c),
        jnp.asarray([s[3 * k : 3 * k + 3, 3 * k + 3 : 3 * k + 6] for k in range(3)], c),
        jnp.asarray([h[3 * k + 3 : 3 * k + 6, 3 * k : 3 * k + 3] for k in range(3)], c),
        jnp.asarray([s[3 * k + 3 : 3 * k + 6, 3 * k : 3 * k + 3] for k in range(3)], c),
        jnp.zeros((n_layers, b)),
    )
    left, right = sweep.end_leads(blocks, (b,) * n_layers)
    assert not bool(sweep.identical_leads(left, right))  # layers 2 and 3 of h are random
    assert bool(sweep.identical_leads(left, left._replace()))
    right = right._replace(h00=left.h00, s00=left.s00, h01=left.h01, s01=left.s01)
    right = right._replace(h10=left.h10, s10=left.s10)
    assert bool(sweep.identical_leads(left, right))
    assert not bool(sweep.identical_leads(left, right._replace(pad=right.pad.at[0].set(1.0))))


@pytest.mark.parametrize("complex_", [False, True])
def test_shared_leads_equal_two_decimations(complex_):
    h, s = device_with_identical_leads(seed=5, complex_=complex_)
    energies = np.linspace(-3.0, 3.0, 25)
    shared = transmission(h, s, LAYERS, energies, eta=ETA)
    separate = transmission(h, s, LAYERS, energies, eta=ETA, share_leads=False)
    np.testing.assert_allclose(shared.transmission, separate.transmission, rtol=0, atol=1e-12)
    np.testing.assert_allclose(shared.residual_left, separate.residual_left, atol=1e-12)
    np.testing.assert_allclose(shared.residual_right, separate.residual_right, atol=1e-12)
    assert np.max(np.asarray(shared.transmission)) > 0.1


WEIGHTS = np.array([1.0, -0.7, 0.4, 0.25])


def weighted_t(h, s):
    return jnp.sum(transmission(h, s, LAYERS, ENERGIES, eta=ETA).transmission * WEIGHTS)


@pytest.mark.parametrize("which", ["left", "both"])
def test_grad_with_shared_leads_matches_central_differences(which):
    """At identical leads the shared decimation runs; a direction that moves the left lead's
    cell only makes the leads differ at the displaced points (two decimations there), so the
    tangents of the two leads must stay separate."""
    h, s = device_with_identical_leads(seed=5)
    rng = np.random.default_rng(7)
    n, b = h.shape[0], LAYERS[0]
    mask = np.zeros((n, n))
    mask[:b, :b] = 1
    if which == "both":
        mask[-b:, -b:] = 1
        mask[-2 * b : -b, -2 * b : -b] = 1
        mask[b : 2 * b, b : 2 * b] = 1
    cell = rng.normal(size=(b, b))
    direction = np.kron(np.ones((n // b + 1, n // b + 1)), cell + cell.T)[:n, :n] * mask
    grad_h, _ = jax.jit(jax.grad(weighted_t, argnums=(0, 1)))(jnp.asarray(h), jnp.asarray(s))
    analytic = float(jnp.sum(grad_h * direction))
    step = 1e-5
    plus = float(weighted_t(h + step * direction, s))
    minus = float(weighted_t(h - step * direction, s))
    numeric = (plus - minus) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    assert abs(numeric) > 1e-3
