"""Graph construction against brute-force neighbour enumeration and hand-built blocks."""

import itertools

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.folding import fold_gamma, multi_image_translations
from hamjax.graph import build_graph, reverse_index
from hamjax.targets import gather_targets, max_orbitals

BASIS = Basis.from_dict("test", {"Hf": (0, 0, 1, 2), "O": (0, 1), "Ti": (2, 0, 1), "N": (0, 1)})


def rattled_fluorite(repeat=(2, 2, 2), seed=0):
    atoms = bulk("HfO2", "fluorite", a=5.1).repeat(repeat)
    atoms.rattle(0.05, seed=seed)
    return atoms


def brute_force_edges(atoms, cutoff, span=4):
    """All (i, j, shift) with 0 < |r| < cutoff by explicit loops over cell images."""
    pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc
    ranges = [range(-span, span + 1) if p else range(1) for p in pbc]
    found = {}
    for shift in itertools.product(*ranges):
        r = pos[None, :, :] + np.array(shift) @ cell - pos[:, None, :]
        d = np.linalg.norm(r, axis=-1)
        for i, j in zip(*np.nonzero((d < cutoff) & (d > 1e-9)), strict=True):
            found[(int(i), int(j), shift)] = r[i, j]
    return found


def edge_dict(graph):
    return {
        (int(i), int(j), tuple(int(x) for x in s)): v
        for i, j, s, v in zip(
            graph.senders, graph.receivers, graph.shifts, graph.edge_vectors, strict=True
        )
    }


@pytest.mark.parametrize(
    "atoms, cutoff",
    [
        (rattled_fluorite(), 4.0),
        (rattled_fluorite((1, 1, 1)), 6.0),  # cell thinner than twice the cutoff
        (bulk("Cu", "fcc", a=3.6), 5.5),  # one atom: only self-images
        (molecule("CH3CH2OH"), 2.0),  # no cell
    ],
)
def test_edges_match_brute_force(atoms, cutoff):
    graph = build_graph(atoms, cutoff)
    expected = brute_force_edges(atoms, cutoff)
    got = edge_dict(graph)
    assert set(got) == set(expected)
    for key, vec in expected.items():
        np.testing.assert_allclose(got[key], vec, atol=1e-12)
    assert not any(i == j and s == (0, 0, 0) for i, j, s in got)


def test_thin_cell_has_several_images_of_one_pair():
    atoms = rattled_fluorite((1, 1, 1))  # primitive cell, 3 atoms, edges ~3.6 Angstrom
    graph = build_graph(atoms, 6.0)
    pairs, counts = np.unique(graph.senders * 3 + graph.receivers, return_counts=True)
    assert counts.max() > 10
    assert (graph.senders == graph.receivers).any()  # an atom sees its own images
    np.testing.assert_array_less(graph.edge_lengths, 6.0)


def test_matches_ase_on_larger_cell_and_reverse_edges():
    atoms = rattled_fluorite((3, 3, 3), seed=3)
    graph = build_graph(atoms, 5.0)
    i, j, s = neighbor_list("ijS", atoms, 5.0)
    assert set(zip(i.tolist(), j.tolist(), map(tuple, s.tolist()), strict=True)) == set(
        edge_dict(graph)
    )
    e, r = np.arange(graph.n_edge), graph.reverse
    np.testing.assert_array_equal(r[r], e)
    np.testing.assert_array_equal(graph.senders[r], graph.receivers)
    np.testing.assert_array_equal(graph.shifts[r], -graph.shifts)
    np.testing.assert_allclose(graph.edge_vectors[r], -graph.edge_vectors, atol=1e-12)
    key = graph.senders * graph.n_node + graph.receivers
    assert np.all(np.diff(key) >= 0)  # sorted by sender, then receiver


def test_mixed_pbc_slab_with_zero_vacuum_vector():
    atoms = rattled_fluorite((2, 2, 1))
    atoms.pbc = [True, True, False]
    cell = atoms.cell.array.copy()
    slab = Atoms(atoms.numbers, atoms.positions, cell=[cell[0], cell[1], [0, 0, 0]])
    slab.pbc = [True, True, False]
    graph = build_graph(slab, 4.5)
    expected = brute_force_edges(atoms, 4.5)
    assert set(edge_dict(graph)) == set(expected)


def test_per_element_pair_cutoff():
    atoms = rattled_fluorite()
    cut = {("Hf", "Hf"): 4.0, ("Hf", "O"): 3.0, "O-O": 2.9}
    graph = build_graph(atoms, cut)
    z = atoms.numbers
    table = {(72, 72): 4.0, (72, 8): 3.0, (8, 72): 3.0, (8, 8): 2.9}
    expected = {
        k
        for k, v in brute_force_edges(atoms, 4.0).items()
        if np.linalg.norm(v) < table[(z[k[0]], z[k[1]])]
    }
    assert set(edge_dict(graph)) == expected
    assert graph.cutoff == 4.0
    with pytest.raises(ValueError, match="O-O"):
        build_graph(atoms, {("Hf", "Hf"): 4.0, ("Hf", "O"): 3.0})


def test_overlapping_atoms_error_names_both():
    atoms = rattled_fluorite()
    atoms.positions[5] = atoms.positions[2] + [0.1, 0.2, 0.0]
    with pytest.raises(ValueError, match=r"atoms 2 \(\w+\) and 5 \(\w+\)"):
        build_graph(atoms, 4.0)


def test_cell_smaller_than_min_distance_is_an_error():
    atoms = Atoms("H", positions=[[0, 0, 0]], cell=np.eye(3) * 0.3, pbc=True)
    with pytest.raises(ValueError, match="its own periodic image"):
        build_graph(atoms, 2.0)


def test_isolated_atom():
    atoms = molecule("H2O")
    atoms += Atoms("O", positions=[[20.0, 0, 0]])
    graph = build_graph(atoms, 1.2)  # O-H bonds only
    np.testing.assert_array_equal(graph.degree(), [2, 1, 1, 0])
    with pytest.raises(ValueError, match=r"atom 3 \(O\) has no neighbour"):
        build_graph(atoms, 1.2, isolated="error")


def test_element_without_basis_and_bad_cells():
    atoms = molecule("CH4")
    with pytest.raises(ValueError, match=r"atom 0: element C"):
        build_graph(atoms, 3.0, basis=BASIS)
    bad = Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]], cell=[[3, 0, 0], [0, 3, 0], [0, 0, 0]])
    bad.pbc = True
    with pytest.raises(ValueError, match="lattice vector 2 is periodic but has zero length"):
        build_graph(bad, 2.0)


# ------------------------------------------------------------------------------ targets
def random_record(atoms, cutoff, seed=0, basis=BASIS):
    """A Hermitian block record with one random block per pair within ``cutoff``."""
    rng = np.random.default_rng(seed)
    counts = basis.orbital_counts(atoms.numbers)
    blocks = {}
    for i, j, s in sorted(brute_force_edges(atoms, cutoff)) + [
        (a, a, (0, 0, 0)) for a in range(len(atoms))
    ]:
        if (i, j, s) in blocks:
            continue
        h = rng.normal(size=(counts[i], counts[j]))
        sv = rng.normal(size=(counts[i], counts[j]))
        if (i, j, s) == (j, i, tuple(-x for x in s)):
            h, sv = (h + h.T) / 2, (sv + sv.T) / 2
        blocks[(i, j, s)] = (h, sv)
        blocks[(j, i, tuple(-x for x in s))] = (h.T, sv.T)
    keys = sorted(blocks)
    return BlockHamiltonian(
        numbers=atoms.numbers.copy(),
        positions=atoms.positions.copy(),
        cell=atoms.cell.array.copy(),
        pbc=atoms.pbc.copy(),
        basis=basis,
        pairs=np.array([k[:2] for k in keys]),
        shifts=np.array([k[2] for k in keys]),
        hamiltonian=np.concatenate([blocks[k][0].ravel() for k in keys]),
        overlap=np.concatenate([blocks[k][1].ravel() for k in keys]),
    ), blocks


def test_gather_targets_places_every_block():
    atoms = rattled_fluorite((1, 1, 1))
    record, blocks = random_record(atoms, 5.0)
    graph = build_graph(atoms, 5.0, basis=BASIS)
    t = gather_targets(graph, record)
    m = max_orbitals(BASIS)
    assert m == 10 and t.edge_hamiltonian.shape == (graph.n_edge, m, m)
    assert not t.gamma_only and t.edge_mask.all() and t.node_mask.all()
    counts = BASIS.orbital_counts(atoms.numbers)
    np.testing.assert_array_equal(t.orbital_mask.sum(1), counts)
    for e in range(graph.n_edge):
        i, j, s = graph.senders[e], graph.receivers[e], tuple(graph.shifts[e])
        h, sv = blocks[(i, j, s)]
        np.testing.assert_array_equal(t.edge_hamiltonian[e, : counts[i], : counts[j]], h)
        np.testing.assert_array_equal(t.edge_overlap[e, : counts[i], : counts[j]], sv)
        assert not t.edge_hamiltonian[e, counts[i] :].any()
    for a in range(len(atoms)):
        np.testing.assert_array_equal(
            t.node_hamiltonian[a, : counts[a], : counts[a]], blocks[(a, a, (0, 0, 0))][0]
        )
    # hermiticity carried through the reverse index
    np.testing.assert_array_equal(
        t.edge_hamiltonian[graph.reverse], t.edge_hamiltonian.transpose(0, 2, 1)
    )


def test_gamma_folding_matches_dense_gamma_matrix():
    atoms = rattled_fluorite((1, 1, 1), seed=2)
    cutoff = 6.0
    record, _ = random_record(atoms, cutoff, seed=1)
    graph = build_graph(atoms, cutoff, basis=BASIS)
    full = gather_targets(graph, record)  # every image block known
    gamma = BlockHamiltonian.from_dense(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        atoms.pbc,
        BASIS,
        record.to_dense("hamiltonian"),
        record.to_dense("overlap"),
    )
    t = gather_targets(graph, gamma)
    assert t.gamma_only
    pairs = set(zip(graph.senders.tolist(), graph.receivers.tolist(), strict=True))
    assert t.edge_mask.sum() == len([p for p in pairs if p[0] != p[1]])
    for which in ("hamiltonian", "overlap"):
        node, edge = fold_gamma(
            getattr(full, f"node_{which}"),
            getattr(full, f"edge_{which}"),
            graph.senders,
            t.fold_edge,
        )
        np.testing.assert_allclose(
            np.asarray(edge)[t.edge_mask], getattr(t, f"edge_{which}")[t.edge_mask], atol=1e-12
        )
        np.testing.assert_allclose(np.asarray(node), getattr(t, f"node_{which}"), atol=1e-12)
    # without folding, the image blocks do not match the Gamma reference
    assert not np.allclose(full.edge_hamiltonian[t.edge_mask], t.edge_hamiltonian[t.edge_mask])


def test_fold_identity_for_k_resolved_targets():
    atoms = rattled_fluorite((1, 1, 1))
    record, _ = random_record(atoms, 4.0)
    graph = build_graph(atoms, 4.0)
    t = gather_targets(graph, record)
    node, edge = fold_gamma(t.node_hamiltonian, t.edge_hamiltonian, graph.senders, t.fold_edge)
    np.testing.assert_array_equal(np.asarray(edge), t.edge_hamiltonian)
    np.testing.assert_array_equal(np.asarray(node), t.node_hamiltonian)


def test_missing_reference_blocks_are_masked():
    atoms = rattled_fluorite((1, 1, 1))
    record, _ = random_record(atoms, 4.0)
    graph = build_graph(atoms, 5.0)  # larger cutoff than the reference blocks
    t = gather_targets(graph, record)
    np.testing.assert_array_equal(t.edge_mask, graph.edge_lengths < 4.0)
    assert not t.edge_hamiltonian[~t.edge_mask].any()


def test_pair_exactly_at_cutoff_is_excluded_in_both_directions():
    atoms = rattled_fluorite(seed=5)
    ref = build_graph(atoms, 4.0)
    cutoff = float(ref.edge_lengths[17])  # a distance that occurs in the structure
    graph = build_graph(atoms, cutoff)  # the reverse-edge guard would raise if asymmetric
    assert np.all(graph.edge_lengths < cutoff)
    assert graph.n_edge == int(np.sum(ref.edge_lengths < cutoff))
    two = Atoms("H2", positions=[[0, 0, 0], [2.0, 0, 0]])
    assert build_graph(two, 2.0).n_edge == 0 and build_graph(two, 2.0 + 1e-6).n_edge == 2


def test_reverse_index_and_record_input():
    atoms = rattled_fluorite((1, 1, 1))
    record, _ = random_record(atoms, 4.0)
    graph = build_graph(record, 4.0)  # a BlockHamiltonian works as input too
    assert edge_dict(graph).keys() == edge_dict(build_graph(atoms, 4.0)).keys()
    np.testing.assert_array_equal(
        reverse_index(graph.senders, graph.receivers, graph.shifts, graph.n_node), graph.reverse
    )
    drop = graph.reverse[0]
    keep = np.arange(graph.n_edge) != drop
    rev = reverse_index(graph.senders[keep], graph.receivers[keep], graph.shifts[keep], 3)
    assert rev[0] == -1 and (rev[1:] >= 0).all()


def test_multi_image_translations_match_a_brute_force_search():
    """The translations shorter than twice the cutoff of a skewed cell periodic along two
    axes equal those of a search over a much larger range of multiples; a molecule and a
    cell two cutoffs wide have none."""
    from ase import Atoms

    cell = np.array([[20.0, 0.0, 0.0], [1.3, 3.1, 0.0], [0.4, -1.7, 4.4]])
    atoms = Atoms("H", positions=[[1.0, 1.0, 1.0]], cell=cell, pbc=[False, True, True])
    cutoff = 5.0
    n = np.arange(-12, 13)
    multiples = np.stack(np.meshgrid(n, n, indexing="ij"), axis=-1).reshape(-1, 2)
    lengths = np.linalg.norm(multiples @ cell[1:], axis=1)
    expected = np.sort(np.round(lengths[(lengths > 0) & (lengths < 2 * cutoff)], 1))
    assert multi_image_translations(atoms, cutoff) == tuple(expected)
    assert len(expected) > 10
    assert multi_image_translations(Atoms("H2", positions=[[0, 0, 0], [0.7, 0, 0]]), 5.0) == ()
    wide = Atoms("H", cell=np.diag([10.0, 10.0, 10.0]), pbc=True)
    assert multi_image_translations(wide, 5.0) == ()
