"""Exact tiles: a structure cut along one, two or three lattice vectors, each piece with the
halo that exact inference needs, built without the graph of the whole structure.

:func:`hamjax.partition.partition` (mode "exact") cuts a graph into slabs along one axis; it
needs the graph of the whole structure first, and a slab of a wide device holds its whole
cross-section plus a halo on both sides, so neither is bounded when the structure grows
sideways. A *tile* here is the set of atoms in one bin along each cut lattice vector (the
bins of :func:`hamjax.partition.assign_slices`, a box for an orthogonal cell); its subgraph
is the one the exact partition gives a slice, by the same rule:

* nodes: the atoms within ``depth = n_layers + 1`` graph hops of the tile;
* edges: every edge whose receiver lies within ``depth - 1`` hops;
* labelled: the tile's own atoms and the edges they send.

Every node and every directed edge is labelled in exactly one tile, and a labelled item has
its complete receptive field, so the stitched prediction equals full-graph inference. With
one cut axis the tiles *are* the slices of :func:`~hamjax.partition.partition` (same nodes,
edges, order and labels; a test checks it).

No full graph. A path of ``k`` hops moves at most ``k`` cutoffs, and the distance between
two atoms is at least the difference of their slice coordinates (distances from a lattice
plane, :func:`~hamjax.partition.slice_coordinates`, taken modulo the period along a periodic
axis). So every atom within ``depth`` hops of a tile lies in its *region*: the atoms whose
coordinate along every cut axis is within ``depth * cutoff`` of the tile's bin. The graph
built on the region's atoms alone (same cell and periodicity: :func:`build_graph` finds
exactly the edges of the full graph between them, across periodic images too) gives every
hop count up to ``depth`` exactly, and the tile's subgraph is cut from it. Memory and time
per tile are set by the tile and its halo, not by the structure.

The price is the halo: the edges whose outputs a tile computes and throws away. A tile of
width ``w`` along each of ``d`` cut axes computes about ``((w + 2 n_layers r_c) / w) ** d``
times its own edges (:attr:`TilePlan.cost` counts the atoms in that edge region).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hamjax.basis import Basis
from hamjax.graph import Graph, build_graph, structure_arrays
from hamjax.partition import assign_slices, hop_distance, slice_coordinates

__all__ = [
    "Structure",
    "Tile",
    "TilePlan",
    "Tiling",
    "build_tile",
    "iter_tiles",
    "labelled_blocks",
    "normalize_widths",
]


@dataclass(frozen=True, eq=False)
class Structure:
    """The geometry of a structure as arrays (what :func:`build_graph` reads).

    Attributes:
        numbers: ``[n]`` atomic numbers.
        positions: ``[n, 3]`` Angstrom.
        cell: ``[3, 3]`` lattice vectors as rows, Angstrom.
        pbc: ``[3]`` periodic directions.
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray

    @classmethod
    def of(cls, atoms) -> Structure:
        """From an ``ase.Atoms``, a :class:`~hamjax.blocks.BlockHamiltonian` or a Structure."""
        return cls(*structure_arrays(atoms))

    def __len__(self) -> int:
        return len(self.numbers)

    def subset(self, index: np.ndarray) -> Structure:
        """The atoms ``index`` (same cell and periodicity)."""
        return Structure(self.numbers[index], self.positions[index], self.cell, self.pbc)


def normalize_widths(widths) -> tuple[float | None, float | None, float | None]:
    """Tile widths per lattice vector (Angstrom): ``None`` or ``0`` leaves an axis whole.

    Accepts a sequence of three numbers or a mapping ``{axis: width}``.
    """
    if isinstance(widths, dict):
        bad = [a for a in widths if a not in (0, 1, 2)]
        if bad:
            raise ValueError(f"tile widths: axes must be 0, 1 or 2, got {bad}")
        widths = [widths.get(a) for a in range(3)]
    widths = list(widths)
    if len(widths) != 3:
        raise ValueError(f"tile widths: give one width per lattice vector (3), got {widths}")
    out = []
    for axis, w in enumerate(widths):
        if w is None or float(w) == 0.0:
            out.append(None)
        elif not float(w) > 0:
            raise ValueError(f"tile width along axis {axis} must be positive, got {w}")
        else:
            out.append(float(w))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class TilePlan:
    """One tile before its graph is built (cheap: positions only).

    Attributes:
        number: position in :meth:`Tiling.plans` (tiles in row-major bin order).
        bins: bin along each lattice vector (0 along an axis that is not cut).
        owned: ``[n_owned]`` global indices of the tile's own atoms (ascending).
        cost: atoms within ``n_layers`` cutoffs of the tile (ascending order of work: the
            tile's subgraph has about ``cost * mean degree`` edges).
    """

    number: int
    bins: tuple[int, int, int]
    owned: np.ndarray
    cost: int


class Tiling:
    """Bins of a structure along the cut lattice vectors, and the halo regions of its tiles.

    Args:
        structure: the structure (anything :meth:`Structure.of` takes).
        widths: tile width per lattice vector (:func:`normalize_widths`).
        cutoff: the model's cutoff, Angstrom.
        n_layers: message-passing layers of the model.
    """

    def __init__(self, structure, widths, *, cutoff: float, n_layers: int):
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive (Angstrom), got {cutoff}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        self.structure = Structure.of(structure)
        self.widths = normalize_widths(widths)
        self.cutoff = float(cutoff)
        self.n_layers = int(n_layers)
        s = self.structure
        # a graph without edges: the slice coordinates and bins of hamjax.partition need
        # only the geometry
        empty = np.zeros(0, dtype=np.int64)
        bare = Graph(
            numbers=s.numbers,
            positions=s.positions,
            cell=s.cell,
            pbc=s.pbc,
            senders=empty,
            receivers=empty,
            shifts=np.zeros((0, 3), dtype=np.int64),
            reverse=empty,
            cutoff=self.cutoff,
        )
        n = len(s)
        self.axes = [a for a in range(3) if self.widths[a] is not None]
        self.bin_of = np.zeros((n, 3), dtype=np.int64)
        self.n_bins = [1, 1, 1]
        self._coord: dict[int, tuple[np.ndarray, float | None, np.ndarray]] = {}
        for axis in self.axes:
            which, bounds = assign_slices(bare, axis, width=self.widths[axis])
            coord, period = slice_coordinates(bare, axis)
            self.bin_of[:, axis] = which
            self.n_bins[axis] = len(bounds) - 1
            self._coord[axis] = (coord, period, bounds)
        self.tile_of = np.ravel_multi_index(self.bin_of.T, self.n_bins) if n else empty
        self._plans: list[TilePlan] | None = None

    def _near(self, axis: int, k: int, halo: float) -> np.ndarray:
        """Atoms whose coordinate along ``axis`` is within ``halo`` of bin ``k``."""
        coord, period, bounds = self._coord[axis]
        low, high = bounds[k], bounds[k + 1]
        if period is None:
            gap = np.maximum(np.maximum(low - coord, coord - high), 0.0)
        else:
            gap = np.full(len(coord), np.inf)
            for image in (-period, 0.0, period):
                c = coord + image
                gap = np.minimum(gap, np.maximum(np.maximum(low - c, c - high), 0.0))
        return gap <= halo

    def region(self, bins: Sequence[int], halo: float) -> np.ndarray:
        """Global indices (ascending) of the atoms within ``halo`` Angstrom of a tile's bins
        along every cut axis (a superset of the atoms within ``halo`` of the tile)."""
        mask = np.ones(len(self.structure), dtype=bool)
        for axis in self.axes:
            mask &= self._near(axis, int(bins[axis]), halo)
        return np.flatnonzero(mask)

    @property
    def halo(self) -> float:
        """Halo of a tile's graph region, Angstrom: ``(n_layers + 1)`` cutoffs (a hair more)."""
        return (self.n_layers + 1) * self.cutoff * (1 + 1e-9) + 1e-6

    def plans(self) -> list[TilePlan]:
        """The non-empty tiles, in row-major bin order (computed once)."""
        if self._plans is None:
            order = np.argsort(self.tile_of, kind="stable")
            ids, starts = np.unique(self.tile_of[order], return_index=True)
            groups = np.split(order, starts[1:]) if len(order) else []
            edge_halo = self.n_layers * self.cutoff * (1 + 1e-9) + 1e-6
            plans = []
            for number, (tile, owned) in enumerate(zip(ids.tolist(), groups, strict=True)):
                bins = tuple(int(b) for b in np.unravel_index(tile, self.n_bins))
                cost = len(self.region(bins, edge_halo))
                plans.append(TilePlan(number, bins, np.sort(owned), cost))
            self._plans = plans
        return self._plans


@dataclass(frozen=True, eq=False)
class Tile:
    """A tile's subgraph, as :class:`hamjax.partition.Slice` has it for a slice.

    Attributes:
        plan: the :class:`TilePlan`.
        graph: the subgraph (local indices; global positions, cell and shifts).
        node_index: ``[n_sub_node]`` global atom index of every node.
        node_label: ``[n_sub_node]`` the tile's own atoms.
        edge_label: ``[n_sub_edge]`` the edges whose sender is the tile's own.
        hops: ``[n_sub_node]`` graph distance from the tile (0 inside).
        region_atoms: atoms of the region the subgraph was cut from.
    """

    plan: TilePlan
    graph: Graph
    node_index: np.ndarray
    node_label: np.ndarray
    edge_label: np.ndarray
    hops: np.ndarray
    region_atoms: int


def build_tile(tiling: Tiling, plan: TilePlan, *, basis: Basis | None = None) -> Tile:
    """The subgraph of one tile (see the module docstring), from its region's atoms only."""
    depth = tiling.n_layers + 1
    region = tiling.region(plan.bins, tiling.halo)
    local = build_graph(tiling.structure.subset(region), tiling.cutoff, basis=basis)
    inside = tiling.tile_of[region] == tiling.tile_of[plan.owned[0]]
    dist = hop_distance(local, inside, depth)
    keep = np.flatnonzero(dist >= 0)
    recv_hops = dist[local.receivers]
    edges = np.flatnonzero((recv_hops >= 0) & (recv_hops <= depth - 1))
    local_node = np.full(local.n_node, -1, dtype=np.int64)
    local_node[keep] = np.arange(len(keep))
    local_edge = np.full(local.n_edge, -1, dtype=np.int64)
    local_edge[edges] = np.arange(len(edges))
    senders = local_node[local.senders[edges]]
    receivers = local_node[local.receivers[edges]]
    reverse = local_edge[local.reverse[edges]]
    reverse = np.where(reverse >= 0, reverse, np.arange(len(edges)))
    graph = Graph(
        numbers=local.numbers[keep],
        positions=local.positions[keep],
        cell=local.cell,
        pbc=local.pbc,
        senders=senders,
        receivers=receivers,
        shifts=local.shifts[edges],
        reverse=reverse,
        cutoff=local.cutoff,
    )
    hops = dist[keep]
    return Tile(
        plan=plan,
        graph=graph,
        node_index=region[keep],
        node_label=hops == 0,
        edge_label=hops[senders] == 0,
        hops=hops,
        region_atoms=len(region),
    )


def iter_tiles(
    tiling: Tiling, plans: Sequence[TilePlan], *, basis: Basis | None = None
) -> Iterator[Tile]:
    """:func:`build_tile` for each plan, one at a time."""
    for plan in plans:
        yield build_tile(tiling, plan, basis=basis)


def labelled_blocks(
    tile: Tile, node_blocks: np.ndarray, edge_blocks: np.ndarray, orbital_counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled blocks of a tile in the order of a block record.

    Args:
        tile: the tile.
        node_blocks, edge_blocks: ``[>= n_sub_node, M, M]`` and ``[>= n_sub_edge, M, M]``
            predicted blocks of its subgraph (padding after them is ignored).
        orbital_counts: ``[n_atoms]`` orbitals of every atom of the whole structure.

    Returns:
        ``(pairs [B, 2], shifts [B, 3], values [V])``: the on-site blocks ``(i, i, 0)`` of the
        tile's atoms and the blocks of the edges they send, sorted by ``(i, j, shift)`` as in
        :func:`hamjax.inference.blocks_to_record`, and their orbital entries, block by block,
        row-major (the layout of :class:`~hamjax.blocks.BlockHamiltonian`), in the blocks'
        dtype.
    """
    g, index = tile.graph, tile.node_index
    nodes = np.flatnonzero(tile.node_label)
    edges = np.flatnonzero(tile.edge_label)
    first = np.concatenate([index[nodes], index[g.senders[edges]]])
    second = np.concatenate([index[nodes], index[g.receivers[edges]]])
    shifts = np.concatenate([np.zeros((len(nodes), 3), np.int64), g.shifts[edges]])
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], second, first))
    first, second, shifts = first[order], second[order], shifts[order]
    blocks = np.concatenate([np.asarray(node_blocks)[nodes], np.asarray(edge_blocks)[edges]])
    blocks = blocks[order]
    m = blocks.shape[-1]
    orbitals = np.arange(m)[None, :] < np.asarray(orbital_counts)[:, None]  # [n_atoms, M]
    mask = orbitals[first][:, :, None] & orbitals[second][:, None, :]
    pairs = np.stack([first, second], axis=1).astype(np.int64)
    return pairs, shifts.astype(np.int64), blocks[mask]
