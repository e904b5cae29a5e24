"""Opening a periodic device cell into a two-terminal problem, checked on exact chains."""

import numpy as np
import pytest

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.constants import HARTREE_EV
from hamjax.transport import open_channels, transmission
from hamjax.two_terminal import open_device, slab_layers

BASIS = Basis.from_dict("one-s", {"H": (0,)})
HOP_EV = -1.0


def periodic_chain(n_atoms, spacing=1.0, onsite=None, folded=False):
    """A chain along x, periodic in x (nearest-neighbour hopping -1 eV), as a block record."""
    onsite = np.zeros(n_atoms) if onsite is None else np.asarray(onsite)
    positions = np.zeros((n_atoms, 3))
    positions[:, 0] = spacing * (np.arange(n_atoms) + 0.5)
    cell = np.diag([spacing * n_atoms, 10.0, 10.0])
    pairs, shifts, h, s = [], [], [], []
    for a in range(n_atoms):
        pairs.append((a, a))
        shifts.append((0, 0, 0))
        h.append(onsite[a])
        s.append(1.0)
        for step in (-1, 1):
            b = (a + step) % n_atoms
            crosses = (a + step) // n_atoms
            pairs.append((a, b))
            shifts.append((0, 0, 0) if folded else (crosses, 0, 0))
            h.append(HOP_EV)
            s.append(0.0)
    return x_periodic_record(np.ones(n_atoms, int), positions, cell, BASIS, pairs, shifts, h, s)


def x_periodic_record(numbers, positions, cell, basis, pairs, shifts, h_ev, s):
    """A block record periodic along x only, H given in eV."""
    return BlockHamiltonian(
        numbers=np.asarray(numbers),
        positions=positions,
        cell=cell,
        pbc=np.array([True, False, False]),
        basis=basis,
        pairs=np.array(pairs),
        shifts=np.array(shifts),
        hamiltonian=np.array(h_ev) / HARTREE_EV,
        overlap=np.array(s),
        fermi_level=0.0,
    )


@pytest.mark.parametrize("folded", [False, True])
def test_perfect_chain_opens_into_one_channel(folded):
    record = periodic_chain(12, folded=folded)
    device = open_device(record, cutoff=1.5, lead_width=2.0)
    assert sum(device.layers) == 12
    h = device.hamiltonian.toarray()
    # Opening the ring removes exactly the two boundary hoppings.
    assert np.count_nonzero(h) == 2 * 11
    energies = np.array([-2.5, -1.3, 0.0, 0.7, 1.9, 2.5])
    t = np.asarray(transmission(device.hamiltonian, device.overlap, device.layers, energies)[0])
    np.testing.assert_allclose(t, (np.abs(energies) < 2).astype(float), atol=1e-6)
    # the electrodes the device was opened into are the same chain: one channel in the band
    for lead in device.leads():
        channels = open_channels(lead, energies)
        np.testing.assert_allclose(channels, (np.abs(energies) < 2).astype(float), atol=1e-6)


def two_leg_ladder(n_rungs, lead_rungs):
    """A periodic two-species ladder along x whose x-sorted atom order flips between lead
    cells (small x displacements), with H from connectivity only (exactly periodic)."""
    basis = Basis.from_dict("one-s", {"H": (0,), "He": (0,)})
    onsite = {1: 0.5, 2: -0.5}
    numbers, positions = [], []
    for i in range(n_rungs):
        dx = 0.02 if (i // lead_rungs) % 2 == 0 else -0.02  # A ahead, then behind, of B
        numbers += [1, 2]
        positions += [(i + 0.5 + dx, 0.0, 0.0), (i + 0.5, 1.0, 0.0)]
    positions = np.array(positions)
    pairs, shifts, h, s = [], [], [], []
    for a in range(2 * n_rungs):
        rung, leg = divmod(a, 2)
        pairs.append((a, a))
        shifts.append((0, 0, 0))
        h.append(onsite[numbers[a]])
        s.append(1.0)
        pairs.append((a, 2 * rung + 1 - leg))  # rung partner
        shifts.append((0, 0, 0))
        h.append(-0.7)
        s.append(0.0)
        for step in (-1, 1):
            other = rung + step
            pairs.append((a, 2 * (other % n_rungs) + leg))
            shifts.append((other // n_rungs, 0, 0))
            h.append(HOP_EV)
            s.append(0.0)
    cell = np.diag([float(n_rungs), 10.0, 10.0])
    return x_periodic_record(numbers, positions, cell, basis, pairs, shifts, h, s)


def test_lead_cells_keep_one_atom_order_despite_displacements():
    """Sorting by x alone lists the ladder's two species in opposite orders in neighbouring
    lead cells; the opened device must still be a perfect ladder: T(E) = open modes."""
    record = two_leg_ladder(12, lead_rungs=2)
    device = open_device(record, cutoff=1.5, lead_width=2.0)
    h = device.hamiltonian.toarray()
    edges = np.concatenate([[0], np.cumsum(device.layers)])
    first, second = (slice(edges[k], edges[k + 1]) for k in (0, 1))
    np.testing.assert_allclose(h[second, second], h[first, first])
    modes = np.array([-1.0, 1.0]) * np.sqrt(0.5**2 + 0.7**2)  # rung eigenvalues
    energies = np.array([-2.5, -1.5, -0.5, 0.3, 1.4, 2.4])
    n_open = np.sum(np.abs(energies[:, None] - modes[None, :]) < 2, axis=1)
    assert set(n_open.tolist()) == {1, 2}
    t = np.asarray(transmission(device.hamiltonian, device.overlap, device.layers, energies)[0])
    np.testing.assert_allclose(t, n_open, atol=1e-6)
    for lead in device.leads():
        np.testing.assert_allclose(open_channels(lead, energies), n_open, atol=1e-6)


def test_impurity_matches_exact_formula_after_shuffling_atoms():
    eps = 0.8
    onsite = np.zeros(14)
    onsite[7] = eps
    record = periodic_chain(14, onsite=onsite)
    # Store the atoms in a scrambled order: opening must sort them along the axis.
    perm = np.random.default_rng(0).permutation(14)
    inverse = np.argsort(perm)
    shuffled = record.replace(
        numbers=record.numbers[perm],
        positions=record.positions[perm],
        pairs=inverse[record.pairs],
    )
    device = open_device(shuffled, cutoff=1.5, lead_width=2.0)
    np.testing.assert_array_equal(perm[device.order], np.arange(14))
    energies = np.linspace(-1.8, 1.8, 7)
    # eta 1e-7: the lead broadening's O(eta) error stays far below the tolerance.
    t = transmission(device.hamiltonian, device.overlap, device.layers, energies, eta=1e-7)[0]
    exact = (4 - energies**2) / (4 - energies**2 + eps**2)
    np.testing.assert_allclose(np.asarray(t), exact, atol=1e-6)


def test_long_range_couplings_beyond_cutoff_are_dropped_and_reported():
    record = periodic_chain(12)
    # Add a second-neighbour hopping of 0.1 eV, then cut at 1.5 A: it must go.
    extra_pairs = np.array([(a, (a + 2) % 12) for a in range(12)])
    extra_shifts = np.array([((a + 2) // 12, 0, 0) for a in range(12)])
    extra = record.replace(
        pairs=np.concatenate([record.pairs, extra_pairs]),
        shifts=np.concatenate([record.shifts, extra_shifts]),
        hamiltonian=np.concatenate([record.hamiltonian, np.full(12, 0.1 / HARTREE_EV)]),
        overlap=np.concatenate([record.overlap, np.zeros(12)]),
    )
    device = open_device(extra, cutoff=1.5, lead_width=2.0)
    assert device.dropped_max_ev == pytest.approx(0.1)
    assert np.count_nonzero(device.hamiltonian.toarray()) == 22


def test_slab_layers_lead_cells_counted_from_each_end():
    x = np.arange(0.0, 20.0, 0.5)
    layer = slab_layers(x, 20.0, lead_width=2.0, layer_width=3.0)
    assert layer[x < 2].max() == 0 and layer[(x >= 2) & (x < 4)].min() == 1
    assert np.all(layer[x >= 18] == layer.max())
    # The middle 12 A split into 4 slabs of 3 A.
    assert layer.max() == 1 + 4 + 2
    assert np.all(np.diff(layer) >= 0)


def test_bad_widths_raise():
    record = periodic_chain(12)
    with pytest.raises(ValueError, match="at least the cutoff"):
        open_device(record, cutoff=3.0, lead_width=2.0)
    with pytest.raises(ValueError, match="shorter than four lead cells"):
        open_device(record, cutoff=1.0, lead_width=4.0)


def _chain_lead_transmission(h_device: np.ndarray, energies: np.ndarray) -> np.ndarray:
    """T(E) of a finite orthogonal chain between two perfect chains (on-site 0, hopping -1
    eV), from the closed-form surface Green's function of a semi-infinite chain and one dense
    Green's function per energy: independent of the RGF solver."""
    n = h_device.shape[0]
    t = np.zeros(len(energies))
    ends = np.zeros((n, n))
    ends[0, 0] = ends[-1, -1] = 1.0
    for k, e in enumerate(energies):
        surface = (e - 1j * np.sqrt(4 * HOP_EV**2 - e**2)) / (2 * HOP_EV**2)  # |E| < 2
        sigma = HOP_EV**2 * surface  # the same at both ends
        g = np.linalg.inv(e * np.eye(n) - h_device - sigma * ends)
        gamma = -2 * sigma.imag
        t[k] = gamma**2 * abs(g[0, n - 1]) ** 2
    return t


def test_device_between_the_leads_of_another_hamiltonian():
    """A chain whose every on-site level is off by 0.3 eV is a perfect conductor between its
    own ends, and a 12-site barrier between the leads of the true chain: with_leads_of must
    give the exact T(E) of the latter, in the solver and in the differentiable current."""
    from hamjax.sensitivity import device_current
    from hamjax.transport import current

    shift = 0.3
    truth = open_device(periodic_chain(12), cutoff=1.5, lead_width=2.0)
    shifted = open_device(periodic_chain(12, onsite=np.full(12, shift)), cutoff=1.5, lead_width=2.0)
    energies = np.array([-1.9, -1.2, -0.4, 0.0, 0.6, 1.5, 1.9])
    own = transmission(shifted.hamiltonian, shifted.overlap, shifted.layers, energies)[0]
    np.testing.assert_allclose(
        np.asarray(own), (np.abs(energies - shift) < 2).astype(float), atol=1e-6
    )

    mixed = shifted.with_leads_of(truth)
    for got, want in zip(mixed.leads(), truth.leads(), strict=True):
        np.testing.assert_array_equal(got.onsite, want.onsite)
    h = shifted.hamiltonian.toarray()
    exact = _chain_lead_transmission(h, energies)
    assert np.all(np.abs(exact - 1) > 1e-3)  # a real barrier: the check can fail
    t = transmission(
        mixed.hamiltonian, mixed.overlap, mixed.layers, energies, eta=1e-7, leads=mixed.lead_blocks
    )[0]
    np.testing.assert_allclose(np.asarray(t), exact, atol=1e-6)

    grid = np.linspace(-0.7, 0.7, 141)
    fn = device_current(mixed, grid, 1.0, fermi_level=0.0, eta=1e-7)
    expected = current(grid, _chain_lead_transmission(h, grid), 1.0, fermi_level=0.0)
    assert float(fn(h)) == pytest.approx(float(expected), rel=1e-6)
    # dI/dH of the device region with the leads held fixed, against central differences
    import jax

    grad = np.asarray(jax.grad(fn)(h))
    step = 1e-5
    for a in (0, 5):
        delta = np.zeros_like(h)
        delta[a, a] = step
        fd = (float(fn(h + delta)) - float(fn(h - delta))) / (2 * step)
        assert grad[a, a] == pytest.approx(fd, rel=1e-5)

    with pytest.raises(ValueError, match="hold different atoms"):
        shifted.with_leads_of(open_device(periodic_chain(16), cutoff=1.5, lead_width=3.0))


def cubic_record(n_atoms, overlap_y=0.05, folded=False):
    """A simple cubic lattice (on-site 0, hopping -1 eV, spacing 1 A) as an image-resolved
    block record: ``n_atoms`` along x, one across, periodic in x, y and z. Each atom couples
    to its x neighbours (through the x boundary at the ends) and to its own images at
    y +/- 1 (hopping -1 eV, overlap ``overlap_y``) and z +/- 1 (hopping -1 eV). ``folded``
    stores every block at shift (0, 0, 0), as a Gamma-folded record does."""
    positions = np.zeros((n_atoms, 3))
    positions[:, 0] = np.arange(n_atoms) + 0.5
    pairs, shifts, h, s = [], [], [], []
    for a in range(n_atoms):
        pairs.append((a, a))
        shifts.append((0, 0, 0))
        h.append(0.0)
        s.append(1.0)
        for step in (-1, 1):
            pairs.append((a, (a + step) % n_atoms))
            shifts.append(((a + step) // n_atoms, 0, 0))
            h.append(HOP_EV)
            s.append(0.0)
        for shift, overlap in (
            ((0, 1, 0), overlap_y),
            ((0, -1, 0), overlap_y),
            ((0, 0, 1), 0.0),
            ((0, 0, -1), 0.0),
        ):
            pairs.append((a, a))
            shifts.append(shift)
            h.append(HOP_EV)
            s.append(overlap)
    shifts = np.zeros((len(pairs), 3), int) if folded else np.array(shifts)
    return BlockHamiltonian(
        numbers=np.ones(n_atoms, int),
        positions=positions,
        cell=np.diag([float(n_atoms), 1.0, 1.0]),
        pbc=np.array([True, True, True]),
        basis=BASIS,
        pairs=np.array(pairs),
        shifts=shifts,
        hamiltonian=np.array(h) / HARTREE_EV,
        overlap=np.array(s),
        fermi_level=0.0,
        metadata={"gamma_folded": folded},
    )


def test_image_resolved_cubic_lattice_opens_into_k_resolved_channels():
    """Opened along x, the cubic lattice is a chain at every transverse k: with
    S(k) = 1 + 2 s cos(2 pi k_y) and eps(k) = -2 (cos 2 pi k_y + cos 2 pi k_z) eV,
    T(E, k) = 1 where |E S(k) - eps(k)| < 2 eV, else 0; summing the images gives the
    device of open_device."""
    from hamjax.transport import monkhorst_pack, transmission_kpoints
    from hamjax.two_terminal import open_device_images

    overlap_y = 0.05
    record = cubic_record(12, overlap_y)
    images = open_device_images(record, cutoff=1.5, lead_width=2.0)
    device = open_device(record, cutoff=1.5, lead_width=2.0)
    assert images.shifts.tolist() == [[0, -1, 0], [0, 0, -1], [0, 0, 0], [0, 0, 1], [0, 1, 0]]
    assert images.layers == device.layers and sum(images.layers) == 12
    np.testing.assert_array_equal(images.order, device.order)
    np.testing.assert_allclose(images.hamiltonians.sum(0), device.hamiltonian.toarray(), atol=1e-14)
    np.testing.assert_allclose(images.overlaps.sum(0), device.overlap.toarray(), atol=1e-15)
    # the x boundary is cut as in open_device: the home image is an open chain
    home = images.hamiltonians[images.shifts.tolist().index([0, 0, 0])]
    assert np.count_nonzero(home) == 2 * 11

    def offset(energies, k):
        """|E S(k) - eps(k)| in eV, [n_k, n_E]."""
        level = -2 * (np.cos(2 * np.pi * k[:, 1]) + np.cos(2 * np.pi * k[:, 2]))
        scale = 1 + 2 * overlap_y * np.cos(2 * np.pi * k[:, 1])
        return np.abs(energies[None, :] * scale[:, None] - level[:, None])

    kgrid = (1, 4, 3)
    candidates = np.linspace(-5.7, 5.7, 30) + 0.0137
    edge = np.min(np.abs(offset(candidates, monkhorst_pack(kgrid)) - 2), axis=0)
    energies = candidates[edge > 0.02]  # away from band edges
    assert len(energies) >= 15
    result = transmission_kpoints(
        images.hamiltonians,
        images.overlaps,
        images.shifts,
        images.layers,
        energies,
        kgrid,
        eta=1e-8,
    )
    exact = (offset(energies, result.kpoints) < 2).astype(float)
    assert 0 < exact.mean() < 1
    np.testing.assert_allclose(np.asarray(result.transmission_k), exact, atol=1e-6)
    np.testing.assert_allclose(np.asarray(result.transmission), result.weights @ exact, atol=1e-6)
    # a k-grid of one point is the Gamma-summed device of open_device
    gamma = transmission_kpoints(
        images.hamiltonians, images.overlaps, images.shifts, images.layers, energies, (1, 1, 1)
    )
    direct = transmission(device.hamiltonian, device.overlap, device.layers, energies)
    np.testing.assert_allclose(
        np.asarray(gamma.transmission), np.asarray(direct.transmission), atol=1e-10
    )


def test_gamma_folded_record_has_no_images_to_open():
    from hamjax.two_terminal import open_device_images

    folded = cubic_record(12, folded=True)
    assert not folded.image_resolved
    with pytest.raises(ValueError, match="no image blocks"):
        open_device_images(folded, cutoff=1.5, lead_width=2.0)
