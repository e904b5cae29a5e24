"""Transverse k-point transport against exact lattices, the Gamma-folded device and
finite differences; time-reversal reduction; input errors; the CLI on a cubic lattice."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hamjax.transport import (
    bloch_matrix,
    current,
    monkhorst_pack,
    time_reversal_reduce,
    transmission,
    transmission_kpoints,
)

HOP = 1.0  # t in eV
ETA = 1e-8
CUBIC_SHIFTS = [(0, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]


def cubic_images(length, width=1, overlap_y=0.0):
    """Simple cubic lattice (on-site 0, hopping -t), transport along x, a transverse cell of
    ``width`` x 1 sites periodic in y and z; sites ordered layer by layer (layer = one x).

    ``overlap_y`` is the overlap of a site with its neighbour across the y cell boundary
    (only for ``width`` 1, where that neighbour is the site's own image).

    Returns:
        ``(hamiltonians [5, n, n] eV, overlaps [5, n, n] or None, shifts [5, 3], layers)``.
    """
    along_x = -HOP * (np.eye(length, k=1) + np.eye(length, k=-1))
    across = -HOP * (np.eye(width, k=1) + np.eye(width, k=-1))  # bonds inside the cell
    home = np.kron(np.eye(length), across) + np.kron(along_x, np.eye(width))
    boundary = np.zeros((width, width))
    boundary[width - 1, 0] = -HOP  # last site of the cell to the first site of cell +y
    plus_y = np.kron(np.eye(length), boundary)
    plus_z = -HOP * np.eye(length * width)
    hamiltonians = np.stack([home, plus_y, plus_y.T, plus_z, plus_z.T])
    overlaps = None
    if overlap_y:
        assert width == 1
        eye = np.eye(length)
        zero = np.zeros_like(eye)
        overlaps = np.stack([eye, overlap_y * eye, overlap_y * eye, zero, zero])
    return hamiltonians, overlaps, np.array(CUBIC_SHIFTS), [width] * length


def cubic_modes(kpoints, width):
    """Transverse mode energies (eV) at each k-point, ``[n_k, width]``: the folded y-chain
    ``-2t cos(2 pi (k_y + m) / width)``, m = 0 .. width-1, plus ``-2t cos(2 pi k_z)``."""
    m = np.arange(width)
    y = -2 * HOP * np.cos(2 * np.pi * (kpoints[:, 1:2] + m) / width)
    return y - 2 * HOP * np.cos(2 * np.pi * kpoints[:, 2:3])


def exact_channels(energies, levels, scale=None):
    """Open channels ``[n_k, n_E]``: modes m with ``|E S(k) - eps_m(k)| < 2t``, and the
    distance ``[n_E]`` of ``|E S(k) - eps_m(k)|`` from ``2t`` over all k and m (how far E
    is from a band edge)."""
    scale = np.ones(len(levels)) if scale is None else scale
    offset = np.abs(energies[None, :, None] * scale[:, None, None] - levels[:, None, :])
    return np.sum(offset < 2 * HOP, axis=2), np.min(np.abs(offset - 2 * HOP), axis=(0, 2))


@pytest.mark.parametrize(
    ("width", "kgrid", "overlap_y"), [(1, (1, 3, 4), 0.0), (1, (1, 4, 2), 0.1), (2, (1, 3, 2), 0.0)]
)
def test_cubic_lattice_counts_open_channels_per_k(width, kgrid, overlap_y):
    """T(E, k) = number of transverse modes eps_m(k) with |E S(k) - eps_m(k)| < 2t, where
    S(k) = 1 + 2 s cos(2 pi k_y) (width 1): an orthogonal chain at energy E S(k) - eps_m."""
    hamiltonians, overlaps, shifts, layers = cubic_images(6, width, overlap_y)
    full = monkhorst_pack(kgrid)
    levels = cubic_modes(full, width)
    scale = 1 + 2 * overlap_y * np.cos(2 * np.pi * full[:, 1])  # S(k), [n_k]
    grid = np.linspace(-6.3, 6.3, 43) + 0.0137  # generic energies (not E = 0 exactly)
    energies = grid[exact_channels(grid, levels, scale)[1] > 0.03]  # away from band edges
    assert len(energies) >= 15

    result = transmission_kpoints(hamiltonians, overlaps, shifts, layers, energies, kgrid, eta=ETA)
    assert result.weights.sum() == pytest.approx(1.0)
    assert len(result.kpoints) < len(full)  # real images: time-reversal pairs computed once
    k_scale = 1 + 2 * overlap_y * np.cos(2 * np.pi * result.kpoints[:, 1])
    exact_k = exact_channels(energies, cubic_modes(result.kpoints, width), k_scale)[0]
    np.testing.assert_allclose(np.asarray(result.transmission_k), exact_k, atol=1e-6)
    assert len(np.unique(exact_k)) >= 2  # the check can fail: the channel count varies

    average = np.mean(exact_channels(energies, levels, scale)[0], axis=0)
    np.testing.assert_allclose(np.asarray(result.transmission), average, atol=1e-6)
    assert np.max(np.asarray(result.residual_left)) < 1e-6
    expected_min = 1.0 if overlaps is None else k_scale
    np.testing.assert_allclose(np.asarray(result.overlap_min_eigenvalue), expected_min)


def random_images(layers, seed, complex_=False, overlap=0.08, shifts=CUBIC_SHIFTS):
    """Random image matrices on ``shifts`` (closed under R -> -R), each block-tridiagonal on
    ``layers``: H(-R) = H(R)^H, S(0) = 1 + small, small S(R)."""
    rng = np.random.default_rng(seed)
    n = sum(layers)
    layer_of = np.repeat(np.arange(len(layers)), layers)
    near = np.abs(layer_of[:, None] - layer_of[None, :]) <= 1
    index = {tuple(r): i for i, r in enumerate(shifts)}

    def draw(scale, diagonal):
        out = np.zeros((len(shifts), n, n), complex if complex_ else float)
        for r, shift in enumerate(shifts):
            partner = index[tuple(-x for x in shift)]
            if partner < r:
                out[r] = out[partner].conj().T
                continue
            m = rng.normal(size=(n, n)) + (1j * rng.normal(size=(n, n)) if complex_ else 0)
            m = np.where(near, m, 0) * scale * (1.0 if partner == r else 0.5)
            out[r] = (m + m.conj().T) / 2 if partner == r else m
        out[index[(0, 0, 0)]] += diagonal * np.eye(n)
        return out

    hamiltonians = draw(1.0, 0.0)
    overlaps = draw(overlap, 1.0) if overlap else None
    return hamiltonians, overlaps, np.array(shifts)


LAYERS = (2, 2, 3, 2, 2)
ENERGIES = np.array([-0.9, -0.2, 0.35, 1.1])


def test_one_kpoint_equals_transmission_of_the_gamma_folded_device():
    hamiltonians, overlaps, shifts = random_images(LAYERS, seed=3)
    result = transmission_kpoints(
        hamiltonians, overlaps, shifts, LAYERS, ENERGIES, (1, 1, 1), eta=1e-6
    )
    folded = transmission(
        hamiltonians.sum(0), overlaps.sum(0), LAYERS, ENERGIES, eta=1e-6
    ).transmission
    np.testing.assert_allclose(result.kpoints, [[0.0, 0.0, 0.0]])
    np.testing.assert_allclose(result.weights, [1.0])
    np.testing.assert_allclose(np.asarray(result.transmission), np.asarray(folded), atol=1e-10)
    np.testing.assert_allclose(np.asarray(result.transmission_k[0]), np.asarray(folded), atol=0)
    assert np.max(np.asarray(folded)) > 0.05


def test_time_reversal_half_equals_the_full_grid():
    hamiltonians, overlaps, shifts = random_images(LAYERS, seed=5)
    kgrid = (1, 3, 4)
    full = transmission_kpoints(
        hamiltonians, overlaps, shifts, LAYERS, ENERGIES, kgrid, eta=1e-6, time_reversal=False
    )
    half = transmission_kpoints(hamiltonians, overlaps, shifts, LAYERS, ENERGIES, kgrid, eta=1e-6)
    assert len(full.kpoints) == 12 and len(half.kpoints) == 6
    np.testing.assert_allclose(half.weights, np.full(6, 1 / 6))
    np.testing.assert_allclose(
        np.asarray(half.transmission), np.asarray(full.transmission), atol=1e-10
    )
    # T(E, -k) = T(E, k) point by point on the full grid, and T does depend on k
    t_full = np.asarray(full.transmission_k)
    keys = [tuple(np.round(np.mod(k, 1.0), 9) % 1.0) for k in full.kpoints]
    for a, k in enumerate(full.kpoints):
        b = keys.index(tuple(np.round(np.mod(-k, 1.0), 9) % 1.0))
        np.testing.assert_allclose(t_full[a], t_full[b], atol=1e-10)
    assert np.ptp(t_full, axis=0).max() > 0.05


def test_complex_images_use_the_full_grid_and_match_bloch_matrices():
    hamiltonians, overlaps, shifts = random_images(LAYERS, seed=7, complex_=True)
    kgrid = (1, 2, 3)
    result = transmission_kpoints(hamiltonians, overlaps, shifts, LAYERS, ENERGIES, kgrid)
    np.testing.assert_allclose(result.kpoints, monkhorst_pack(kgrid))
    for k, t_k in zip(result.kpoints, np.asarray(result.transmission_k), strict=True):
        phase = np.exp(2j * np.pi * (shifts @ k))
        h_k = np.einsum("r,rij->ij", phase, hamiltonians)
        s_k = np.einsum("r,rij->ij", phase, overlaps)
        expected = transmission(h_k, s_k, LAYERS, ENERGIES).transmission
        np.testing.assert_allclose(t_k, np.asarray(expected), atol=1e-12)
    # no time-reversal symmetry: k and -k differ ((0, -1/4, -1/3) and (0, 1/4, 1/3))
    t_k = np.asarray(result.transmission_k)
    assert np.max(np.abs(t_k[0] - t_k[-1])) > 1e-3
    with pytest.raises(ValueError, match="time_reversal=True needs real"):
        transmission_kpoints(
            hamiltonians, overlaps, shifts, LAYERS, ENERGIES, kgrid, time_reversal=True
        )


def test_grad_with_respect_to_one_image_block_matches_central_differences():
    """d sum_E w_E T(E) along a change of H(+y) (and the matching H(-y) = H(+y)^T), under
    jit, against central differences of the checked, concrete path."""
    hamiltonians, overlaps, shifts = random_images(LAYERS, seed=11)
    kgrid = (1, 3, 1)
    weights_e = np.array([1.0, -0.6, 0.8, 0.3])

    def objective(h):
        result = transmission_kpoints(h, overlaps, shifts, LAYERS, ENERGIES, kgrid, eta=1e-6)
        return jnp.sum(result.transmission * weights_e)

    h0 = jnp.asarray(hamiltonians)
    value, grad = jax.jit(jax.value_and_grad(objective))(h0)
    assert float(value) == pytest.approx(float(objective(hamiltonians)), abs=1e-12)

    plus_y, minus_y = 1, 2
    direction = np.zeros_like(hamiltonians)
    rng = np.random.default_rng(0)
    block = np.where(hamiltonians[plus_y] != 0, rng.normal(size=hamiltonians[plus_y].shape), 0)
    direction[plus_y] = block
    direction[minus_y] = block.T
    analytic = float(jnp.sum(grad * direction))
    step = 1e-5
    numeric = (
        float(objective(hamiltonians + step * direction))
        - float(objective(hamiltonians - step * direction))
    ) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-9)
    assert abs(numeric) > 1e-3

    # the jitted function returns the whole result (a pytree)
    result = jax.jit(
        lambda h: transmission_kpoints(h, overlaps, shifts, LAYERS, ENERGIES, kgrid, eta=1e-6)
    )(h0)
    concrete = transmission_kpoints(
        hamiltonians, overlaps, shifts, LAYERS, ENERGIES, kgrid, eta=1e-6
    )
    np.testing.assert_allclose(
        np.asarray(result.transmission_k), np.asarray(concrete.transmission_k), atol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(result.overlap_min_eigenvalue),
        np.asarray(concrete.overlap_min_eigenvalue),
        atol=1e-12,
    )


@pytest.mark.slow  # its own compilation (the current's grid)
def test_grad_of_current_matches_central_differences():
    hamiltonians, overlaps, shifts = random_images(LAYERS, seed=13)
    energies = np.linspace(-0.5, 0.5, 9)

    def amps(h):
        result = transmission_kpoints(h, overlaps, shifts, LAYERS, energies, (1, 2, 2))
        return current(energies, result.transmission, 0.4, fermi_level=0.0, temperature=300.0)

    direction = np.zeros_like(hamiltonians)
    direction[0] = np.where(hamiltonians[0] != 0, 1.0, 0.0)
    direction[0] = (direction[0] + direction[0].T) / 2
    analytic = float(jnp.sum(jax.jit(jax.grad(amps))(jnp.asarray(hamiltonians)) * direction))
    step = 1e-5
    numeric = (
        float(amps(hamiltonians + step * direction)) - float(amps(hamiltonians - step * direction))
    ) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-14)


def test_monkhorst_pack_and_time_reversal_grids():
    np.testing.assert_allclose(monkhorst_pack((1, 3, 1))[:, 1], [-1 / 3, 0, 1 / 3])
    np.testing.assert_allclose(monkhorst_pack((1, 2, 1))[:, 1], [-0.25, 0.25])
    np.testing.assert_allclose(
        monkhorst_pack((1, 4, 1), gamma_centred=True)[:, 1], [0, 0.25, 0.5, -0.25]
    )
    k, w = time_reversal_reduce((1, 4, 1), gamma_centred=True)
    np.testing.assert_allclose(k[:, 1], [0, 0.25, 0.5])  # Gamma and 1/2 are their own partners
    np.testing.assert_allclose(w, [0.25, 0.5, 0.25])
    k, w = time_reversal_reduce((1, 3, 3))
    assert len(k) == 5 and w.sum() == pytest.approx(1.0)
    assert np.any(np.all(k == 0, axis=1))  # odd grid: Gamma included


def test_bad_inputs_raise_clear_errors():
    hamiltonians, overlaps, shifts, layers = cubic_images(4)
    energies = np.array([0.1])

    def run(h=hamiltonians, s=overlaps, r=shifts, kgrid=(1, 2, 2), **kw):
        return transmission_kpoints(h, s, r, layers, energies, kgrid, **kw)

    along = shifts.copy()
    along[1] = (1, 1, 0)
    with pytest.raises(ValueError, match=r"\(1, 1, 0\).*along the\s+transport axis"):
        run(r=along)
    with pytest.raises(ValueError, match=r"\[n_R, n, n\]"):
        run(h=hamiltonians[0])
    with pytest.raises(ValueError, match="overlaps has shape"):
        run(s=np.stack([np.eye(4)] * 4))
    with pytest.raises(ValueError, match=r"shifts must be \[n_R, 3\]"):
        run(r=shifts[:, 1:])
    with pytest.raises(ValueError, match="integer"):
        run(r=shifts + 0.5)
    with pytest.raises(ValueError, match="2 points along the transport axis"):
        run(kgrid=(2, 1, 1))
    with pytest.raises(ValueError, match="must be positive"):
        run(kgrid=(1, 0, 2))
    with pytest.raises(ValueError, match="three integers"):
        run(kgrid=(1, 2))
    with pytest.raises(ValueError, match=r"no partner \(0, -1, 0\)"):
        run(h=hamiltonians[[0, 1, 3, 4]], r=shifts[[0, 1, 3, 4]])
    twice = shifts.copy()
    twice[2] = (0, 1, 0)
    with pytest.raises(ValueError, match="appears twice"):
        run(r=twice)
    broken = hamiltonians.copy()
    broken[2, 0, 0] = -0.5
    with pytest.raises(ValueError, match=r"hamiltonians\[2\] \(shift \(0, -1, 0\)\) is not"):
        run(h=broken)


def test_indefinite_overlap_names_the_kpoint():
    """S(k) = 1 + 1.6 cos(2 pi k_y): negative at k_y = +-3/8 (a truncated overlap sum)."""
    hamiltonians, overlaps, shifts, layers = cubic_images(4, overlap_y=0.8)
    energies = np.array([0.1])
    gamma = transmission_kpoints(hamiltonians, overlaps, shifts, layers, energies, (1, 1, 1))
    assert float(gamma.overlap_min_eigenvalue[0]) == pytest.approx(2.6)
    with pytest.raises(ValueError, match=r"k = \(0, -0\.375, -0\.25\).*eigenvalue -0\.131"):
        transmission_kpoints(hamiltonians, overlaps, shifts, layers, energies, (1, 4, 2))


def test_bloch_matrix_matches_the_definition():
    hamiltonians, _, shifts = random_images(LAYERS, seed=2, complex_=True, overlap=0)
    k = np.array([0.0, 0.3, -0.15])
    expected = sum(
        h * np.exp(2j * np.pi * np.dot(k, r)) for h, r in zip(hamiltonians, shifts, strict=True)
    )
    np.testing.assert_allclose(bloch_matrix(hamiltonians, shifts, k), expected, atol=1e-14)
    got = bloch_matrix(jnp.asarray(hamiltonians), shifts, k)
    np.testing.assert_allclose(np.asarray(got), expected, atol=1e-14)
    np.testing.assert_allclose(got, np.asarray(got).conj().T, atol=1e-14)


def test_cli_cubic_lattice_with_kgrid(tmp_path, capsys):
    from hamjax.cli import main

    hamiltonians, _, shifts, layers = cubic_images(6)
    path = tmp_path / "cubic.npz"
    np.savez(path, hamiltonians=hamiltonians, shifts=shifts, layers=np.array(layers))
    out = tmp_path / "out"
    args = ["transport", str(path), "--out", str(out), "--kgrid", "1", "3", "3"]
    assert main([*args, "--energies", "-5.5", "5.5", "12"]) == 0
    printed = capsys.readouterr().out
    assert "k-points" in printed
    summary = json.loads((out / "transport.json").read_text())
    energies = np.asarray(summary["energies_ev"])
    channels, distance = exact_channels(energies, cubic_modes(monkhorst_pack((1, 3, 3)), 1))
    assert distance.min() > 0.05
    average = np.mean(channels, axis=0)
    np.testing.assert_allclose(summary["transmission"], average, atol=1e-5)
    t_k = np.asarray(summary["transmission_k"])
    kpoints = np.asarray(summary["kpoints"])
    assert t_k.shape == (len(kpoints), len(energies)) == (5, 12)
    exact_k = exact_channels(energies, cubic_modes(kpoints, 1))[0]
    np.testing.assert_allclose(t_k, exact_k, atol=1e-5)
    assert summary["kgrid"] == [1, 3, 3] and sum(summary["kpoint_weights"]) == pytest.approx(1)
    assert summary["current_a"] > 0
    assert (out / "transmission.csv").exists() and (out / "transmission.png").exists()

    # image npz without --kgrid, and --kgrid with a single-matrix npz: one clear line each
    assert main(["transport", str(path), "--out", str(out)]) == 2
    assert "--kgrid" in capsys.readouterr().err
    single = tmp_path / "single.npz"
    np.savez(single, hamiltonian=hamiltonians[0], layers=np.array(layers))
    assert main(["transport", str(single), "--out", str(out), "--kgrid", "1", "2", "2"]) == 2
    assert "'hamiltonians' and 'shifts'" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, hamiltonians=hamiltonians, shifts=shifts[:, :2], layers=np.array(layers))
    assert main(["transport", str(bad), "--out", str(out), "--kgrid", "1", "2", "2"]) == 2
    assert "bad.npz" in capsys.readouterr().err


SHARDED = """
import sys, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {tests!r})
from test_transport_kpoints import LAYERS, random_images
from hamjax.transport import transmission_kpoints
assert len(jax.devices()) == 2, jax.devices()
h, s, r = random_images(LAYERS, seed=11)
e = np.linspace(-1.0, 1.0, 13)
def run(hh, devices):
    return transmission_kpoints(hh, s, r, LAYERS, e, (1, 3, 2), devices=devices, chunk_size=4)
one = np.asarray(run(h, jax.devices()[:1]).transmission_k)
two = np.asarray(run(h, None).transmission_k)
g1, g2 = (
    jax.jit(jax.grad(lambda hh, d=d: jnp.sum(run(hh, d).transmission)))(jnp.asarray(h))
    for d in (jax.devices()[:1], None)
)
print("DIFF", np.max(np.abs(one - two)), float(jnp.max(jnp.abs(g1 - g2))), one.max())
"""


@pytest.mark.slow
def test_sharded_over_two_host_devices_equals_one_device():
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    script = SHARDED.format(tests=str(Path(__file__).resolve().parent))
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("DIFF")][0]
    diff_t, diff_g, t_max = (float(x) for x in line.split()[1:])
    assert diff_t < 1e-12 and diff_g < 1e-10
    assert t_max > 0.05
