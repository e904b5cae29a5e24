"""Training targets: the reference blocks of a structure on the nodes and edges of its graph.

:func:`gather_targets` places the H (and S) blocks of a :class:`~hamjax.blocks.BlockHamiltonian`
on a :class:`~hamjax.graph.Graph` in a padded dense form, ``[n_node | n_edge, M, M]`` with
``M`` = :func:`max_orbitals` of the basis, with masks for what the reference holds. A
Gamma-point-only reference is gathered so that predictions can be compared with it after
:func:`hamjax.folding.fold_gamma`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hamjax.basis import Basis, element_symbol
from hamjax.folding import is_gamma_only
from hamjax.graph import Graph

__all__ = ["BlockTargets", "gather_targets", "max_orbitals"]


def max_orbitals(basis: Basis) -> int:
    """``M``: the most orbitals of one atom over all elements of ``basis``."""
    return max(basis.n_orbitals(z) for z in basis.elements)


@dataclass(frozen=True, eq=False)
class BlockTargets:
    """Reference blocks of one structure on its graph, padded to ``M x M`` (numpy).

    Attributes:
        node_hamiltonian: ``[n_node, M, M]`` on-site blocks ``H_ii(0)``, Hartree; zero outside
            the orbital mask.
        edge_hamiltonian: ``[n_edge, M, M]`` blocks ``H_ij(shift)`` of every edge, Hartree.
        node_overlap, edge_overlap: the same for S (dimensionless), or None.
        orbital_mask: ``[n_node, M]`` True where the species has that orbital.
        node_mask: ``[n_node]`` True where the reference has the on-site block.
        edge_mask: ``[n_edge]`` True where the reference has the edge's block (for a
            Gamma-folded reference: True on one edge per folded pair, see ``fold_edge``).
        fold_edge: ``[n_edge]`` int, where :func:`hamjax.folding.fold_gamma` adds the edge's
            block: its own index (k-resolved reference: nothing is folded), the index of the
            representative edge of its atom pair, or -1 for an image of the sender itself
            (added to the sender's node block).
        gamma_only: whether the blocks are Gamma-folded.
    """

    node_hamiltonian: np.ndarray
    edge_hamiltonian: np.ndarray
    orbital_mask: np.ndarray
    node_mask: np.ndarray
    edge_mask: np.ndarray
    fold_edge: np.ndarray
    node_overlap: np.ndarray | None = None
    edge_overlap: np.ndarray | None = None
    gamma_only: bool = False


def gather_targets(
    graph: Graph,
    record,
    *,
    gamma_only: bool | None = None,
    basis: Basis | None = None,
    node_index: np.ndarray | None = None,
    node_select: np.ndarray | None = None,
    edge_select: np.ndarray | None = None,
) -> BlockTargets:
    """Reference H (and S) blocks of ``record`` on the nodes and edges of ``graph``.

    A block ``(i, j, shift)`` of the record lands on the edge with the same sender, receiver
    and shift; ``(i, i, 0)`` lands on node ``i``. Record blocks beyond the cutoff are not used;
    graph edges without a record block get ``edge_mask = False`` (e.g. blocks the reference
    dropped below a threshold).

    Gamma-only references. A Gamma-point matrix holds, for atoms ``(i, j)``, the sum of the
    blocks of all images, ``H_ij(Gamma) = sum_S H_ij(S)``; when the cell is thinner than twice
    the cutoff, several images of a pair are edges and one reference block stands for all of
    them. Then (``gamma_only=True``, or automatically when the record is periodic but holds
    only zero shifts) the reference block
    ``(i, j, 0)`` goes to one representative edge per pair (``edge_mask`` True only there),
    the reference ``(i, i, 0)`` to node ``i``, and a prediction is compared after
    :func:`~hamjax.folding.fold_gamma`, which sums the predicted image blocks the same way.
    Images beyond the cutoff are not predicted, so the folded comparison is exact only to the
    size of the blocks beyond the cutoff.

    Args:
        graph: from :func:`hamjax.graph.build_graph` for the same structure, or a subgraph of it (a
            partition slice, then pass ``node_index``).
        record: a :class:`~hamjax.blocks.BlockHamiltonian` (Hartree).
        gamma_only: force (True/False) or auto-detect (None) Gamma folding.
        basis: basis fixing ``M`` (default the record's basis). Must match the record's
            orbital layout.
        node_index: ``[n_node]`` record atom of every graph node (default: the identity);
            e.g. :attr:`hamjax.partition.Slice.node_index`, so that a slice's targets are
            gathered without building the full graph's dense blocks.
        node_select, edge_select: optional ``[n_node]`` / ``[n_edge]`` bool; only these
            items get their blocks (the others stay zero with mask False), e.g. the
            labelled items of a slice.

    Returns:
        :class:`BlockTargets`.
    """
    basis = record.basis if basis is None else basis
    numbers = np.asarray(record.numbers)
    n_atoms = len(numbers)
    n_node, n_edge = graph.n_node, graph.n_edge
    if node_index is None:
        if n_atoms != n_node:
            raise ValueError(f"the record has {n_atoms} atoms, the graph {n_node} nodes")
        node_index = np.arange(n_node)
    node_index = np.asarray(node_index, dtype=np.int64)
    if node_index.shape != (n_node,) or (n_node and node_index.max() >= n_atoms):
        raise ValueError("node_index must give a record atom for every graph node")
    if not np.array_equal(numbers[node_index], graph.numbers):
        bad = int(np.flatnonzero(numbers[node_index] != graph.numbers)[0])
        raise ValueError(
            f"graph node {bad} is {element_symbol(graph.numbers[bad])} but record atom "
            f"{node_index[bad]} is {element_symbol(numbers[node_index[bad]])}"
        )
    shift_err = np.abs(np.asarray(record.positions)[node_index] - graph.positions)
    if shift_err.max(initial=0) > 1e-6:
        bad = int(np.argmax(shift_err.max(axis=1)))
        raise ValueError(
            f"graph node {bad} and record atom {node_index[bad]} are at different positions"
        )
    all_counts = basis.orbital_counts(numbers)
    if not np.array_equal(all_counts, record.orbital_counts):
        raise ValueError(f"basis {basis.name!r} does not match the record's orbital layout")
    counts = all_counts[node_index]
    m = max_orbitals(basis)
    if gamma_only is None:
        gamma_only = is_gamma_only(record)

    orbital_mask = np.arange(m)[None, :] < counts[:, None]
    pairs = np.asarray(record.pairs, dtype=np.int64)
    rshifts = np.asarray(record.shifts, dtype=np.int64)
    offsets = record.block_offsets[:-1]
    if node_select is not None or edge_select is not None:
        # only record blocks whose first atom sends a selected edge or is a selected node
        wanted = np.zeros(n_atoms, dtype=bool)
        if node_select is not None:
            wanted[node_index[np.asarray(node_select, dtype=bool)]] = True
        else:
            wanted[node_index] = True
        if edge_select is not None:
            wanted[node_index[graph.senders[np.asarray(edge_select, dtype=bool)]]] = True
        else:
            wanted[node_index[graph.senders]] = True
        keep = wanted[pairs[:, 0]]
        pairs, rshifts, offsets = pairs[keep], rshifts[keep], offsets[keep]
    edge_ids = np.arange(n_edge)
    rec_key = pairs[:, 0] * n_atoms + pairs[:, 1]
    pair_key = node_index[graph.senders] * n_atoms + node_index[graph.receivers]

    if gamma_only:
        if rshifts.any():
            raise ValueError("gamma_only=True needs a record with zero shifts only")
        self_image = graph.senders == graph.receivers
        # representative: first edge of every (i, j) pair (edges are sorted by i, j, shift).
        first = np.ones(n_edge, dtype=bool)
        first[1:] = pair_key[1:] != pair_key[:-1]
        if len(np.unique(pair_key[first])) != first.sum():
            raise ValueError("graph edges must be sorted by (sender, receiver) for Gamma folding")
        representative = np.maximum.accumulate(np.where(first, edge_ids, 0))
        fold_edge = np.where(self_image, -1, representative)
        slot_edges = first & ~self_image
        lookup_key = pair_key[slot_edges]
        lookup_edge = edge_ids[slot_edges]
        lookup_shift = np.zeros((len(lookup_key), 3), dtype=np.int64)
    else:
        fold_edge = edge_ids.copy()
        lookup_key = pair_key
        lookup_edge = edge_ids
        lookup_shift = graph.shifts

    # match record blocks to edge slots through (pair key, shift) keys
    span = int(max(np.abs(lookup_shift).max(initial=0), np.abs(rshifts).max(initial=0)))
    base = 2 * span + 1

    def full_key(k, sh):
        k = k.astype(np.int64)
        for axis in range(3):
            k = k * base + (sh[:, axis] + span)
        return k

    slot_key = full_key(lookup_key, lookup_shift)
    record_key = full_key(rec_key, rshifts)
    block_edge = np.full(len(pairs), -1, dtype=np.int64)
    if len(slot_key) and len(pairs):
        order = np.argsort(slot_key)
        pos = np.minimum(np.searchsorted(slot_key[order], record_key), len(order) - 1)
        hit = slot_key[order][pos] == record_key
        block_edge = np.where(hit, lookup_edge[order][pos], -1)
    local_node = np.full(n_atoms, -1, dtype=np.int64)
    local_node[node_index] = np.arange(n_node)
    block_node = np.where(
        (pairs[:, 0] == pairs[:, 1]) & ~rshifts.any(axis=1), local_node[pairs[:, 0]], -1
    )

    if edge_select is not None:
        block_edge = np.where(
            np.asarray(edge_select, dtype=bool)[np.maximum(block_edge, 0)], block_edge, -1
        )
    if node_select is not None:
        block_node = np.where(
            np.asarray(node_select, dtype=bool)[np.maximum(block_node, 0)], block_node, -1
        )
    ci, cj = all_counts[pairs[:, 0]], all_counts[pairs[:, 1]]
    placed = np.flatnonzero((block_node >= 0) | (block_edge >= 0))
    groups = {}
    for b_size in set(zip(ci[placed].tolist(), cj[placed].tolist(), strict=True)):
        sel = placed[(ci[placed] == b_size[0]) & (cj[placed] == b_size[1])]
        groups[b_size] = sel

    def scatter(values):
        # flat gathers and scatters: far faster than fancy indexing with slices
        values = np.asarray(values)
        node = np.zeros((n_node, m, m), dtype=values.dtype)
        edge = np.zeros((n_edge, m, m), dtype=values.dtype)
        small = max(len(values), edge.size, node.size) < 2**31
        itype = np.int32 if small else np.int64  # half the index traffic when it fits
        for (a, b), sel in groups.items():
            inner = (np.arange(a)[:, None] * m + np.arange(b)[None, :]).ravel().astype(itype)
            for out, rows in ((node, block_node[sel]), (edge, block_edge[sel])):
                use = rows >= 0
                src = offsets[sel[use]].astype(itype)[:, None] + np.arange(a * b, dtype=itype)
                dst = (rows[use].astype(itype) * itype(m * m))[:, None] + inner[None, :]
                out.reshape(-1)[dst.ravel()] = values[src.ravel()]
        return node, edge

    node_h, edge_h = scatter(record.hamiltonian)
    node_s = edge_s = None
    if record.overlap is not None:
        node_s, edge_s = scatter(record.overlap)
    node_mask = np.zeros(n_node, dtype=bool)
    node_mask[block_node[block_node >= 0]] = True
    edge_mask = np.zeros(n_edge, dtype=bool)
    edge_mask[block_edge[block_edge >= 0]] = True
    return BlockTargets(
        node_hamiltonian=node_h,
        edge_hamiltonian=edge_h,
        orbital_mask=orbital_mask,
        node_mask=node_mask,
        edge_mask=edge_mask,
        fold_edge=fold_edge.astype(np.int64),
        node_overlap=node_s,
        edge_overlap=edge_s,
        gamma_only=bool(gamma_only),
    )
