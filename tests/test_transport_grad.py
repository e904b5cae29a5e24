"""Gradients of T and I (finite differences, the analytic formula) and sharded energies."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.transport import current, transmission

LAYERS = (3, 3, 4, 2, 3, 3)
ENERGIES = np.array([-0.6, 0.15, 0.7])
ETA = 1e-6


def random_device(layers, seed):
    rng = np.random.default_rng(seed)
    n = sum(layers)
    layer_of = np.repeat(np.arange(len(layers)), layers)
    near = np.abs(layer_of[:, None] - layer_of[None, :]) <= 1

    def sym(scale):
        m = np.where(near, rng.normal(size=(n, n)), 0) * scale
        return (m + m.T) / 2

    return sym(1.0), np.eye(n) + sym(0.08), sym(1.0), sym(1.0), near


WEIGHTS = np.array([1.0, -0.7, 0.4])


def weighted_t(h, s):
    t = transmission(h, s, LAYERS, ENERGIES, eta=ETA).transmission
    return jnp.sum(t * WEIGHTS)


grad_weighted_t = jax.jit(jax.grad(weighted_t, argnums=(0, 1)))  # compiled once, shared


def test_grad_of_t_matches_central_differences_including_lead_layers():
    h, s, dh, ds, _ = random_device(LAYERS, seed=1)
    grad_h, grad_s = grad_weighted_t(jnp.asarray(h), jnp.asarray(s))
    analytic = float(jnp.sum(grad_h * dh) + jnp.sum(grad_s * 0.05 * ds))
    step = 1e-5
    plus = float(weighted_t(h + step * dh, s + step * 0.05 * ds))
    minus = float(weighted_t(h - step * dh, s - step * 0.05 * ds))
    numeric = (plus - minus) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)
    assert abs(numeric) > 1e-3  # the direction matters


@pytest.mark.slow
def test_jvp_with_complex_hermitian_directions_matches_differences():
    h, s, dh_re, _, near = random_device(LAYERS, seed=2)
    rng = np.random.default_rng(0)
    a = np.where(near, rng.normal(size=h.shape), 0)
    dh = dh_re + 1j * (a - a.T) / 2  # Hermitian, complex

    def f(hc):
        return weighted_t(hc, jnp.asarray(s, complex))

    h0 = jnp.asarray(h, complex)
    _, tangent = jax.jit(lambda x, v: jax.jvp(f, (x,), (v,)))(h0, jnp.asarray(dh))
    step = 1e-5
    numeric = (float(f(h0 + step * dh)) - float(f(h0 - step * dh))) / (2 * step)
    assert float(tangent) == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_grad_matches_analytic_formula_for_interior_perturbations():
    """dT = 2 Re Tr[M (dH - E dS)], M = G Gamma_R G^H Gamma_L G (fixed lead self-energies)."""
    from hamjax.transport import self_energy

    h, s, _, _, near = random_device(LAYERS, seed=1)
    n, last = h.shape[0], len(LAYERS) - 1
    layer_of = np.repeat(np.arange(len(LAYERS)), LAYERS)
    # blocks (0,0), (0,1), (1,0) define the left lead and (N-1,N-1), (N-2,N-1), (N-1,N-2) the
    # right one; every other block enters T only through G.
    lead = ((layer_of[:, None] <= 1) & (layer_of[None, :] <= 1)) & ~(
        (layer_of[:, None] == 1) & (layer_of[None, :] == 1)
    )
    lead |= ((layer_of[:, None] >= last - 1) & (layer_of[None, :] >= last - 1)) & ~(
        (layer_of[:, None] == last - 1) & (layer_of[None, :] == last - 1)
    )
    mask = near & ~lead
    grad_h, grad_s = grad_weighted_t(jnp.asarray(h), jnp.asarray(s))
    expected_h = np.zeros((n, n))
    expected_s = np.zeros((n, n))
    b0, b1 = LAYERS[0], LAYERS[-1]
    for w, energy in zip(WEIGHTS, ENERGIES, strict=True):
        sl, _ = self_energy(
            energy,
            h[:b0, :b0],
            h[:b0, b0 : 2 * b0],
            s[:b0, :b0],
            s[:b0, b0 : 2 * b0],
            eta=ETA,
            side="left",
        )
        sr, _ = self_energy(
            energy,
            h[-b1:, -b1:],
            h[-2 * b1 : -b1, -b1:],
            s[-b1:, -b1:],
            s[-2 * b1 : -b1, -b1:],
            eta=ETA,
            side="right",
        )
        sigma_l = np.zeros((n, n), complex)
        sigma_r = np.zeros((n, n), complex)
        sigma_l[:b0, :b0] = sl
        sigma_r[-b1:, -b1:] = sr
        g = np.linalg.inv(energy * s - h - sigma_l - sigma_r)
        gamma_l = 1j * (sigma_l - sigma_l.conj().T)
        gamma_r = 1j * (sigma_r - sigma_r.conj().T)
        m = g @ gamma_r @ g.conj().T @ gamma_l @ g
        # dT/dH_ij = 2 Re M_ji and dT/dS_ij = -E dT/dH_ij (entries taken as independent)
        expected_h += w * 2 * np.real(m.T)
        expected_s += w * (-energy) * 2 * np.real(m.T)
    np.testing.assert_allclose(np.where(mask, grad_h, 0), np.where(mask, expected_h, 0), atol=1e-8)
    np.testing.assert_allclose(np.where(mask, grad_s, 0), np.where(mask, expected_s, 0), atol=1e-8)
    assert np.max(np.abs(np.where(mask, expected_h, 0))) > 1e-2


@pytest.mark.slow  # its own compilation (chunked, rematerialised path)
def test_grad_of_current_matches_central_differences():
    h, s, dh, _, _ = random_device(LAYERS, seed=4)
    energies = np.linspace(-0.5, 0.5, 9)

    def amps(hh):
        t = transmission(hh, s, LAYERS, energies, eta=ETA, chunk_size=4).transmission
        return current(energies, t, 0.4, fermi_level=0.0, temperature=300.0)

    analytic = float(jnp.sum(jax.jit(jax.grad(amps))(jnp.asarray(h)) * dh))
    step = 1e-5
    numeric = (float(amps(h + step * dh)) - float(amps(h - step * dh))) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-14)


SHARDED = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from hamjax.transport import transmission
    assert len(jax.devices()) == 2, jax.devices()
    rng = np.random.default_rng(0)
    layers = (3, 3, 5, 2, 3, 3)
    n = sum(layers)
    lay = np.repeat(np.arange(len(layers)), layers)
    near = np.abs(lay[:, None] - lay[None, :]) <= 1
    m = np.where(near, rng.normal(size=(n, n)), 0)
    h = (m + m.T) / 2
    e = np.linspace(-1.0, 1.0, 13)
    one = np.asarray(transmission(h, None, layers, e, devices=jax.devices()[:1])[0])
    two = np.asarray(transmission(h, None, layers, e, chunk_size=4)[0])
    f = lambda hh, d: jnp.sum(transmission(hh, None, layers, e, devices=d, chunk_size=4)[0])
    g1 = jax.jit(jax.grad(lambda hh: f(hh, jax.devices()[:1])))(jnp.asarray(h))
    g2 = jax.jit(jax.grad(lambda hh: f(hh, jax.devices())))(jnp.asarray(h))
    print("DIFF", np.max(np.abs(one - two)), float(jnp.max(jnp.abs(g1 - g2))), one.max())
    """
)


@pytest.mark.slow
def test_sharded_over_two_host_devices_equals_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("DIFF")][0]
    diff_t, diff_g, t_max = (float(x) for x in line.split()[1:])
    assert diff_t < 1e-12 and diff_g < 1e-10
    assert t_max > 0.05
