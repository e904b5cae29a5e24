"""Augmented partitioning: slices of a structure along one axis, each with a halo of atoms.

A structure too large for one training step is cut into slabs ("slices") along one axis. A
slice's subgraph holds its own atoms plus halo atoms, chosen so that the outputs the loss
counts ("labelled" nodes and edges) equal those of the full graph. Halos are measured in graph
hops (one hop = one edge = at most one cutoff), which is exactly the receptive field of
message passing and never larger than a geometric halo of the same number of cutoffs.

Receptive field. With ``n_layers`` rounds of message passing (a node is updated from its
incoming edges and their senders), the final features of a node depend on the edges whose
receiver lies within ``n_layers - 1`` hops of it and on the nodes within ``n_layers`` hops.
An edge output ``(i, j, shift)`` depends on the final features of ``i`` and ``j`` and on the
edge itself (and on its reverse edge, which has the same geometry). A subgraph with the nodes
within ``depth`` hops of the slice and every edge whose receiver lies within ``depth - 1``
hops therefore reproduces the full graph's final features on every node within
``depth - n_layers`` hops of the slice.

Modes:

* ``"paper"`` (the published scheme, ``depth = n_layers``; one cutoff of halo for one layer):
  with one layer the halo atoms are the atoms within one cutoff of a slice atom and the
  edges are the one-way edges halo -> slice plus the slice-slice edges. Labelled: slice
  nodes and slice-slice edges. Edges between the slice and its halo are never trained, and
  slice-by-slice inference cannot predict them.
* ``"exact"`` (``depth = n_layers + 1``; two cutoffs of halo for one layer): every node within
  one hop of the slice has exact features, so every edge with at least one end in the slice
  is exact. Labelled: slice nodes and the edges whose *sender* is a slice atom, so over all
  slices every node and every directed edge is labelled exactly once, and predictions of the
  labelled items of all slices, stitched together (:func:`stitch`), equal full-graph
  inference.

Slice coordinate. ``axis`` names a lattice vector. The coordinate of an atom is its distance
(Angstrom) from the plane of the two other lattice vectors: ``frac[axis] * spacing`` with
``spacing = 1 / |b_axis|`` the distance between lattice planes (``b`` the reciprocal vectors
without 2 pi). For a cell that is not full rank (a molecule) the Cartesian coordinate
``positions[:, axis]`` is used instead.

Periodic wrap-around. Along a periodic axis the coordinate is wrapped into ``[0, spacing)``
and the cell is split into slices of equal width, so the first and the last slice are
neighbours across the boundary. Halos are found by walking graph edges, and edges carry
their cell shifts, so a halo crosses the boundary by itself: the halo of the first slice
holds atoms of the last slice, reached through edges with a non-zero shift. A subgraph keeps
the global positions, cell and shifts, so every edge vector equals the full graph's. An atom
is one node even when two of its images lie in a halo (the edges to both images are kept,
each with its own shift), which is what periodicity means. When a halo is wider than the
cell the subgraph simply contains the whole periodic graph.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from hamjax.graph import Graph
from hamjax.targets import BlockTargets, gather_targets

__all__ = [
    "Slice",
    "assign_slices",
    "hop_distance",
    "partition",
    "slice_coordinates",
    "slice_targets",
    "stitch",
]

MODES = ("paper", "exact")


@dataclass(frozen=True, eq=False)
class Slice:
    """One slice of a partition.

    Attributes:
        graph: the subgraph (local node and edge indices; global positions, cell, shifts).
        node_index: ``[n_sub_node]`` global index of every subgraph node.
        edge_index: ``[n_sub_edge]`` global index of every subgraph edge.
        node_label: ``[n_sub_node]`` bool, nodes the loss counts (the slice's own atoms).
        edge_label: ``[n_sub_edge]`` bool, edges the loss counts.
        hops: ``[n_sub_node]`` graph distance of every node from the slice (0 inside).
        index: slice number.
        bounds: ``(low, high)`` of the slice coordinate, Angstrom.
        mode: "paper" or "exact".
    """

    graph: Graph
    node_index: np.ndarray
    edge_index: np.ndarray
    node_label: np.ndarray
    edge_label: np.ndarray
    hops: np.ndarray
    index: int
    bounds: tuple[float, float]
    mode: str


def _full_rank(cell: np.ndarray) -> bool:
    scale = max(float(np.abs(cell).max(initial=0.0)), 1e-300)
    return abs(np.linalg.det(cell)) > 1e-10 * scale**3


def slice_coordinates(graph: Graph, axis: int) -> tuple[np.ndarray, float | None]:
    """Coordinate of every atom along ``axis`` (Angstrom) and the period (or None).

    See the module docstring for the definition; the period is the lattice-plane spacing
    when the axis is periodic.
    """
    if axis not in (0, 1, 2):
        raise ValueError(f"axis must be 0, 1 or 2, got {axis}")
    cell = np.asarray(graph.cell, dtype=float)
    if not _full_rank(cell):
        if graph.pbc[axis]:
            raise ValueError("a periodic axis needs a full-rank cell to slice along it")
        return graph.positions[:, axis].copy(), None
    reciprocal = np.linalg.inv(cell).T  # rows b_k with a_i . b_k = delta_ik
    spacing = 1.0 / np.linalg.norm(reciprocal[axis])
    frac = graph.positions @ reciprocal[axis]
    if graph.pbc[axis]:
        frac = frac - np.floor(frac)
        frac[frac >= 1.0] = 0.0  # -1e-17 wraps to exactly 1.0 in floating point
        return frac * spacing, float(spacing)
    return frac * spacing, None


def assign_slices(
    graph: Graph, axis: int, *, width: float | None = None, n_slices: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Slice number of every atom and the slice boundaries.

    Args:
        graph: the full graph.
        axis: lattice vector to slice along.
        width: wanted slice width (Angstrom); the count is ``ceil(extent / width)`` and the
            slices are equally wide (so at most ``width``).
        n_slices: number of slices instead of ``width``.

    Returns:
        ``(slice_of_node [n_node] int, edges [n_slices + 1] Angstrom)``.
    """
    if (width is None) == (n_slices is None):
        raise ValueError("give exactly one of width (Angstrom) and n_slices")
    coord, period = slice_coordinates(graph, axis)
    if period is not None:
        low, high = 0.0, period
    else:
        low = float(coord.min(initial=0.0))
        high = float(coord.max(initial=0.0))
    extent = high - low
    if n_slices is None:
        if not width > 0:
            raise ValueError(f"slice width must be positive (Angstrom), got {width}")
        n_slices = max(1, math.ceil(extent / width - 1e-9))
    if n_slices < 1:
        raise ValueError(f"n_slices must be >= 1, got {n_slices}")
    bounds = low + extent * np.arange(n_slices + 1) / n_slices
    if extent == 0:
        return np.zeros(graph.n_node, dtype=np.int64), bounds
    which = np.floor((coord - low) / extent * n_slices).astype(np.int64)
    return np.clip(which, 0, n_slices - 1), bounds


def _adjacency(graph: Graph) -> sp.csr_matrix:
    n = graph.n_node
    ones = np.ones(graph.n_edge, dtype=np.float32)
    a = sp.csr_matrix((ones, (graph.senders, graph.receivers)), shape=(n, n))
    a.data[:] = 1.0  # duplicates (several images of a pair) were summed
    return a.T.tocsr()  # row j lists the senders of edges into j


def hop_distance(graph: Graph, sources: np.ndarray, max_hops: int, adjacency=None) -> np.ndarray:
    """Graph distance (edges walked) from the ``sources`` nodes, up to ``max_hops``.

    Args:
        graph: a graph (edges come in both directions, so the distance is symmetric).
        sources: ``[n_node]`` bool.
        max_hops: stop after this many hops.
        adjacency: optional precomputed ``_adjacency(graph)``.

    Returns:
        ``[n_node]`` int: hops from the nearest source, ``-1`` beyond ``max_hops``.
    """
    a = _adjacency(graph) if adjacency is None else adjacency
    dist = np.where(sources, 0, -1).astype(np.int64)
    frontier = np.asarray(sources, dtype=np.float32)
    for hop in range(1, max_hops + 1):
        reached = (a @ frontier) > 0
        new = reached & (dist < 0)
        if not new.any():
            break
        dist[new] = hop
        frontier = new.astype(np.int8)
    return dist


def partition(
    graph: Graph,
    axis: int = 0,
    *,
    width: float | None = None,
    n_slices: int | None = None,
    mode: str = "exact",
    n_layers: int = 1,
) -> list[Slice]:
    """Cut ``graph`` into slices with halos (see the module docstring).

    Args:
        graph: the full graph (:func:`hamjax.graph.build_graph`).
        axis: lattice vector to slice along (transport axis of a device: 0).
        width: slice width in Angstrom, or
        n_slices: the number of slices.
        mode: "exact" (halo of ``n_layers + 1`` hops; every edge labelled once) or "paper"
            (halo of ``n_layers`` hops; slice nodes and slice-slice edges labelled).
        n_layers: message-passing layers of the model (the paper uses 1).

    Returns:
        One :class:`Slice` per non-empty slice (an empty slice, e.g. in vacuum, is skipped).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1, got {n_layers}")
    depth = n_layers + 1 if mode == "exact" else n_layers
    which, bounds = assign_slices(graph, axis, width=width, n_slices=n_slices)
    adjacency = _adjacency(graph)
    local_edge = np.full(graph.n_edge, -1, dtype=np.int64)
    slices = []
    for k in range(len(bounds) - 1):
        inside = which == k
        if not inside.any():
            continue
        dist = hop_distance(graph, inside, depth, adjacency)
        node_index = np.flatnonzero(dist >= 0)
        recv_hops = dist[graph.receivers]
        edge_index = np.flatnonzero((recv_hops >= 0) & (recv_hops <= depth - 1))
        local_node = np.full(graph.n_node, -1, dtype=np.int64)
        local_node[node_index] = np.arange(len(node_index))
        local_edge[edge_index] = np.arange(len(edge_index))
        senders = local_node[graph.senders[edge_index]]
        receivers = local_node[graph.receivers[edge_index]]
        reverse = local_edge[graph.reverse[edge_index]]
        reverse = np.where(reverse >= 0, reverse, np.arange(len(edge_index)))
        local_edge[edge_index] = -1
        sub = Graph(
            numbers=graph.numbers[node_index],
            positions=graph.positions[node_index],
            cell=graph.cell,
            pbc=graph.pbc,
            senders=senders,
            receivers=receivers,
            shifts=graph.shifts[edge_index],
            reverse=reverse,
            cutoff=graph.cutoff,
        )
        hops = dist[node_index]
        node_label = hops == 0
        if mode == "exact":
            edge_label = hops[senders] == 0
        else:
            edge_label = (hops[senders] == 0) & (hops[receivers] == 0)
        slices.append(
            Slice(
                graph=sub,
                node_index=node_index,
                edge_index=edge_index,
                node_label=node_label,
                edge_label=edge_label,
                hops=hops,
                index=k,
                bounds=(float(bounds[k]), float(bounds[k + 1])),
                mode=mode,
            )
        )
    return slices


def slice_targets(source, piece: Slice, **kwargs) -> BlockTargets:
    """Reference blocks of a slice's subgraph; masks keep only the labelled items.

    Args:
        source: the full graph's :class:`~hamjax.targets.BlockTargets`, or the
            :class:`~hamjax.blocks.BlockHamiltonian` record itself (then only the slice's
            blocks are gathered, which saves the memory of the full dense blocks).
        piece: the slice.
        **kwargs: passed to :func:`hamjax.targets.gather_targets` with a record.

    Gamma folding (``fold_edge``) refers to local edge indices; all images of a labelled
    pair share its sender and receiver, so they are in the subgraph in both modes.
    """
    if not isinstance(source, BlockTargets):
        t = gather_targets(
            piece.graph,
            source,
            node_index=piece.node_index,
            node_select=piece.node_label,
            edge_select=piece.edge_label,
            **kwargs,
        )
        return dataclasses.replace(
            t, node_mask=t.node_mask & piece.node_label, edge_mask=t.edge_mask & piece.edge_label
        )
    targets = source
    node_index, edge_index = piece.node_index, piece.edge_index
    local = np.full(len(targets.fold_edge), -2, dtype=np.int64)
    local[edge_index] = np.arange(len(edge_index))
    fold_global = targets.fold_edge[edge_index]
    fold = np.where(fold_global < 0, -1, local[np.maximum(fold_global, 0)])
    missing = fold == -2
    edge_mask = targets.edge_mask[edge_index] & piece.edge_label
    if (missing & piece.edge_label).any():
        raise RuntimeError("a labelled edge's folding partner is outside its slice")
    fold = np.where(missing, np.arange(len(edge_index)), fold)

    def take(x, index):
        return None if x is None else x[index]

    return BlockTargets(
        node_hamiltonian=targets.node_hamiltonian[node_index],
        edge_hamiltonian=targets.edge_hamiltonian[edge_index],
        orbital_mask=targets.orbital_mask[node_index],
        node_mask=targets.node_mask[node_index] & piece.node_label,
        edge_mask=edge_mask,
        fold_edge=fold,
        node_overlap=take(targets.node_overlap, node_index),
        edge_overlap=take(targets.edge_overlap, edge_index),
        gamma_only=targets.gamma_only,
    )


def stitch(
    slices: Sequence[Slice],
    node_values: Sequence[np.ndarray],
    edge_values: Sequence[np.ndarray],
    n_node: int,
    n_edge: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Assemble full-graph arrays from the labelled outputs of every slice.

    Args:
        slices: the partition.
        node_values, edge_values: per slice, ``[n_sub_node, ...]`` and ``[n_sub_edge, ...]``
            (e.g. predicted blocks on the subgraph, padding removed).
        n_node, n_edge: sizes of the full graph.

    Returns:
        ``(nodes [n_node, ...], edges [n_edge, ...])``. With an "exact" partition every node and
        edge is written exactly once; with a "paper" partition the unlabelled (cross-slice)
        edges stay zero. Raises if an item would be written twice.
    """
    nodes = edges = None
    node_seen = np.zeros(n_node, dtype=bool)
    edge_seen = np.zeros(n_edge, dtype=bool)
    for piece, nv, ev in zip(slices, node_values, edge_values, strict=True):
        nv, ev = np.asarray(nv), np.asarray(ev)
        if nodes is None:
            nodes = np.zeros((n_node,) + nv.shape[1:], dtype=nv.dtype)
            edges = np.zeros((n_edge,) + ev.shape[1:], dtype=ev.dtype)
        gn = piece.node_index[piece.node_label]
        ge = piece.edge_index[piece.edge_label]
        if node_seen[gn].any() or edge_seen[ge].any():
            raise ValueError(f"slice {piece.index} labels items already labelled elsewhere")
        node_seen[gn] = True
        edge_seen[ge] = True
        nodes[gn] = nv[: len(piece.node_index)][piece.node_label]
        edges[ge] = ev[: len(piece.edge_index)][piece.edge_label]
    return nodes, edges
