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

Neighbour search uses vesin, a maintained cell-list library, chosen by measurement against
matscipy and ase.neighborlist (``docs/benchmarks.md``).

Reference blocks from a :class:`~hamjax.blocks.BlockHamiltonian` are gathered onto the graph by
:func:`hamjax.targets.gather_targets`; :mod:`hamjax.folding` sums predicted image blocks for
comparison with Gamma-point-only references.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import vesin

from hamjax.basis import Basis, element_number, element_symbol
from hamjax.blocks import block_keys

__all__ = [
    "Graph",
    "build_graph",
    "reverse_index",
    "structure_arrays",
    "PADDING_EDGE_VECTOR",
]

#: Edge vector (Angstrom) that every padded edge gets (see :mod:`hamjax.batching`): padded edges
#: join a padding node to itself, so ``shift_vectors`` alone sets their vector. A fixed non-zero
#: vector keeps norms, spherical harmonics and their gradients finite on padding.
PADDING_EDGE_VECTOR = (0.0, 0.0, 1.0)


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
        import jraph  # imports jax, which building a graph on the host does not need

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


def structure_arrays(atoms) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(numbers [n] int64, positions [n, 3], cell [3, 3], pbc [3] bool)`` (Angstrom) of an
    ``ase.Atoms`` or of anything with those attributes (a ``BlockHamiltonian``); raises
    ValueError for mismatched shapes or a non-finite position."""
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
                    f"no cutoff for element pair {element_symbol(a)}-{element_symbol(b)}; the "
                    f"structure has {[element_symbol(z) for z in present]}"
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
    numbers, positions, cell, pbc = structure_arrays(atoms)
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
            what = (
                f"atoms {a} ({element_symbol(numbers[a])}) and {b} ({element_symbol(numbers[b])})"
            )
            if a == b:
                what = f"atom {a} ({element_symbol(numbers[a])}) and its own periodic image"
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
                f"atom {a} ({element_symbol(numbers[a])}) has no neighbour within the cutoff "
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
