"""Padded batches with few shapes, so that jit compiles a handful of times, not per structure.

Graphs (and their reference blocks) are concatenated on the host (numpy) and padded to a
budget ``(n_node, n_edge, n_graph)`` taken from a small ladder of sizes (powers of two by
default, or a finer geometric ladder such as 1.25x). Padding follows jraph: the real graphs come
first, the last graph is the padding graph holding every padded node and edge, padded edges
join the first padded node to itself (so ``n_node`` needs at least one spare node), and
graphs beyond the padding graph are empty. Explicit masks (``nodes["mask"]``,
``edges["mask"]``, ``globals["mask"]``) say what is real.

Padded edges are harmless by construction: their ``shift_vectors`` are
:data:`hamjax.graph.PADDING_EDGE_VECTOR` (1 Angstrom along z) and both ends sit on the same
padding node, so their edge vector ``positions[r] + shift_vector - positions[s]`` is that fixed
non-zero vector: norms, normalised spherical harmonics and their gradients stay finite. A model
must still (1) multiply radial weights / messages by ``edges["mask"]`` and (2) use the
double-``where`` pattern wherever a real zero-length vector could occur::

    safe = jnp.where(mask[:, None], vectors, 1.0)          # no zero vector enters the norm
    length = jnp.where(mask, jnp.linalg.norm(safe, axis=-1), 0.0)

so that a NaN in a masked branch never reaches a gradient (``where`` only zeros the value of
the masked branch; its derivative is still multiplied by zero, and ``0 * NaN = NaN``).

Batch targets are a dict of numpy arrays padded the same way (blocks zero, masks False); the
indices in ``fold_edge`` are offset like ``reverse``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import jax
import jraph
import numpy as np

from hamjax.graph import PADDING_EDGE_VECTOR, Graph
from hamjax.targets import BlockTargets

__all__ = [
    "Budget",
    "batch_graphs",
    "budget_for",
    "count_shapes",
    "ladder_size",
    "pack",
    "shape_signature",
]


@dataclass(frozen=True, order=True)
class Budget:
    """Padded sizes of a batch (static, hashable).

    Attributes:
        n_node: total nodes including at least one padding node.
        n_edge: total edges including padding.
        n_graph: total graphs including the padding graph.
    """

    n_node: int
    n_edge: int
    n_graph: int


def ladder_size(n: int, *, growth: float = 2.0, minimum: int = 8, multiple: int = 8) -> int:
    """Smallest rung ``>= n`` of the ladder ``ceil(minimum * growth**k / multiple) * multiple``.

    >>> ladder_size(100), ladder_size(100, growth=1.25)
    (128, 120)
    """
    if growth <= 1:
        raise ValueError(f"growth must be > 1, got {growth}")
    size, k = minimum, 0
    while True:
        size = int(math.ceil(minimum * growth**k / multiple) * multiple)
        if size >= n:
            return size
        k += 1


def budget_for(
    n_node: int, n_edge: int, n_graph: int = 1, *, growth: float = 2.0, minimum: int = 8
) -> Budget:
    """Bucketed budget for real totals: each size rounded up to the ladder.

    One spare node and one spare graph (the padding graph) are added before rounding.
    Over a dataset the number of distinct budgets is at most the product of the rungs each
    size visits (in practice a handful; :func:`count_shapes` measures it).
    """
    return Budget(
        n_node=ladder_size(n_node + 1, growth=growth, minimum=minimum),
        n_edge=ladder_size(max(n_edge, 1), growth=growth, minimum=minimum),
        n_graph=ladder_size(n_graph + 1, growth=growth, minimum=2, multiple=1),
    )


def _as_graph(g) -> Graph:
    if isinstance(g, Graph):
        return g
    raise TypeError(f"expected a hamjax.graph.Graph, got {type(g).__name__}")


def batch_graphs(
    graphs: Sequence[Graph],
    targets: Sequence[BlockTargets] | None = None,
    budget: Budget | None = None,
    *,
    growth: float = 2.0,
    dtype=np.float64,
):
    """Concatenate graphs (and targets) and pad them to a budget (host side, numpy).

    Args:
        graphs: :class:`~hamjax.graph.Graph` objects (a partition slice's ``graph`` too).
        targets: matching :class:`~hamjax.targets.BlockTargets` (all with the same ``M``), or
            None.
        budget: padded sizes; default :func:`budget_for` the totals with ``growth``. A
            budget too small raises ValueError (nothing is silently dropped).
        dtype: float dtype of positions, vectors and blocks.

    Returns:
        ``(graphs_tuple, batch_targets)``: a ``jraph.GraphsTuple`` in hamjax's layout (plus
        ``globals = {"mask": [n_graph] bool}``) and a dict with ``node_hamiltonian``,
        ``edge_hamiltonian`` (``[n_node|n_edge, M, M]``), ``node_overlap``, ``edge_overlap``
        (or absent), ``orbital_mask`` ``[n_node, M]``, ``node_mask``, ``edge_mask``,
        ``fold_edge``; None without targets. Target masks are False on padding.
    """
    graphs = [_as_graph(g) for g in graphs]
    if not graphs:
        raise ValueError("batch_graphs needs at least one graph")
    n_nodes = np.array([g.n_node for g in graphs])
    n_edges = np.array([g.n_edge for g in graphs])
    tot_node, tot_edge, n_real = int(n_nodes.sum()), int(n_edges.sum()), len(graphs)
    if budget is None:
        budget = budget_for(tot_node, tot_edge, n_real, growth=growth)
    if tot_node + 1 > budget.n_node or tot_edge > budget.n_edge or n_real + 1 > budget.n_graph:
        raise ValueError(
            f"batch of {n_real} graphs, {tot_node} nodes, {tot_edge} edges does not fit "
            f"{budget} (needs a spare node and a spare graph for padding)"
        )
    node_off = np.concatenate([[0], np.cumsum(n_nodes)[:-1]])
    edge_off = np.concatenate([[0], np.cumsum(n_edges)[:-1]])
    pad_node = tot_node  # first padding node: all padded edges point here

    species = np.zeros(budget.n_node, dtype=np.int32)
    positions = np.zeros((budget.n_node, 3), dtype=dtype)
    node_mask = np.zeros(budget.n_node, dtype=bool)
    senders = np.full(budget.n_edge, pad_node, dtype=np.int32)
    receivers = np.full(budget.n_edge, pad_node, dtype=np.int32)
    shift_vectors = np.tile(np.asarray(PADDING_EDGE_VECTOR, dtype=dtype), (budget.n_edge, 1))
    shifts = np.zeros((budget.n_edge, 3), dtype=np.int32)
    reverse = np.arange(budget.n_edge, dtype=np.int32)
    edge_mask = np.zeros(budget.n_edge, dtype=bool)
    for g, no, eo in zip(graphs, node_off, edge_off, strict=True):
        nn, ne = g.n_node, g.n_edge
        species[no : no + nn] = g.numbers
        positions[no : no + nn] = g.positions
        node_mask[no : no + nn] = True
        senders[eo : eo + ne] = g.senders + no
        receivers[eo : eo + ne] = g.receivers + no
        shift_vectors[eo : eo + ne] = g.shift_vectors
        shifts[eo : eo + ne] = g.shifts
        reverse[eo : eo + ne] = g.reverse + eo
        edge_mask[eo : eo + ne] = True
    n_node = np.zeros(budget.n_graph, dtype=np.int32)
    n_edge = np.zeros(budget.n_graph, dtype=np.int32)
    n_node[:n_real], n_edge[:n_real] = n_nodes, n_edges
    n_node[n_real] = budget.n_node - tot_node
    n_edge[n_real] = budget.n_edge - tot_edge
    graph_mask = np.zeros(budget.n_graph, dtype=bool)
    graph_mask[:n_real] = True
    batch = jraph.GraphsTuple(
        nodes={"species": species, "positions": positions, "mask": node_mask},
        edges={
            "shift_vectors": shift_vectors,
            "shifts": shifts,
            "reverse": reverse,
            "mask": edge_mask,
        },
        senders=senders,
        receivers=receivers,
        n_node=n_node,
        n_edge=n_edge,
        globals={"mask": graph_mask},
    )
    if targets is None:
        return batch, None
    return batch, _batch_targets(graphs, targets, budget, node_off, edge_off, dtype)


def _batch_targets(graphs, targets, budget, node_off, edge_off, dtype):
    targets = list(targets)
    if len(targets) != len(graphs):
        raise ValueError(f"{len(graphs)} graphs but {len(targets)} targets")
    m = {t.node_hamiltonian.shape[-1] for t in targets}
    if len(m) != 1:
        raise ValueError(f"targets have different orbital paddings M: {sorted(m)}")
    m = m.pop()
    with_overlap = all(t.node_overlap is not None for t in targets)
    out = {
        "node_hamiltonian": np.zeros((budget.n_node, m, m), dtype=dtype),
        "edge_hamiltonian": np.zeros((budget.n_edge, m, m), dtype=dtype),
        "orbital_mask": np.zeros((budget.n_node, m), dtype=bool),
        "node_mask": np.zeros(budget.n_node, dtype=bool),
        "edge_mask": np.zeros(budget.n_edge, dtype=bool),
        "fold_edge": np.arange(budget.n_edge, dtype=np.int32),
    }
    if with_overlap:
        out["node_overlap"] = np.zeros((budget.n_node, m, m), dtype=dtype)
        out["edge_overlap"] = np.zeros((budget.n_edge, m, m), dtype=dtype)
    for g, t, no, eo in zip(graphs, targets, node_off, edge_off, strict=True):
        if t.node_hamiltonian.shape[0] != g.n_node or t.edge_hamiltonian.shape[0] != g.n_edge:
            raise ValueError("targets do not match their graph (node or edge count differs)")
        nn, ne = g.n_node, g.n_edge
        out["node_hamiltonian"][no : no + nn] = t.node_hamiltonian
        out["edge_hamiltonian"][eo : eo + ne] = t.edge_hamiltonian
        out["orbital_mask"][no : no + nn] = t.orbital_mask
        out["node_mask"][no : no + nn] = t.node_mask
        out["edge_mask"][eo : eo + ne] = t.edge_mask
        out["fold_edge"][eo : eo + ne] = np.where(t.fold_edge < 0, -1, t.fold_edge + eo)
        if with_overlap:
            out["node_overlap"][no : no + nn] = t.node_overlap
            out["edge_overlap"][eo : eo + ne] = t.edge_overlap
    return out


def pack(sizes: Iterable[tuple[int, int]], budget: Budget) -> list[list[int]]:
    """Greedy packing of graphs into batches that fit ``budget`` (first fit, input order).

    Args:
        sizes: ``(n_node, n_edge)`` of every graph.
        budget: the budget every batch must fit (one spare node and graph kept for padding).

    Returns:
        Lists of graph indices, one per batch. A graph that alone exceeds the budget raises
        ValueError naming it.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    nodes = edges = 0
    for index, (nn, ne) in enumerate(sizes):
        if nn + 1 > budget.n_node or ne > budget.n_edge or budget.n_graph < 2:
            raise ValueError(f"graph {index} ({nn} nodes, {ne} edges) does not fit {budget}")
        if current and (
            nodes + nn + 1 > budget.n_node
            or edges + ne > budget.n_edge
            or len(current) + 2 > budget.n_graph
        ):
            batches.append(current)
            current, nodes, edges = [], 0, 0
        current.append(index)
        nodes += nn
        edges += ne
    if current:
        batches.append(current)
    return batches


def shape_signature(tree) -> tuple:
    """Shapes and dtypes of every leaf of a pytree (what decides a jit cache hit)."""
    leaves, treedef = jax.tree.flatten(tree)
    return (str(treedef),) + tuple((np.shape(x), np.asarray(x).dtype.str) for x in leaves)


def count_shapes(batches: Iterable) -> int:
    """Number of distinct :func:`shape_signature` s among ``batches`` (= jit compilations)."""
    return len({shape_signature(b) for b in batches})
