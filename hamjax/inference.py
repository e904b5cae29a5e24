"""Inference: Hamiltonians of new structures from a trained model, whole or by exact slices.

:func:`predict` turns structures (``ase.Atoms`` or block records) into
:class:`~hamjax.blocks.BlockHamiltonian` records (Hartree) with one block per graph node
``(i, i, 0)`` and per graph edge ``(i, j, shift)``.

* Full graph (default): every structure is one graph; structures are packed into padded
  batches whose sizes come from a short ladder (:func:`hamjax.batching.budget_for`), so many
  structures of similar size share one compilation.
* Exact slices (``slices="exact"``): a structure is cut along ``slice_axis`` into slices with
  a halo of ``n_layers + 1`` hops (:func:`hamjax.partition.partition`, mode "exact"); every
  node and edge is predicted in exactly one slice with its complete receptive field, and the
  stitched result equals full-graph inference (to float round-off). With
  ``max_graphs_per_batch=1`` peak memory is set by one slice, not by the structure, so
  devices beyond one accelerator's memory fit.

A :class:`Predictor` keeps the jitted model between calls; ``n_traces`` counts how often it
was traced (one per distinct padded shape).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hamjax import batching
from hamjax.blocks import BlockHamiltonian
from hamjax.folding import multi_image_translations
from hamjax.graph import build_graph
from hamjax.io import model_folder
from hamjax.models import HamiltonianModel
from hamjax.partition import partition, stitch
from hamjax.targets import gather_targets

__all__ = ["Predictor", "blocks_to_record", "predict"]


def blocks_to_record(
    graph,
    node_blocks: np.ndarray,
    edge_blocks: np.ndarray,
    basis,
    *,
    overlap: tuple[np.ndarray, np.ndarray] | None = None,
    metadata: dict | None = None,
) -> BlockHamiltonian:
    """A block record from padded blocks on a graph (blocks sorted by ``(i, j, shift)``).

    Args:
        graph: :class:`hamjax.graph.Graph` of the structure.
        node_blocks: ``[n_node, M, M]`` on-site blocks, Hartree.
        edge_blocks: ``[n_edge, M, M]`` blocks of the edges ``(senders, receivers, shifts)``.
        basis: the model's :class:`~hamjax.basis.Basis`; orbitals of a species occupy the
            first ``n_orb(Z)`` of the ``M`` slots.
        overlap: optional ``(node, edge)`` overlap blocks in the same layout.
        metadata: stored in the record.
    """
    counts = basis.orbital_counts(graph.numbers)
    m = node_blocks.shape[-1]
    orbitals = np.arange(m)[None, :] < counts[:, None]  # [n_node, M]
    n_node = graph.n_node
    pairs = np.concatenate(
        [
            np.stack([np.arange(n_node), np.arange(n_node)], 1),
            np.stack([graph.senders, graph.receivers], 1),
        ]
    ).astype(np.int64)
    shifts = np.concatenate([np.zeros((n_node, 3), np.int64), graph.shifts]).astype(np.int64)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], pairs[:, 1], pairs[:, 0]))
    pairs, shifts = pairs[order], shifts[order]
    left, right = orbitals[pairs[:, 0]], orbitals[pairs[:, 1]]
    mask = left[:, :, None] & right[:, None, :]  # [n_block, M, M], row-major per block

    def flat(node, edge):
        blocks = np.concatenate([np.asarray(node), np.asarray(edge)])[order]
        return blocks[mask].astype(np.float64)

    return BlockHamiltonian(
        numbers=np.asarray(graph.numbers, dtype=np.int64),
        positions=np.asarray(graph.positions, dtype=float),
        cell=np.asarray(graph.cell, dtype=float),
        pbc=np.asarray(graph.pbc, dtype=bool),
        basis=basis,
        pairs=pairs,
        shifts=shifts,
        hamiltonian=flat(node_blocks, edge_blocks),
        overlap=None if overlap is None else flat(*overlap),
        metadata=dict(metadata or {}),
    )


@dataclass
class _Job:
    """One graph to run: a whole structure or one slice of it."""

    structure: int
    graph: Any
    piece: Any = None  # hamjax.partition.Slice or None


class Predictor:
    """A trained model ready for inference (params on device, jitted forward pass).

    Args:
        model_config: :class:`hamjax.models.ModelConfig`.
        params: parameter pytree.
        name: label stored in the metadata of predictions (e.g. the model folder).
    """

    def __init__(self, model_config, params, *, name: str | None = None):
        self.config = model_config
        self.model = HamiltonianModel(model_config)
        self.params = jax.device_put(params)
        self.name = name
        self.n_traces = 0
        #: multi-image translations of the Gamma-folded training cells (see check_cells)
        self.folded_cells: list[tuple[float, ...]] = []
        dtype = jnp.dtype(model_config.dtype)

        def forward(params, graph):
            self.n_traces += 1  # runs only while tracing
            graph = jax.tree.map(
                lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x,
                graph,
            )
            return self.model.apply(params, graph)

        self._forward = jax.jit(forward)

    @classmethod
    def load(cls, model_dir: str | os.PathLike, which: str = "best") -> Predictor:
        """From a folder written by :func:`hamjax.train.train` or a shipped model's name
        (:mod:`hamjax.pretrained`: ``Predictor.load("vcm-gfn1")``), with the cells its
        training set folds, for :meth:`check_cells`, where the folder records them.

        Raises:
            FileNotFoundError: neither a model folder nor a shipped model's name.
            hamjax.io.model_folder.ModelFolderError: a truncated or corrupt checkpoint.
        """
        saved = model_folder.read_checkpoint(model_dir, which)
        predictor = cls(saved.model, saved.params, name=str(model_dir))
        predictor.folded_cells = model_folder.read_folded_cells(model_dir)
        return predictor

    def check_cells(self, structures: Iterable) -> list[int]:
        """Warn for each structure whose cell folds periodic images unlike the training set's.

        A model trained on Gamma-point references of cells thinner than twice its cutoff
        (``folded_cells``, from the model folder) has learnt each block only as a sum over
        that cell's images (:func:`hamjax.folding.multi_image_translations`); its blocks for a
        cell with other short translations, a wider device or a molecule, are not reliable.
        (``experiments/vcm_folding.py`` measures how far off: ``docs/vcm.md``).

        Returns:
            The indices of the structures warned about.
        """
        if not self.folded_cells:
            return []
        shortest = sorted({c[0] for c in self.folded_cells})
        flagged = []
        for index, structure in enumerate(structures):
            own = multi_image_translations(structure, self.config.cutoff)
            if own not in self.folded_cells:
                flagged.append(index)
                mine = f"shortest translation {own[0]:g} A" if own else "no translation"
                warnings.warn(
                    f"structure {index}: the model was trained on Gamma-point references of "
                    f"cells whose images fold into its blocks (shortest lattice translation "
                    f"{', '.join(f'{v:g}' for v in shortest)} A, cutoff {self.config.cutoff:g} "
                    f"A) and learnt each block only as a sum over those images; this cell "
                    f"({mine} below twice the cutoff) folds differently, so its predicted "
                    "blocks are not reliable",
                    stacklevel=3,
                )
        return flagged

    def apply(self, graphs_tuple) -> tuple[jax.Array, jax.Array]:
        """Blocks of one padded batch (device arrays; call ``block_until_ready`` to time)."""
        return self._forward(self.params, graphs_tuple)

    # ------------------------------------------------------------------ batching
    def _run(self, jobs: Sequence[_Job], max_graphs_per_batch: int, growth: float):
        """Predicted ``(node [n_node, M, M], edge [n_edge, M, M])`` numpy blocks per job."""
        order = sorted(range(len(jobs)), key=lambda k: (jobs[k].graph.n_edge, jobs[k].graph.n_node))
        results: list = [None] * len(jobs)
        # Batches of similar graphs: consecutive (size-sorted) graphs up to the count limit,
        # each padded to a ladder budget, so similar batches share one shape.
        start = 0
        while start < len(order):
            stop = min(start + max_graphs_per_batch, len(order))
            chunk = order[start:stop]
            graphs = [jobs[k].graph for k in chunk]
            batch, _ = batching.batch_graphs(graphs, growth=growth)
            node, edge = jax.device_get(self.apply(jax.tree.map(jnp.asarray, batch)))
            node_off = np.concatenate([[0], np.cumsum([g.n_node for g in graphs])])
            edge_off = np.concatenate([[0], np.cumsum([g.n_edge for g in graphs])])
            for slot, k in enumerate(chunk):
                results[k] = (
                    node[node_off[slot] : node_off[slot + 1]],
                    edge[edge_off[slot] : edge_off[slot + 1]],
                )
            start = stop
        return results

    def predict(
        self,
        structures: Iterable,
        *,
        slices: str | None = None,
        slice_width_angstrom: float = 10.0,
        slice_axis: int = 0,
        max_graphs_per_batch: int = 8,
        growth: float = 1.25,
        with_overlap: bool = True,
    ) -> list[BlockHamiltonian]:
        """Predicted Hamiltonians (Hartree) of ``structures``; see :func:`predict`."""
        if slices not in (None, "exact"):
            raise ValueError(f"slices={slices!r}: choose None (full graph) or 'exact'")
        structures = list(structures)
        self.check_cells(structures)
        graphs = []
        for index, atoms in enumerate(structures):
            try:
                graphs.append(build_graph(atoms, self.config.cutoff, basis=self.config.basis))
            except ValueError as err:
                raise ValueError(f"structure {index}: {err}") from None
        jobs: list[_Job] = []
        for index, graph in enumerate(graphs):
            if slices is None:
                jobs.append(_Job(index, graph))
            else:
                for piece in partition(
                    graph,
                    slice_axis,
                    width=slice_width_angstrom,
                    mode="exact",
                    n_layers=self.config.n_layers,
                ):
                    jobs.append(_Job(index, piece.graph, piece))
        outputs = self._run(jobs, max_graphs_per_batch, growth)

        records = []
        for index, graph in enumerate(graphs):
            mine = [
                (job, out) for job, out in zip(jobs, outputs, strict=True) if job.structure == index
            ]
            if slices is None:
                node, edge = mine[0][1]
            else:
                node, edge = stitch(
                    [job.piece for job, _ in mine],
                    [out[0] for _, out in mine],
                    [out[1] for _, out in mine],
                    graph.n_node,
                    graph.n_edge,
                )
            overlap = None
            atoms = structures[index]
            if with_overlap and isinstance(atoms, BlockHamiltonian) and atoms.overlap is not None:
                targets = gather_targets(graph, atoms, basis=self.config.basis)
                if not targets.gamma_only and targets.node_overlap is not None:
                    overlap = (targets.node_overlap, targets.edge_overlap)
            metadata = {
                "source": "hamjax model",
                "model": self.name,
                "inference": "exact slices" if slices else "full graph",
                "cutoff_angstrom": float(self.config.cutoff),
                "units": {"hamiltonian": "Hartree"},
            }
            if slices:
                metadata["slice_width_angstrom"] = float(slice_width_angstrom)
                metadata["slice_axis"] = int(slice_axis)
            records.append(
                blocks_to_record(
                    graph, node, edge, self.config.basis, overlap=overlap, metadata=metadata
                )
            )
        return records


def predict(
    model,
    structures: Iterable,
    *,
    slices: str | None = None,
    slice_width_angstrom: float = 10.0,
    slice_axis: int = 0,
    max_graphs_per_batch: int = 8,
    growth: float = 1.25,
    with_overlap: bool = True,
) -> list[BlockHamiltonian]:
    """Predict the Hamiltonian of every structure.

    Args:
        model: a model folder (``hamjax train --out``), a :class:`Predictor`, or a tuple
            ``(model_config, params)``.
        structures: ``ase.Atoms`` or :class:`~hamjax.blocks.BlockHamiltonian` records (their
            geometry is used; when a record holds S, its blocks on the predicted pairs are
            copied into the output's overlap).
        slices: None (whole structures) or "exact" (exact slices, see the module docstring).
        slice_width_angstrom: slice width along ``slice_axis`` for ``slices="exact"``.
        slice_axis: lattice vector to slice along (0 = x, the transport axis of a device).
        max_graphs_per_batch: graphs (structures or slices) per padded batch.
        growth: ratio of consecutive padded sizes (1.25 wastes at most a fifth of a batch on
            padding; 2.0, powers of two, compiles fewer shapes).
        with_overlap: copy S from input records that have it.

    Returns:
        One record per structure, Hartree, blocks ``(i, i, 0)`` and one per graph edge.
    """
    if isinstance(model, str | os.PathLike | Path):
        predictor = Predictor.load(model)
    elif isinstance(model, Predictor):
        predictor = model
    else:
        model_config, params = model
        predictor = Predictor(model_config, params)
    return predictor.predict(
        structures,
        slices=slices,
        slice_width_angstrom=slice_width_angstrom,
        slice_axis=slice_axis,
        max_graphs_per_batch=max_graphs_per_batch,
        growth=growth,
        with_overlap=with_overlap,
    )
