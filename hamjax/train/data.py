"""Training data: dataset files to records, padded batches (whole structures or slices),
their stacking over devices, and per-element statistics of the targets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import chemical_symbols
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from hamjax import batching
from hamjax.graph import build_graph
from hamjax.io import dataset
from hamjax.models import ModelConfig, block_layout
from hamjax.partition import partition, slice_targets
from hamjax.targets import gather_targets
from hamjax.train.config import TrainConfig

__all__ = [
    "Placement",
    "batch_dict",
    "check_basis",
    "load_split",
    "make_batches",
    "mean_onsite_blocks",
    "stack_for_devices",
]


def load_split(config: TrainConfig) -> tuple[list, list]:
    """Training and validation records (:class:`hamjax.blocks.BlockHamiltonian`).

    Explicit ``validation_data`` wins; else ``validation_fraction`` of the ``data`` files
    (chosen with ``seed``) is held out; with neither, validation runs on the training set.
    """
    train_paths = dataset.expand_paths(config.data)
    if not train_paths:
        raise ValueError("config key 'data' lists no dataset file")
    val_paths = dataset.expand_paths(config.validation_data)
    if not val_paths and config.validation_fraction > 0 and len(train_paths) >= 2:
        n_val = max(1, round(config.validation_fraction * len(train_paths)))
        n_val = min(n_val, len(train_paths) - 1)
        order = np.random.default_rng(config.seed).permutation(len(train_paths))
        val_paths = [train_paths[i] for i in sorted(order[:n_val])]
        held = set(val_paths)
        train_paths = [p for p in train_paths if p not in held]
    train_records = [dataset.load(p) for p in train_paths]
    val_records = [dataset.load(p) for p in val_paths]
    return train_records, val_records


def batch_dict(graphs_tuple, targets: Mapping) -> dict:
    """The batch layout of :func:`block_errors` from :func:`hamjax.batching.batch_graphs`."""
    out = {
        "graph": graphs_tuple,
        "node_targets": targets["node_hamiltonian"],
        "edge_targets": targets["edge_hamiltonian"],
        "orbital_mask": targets["orbital_mask"],
        "node_labels": targets["node_mask"],
        "edge_labels": targets["edge_mask"],
    }
    fold_edge = np.asarray(targets["fold_edge"])
    if not np.array_equal(fold_edge, np.arange(len(fold_edge))):
        out["fold_edge"] = fold_edge
    return out


def check_basis(record, basis, index: int) -> None:
    """Every element of ``record`` must have the same shells in the model's ``basis``."""
    model_shells = basis.as_dict()
    for z, shells in record.basis.shells:
        if z in set(int(n) for n in record.numbers) and model_shells.get(z) != shells:
            raise ValueError(
                f"structure {index} ({record.metadata.get('name') or 'unnamed'}): element "
                f"{chemical_symbols[z]} has shells {shells} in its basis {record.basis.name!r} "
                f"but {model_shells.get(z)} in the model's basis {basis.name!r}"
            )


def make_batches(records: Sequence, config: TrainConfig) -> list[dict]:
    """Padded training batches (host NumPy) of records, cut into slices if configured.

    Each structure (``slice_width_angstrom`` None) or each slice of a structure becomes one
    graph with its reference blocks gathered onto it (:func:`hamjax.targets.gather_targets`,
    Gamma-folded when the reference is Gamma-only); ``max_graphs_per_batch`` consecutive
    graphs form one batch padded to a bucketed budget (:func:`hamjax.batching.budget_for`).

    Returns:
        Batches in the layout of :func:`block_errors`.
    """
    model_config = config.model
    if not isinstance(model_config, ModelConfig):
        raise ValueError(
            "the config's model has no basis yet; take it from the training structures with "
            "hamjax.train.with_data_basis(config, records) first"
        )
    basis = model_config.basis
    items = []  # (graph, targets) of whole structures or slices
    for index, record in enumerate(records):
        check_basis(record, basis, index)
        graph = build_graph(record, model_config.cutoff, basis=basis)
        targets = gather_targets(graph, record, basis=basis)
        if config.slice_width_angstrom is None:
            items.append((graph, targets))
            continue
        for piece in partition(
            graph,
            config.slice_axis,
            width=config.slice_width_angstrom,
            mode=config.partition_mode,
            n_layers=model_config.n_layers,
        ):
            sliced = slice_targets(targets, piece)
            if sliced.node_mask.any() or sliced.edge_mask.any():
                items.append((piece.graph, sliced))
    batches = []
    step = config.max_graphs_per_batch
    for start in range(0, len(items), step):
        chunk = items[start : start + step]
        graphs_tuple, targets = batching.batch_graphs(
            [g for g, _ in chunk],
            [t for _, t in chunk],
            dtype=np.dtype(model_config.dtype),
            growth=config.padding_growth,
        )
        batches.append(batch_dict(graphs_tuple, targets))
    return batches


def mean_onsite_blocks(batches: Sequence[Mapping], basis) -> np.ndarray:
    """Mean labelled on-site target block of every element, ``[n_species, M, M]`` (Hartree).

    Elements in the order of :func:`hamjax.models.block_layout`; NaN for an element with no
    labelled atom in ``batches``.
    """
    layout = block_layout(basis)
    m = layout.n_orbitals_max
    total = np.zeros((layout.n_species, m, m))
    count = np.zeros(layout.n_species)
    for batch in batches:
        labelled = np.asarray(batch["node_labels"], bool)
        species = layout.species_index[np.asarray(batch["graph"].nodes["species"])][labelled]
        targets = np.asarray(batch["node_targets"], np.float64)[labelled]
        np.add.at(total, species, targets)
        np.add.at(count, species, 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return total / count[:, None, None]


def _shape_key(batch) -> tuple:
    return tuple((tuple(x.shape), str(x.dtype)) for x in jax.tree.leaves(batch))


def _blank(batch):
    """A copy of ``batch`` whose labels are all False (fills an incomplete device group)."""
    out = dict(batch)
    out["node_labels"] = np.zeros_like(np.asarray(batch["node_labels"]))
    out["edge_labels"] = np.zeros_like(np.asarray(batch["edge_labels"]))
    return out


def stack_for_devices(
    batches: Sequence[Mapping], n_shard: int, rng: np.random.Generator | None = None
) -> list:
    """Group padded batches of equal shape by ``n_shard`` and stack them on a leading axis.

    Batches of one shape (one bucket) go together; a group left incomplete at the end of a
    bucket is filled with label-free copies, which add nothing to the loss. With ``rng`` the
    batches are shuffled first and the groups are returned in random order.

    Returns:
        Host (NumPy) pytrees with a leading axis of ``n_shard``.
    """
    order = np.arange(len(batches)) if rng is None else rng.permutation(len(batches))
    by_shape: dict[tuple, list[int]] = {}
    for index in order:
        by_shape.setdefault(_shape_key(batches[index]), []).append(int(index))
    stacked = []
    for indices in by_shape.values():
        for start in range(0, len(indices), n_shard):
            group = [batches[i] for i in indices[start : start + n_shard]]
            group += [_blank(group[0])] * (n_shard - len(group))
            stacked.append(jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *group))
    if rng is not None:
        stacked = [stacked[i] for i in rng.permutation(len(stacked))]
    return stacked


class Placement:
    """Where arrays live: a 1-D mesh over local devices, or the default device.

    Every step takes one padded batch per local device, stacked on a leading axis that is
    sharded over a ``jax.sharding.Mesh`` of the local devices; parameters are replicated. On
    one device (or without ``data_parallel``) the same code runs with a leading axis of one.
    """

    def __init__(self, data_parallel: bool):
        devices = jax.local_devices()
        self.n_shard = len(devices) if data_parallel else 1
        if self.n_shard > 1:
            mesh = Mesh(np.asarray(devices), ("data",))
            self._batch = NamedSharding(mesh, PartitionSpec("data"))
            self._replicated = NamedSharding(mesh, PartitionSpec())
        else:
            self._batch = self._replicated = None

    def batch(self, tree):
        if self._batch is None:
            return jax.tree.map(jnp.asarray, tree)
        return jax.device_put(tree, self._batch)

    def replicate(self, tree):
        if self._replicated is None:
            return tree
        return jax.device_put(tree, self._replicated)
