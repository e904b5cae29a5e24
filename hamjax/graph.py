"""Atomic structures as graphs: atoms are nodes, atom pairs within a cutoff are edges.

A node carries the on-site block ``H_ii(0)`` of its atom; a directed edge ``e`` carries the
hopping block ``(i, j, shift)`` with ``i = senders[e]`` in the home cell and
``j = receivers[e]`` in the cell translated by the integer lattice vector ``shifts[e]``. Its
vector is

    r_e = positions[receivers[e]] + shifts[e] @ cell - positions[senders[e]]   (Angstrom).

Every edge appears in both directions: ``reverse[e]`` is the index of ``(j, i, -shift)``.
Periodic boundaries are honoured along the periodic lattice vectors, including cells thinner
than the cutoff: a pair then has several edges, one per image inside the cutoff, and an atom
may be linked to its own images (``(i, i, shift != 0)`` is an edge; ``(i, i, 0)`` is the node,
never an edge). Edges are sorted by ``(sender, receiver, shift)``.

Neighbour search uses vesin (a maintained cell-list library), chosen by measurement on this
2-core machine (shared, load ~10) with an 8 Angstrom cutoff: for a rattled 4,200-atom
periodic fluorite HfO2 supercell (816,062 directed pairs) vesin took 0.18-0.24 s, matscipy
0.40-0.66 s and ase.neighborlist 6-9 s; for the 5,520-atom TiN | HfO2 | Ti | TiN device
(1,173,868 edges, ``benchmarks/bench_graph.py``) vesin 0.50 s, matscipy 1.07 s, and
:func:`build_graph` as a whole (search, cutoff and distance checks, sorting, reverse index)
1.46 s.

Reference blocks from a :class:`~hamjax.blocks.BlockHamiltonian` are gathered onto the graph in
a padded dense form by :func:`gather_targets`; :func:`fold_gamma` sums predicted image blocks
for comparison with Gamma-point-only references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from ase.data import chemical_symbols

from hamjax.basis import Basis, element_number
from hamjax.blocks import block_keys

__all__ = [
    "BlockTargets",
    "Graph",
    "build_graph",
    "fold_gamma",
    "gamma_folded_cells",
    "gather_targets",
    "max_orbitals",
    "multi_image_translations",
    "reverse_index",
    "PADDING_EDGE_VECTOR",
]

#: Edge vector (Angstrom) that every padded edge gets (see :mod:`hamjax.batching`): padded edges
#: join a padding node to itself, so ``shift_vectors`` alone sets their vector. A fixed non-zero
#: vector keeps norms, spherical harmonics and their gradients finite on padding.
PADDING_EDGE_VECTOR = (0.0, 0.0, 1.0)


def _symbol(z: int) -> str:
    return chemical_symbols[int(z)] if 0 <= int(z) < len(chemical_symbols) else f"Z={z}"


@dataclass(frozen=True, eq=False)
class Graph:
    """Graph of one structure (numpy, host side).

    Attributes:
        numbers: atomic numbers, ``[n_node]`` int.
        positions: Cartesian positions, ``[n_node, 3]`` Angstrom.
        cell: lattice vectors as rows, ``[3, 3]`` Angstrom (rows of non-periodic axes unused).
        pbc: periodicity per lattice vector, ``[3]`` bool.
        senders: ``[n_edge]`` atom ``i`` (home cell) of every edge.
        receivers: ``[n_edge]`` atom ``j`` of every edge.
        shifts: ``[n_edge, 3]`` integer cell shift of atom ``j``.
        reverse: ``[n_edge]`` index of the edge ``(j, i, -shift)``; an edge whose reverse is
            not part of the graph (halo edges of a partition slice) points to itself.
        cutoff: the largest pair cutoff used, Angstrom.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    senders: np.ndarray
    receivers: np.ndarray
    shifts: np.ndarray
    reverse: np.ndarray
    cutoff: float

    @property
    def n_node(self) -> int:
        return len(self.numbers)

    @property
    def n_edge(self) -> int:
        return len(self.senders)

    @cached_property
    def shift_vectors(self) -> np.ndarray:
        """``shifts @ cell``, ``[n_edge, 3]`` Angstrom."""
        return _shift_vectors(self.shifts, self.cell)

    @cached_property
    def edge_vectors(self) -> np.ndarray:
        """``positions[receivers] + shift_vectors - positions[senders]``, ``[n_edge, 3]``."""
        return (self.positions[self.receivers] - self.positions[self.senders]) + self.shift_vectors

    @cached_property
    def edge_lengths(self) -> np.ndarray:
        """``|edge_vectors|``, ``[n_edge]`` Angstrom."""
        return np.linalg.norm(self.edge_vectors, axis=1)

    def degree(self) -> np.ndarray:
        """Number of edges leaving every node, ``[n_node]``."""
        return np.bincount(self.senders, minlength=self.n_node)

    def to_graphs_tuple(self):
        """The unpadded ``jraph.GraphsTuple`` in hamjax's layout (one graph, all masks True)."""
        import jraph

        return jraph.GraphsTuple(
            nodes={
                "species": self.numbers.astype(np.int32),
                "positions": np.asarray(self.positions, dtype=float),
                "mask": np.ones(self.n_node, dtype=bool),
            },
            edges={
                "shift_vectors": self.shift_vectors,
                "shifts": self.shifts.astype(np.int32),
                "reverse": self.reverse.astype(np.int32),
                "mask": np.ones(self.n_edge, dtype=bool),
            },
            senders=self.senders.astype(np.int32),
            receivers=self.receivers.astype(np.int32),
            n_node=np.array([self.n_node], dtype=np.int32),
            n_edge=np.array([self.n_edge], dtype=np.int32),
            globals=None,
        )


# ---------------------------------------------------------------------------- building
def _shift_vectors(shifts: np.ndarray, cell: np.ndarray) -> np.ndarray:
    """``shifts @ cell`` in float64 (einsum: much faster than matmul for a 3 x 3 cell)."""
    return np.einsum("ex,xy->ey", shifts.astype(np.float64), np.asarray(cell, dtype=np.float64))


def _structure_arrays(atoms):
    """numbers, positions, cell, pbc of an ``ase.Atoms`` or a ``BlockHamiltonian``."""
    if hasattr(atoms, "get_atomic_numbers"):
        numbers = atoms.get_atomic_numbers()
        positions = atoms.get_positions()
        cell = np.asarray(atoms.cell.array if hasattr(atoms.cell, "array") else atoms.cell)
        pbc = atoms.pbc
    else:
        numbers, positions, cell, pbc = atoms.numbers, atoms.positions, atoms.cell, atoms.pbc
    numbers = np.asarray(numbers, dtype=np.int64)
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float).reshape(3, 3)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    if positions.shape != (len(numbers), 3):
        raise ValueError(f"positions {positions.shape} do not match {len(numbers)} atoms")
    if not np.all(np.isfinite(positions)):
        bad = int(np.flatnonzero(~np.isfinite(positions).all(axis=1))[0])
        raise ValueError(f"atom {bad} has a non-finite position {positions[bad]}")
    return numbers, positions, cell, pbc


def _pair_cutoff_table(cutoff, numbers) -> tuple[float, np.ndarray | None]:
    """Largest cutoff and a ``[Zmax+1, Zmax+1]`` table (None for a single number)."""
    if not isinstance(cutoff, Mapping):
        value = float(cutoff)
        if not value > 0:
            raise ValueError(f"cutoff must be positive (Angstrom), got {cutoff}")
        return value, None
    present = sorted(set(int(z) for z in numbers))
    zmax = max(present, default=0)
    table = np.full((zmax + 1, zmax + 1), np.nan)
    for key, value in cutoff.items():
        if isinstance(key, str):
            parts = key.replace("-", " ").split()
        else:
            parts = list(key)
        if len(parts) != 2:
            raise ValueError(f"cutoff key {key!r} must name two elements, e.g. ('Hf', 'O')")
        a, b = (element_number(p) for p in parts)
        if not float(value) > 0:
            raise ValueError(f"cutoff for {key!r} must be positive (Angstrom), got {value}")
        if a <= zmax and b <= zmax:
            for x, y in ((a, b), (b, a)):
                if not np.isnan(table[x, y]) and table[x, y] != float(value):
                    raise ValueError(f"cutoff for pair {key!r} is given twice with two values")
                table[x, y] = float(value)
    for ia, a in enumerate(present):
        for b in present[ia:]:
            if np.isnan(table[a, b]):
                raise ValueError(
                    f"no cutoff for element pair {_symbol(a)}-{_symbol(b)}; the structure "
                    f"has {[_symbol(z) for z in present]}"
                )
    used = [table[a, b] for a in present for b in present]
    return float(max(used, default=0.0)), table


def reverse_index(senders, receivers, shifts, n_node: int, presorted: bool = False) -> np.ndarray:
    """Index of the edge ``(j, i, -shift)`` of every edge ``(i, j, shift)``; -1 where absent.

    Args:
        senders, receivers: ``[n_edge]`` int.
        shifts: ``[n_edge, 3]`` int.
        n_node: number of nodes.
        presorted: edges are already sorted by ``(sender, receiver, shift)`` (skips a sort).

    Returns:
        ``[n_edge]`` int64.
    """
    n_edge = len(senders)
    if n_edge == 0:
        return np.zeros(0, dtype=np.int64)
    span = int(np.abs(shifts).max(initial=0))
    if (2 * span + 1) ** 3 * max(n_node, 1) ** 2 >= 2**62:
        raise ValueError("graph too large for int64 edge keys")
    key = block_keys(senders, receivers, shifts, n_node, span)
    rkey = block_keys(receivers, senders, -shifts, n_node, span)
    order = np.arange(n_edge) if presorted else np.argsort(key, kind="stable")
    sorted_key = key if presorted else key[order]
    pos = np.minimum(np.searchsorted(sorted_key, rkey), n_edge - 1)
    found = sorted_key[pos] == rkey
    return np.where(found, order[pos], -1)


def build_graph(
    atoms,
    cutoff: float | Mapping,
    *,
    basis: Basis | None = None,
    min_distance: float = 0.5,
    isolated: str = "allow",
) -> Graph:
    """Directed neighbour graph of a structure, both directions, all periodic images.

    Args:
        atoms: an ``ase.Atoms`` or anything with ``numbers``, ``positions`` (Angstrom),
            ``cell`` and ``pbc`` (e.g. a :class:`~hamjax.blocks.BlockHamiltonian`).
        cutoff: pair cutoff in Angstrom: one number, or a mapping from element pairs
            (``("Hf", "O")``, ``(72, 8)`` or ``"Hf-O"``) to cutoffs; symmetric, and every pair
            of elements present must be given. A pair is an edge when its distance is
            strictly below the cutoff.
        basis: if given, every element must have shells in it (else ValueError naming the
            atom and element).
        min_distance: pairs closer than this (Angstrom) raise a ValueError naming both atoms
            (overlapping atoms, or a cell so small that an atom meets its own image).
        isolated: what to do with atoms without any neighbour: ``"allow"`` (a node with no
            edges; its on-site block then depends on its species only) or ``"error"``.

    Returns:
        The :class:`Graph`. Cells thinner than the cutoff along a periodic axis are
        supported: every image inside the cutoff is its own edge. A periodic axis with a
        zero-length (or degenerate) lattice vector is an error.
    """
    numbers, positions, cell, pbc = _structure_arrays(atoms)
    n_node = len(numbers)
    if isolated not in ("allow", "error"):
        raise ValueError(f"isolated must be 'allow' or 'error', got {isolated!r}")
    if basis is not None:
        basis.orbital_counts(numbers)  # raises naming the first atom without shells
    if pbc.any():
        lengths = np.linalg.norm(cell, axis=1)
        for axis in np.flatnonzero(pbc):
            if lengths[axis] < 1e-8:
                raise ValueError(
                    f"lattice vector {axis} is periodic but has zero length: {cell[axis]}"
                )
        periodic_rows = cell[pbc]
        if np.linalg.matrix_rank(periodic_rows, tol=1e-8 * lengths.max()) < pbc.sum():
            raise ValueError(f"the periodic lattice vectors are linearly dependent: {cell}")
    rmax, table = _pair_cutoff_table(cutoff, numbers)

    if n_node == 0:
        senders = receivers = np.zeros(0, dtype=np.int64)
        shifts = np.zeros((0, 3), dtype=np.int64)
    else:
        import vesin

        # Search slightly wider than the cutoff. Pairs whose distance is within 1e-9 of their
        # cutoff are decided with a distance that is bitwise symmetric under
        # (i, j, S) -> (j, i, -S), so that every edge has its reverse.
        search = vesin.NeighborList(cutoff=rmax * (1 + 1e-9) + 1e-9, full_list=True)
        box = cell if pbc.any() else np.zeros((3, 3))
        i, j, shifts, lengths = search.compute(positions, box, pbc, quantities="ijSd")
        senders = i.astype(np.int64)
        receivers = j.astype(np.int64)
        shifts = shifts.astype(np.int64).reshape(-1, 3)
        limit = rmax if table is None else table[numbers[senders], numbers[receivers]]
        border = np.flatnonzero(np.abs(lengths - limit) <= 1e-9 * (1.0 + limit))
        if len(border):
            s, r = senders[border], receivers[border]
            vec = (positions[r] - positions[s]) + _shift_vectors(shifts[border], cell)
            lengths[border] = np.sqrt(np.einsum("ex,ex->e", vec, vec))
        keep = lengths < limit
        # (i, i, 0) is the node, never an edge.
        keep &= ~((senders == receivers) & ~shifts.any(axis=1))
        senders, receivers, shifts, lengths = (
            senders[keep],
            receivers[keep],
            shifts[keep],
            lengths[keep],
        )
        close = np.flatnonzero(lengths < min_distance)
        if len(close):
            e = close[np.argmin(lengths[close])]
            a, b = int(senders[e]), int(receivers[e])
            what = f"atoms {a} ({_symbol(numbers[a])}) and {b} ({_symbol(numbers[b])})"
            if a == b:
                what = f"atom {a} ({_symbol(numbers[a])}) and its own periodic image"
            raise ValueError(
                f"{what} are {lengths[e]:.3f} Angstrom apart (cell shift {shifts[e].tolist()}), "
                f"closer than min_distance={min_distance}; {len(close) // 2 or 1} such pair(s)"
            )
    # Sort by (sender, receiver, shift) through one mixed-radix key. The keys of the reversed
    # edges (j, i, -S) are the same set, so sorting them too pairs every edge with its reverse.
    span = int(np.abs(shifts).max(initial=0))
    key = block_keys(senders, receivers, shifts, n_node, span)
    order = np.argsort(key)
    senders, receivers, shifts, key = senders[order], receivers[order], shifts[order], key[order]
    reverse_key = block_keys(receivers, senders, -shifts, n_node, span)
    by_reverse = np.argsort(reverse_key)
    if not np.array_equal(reverse_key[by_reverse], key):
        # cannot happen with a symmetric cutoff; guard the invariant
        raise RuntimeError("the neighbour list is not symmetric: an edge has no reverse edge")
    reverse = np.empty(len(key), dtype=np.int64)
    reverse[by_reverse] = np.arange(len(key))
    if isolated == "error" and n_node:
        lonely = np.flatnonzero(np.bincount(senders, minlength=n_node) == 0)
        if len(lonely):
            a = int(lonely[0])
            raise ValueError(
                f"atom {a} ({_symbol(numbers[a])}) has no neighbour within the cutoff "
                f"({len(lonely)} isolated atom(s): {lonely[:10].tolist()})"
            )
    return Graph(
        numbers=numbers,
        positions=positions,
        cell=cell,
        pbc=pbc,
        senders=senders,
        receivers=receivers,
        shifts=shifts,
        reverse=reverse,
        cutoff=rmax,
    )


# ----------------------------------------------------------------------------- targets
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
        fold_edge: ``[n_edge]`` int, where :func:`fold_gamma` adds the edge's block: its own
            index (k-resolved reference: nothing is folded), the index of the representative
            edge of its atom pair, or -1 for an image of the sender itself (added to the
            sender's node block).
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


def _is_gamma_only(record) -> bool:
    """A periodic record that holds zero shifts only is a Gamma-point matrix."""
    return bool(np.asarray(record.pbc).any() and not np.asarray(record.shifts).any())


def multi_image_translations(structure, cutoff: float) -> tuple[float, ...]:
    """Lengths (Angstrom, rounded to 0.1, sorted) of the lattice translations of
    ``structure`` (periodic axes only) shorter than twice ``cutoff``.

    These are the translations under which two atoms, or an atom and itself, meet more than
    once within the cutoff: the images that a Gamma-point reference of this cell sums into one
    block (:func:`gather_targets`). Empty for a molecule and for a cell at least two cutoffs
    across along every periodic axis. Two cells with different translations fold differently,
    so a model trained on the Gamma-folded blocks of one has learnt its image blocks only as
    those sums and does not transfer to the other (:class:`hamjax.inference.Predictor` warns).
    """
    _, _, cell, pbc = _structure_arrays(structure)
    axes = np.flatnonzero(pbc)
    if not len(axes):
        return ()
    reach = 2.0 * float(cutoff)
    # multiples needed along each axis: the reach over the spacing of that axis' lattice planes
    reciprocal = np.linalg.inv(cell)  # cell @ reciprocal = 1: column k is normal to planes k
    counts = np.ceil(reach * np.linalg.norm(reciprocal[:, axes], axis=0)).astype(int)
    grids = np.meshgrid(*[np.arange(-n, n + 1) for n in counts], indexing="ij")
    multiples = np.stack([g.ravel() for g in grids], axis=1)  # [n, len(axes)]
    lengths = np.linalg.norm(multiples @ cell[axes], axis=1)
    keep = (lengths > 1e-9) & (lengths < reach)
    return tuple(float(v) for v in np.sort(np.round(lengths[keep], 1)))


def gamma_folded_cells(records, cutoff: float) -> list[tuple[float, ...]]:
    """The distinct :func:`multi_image_translations` of the Gamma-only periodic records among
    ``records`` that fold several images into a block (an empty list when none does)."""
    found = {multi_image_translations(r, cutoff) for r in records if _is_gamma_only(r)}
    return sorted(found - {()})


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
    :func:`fold_gamma`, which sums the predicted image blocks the same way. Images beyond the
    cutoff are not predicted, so the folded comparison is exact only to the size of the
    blocks beyond the cutoff.

    Args:
        graph: from :func:`build_graph` for the same structure, or a subgraph of it (a
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
            f"graph node {bad} is {_symbol(graph.numbers[bad])} but record atom "
            f"{node_index[bad]} is {_symbol(numbers[node_index[bad]])}"
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
        gamma_only = _is_gamma_only(record)

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


def fold_gamma(node_blocks, edge_blocks, senders, fold_edge, edge_mask=None):
    """Sum predicted image blocks onto the slots of a Gamma-only reference.

    ``folded_node[i] = node[i] + sum_{e: fold_edge[e] = -1, senders[e] = i} edge[e]`` and
    ``folded_edge[r] = sum_{e: fold_edge[e] = r} edge[e]``; with ``fold_edge = arange`` (a
    k-resolved reference) it returns its inputs. Works with numpy and JAX arrays (under jit
    and grad; padded batches from :mod:`hamjax.batching` included).

    Args:
        node_blocks: ``[n_node, M, M]``.
        edge_blocks: ``[n_edge, M, M]``.
        senders: ``[n_edge]`` int.
        fold_edge: ``[n_edge]`` int (:attr:`BlockTargets.fold_edge`).
        edge_mask: optional ``[n_edge]`` bool; masked edges (padding) add nothing, even NaN.

    Returns:
        ``(folded_node [n_node, M, M], folded_edge [n_edge, M, M])``; compare them with the
        reference where ``node_mask`` / ``edge_mask`` of the targets hold.
    """
    import jax
    import jax.numpy as jnp

    n_node, n_edge = node_blocks.shape[0], edge_blocks.shape[0]
    to_node = fold_edge < 0
    if edge_mask is not None:
        edge_blocks = jnp.where(edge_mask[:, None, None], edge_blocks, 0)
    zero = jnp.zeros_like(edge_blocks)
    node_part = jnp.where(to_node[:, None, None], edge_blocks, zero)
    edge_part = jnp.where(to_node[:, None, None], zero, edge_blocks)
    target = jnp.where(to_node, jnp.arange(n_edge), fold_edge)
    folded_node = node_blocks + jax.ops.segment_sum(
        node_part, senders, num_segments=n_node, mode="drop"
    )
    folded_edge = jax.ops.segment_sum(edge_part, target, num_segments=n_edge, mode="drop")
    return folded_node, folded_edge
