"""Augmented partitioning: exact receptive fields, exact coverage, and the paper's definition."""

from collections import deque

import numpy as np
import pytest
from ase.build import bulk

from hamjax.folding import fold_gamma
from hamjax.graph import build_graph
from hamjax.partition import assign_slices, partition, slice_targets, stitch
from hamjax.targets import gather_targets

CUTOFF = 3.6


def fluorite_supercell():
    atoms = bulk("HfO2", "fluorite", a=5.1, cubic=True).repeat((4, 2, 2))  # 192 atoms
    atoms.rattle(0.08, seed=7)
    return atoms


def device():
    """A small TiN | HfO2 | Ti | TiN device when the builder is there, else rattled rutile."""
    try:
        from hamjax.structures.device import DeviceSpec, build_device
    except ImportError:
        atoms = bulk("TiO2", "rutile", a=4.6, c=2.95).repeat((8, 1, 2))
        atoms.rattle(0.05, seed=1)
        return atoms
    spec = DeviceSpec(transverse_cells=(1, 1), melt_steps=0, quench_steps=0, relax_steps=0)
    return build_device(spec)


STRUCTURES = {"fluorite": fluorite_supercell, "device": device}


@pytest.fixture(scope="module", params=sorted(STRUCTURES))
def graph(request):
    return build_graph(STRUCTURES[request.param](), CUTOFF)


# ------------------------------------------------------------- independent references
def in_edges(graph):
    lists = [[] for _ in range(graph.n_node)]
    for e, j in enumerate(graph.receivers):
        lists[j].append(e)
    return lists


def receptive_field(graph, incoming, node, n_layers):
    """Edges whose messages reach ``node`` in ``n_layers`` rounds (plain BFS on lists)."""
    seen, queue, edges = {node: 0}, deque([node]), set()
    while queue:
        u = queue.popleft()
        if seen[u] >= n_layers:
            continue
        for e in incoming[u]:
            edges.add(e)
            s = int(graph.senders[e])
            if s not in seen:
                seen[s] = seen[u] + 1
                queue.append(s)
    return edges


def toy_message_passing(graph, n_layers):
    """A nonlinear scalar message-passing network with fixed weights (numpy)."""
    rng = np.random.default_rng(123)
    w = rng.normal(size=(n_layers, 4, 4)) / 2
    u = rng.normal(size=(n_layers, 4, 4)) / 2
    x = np.stack([np.sin(graph.numbers * (k + 1) * 0.37) for k in range(4)], axis=1)
    r = graph.edge_lengths
    phi = 0.5 * (np.cos(np.pi * r / CUTOFF) + 1)
    for layer in range(n_layers):
        msg = np.tanh(x[graph.senders] @ w[layer] + r[:, None]) * phi[:, None]
        agg = np.zeros_like(x)
        np.add.at(agg, graph.receivers, msg)
        x = np.tanh(x + agg @ u[layer])
    vec = graph.edge_vectors
    edge = x[graph.senders] * x[graph.receivers] * phi[:, None] + vec[:, :1] * x[graph.senders]
    edge = edge + edge[graph.reverse] ** 2  # uses the reverse edge too
    return x, edge


# ------------------------------------------------------------------------------- tests
def test_slice_assignment_matches_scaled_positions():
    atoms = fluorite_supercell()
    graph = build_graph(atoms, CUTOFF)
    which, bounds = assign_slices(graph, 0, width=4.0)
    assert len(bounds) == 7  # ceil(20.4 / 4) = 6 slices of 3.4 Angstrom
    frac = atoms.get_scaled_positions(wrap=True)[:, 0]
    np.testing.assert_array_equal(which, np.floor(frac * 6).astype(int) % 6)
    which2, _ = assign_slices(graph, 0, n_slices=6)
    np.testing.assert_array_equal(which, which2)
    with pytest.raises(ValueError, match="exactly one"):
        assign_slices(graph, 0)


@pytest.mark.parametrize("n_layers", [1, 2])
def test_exact_mode_receptive_fields_and_coverage(graph, n_layers):
    slices = partition(graph, 0, width=6.0, mode="exact", n_layers=n_layers)
    assert len(slices) >= 3
    incoming_full = in_edges(graph)
    node_count = np.zeros(graph.n_node, int)
    edge_count = np.zeros(graph.n_edge, int)
    for piece in slices:
        sub = piece.graph
        incoming_sub = in_edges(sub)
        node_count[piece.node_index[piece.node_label]] += 1
        edge_count[piece.edge_index[piece.edge_label]] += 1
        np.testing.assert_allclose(sub.edge_vectors, graph.edge_vectors[piece.edge_index])
        checked = set()

        def same_field(local, piece=piece, sub=sub, incoming_sub=incoming_sub, checked=checked):
            if local in checked:
                return
            checked.add(local)
            full = receptive_field(graph, incoming_full, piece.node_index[local], n_layers)
            mine = receptive_field(sub, incoming_sub, local, n_layers)
            assert {int(piece.edge_index[e]) for e in mine} == full

        for local in np.flatnonzero(piece.node_label):
            same_field(local)
        for e in np.flatnonzero(piece.edge_label):
            same_field(int(sub.senders[e]))
            same_field(int(sub.receivers[e]))
            # the reverse edge is present and is the global reverse
            assert piece.edge_index[sub.reverse[e]] == graph.reverse[piece.edge_index[e]]
    np.testing.assert_array_equal(node_count, 1)
    np.testing.assert_array_equal(edge_count, 1)


@pytest.mark.parametrize("n_layers, axis", [(1, 0), (2, 0), (1, 1)])
def test_exact_mode_slice_inference_equals_full_graph(graph, n_layers, axis):
    # along axis 1 the cell is thinner than a slice plus both halos: halos wrap onto the slice
    slices = partition(graph, axis, width=3.0, mode="exact", n_layers=n_layers)
    x_full, e_full = toy_message_passing(graph, n_layers)
    outs = [toy_message_passing(p.graph, n_layers) for p in slices]
    x, e = stitch(slices, [o[0] for o in outs], [o[1] for o in outs], graph.n_node, graph.n_edge)
    np.testing.assert_allclose(x, x_full, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(e, e_full, rtol=1e-12, atol=1e-14)


def test_paper_mode_definition(graph):
    slices = partition(graph, 0, width=5.0, mode="paper")
    which, _ = assign_slices(graph, 0, width=5.0)
    labelled_edges = np.zeros(graph.n_edge, int)
    for piece in slices:
        inside = which == piece.index
        # edges: exactly those into a slice atom (halo -> slice one-way, slice <-> slice)
        expected_edges = np.flatnonzero(inside[graph.receivers])
        np.testing.assert_array_equal(piece.edge_index, expected_edges)
        # nodes: slice atoms plus every atom within one cutoff of one of them
        expected_nodes = np.union1d(np.flatnonzero(inside), graph.senders[expected_edges])
        np.testing.assert_array_equal(piece.node_index, expected_nodes)
        np.testing.assert_array_equal(piece.node_label, inside[piece.node_index])
        both = inside[graph.senders] & inside[graph.receivers]
        np.testing.assert_array_equal(piece.edge_label, both[piece.edge_index])
        labelled_edges[piece.edge_index[piece.edge_label]] += 1
        assert np.all(graph.edge_lengths[piece.edge_index] < CUTOFF)
        # halo atoms lie within one cutoff of the slice: no halo -> halo edges
        halo = ~piece.node_label
        assert not np.any(halo[piece.graph.receivers])
    cross = which[graph.senders] != which[graph.receivers]
    np.testing.assert_array_equal(labelled_edges, (~cross).astype(int))
    # labelled items reproduce the full graph with one layer; cross-slice edges are not exact
    x_full, e_full = toy_message_passing(graph, 1)
    for piece in slices:
        x, e = toy_message_passing(piece.graph, 1)
        np.testing.assert_allclose(x[piece.node_label], x_full[piece.node_index[piece.node_label]])
        np.testing.assert_allclose(e[piece.edge_label], e_full[piece.edge_index[piece.edge_label]])
        outgoing = piece.node_label[piece.graph.senders] & ~piece.edge_label
        if outgoing.any():  # slice -> halo edges would be wrong, hence unlabelled
            assert not np.allclose(e[outgoing], e_full[piece.edge_index[outgoing]])


def test_periodic_wraparound_halo():
    graph = build_graph(fluorite_supercell(), CUTOFF)
    which, _ = assign_slices(graph, 0, n_slices=4)
    first = partition(graph, 0, n_slices=4, mode="exact")[0]
    halo_slices = set(which[first.node_index[~first.node_label]].tolist())
    assert {1, 3} <= halo_slices  # neighbours on both sides, the left one across the boundary
    wrap = first.graph.shifts[:, 0] != 0
    assert wrap.any()
    # open along x: no wrap-around, the first slice sees only its right neighbour
    open_graph = build_graph(_open_x(fluorite_supercell()), CUTOFF)
    which_open, _ = assign_slices(open_graph, 0, n_slices=4)
    first_open = partition(open_graph, 0, n_slices=4, mode="exact")[0]
    assert set(which_open[first_open.node_index[~first_open.node_label]].tolist()) == {1}
    assert not first_open.graph.shifts[:, 0].any()


def _open_x(atoms):
    atoms.pbc = [False, True, True]
    return atoms


def test_slice_targets_cover_the_reference_once():
    from test_graph import random_record

    from hamjax.basis import Basis

    basis = Basis.from_dict("t", {"Hf": (0, 0, 1, 2), "O": (0, 1)})
    atoms = bulk("HfO2", "fluorite", a=5.1, cubic=True).repeat((3, 1, 1))
    atoms.rattle(0.05, seed=3)
    record, _ = random_record(atoms, CUTOFF, basis=basis)
    graph = build_graph(atoms, CUTOFF)
    full = gather_targets(graph, record)
    slices = partition(graph, 0, n_slices=3, mode="exact")
    parts = [slice_targets(full, p) for p in slices]
    node, edge = stitch(
        slices,
        [np.where(t.node_mask[:, None, None], t.node_hamiltonian, np.nan) for t in parts],
        [np.where(t.edge_mask[:, None, None], t.edge_hamiltonian, np.nan) for t in parts],
        graph.n_node,
        graph.n_edge,
    )
    np.testing.assert_array_equal(node, full.node_hamiltonian)
    np.testing.assert_array_equal(edge, full.edge_hamiltonian)
    assert sum(t.edge_mask.sum() for t in parts) == graph.n_edge


def test_bad_arguments():
    graph = build_graph(fluorite_supercell(), CUTOFF)
    with pytest.raises(ValueError, match="mode"):
        partition(graph, 0, n_slices=2, mode="both")
    with pytest.raises(ValueError, match="axis"):
        partition(graph, 3, n_slices=2)


@pytest.mark.parametrize("gamma", [False, True])
def test_slice_targets_from_record_equal_full_targets(gamma):
    from test_graph import random_record

    from hamjax.basis import Basis
    from hamjax.blocks import BlockHamiltonian

    basis = Basis.from_dict("t", {"Hf": (0, 0, 1, 2), "O": (0, 1)})
    atoms = bulk("HfO2", "fluorite", a=5.1, cubic=True).repeat((3, 1, 1))
    atoms.rattle(0.05, seed=4)
    kres, _ = random_record(atoms, 5.5, basis=basis)  # 5.1 A cell: several images
    record = kres
    if gamma:
        record = BlockHamiltonian.from_dense(
            atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc, basis, kres.to_dense()
        )
    graph = build_graph(atoms, 5.5)
    full = gather_targets(graph, record)
    assert full.gamma_only == gamma
    for mode in ("exact", "paper"):
        for piece in partition(graph, 0, n_slices=3, mode=mode):
            a = slice_targets(full, piece)
            b = slice_targets(record, piece)
            np.testing.assert_array_equal(a.node_mask, b.node_mask)
            np.testing.assert_array_equal(a.edge_mask, b.edge_mask)
            assert b.edge_mask.any()
            for x, y in ((a, b), (b, b)):
                np.testing.assert_array_equal(
                    x.edge_hamiltonian[x.edge_mask], y.edge_hamiltonian[y.edge_mask]
                )
            np.testing.assert_array_equal(
                a.node_hamiltonian[a.node_mask], b.node_hamiltonian[b.node_mask]
            )
            if not gamma:
                continue
            # the image blocks of the slice, folded inside the slice, give its reference
            images = slice_targets(kres, piece)
            node, edge = fold_gamma(
                images.node_hamiltonian,
                images.edge_hamiltonian,
                piece.graph.senders,
                b.fold_edge,
            )
            np.testing.assert_allclose(
                np.asarray(edge)[b.edge_mask], b.edge_hamiltonian[b.edge_mask], atol=1e-12
            )
            np.testing.assert_allclose(
                np.asarray(node)[b.node_mask], b.node_hamiltonian[b.node_mask], atol=1e-12
            )
