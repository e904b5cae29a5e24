"""Block-sparse record: cutting, assembly, Bloch sums and Hermiticity."""

import numpy as np
import pytest
import scipy.sparse

from hamjax.basis import SZV_MOLOPT_SR_GTH, Basis, to_hamjax_order
from hamjax.blocks import BlockHamiltonian, atom_pair_max

BASIS = Basis.from_dict("test", {"H": (0,), "O": (0, 1), "Hf": (0, 0, 1, 2)})


def _random_symmetric(n, seed):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a + a.T


def _structure(n_atoms, seed=0):
    rng = np.random.default_rng(seed)
    numbers = rng.choice([1, 8, 72], size=n_atoms)
    positions = rng.uniform(0, 10, size=(n_atoms, 3))
    return numbers, positions


def test_dense_blocks_dense_round_trip_and_block_layout():
    numbers, positions = _structure(7)
    off = BASIS.orbital_offsets(numbers)
    h = _random_symmetric(off[-1], 1)
    s = _random_symmetric(off[-1], 2)
    record = BlockHamiltonian.from_dense(
        numbers, positions, np.zeros((3, 3)), [0, 0, 0], BASIS, h, s
    )
    assert len(record.pairs) == 49
    np.testing.assert_array_equal(record.to_dense(), h)
    np.testing.assert_array_equal(record.to_dense("overlap"), s)
    np.testing.assert_array_equal(record.to_sparse().toarray(), h)
    # each block is the slice of its atom pair
    for b in (0, 10, 48):
        i, j = record.pairs[b]
        np.testing.assert_array_equal(record.block(b), h[off[i] : off[i + 1], off[j] : off[j + 1]])


def test_threshold_sparse_input_and_candidate_pairs_agree():
    numbers, positions = _structure(12, seed=3)
    off = BASIS.orbital_offsets(numbers)
    h = _random_symmetric(off[-1], 4)
    # zero the blocks of atoms further apart than 5 A
    dist = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    atom_of = np.repeat(np.arange(len(numbers)), np.diff(off))
    far = dist[atom_of][:, atom_of] > 5.0
    h[far] = 0.0
    args = (numbers, positions, np.zeros((3, 3)), [0, 0, 0], BASIS)
    dense = BlockHamiltonian.from_dense(*args, h)
    expected_pairs = np.argwhere(dist <= 5.0)
    np.testing.assert_array_equal(dense.pairs, expected_pairs)
    sparse = BlockHamiltonian.from_dense(*args, scipy.sparse.csr_matrix(h))
    np.testing.assert_array_equal(sparse.pairs, dense.pairs)
    np.testing.assert_array_equal(sparse.hamiltonian, dense.hamiltonian)
    # a superset of the non-zero pairs as candidates gives the same record
    candidates = np.argwhere(dist <= 7.0)
    cand = BlockHamiltonian.from_dense(*args, h, candidate_pairs=candidates)
    np.testing.assert_array_equal(cand.pairs, dense.pairs)
    np.testing.assert_array_equal(cand.hamiltonian, dense.hamiltonian)
    # the per-pair maxima are exact, for dense (in small row chunks) and sparse input
    direct = np.array(
        [
            [np.abs(h[off[i] : off[i + 1], off[j] : off[j + 1]]).max() for j in range(12)]
            for i in range(12)
        ]
    )
    np.testing.assert_array_equal(atom_pair_max(h, off, chunk_orbitals=5), direct)
    np.testing.assert_array_equal(atom_pair_max(scipy.sparse.csr_matrix(h), off), direct)
    # a threshold drops whole blocks below it, and only those
    cut = BlockHamiltonian.from_dense(*args, h, threshold=2.0)
    np.testing.assert_array_equal(cut.pairs, np.argwhere(direct > 2.0))
    with pytest.raises(ValueError, match="the basis gives"):
        BlockHamiltonian.from_dense(*args, h[:-1, :-1])


def _gaussian_chain():
    """Periodic chain of s-type Gaussians: exact overlaps and hoppings for every image."""
    numbers = np.array([1, 1, 1])
    cell = np.diag([3.0, 20.0, 20.0])
    positions = np.array([[0.0, 0.0, 0.0], [1.1, 0.2, 0.0], [2.0, -0.1, 0.3]])
    alpha = 0.8  # Gaussian exponent, 1/Angstrom^2
    basis = Basis.from_dict("s", {1: (0,)})
    onsite = np.array([-0.5, -0.4, -0.3])
    h, s = {}, {}
    for n in range(-3, 4):
        shift = (n, 0, 0)
        r = positions[None, :, :] + np.array(shift) @ cell - positions[:, None, :]  # [i, j, 3]
        overlap = np.exp(-alpha / 2 * (r**2).sum(-1))  # normalised s Gaussians
        s[shift] = overlap
        h[shift] = -0.7 * overlap + (np.diag(onsite) if n == 0 else 0.0)
    return numbers, positions, cell, basis, h, s


def test_bloch_phase_equals_the_explicit_sum_and_hermiticity():
    numbers, positions, cell, basis, h, s = _gaussian_chain()
    record = BlockHamiltonian.from_dense(numbers, positions, cell, [1, 0, 0], basis, h, s)
    for k in ([0.0, 0, 0], [0.23, 0, 0], [0.5, 0, 0]):
        explicit = sum(m * np.exp(2j * np.pi * np.dot(k, shift)) for shift, m in h.items())
        hk = record.to_dense(k=k)
        np.testing.assert_allclose(hk, explicit, atol=1e-14)
        np.testing.assert_allclose(hk, hk.conj().T, atol=1e-14)
        # S(k) of a Gaussian lattice sum is positive definite
        assert np.linalg.eigvalsh(record.to_dense("overlap", k=k)).min() > 0
    np.testing.assert_allclose(record.to_dense(), sum(h.values()), atol=1e-14)
    _check_hermiticity(record)


def _check_hermiticity(record, atol=1e-12):
    index = {
        (int(i), int(j), *map(int, t)): b
        for b, ((i, j), t) in enumerate(zip(record.pairs, record.shifts, strict=True))
    }
    for (i, j, *t), b in index.items():
        partner = index[(j, i, *(-x for x in t))]
        for which in ("hamiltonian", "overlap"):
            np.testing.assert_allclose(
                record.block(partner, which), record.block(b, which).T, atol=atol
            )


def _read_csr_plain(path):
    data = np.loadtxt(path)
    n = int(data[:, 0].max())
    m = np.zeros((n, n))
    m[data[:, 0].astype(int) - 1, data[:, 1].astype(int) - 1] = data[:, 2]
    return m


def test_hermiticity_relation_on_a_real_cp2k_record(data_dir):
    import ase.io

    d = data_dir / "cp2k"
    atoms = ase.io.read(d / "hfo2_vac.xyz")
    h = to_hamjax_order(
        _read_csr_plain(d / "hfo2_vac-KS_SPIN_1-1_0.csr"), SZV_MOLOPT_SR_GTH, atoms.numbers, "cp2k"
    )
    s = to_hamjax_order(
        _read_csr_plain(d / "hfo2_vac-S_SPIN_1-1_0.csr"), SZV_MOLOPT_SR_GTH, atoms.numbers, "cp2k"
    )
    record = BlockHamiltonian.from_dense(
        atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, SZV_MOLOPT_SR_GTH, h, s
    )
    assert record.n_orbitals == 68
    # CP2K's periodic KS matrix is symmetric to ~2e-9 Ha (its image fold), S to 1e-15
    _check_hermiticity(record, atol=1e-8)
    np.testing.assert_array_equal(record.to_dense(), h)


def test_on_blocks_reorders_selects_and_zero_fills():
    numbers, positions = _structure(4, seed=3)
    off = BASIS.orbital_offsets(numbers)
    n = off[-1]
    images = {
        (0, 0, 0): _random_symmetric(n, 4),
        (0, 1, 0): np.random.default_rng(5).normal(size=(n, n)),
    }
    images[(0, -1, 0)] = images[(0, 1, 0)].T
    cell = np.eye(3) * 10.0
    record = BlockHamiltonian.from_dense(
        numbers, positions, cell, [True] * 3, BASIS, images, {k: v + 1 for k, v in images.items()}
    )
    assert record.image_resolved
    assert not record.replace(shifts=np.zeros_like(record.shifts)).image_resolved
    picked = [5, 0, len(record.pairs) - 1]
    pairs = np.concatenate([record.pairs[picked], [[1, 2]]])
    shifts = np.concatenate([record.shifts[picked], [[0, 0, 3]]])  # last one absent
    sub = record.on_blocks(pairs, shifts)
    for new, old in enumerate(picked):
        np.testing.assert_array_equal(sub.block(new), record.block(old))
        np.testing.assert_array_equal(sub.block(new, "overlap"), record.block(old, "overlap"))
    assert not sub.block(3).any() and not sub.block(3, "overlap").any()
    # the images of a pair, read one by one, are the slices of their matrices
    i, j = 2, 1
    for shift, matrix in images.items():
        one = record.on_blocks([[i, j]], [shift])
        np.testing.assert_array_equal(
            one.block(0), matrix[off[i] : off[i + 1], off[j] : off[j + 1]]
        )
