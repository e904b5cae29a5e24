"""dI/dH of an open device against finite differences, and its per-atom sums."""

import numpy as np
import scipy.sparse as sp
from test_two_terminal import periodic_chain

from hamjax.sensitivity import current_and_hamiltonian_gradient, per_atom
from hamjax.transport import current, transmission
from hamjax.two_terminal import open_device

ENERGIES = np.linspace(-1.5, 1.5, 61)
BIAS = 1.0


def _current(device, h):
    t = transmission(sp.csr_matrix(h), device.overlap, device.layers, ENERGIES)[0]
    return float(current(ENERGIES, np.asarray(t), BIAS, fermi_level=0.2, temperature=300.0))


def test_current_gradient_matches_finite_differences():
    onsite = np.zeros(14)
    onsite[6], onsite[8] = 0.7, -0.4
    device = open_device(periodic_chain(14, onsite=onsite), cutoff=1.5, lead_width=2.0)
    value, grad = current_and_hamiltonian_gradient(device, ENERGIES, BIAS, fermi_level=0.2)
    h = device.hamiltonian.toarray()
    assert abs(value - _current(device, h)) < 1e-15
    step = 1e-5
    for a, b in [(6, 6), (8, 8), (6, 7), (7, 8)]:
        delta = np.zeros_like(h)
        delta[a, b] = delta[b, a] = step
        fd = (_current(device, h + delta) - _current(device, h - delta)) / (2 * step)
        analytic = grad[a, b] + (grad[b, a] if a != b else 0.0)
        np.testing.assert_allclose(analytic, fd, rtol=1e-5, atol=1e-14)


def test_per_atom_sums_rows_in_record_order():
    record = periodic_chain(12)
    perm = np.random.default_rng(1).permutation(12)
    inverse = np.argsort(perm)
    shuffled = record.replace(
        numbers=record.numbers[perm], positions=record.positions[perm], pairs=inverse[record.pairs]
    )
    device = open_device(shuffled, cutoff=1.5, lead_width=2.0)
    matrix = np.arange(144.0).reshape(12, 12)  # row r belongs to the r-th atom along x
    values = per_atom(matrix, device, np.ones(12, int))
    # Shuffled atom k sits at position perm[k] along the chain.
    np.testing.assert_allclose(values, matrix.sum(axis=1)[perm])
