"""Training of a Hamiltonian model on block targets: config, masked losses, metrics, loop.

Everything here is a pure function around :class:`hamjax.models.HamiltonianModel`; no Flax
module is defined in this file.

Config file (JSON)
------------------
``hamjax train --config cfg.json`` reads one JSON object whose keys are the fields of
:class:`TrainConfig`; ``"model"`` is a nested object with the fields of the model config
(:class:`hamjax.models.ModelConfig`). Missing keys take the defaults (set for the VCM case:
one interaction layer, lmax 4, 16 channels, 2 heads, 8 Angstrom cutoff, float32, AdamW
1e-4 -> 1e-5, MSE on the blocks, slices of 4 Angstrom along x); unknown keys are an error that
names them. ``hamjax train --print-default-config`` prints the full default file::

    {
      "data": ["data/vcm_0.npz", "data/vcm_1.npz"],
      "validation_data": ["data/vcm_val.npz"],
      "slice_width_angstrom": 4.0,
      "partition_mode": "paper",
      "epochs": 200,
      "model": {"max_ell": 4, "channels": 16}
    }

Relative data paths are relative to the config file. The config is saved as ``config.json``
in the output folder and inside every checkpoint.

Losses and metrics
------------------
Predictions and targets are padded blocks ``[n, M, M]`` (Hartree). An entry counts when its
node (or edge) is labelled (``labels`` masks of the batch: real, inside the slice) and both
of its orbitals exist for the species (orbital mask). The loss is the sum of squared
(``"mse"``) or absolute (``"mae"``) errors over counted entries divided by their number, so
padding never changes it. With ``element_loss_weights`` (element symbol -> weight, 1 for
elements not named) every entry of atom i's on-site block carries weight ``w_i`` and every
entry of the hopping block (i, j) carries ``(w_i + w_j) / 2``; the loss is then the weighted
sum divided by the summed weight of the counted entries, so uniform weights give the plain
loss. Weights steer training toward a region (the oxide of a device, where the current is
decided); they never enter the metrics. Metrics are mean absolute errors over counted
entries of node blocks, edge blocks and all blocks together ("total", every labelled H
entry), in mEh (milli-Hartree) and meV.

Energy-reference alignment
--------------------------
Reference Hamiltonians of periodic cells are defined up to a constant potential shift (the
average electrostatic potential is arbitrary). With ``align_energy_reference`` the
prediction of every graph in a batch (every slice, when training on slices) is shifted by
the closed-form constant ``c`` that minimises the squared error of the on-site diagonal:
``c = mean(target - prediction)`` over the counted diagonal entries of its node blocks, and
``c`` is added to those diagonal entries before the loss and the metrics. Off-diagonal and
hopping entries are not shifted (a shift ``c * S`` would also move hoppings; the on-site
diagonal is where it dominates). Under ``"mae"`` the mean is used as well.

Checkpoints and resume
----------------------
``OUT/checkpoints/<step>/`` (orbax ``CheckpointManager``) holds the parameters, optimiser
state, step, random key, and a JSON item with the config, the epoch and the per-epoch log.
The latest checkpoint and the best one (lowest validation total MAE) are kept. Running the
same command again restores the latest checkpoint and continues; ``OUT/log.jsonl`` is
rewritten from the checkpoint's history first, so an interrupted run neither repeats nor
loses an epoch in the log.

Data parallelism
----------------
Every step takes one padded batch per local device, stacked on a leading axis that is
sharded over a ``jax.sharding.Mesh`` of the local devices; parameters are replicated. On one
device the same code runs with a leading axis of one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hamjax.constants import HARTREE_EV
from hamjax.io.atomic import write_text

__all__ = [
    "TrainConfig",
    "TrainState",
    "block_errors",
    "config_from_dict",
    "config_to_dict",
    "default_config",
    "evaluate_records",
    "format_config",
    "load_checkpoint",
    "make_batches",
    "load_config",
    "make_eval_step",
    "make_optimizer",
    "make_train_step",
    "mean_onsite_blocks",
    "metrics_from_sums",
    "save_config",
    "species_weights",
    "stack_for_devices",
    "train",
]


# --------------------------------------------------------------------------- config
def _model_config_class():
    from hamjax import models

    return models.ModelConfig


def vcm_basis():
    """GFN1-xTB shells (tblite order) of the VCM elements: N, O: s,p; Ti, Hf: d,s,p."""
    from hamjax.basis import gfn1_xtb_basis

    return gfn1_xtb_basis(["N", "O", "Ti", "Hf"])


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; static, hashable, saved as JSON with the checkpoints.

    Attributes:
        model: model hyperparameters (:class:`hamjax.models.ModelConfig`).
        data: dataset files (:mod:`hamjax.io.dataset` npz) used for training, or for training
            and validation when ``validation_data`` is empty.
        validation_data: dataset files used only for validation.
        validation_fraction: share of ``data`` structures held out for validation when
            ``validation_data`` is empty (at least one structure when there are two or more).
        slice_width_angstrom: width of the training slices along ``slice_axis``; None trains
            on whole structures.
        slice_axis: Cartesian axis the slices cut (0 = x, the transport axis of a device).
        partition_mode: "paper" (halo of one cutoff, loss on slice nodes and slice-slice
            edges) or "exact" (halo of two cutoffs, loss on every edge touching the slice).
        max_graphs_per_batch: structures (or slices) per batch and device.
        padding_growth: ratio of consecutive padded sizes (node and edge budgets are rounded
            up to a ladder with this ratio: 2.0 wastes up to half a batch on padding but
            compiles fewer shapes; 1.25 wastes at most a fifth).
        epochs: number of passes over the training set.
        checkpoint_every_epochs: save a checkpoint every this many epochs (and after the
            last one); validation runs every epoch regardless.
        seed: seed of parameter initialisation and shuffling.
        learning_rate: peak learning rate.
        final_learning_rate: learning rate at the end of the decay.
        warmup_steps: linear warm-up from 0 to ``learning_rate``.
        schedule: "cosine", "exponential" (decay to ``final_learning_rate`` over the run) or
            "plateau" (constant after warm-up, multiplied by ``plateau_factor`` when the
            training loss has not improved for ``plateau_patience`` epochs).
        plateau_factor: factor of the plateau schedule.
        plateau_patience: patience of the plateau schedule, in epochs.
        weight_decay: AdamW decoupled weight decay.
        gradient_clip_norm: clip the global gradient norm to this value (0 disables).
        onsite_bias_from_data: start the on-site bias of every element at the
            rotation-invariant part of its mean on-site block in the training data
            (:func:`hamjax.models.onsite_bias_for_blocks`) instead of zero.
        loss: "mse" or "mae" over the counted block entries (Hartree^2 or Hartree).
        element_loss_weights: element symbol -> weight of its atoms' entries in the loss
            (see the module docstring); elements not named weigh 1. Metrics are unweighted.
        align_energy_reference: shift each graph's on-site diagonal by the closed-form
            constant (see the module docstring).
        data_parallel: split each step over all local devices.
        progress: show tqdm progress bars.
        init_from: a model folder written by :func:`train` whose best parameters start this
            run (fine-tuning on new data, or a new schedule after an unfinished one); the
            optimiser and schedule start fresh. Its model must equal this run's (the dtype
            may differ).
    """

    model: Any = None
    data: tuple[str, ...] = ()
    validation_data: tuple[str, ...] = ()
    validation_fraction: float = 0.2
    slice_width_angstrom: float | None = 4.0
    slice_axis: int = 0
    partition_mode: str = "paper"
    max_graphs_per_batch: int = 1
    padding_growth: float = 1.25
    epochs: int = 200
    checkpoint_every_epochs: int = 1
    seed: int = 0
    learning_rate: float = 1e-4
    final_learning_rate: float = 1e-5
    warmup_steps: int = 100
    schedule: str = "cosine"
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    weight_decay: float = 0.0
    gradient_clip_norm: float = 1.0
    onsite_bias_from_data: bool = True
    loss: str = "mse"
    element_loss_weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    align_energy_reference: bool = False
    data_parallel: bool = True
    progress: bool = True
    init_from: str | None = None

    def __post_init__(self):
        if self.model is None:
            object.__setattr__(self, "model", _model_config_class()(basis=vcm_basis()))
        checks = {
            "partition_mode": (self.partition_mode, ("paper", "exact")),
            "schedule": (self.schedule, ("cosine", "exponential", "plateau")),
            "loss": (self.loss, ("mse", "mae")),
        }
        for name, (value, allowed) in checks.items():
            if value not in allowed:
                raise ValueError(f"config key {name!r} is {value!r}; choose one of {allowed}")
        if self.slice_axis not in (0, 1, 2):
            raise ValueError(f"config key 'slice_axis' is {self.slice_axis}; choose 0, 1 or 2")
        if self.slice_width_angstrom is not None and self.slice_width_angstrom <= 0:
            raise ValueError("config key 'slice_width_angstrom' must be positive or null")
        for name in ("epochs", "max_graphs_per_batch", "checkpoint_every_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"config key {name!r} must be at least 1")
        if self.padding_growth <= 1.0:
            raise ValueError("config key 'padding_growth' must be above 1")
        if self.learning_rate <= 0 or self.final_learning_rate < 0:
            raise ValueError("config keys 'learning_rate' > 0 and 'final_learning_rate' >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("config key 'validation_fraction' must lie in [0, 1)")
        species_weights(self.element_loss_weights)  # raises naming a bad entry


def default_config() -> TrainConfig:
    """The default (VCM) configuration."""
    return TrainConfig()


def _to_jsonable(value):
    if hasattr(value, "to_dict") and dataclasses.is_dataclass(value):
        return _to_jsonable(value.to_dict())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def config_to_dict(config) -> dict:
    """A JSON-ready nested dict of a (nested) config dataclass; tuples become lists."""
    return _to_jsonable(config)


def _convert(value, hint, where: str):
    """Rebuild ``value`` read from JSON as type ``hint`` (nested dataclasses, tuples)."""
    origin = typing.get_origin(hint)
    if hint is Any or value is None:
        return value
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, Mapping):
            raise ValueError(f"config key {where!r} must be an object")
        return _dataclass_from_dict(hint, value, where + ".")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(value, args[0], where) if len(args) == 1 else value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"config key {where!r} must be a list")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], where) for v in value)
        if args and len(args) == len(value):
            return tuple(_convert(v, a, where) for v, a in zip(value, args, strict=True))
        return _deep_tuple(value)
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


def _deep_tuple(value):
    if isinstance(value, list | tuple):
        return tuple(_deep_tuple(v) for v in value)
    return value


def _dataclass_from_dict(cls, data: Mapping, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(
            f"unknown config key(s) {[prefix + k for k in unknown]}; valid keys here: {names}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        if cls is TrainConfig and name == "model":
            kwargs[name] = _model_from_dict(data[name])
            continue
        kwargs[name] = _convert(data[name], hints.get(name, Any), prefix + name)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"config {prefix or 'top level'}: {err}") from None


def _model_from_dict(data):
    """Model config from a (partial) dict: missing keys take the default model's values."""
    model_class = _model_config_class()
    if isinstance(data, model_class):
        return data
    if not isinstance(data, Mapping):
        raise ValueError("config key 'model' must be an object")
    merged = {**model_class(basis=vcm_basis()).to_dict(), **data}
    try:
        return model_class.from_dict(merged)
    except (KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"config key 'model': {err}") from None
    except ValueError as err:
        raise ValueError(f"config key 'model': {err}") from None


def config_from_dict(data: Mapping) -> TrainConfig:
    """Build a :class:`TrainConfig` from a (JSON) dict; unknown keys raise naming them."""
    return _dataclass_from_dict(TrainConfig, data)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a JSON config file (errors name the file).

    Relative ``data`` and ``validation_data`` paths (and glob patterns) are taken relative
    to the config file's folder.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: line {err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: the config must be a JSON object")
    try:
        config = config_from_dict(data)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    base = path.resolve().parent

    def resolve(paths):
        return tuple(p if os.path.isabs(p) else str(base / p) for p in paths)

    return dataclasses.replace(
        config, data=resolve(config.data), validation_data=resolve(config.validation_data)
    )


_NUMBER_LIST = re.compile(r"\[\s+(-?[0-9.eE+-]+(?:,\s+-?[0-9.eE+-]+)*)\s+\]")


def format_config(config: TrainConfig) -> str:
    """``config`` as indented JSON with lists of numbers kept on one line."""
    text = json.dumps(config_to_dict(config), indent=2)
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(x.rstrip(",") for x in m.group(1).split()) + "]", text
    )


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write ``config`` as indented JSON, atomically."""
    write_text(Path(path), format_config(config) + "\n")


# --------------------------------------------------------------------------- losses
def species_weights(element_loss_weights: Mapping[str, float]) -> np.ndarray | None:
    """Loss weight of every atomic number, ``[119]`` (1 where not named); None for no weights.

    Raises ValueError naming an unknown element symbol or a weight that is not positive.
    """
    from ase.data import atomic_numbers

    if not element_loss_weights:
        return None
    table = np.ones(119)
    for symbol, weight in element_loss_weights.items():
        if symbol not in atomic_numbers or atomic_numbers[symbol] == 0:
            raise ValueError(
                f"config key 'element_loss_weights': {symbol!r} is not an element symbol"
            )
        if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
            raise ValueError(
                f"config key 'element_loss_weights': weight of {symbol} must be a positive "
                f"number, got {weight!r}"
            )
        table[atomic_numbers[symbol]] = float(weight)
    return table


def _node_graph_index(n_node: jax.Array, total: int) -> jax.Array:
    """Graph index of every node, ``[total]``."""
    return jnp.repeat(jnp.arange(n_node.shape[0]), n_node, total_repeat_length=total)


def block_errors(
    node_pred: jax.Array,
    edge_pred: jax.Array,
    batch: Mapping[str, Any],
    *,
    loss: str = "mse",
    align_energy_reference: bool = False,
    weights: jax.Array | None = None,
) -> dict[str, jax.Array]:
    """Masked error sums of one padded batch (no normalisation yet).

    Args:
        node_pred: predicted on-site blocks ``[n_node, M, M]`` in Hartree.
        edge_pred: predicted hopping blocks ``[n_edge, M, M]`` in Hartree.
        batch: ``graph`` (jraph.GraphsTuple), ``node_targets`` ``[n_node, M, M]``,
            ``edge_targets`` ``[n_edge, M, M]``, ``orbital_mask`` ``[n_node, M]`` bool,
            ``node_labels`` ``[n_node]`` bool, ``edge_labels`` ``[n_edge]`` bool, and for a
            Gamma-only reference ``fold_edge`` ``[n_edge]`` int (:func:`hamjax.graph.fold_gamma`
            is then applied to the predictions first).
        loss: "mse" (squared errors) or "mae" (absolute errors) for ``loss_sum``.
        align_energy_reference: shift each graph's on-site diagonal by the closed-form
            constant of the module docstring before measuring.
        weights: loss weight of every atomic number (:func:`species_weights`); None weighs
            every entry 1.

    Returns:
        Scalars: ``loss_sum`` (weighted squared or absolute errors, Hartree^2 or Hartree),
        ``loss_weight`` (summed weight of the counted entries: their number when
        unweighted), ``node_abs``, ``edge_abs`` (sums of absolute errors, Hartree),
        ``node_count``, ``edge_count`` (numbers of counted entries).
    """
    graph = batch["graph"]
    orbitals = batch["orbital_mask"]  # [n_node, M]
    node_mask = (
        batch["node_labels"][:, None, None] & orbitals[:, :, None] & orbitals[:, None, :]
    )  # [n_node, M, M]
    edge_orbitals_i = orbitals[graph.senders]  # [n_edge, M]
    edge_orbitals_j = orbitals[graph.receivers]
    edge_mask = (
        batch["edge_labels"][:, None, None]
        & edge_orbitals_i[:, :, None]
        & edge_orbitals_j[:, None, :]
    )  # [n_edge, M, M]
    if "fold_edge" in batch:  # Gamma-only reference: compare summed image blocks
        from hamjax.graph import fold_gamma

        node_pred, edge_pred = fold_gamma(
            node_pred, edge_pred, graph.senders, batch["fold_edge"], graph.edges["mask"]
        )
    node_target = batch["node_targets"].astype(node_pred.dtype)
    edge_target = batch["edge_targets"].astype(edge_pred.dtype)
    if align_energy_reference:
        n_node_total = node_pred.shape[0]
        diag_mask = jnp.diagonal(node_mask, axis1=1, axis2=2)  # [n_node, M]
        residual = jnp.diagonal(node_target - node_pred, axis1=1, axis2=2)  # [n_node, M]
        per_node = jnp.sum(jnp.where(diag_mask, residual, 0.0), axis=1)
        count = jnp.sum(diag_mask, axis=1).astype(node_pred.dtype)
        segments = _node_graph_index(graph.n_node, n_node_total)
        n_graph = graph.n_node.shape[0]
        shift = jax.ops.segment_sum(per_node, segments, n_graph) / jnp.maximum(
            jax.ops.segment_sum(count, segments, n_graph), 1.0
        )  # [n_graph], Hartree
        eye = jnp.eye(node_pred.shape[1], dtype=node_pred.dtype)
        node_pred = node_pred + shift[segments][:, None, None] * eye
    node_diff = jnp.where(node_mask, node_pred - node_target, 0.0)
    edge_diff = jnp.where(edge_mask, edge_pred - edge_target, 0.0)
    node_abs = jnp.sum(jnp.abs(node_diff))
    edge_abs = jnp.sum(jnp.abs(edge_diff))
    if weights is None:
        node_w = edge_w = jnp.ones((), node_pred.dtype)
    else:
        atom_w = jnp.asarray(weights, node_pred.dtype)[graph.nodes["species"]]  # [n_node]
        node_w = atom_w[:, None, None]
        edge_w = (0.5 * (atom_w[graph.senders] + atom_w[graph.receivers]))[:, None, None]
    if loss == "mse":
        loss_sum = jnp.sum(node_w * node_diff**2) + jnp.sum(edge_w * edge_diff**2)
    elif loss == "mae":
        loss_sum = jnp.sum(node_w * jnp.abs(node_diff)) + jnp.sum(edge_w * jnp.abs(edge_diff))
    else:
        raise ValueError(f"loss {loss!r}: choose 'mse' or 'mae'")
    return {
        "loss_sum": loss_sum,
        "loss_weight": jnp.sum(node_w * node_mask) + jnp.sum(edge_w * edge_mask),
        "node_abs": node_abs,
        "edge_abs": edge_abs,
        "node_count": jnp.sum(node_mask).astype(node_pred.dtype),
        "edge_count": jnp.sum(edge_mask).astype(node_pred.dtype),
    }


def metrics_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Loss and node / edge / total MAE (mEh and meV) from accumulated error sums."""
    sums = {k: float(v) for k, v in sums.items()}
    node_n, edge_n = sums["node_count"], sums["edge_count"]
    total_n = node_n + edge_n
    weight = sums.get("loss_weight", total_n)
    out = {"loss": sums["loss_sum"] / (weight if weight > 0 else 1.0)}
    for name, err, n in (
        ("node", sums["node_abs"], node_n),
        ("edge", sums["edge_abs"], edge_n),
        ("total", sums["node_abs"] + sums["edge_abs"], total_n),
    ):
        mae_hartree = err / n if n > 0 else float("nan")
        out[f"{name}_mae_mEh"] = 1e3 * mae_hartree
        out[f"{name}_mae_meV"] = 1e3 * HARTREE_EV * mae_hartree
    out["entries"] = int(total_n)
    return out


# --------------------------------------------------------------------------- optimiser
def _learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0, config.learning_rate, warmup, warmup + decay_steps, config.final_learning_rate
        )
    if config.schedule == "exponential":
        rate = max(config.final_learning_rate, 1e-30) / config.learning_rate
        return optax.warmup_exponential_decay_schedule(
            0.0,
            config.learning_rate,
            warmup,
            decay_steps,
            rate,
            end_value=config.final_learning_rate,
        )
    return optax.linear_schedule(0.0, config.learning_rate, max(warmup, 1))


def make_optimizer(
    config: TrainConfig, total_steps: int, steps_per_epoch: int = 1
) -> tuple[optax.GradientTransformationExtraArgs, optax.Schedule]:
    """AdamW with warm-up, decay (or reduce-on-plateau) and global-norm clipping.

    Returns:
        The optimiser (its ``update`` takes ``value=loss`` for the plateau schedule) and the
        base learning-rate schedule (step -> learning rate, before any plateau factor).
    """
    schedule = _learning_rate_schedule(config, total_steps)
    parts = []
    if config.gradient_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(config.gradient_clip_norm))
    parts.append(optax.adamw(schedule, weight_decay=config.weight_decay))
    if config.schedule == "plateau":
        parts.append(
            optax.contrib.reduce_on_plateau(
                factor=config.plateau_factor,
                patience=config.plateau_patience,
                accumulation_size=max(steps_per_epoch, 1),
            )
        )
    return optax.chain(*parts), schedule


def _plateau_scale(opt_state) -> float:
    for leaf in jax.tree.leaves(
        opt_state, is_leaf=lambda x: type(x).__name__ == "ReduceLROnPlateauState"
    ):
        if type(leaf).__name__ == "ReduceLROnPlateauState":
            return float(leaf.scale)
    return 1.0


# --------------------------------------------------------------------------- steps
@jax.tree_util.register_dataclass
@dataclass
class TrainState:
    """Parameters, optimiser state, step counter and random key (a pytree).

    Attributes:
        params: model parameters.
        opt_state: optax state.
        step: number of optimiser steps taken, int32 scalar.
        rng: random key data, uint32 ``[2]`` (``jax.random.key_data``).
    """

    params: Any
    opt_state: Any
    step: jax.Array
    rng: jax.Array


def _cast_floats(tree, dtype):
    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree.map(cast, tree)


def _sum_over_shards(model, params, stacked_batch, config: TrainConfig, dtype):
    """Error sums of a stacked batch ``[n_shard, ...]`` (one padded batch per device)."""

    weights = species_weights(config.element_loss_weights)

    def one(batch):
        batch = _cast_floats(batch, dtype)
        node_pred, edge_pred = model.apply(params, batch["graph"])
        return block_errors(
            node_pred,
            edge_pred,
            batch,
            loss=config.loss,
            align_energy_reference=config.align_energy_reference,
            weights=weights,
        )

    sums = jax.vmap(one)(stacked_batch)
    return jax.tree.map(lambda x: jnp.sum(x, axis=0), sums)


def make_train_step(model, config: TrainConfig, optimizer) -> Callable:
    """A jitted ``step(state, stacked_batch) -> (state, sums)``.

    The loss is the (weighted) error sum over all shards divided by the summed weight of the
    counted entries over all shards (their number when unweighted), so the gradient does not
    depend on how a batch is split over devices.
    """
    dtype = jnp.dtype(config.model.dtype)

    def loss_fn(params, stacked_batch):
        sums = _sum_over_shards(model, params, stacked_batch, config, dtype)
        weight = sums["loss_weight"]
        return sums["loss_sum"] / jnp.where(weight > 0, weight, 1.0), sums

    @jax.jit
    def step(state: TrainState, stacked_batch):
        (loss, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, stacked_batch)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params, value=loss)
        params = optax.apply_updates(state.params, updates)
        return (
            TrainState(params=params, opt_state=opt_state, step=state.step + 1, rng=state.rng),
            sums,
        )

    return step


def make_eval_step(model, config: TrainConfig) -> Callable:
    """A jitted ``evaluate(params, stacked_batch) -> sums`` (see :func:`block_errors`)."""
    dtype = jnp.dtype(config.model.dtype)

    @jax.jit
    def evaluate(params, stacked_batch):
        return _sum_over_shards(model, params, stacked_batch, config, dtype)

    return evaluate


# --------------------------------------------------------------------------- batches
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


class _Placement:
    """Where arrays live: a 1-D mesh over local devices, or the default device."""

    def __init__(self, data_parallel: bool):
        devices = jax.local_devices()
        self.n_shard = len(devices) if data_parallel else 1
        if self.n_shard > 1:
            from jax.sharding import Mesh, NamedSharding, PartitionSpec

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


# --------------------------------------------------------------------------- checkpoints
def _checkpoint_manager(directory: Path, read_only: bool = False):
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as policies

    options = ocp.CheckpointManagerOptions(
        enable_async_checkpointing=False,
        read_only=read_only,
        create=not read_only,
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.LatestN(n=1),
                policies.BestN(
                    get_metric_fn=lambda m: -float(m["validation_total_mae_meV"]),
                    n=1,
                    keep_checkpoints_without_metrics=False,
                ),
            ]
        ),
    )
    return ocp.CheckpointManager(
        directory.absolute(), options=options, item_names=("state", "meta")
    )


def _save_checkpoint(manager, state: TrainState, meta: dict, metric: float) -> None:
    import orbax.checkpoint as ocp

    step = int(state.step)
    host_state = jax.tree.map(np.asarray, jax.device_get(state))
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
        ),
        metrics={"validation_total_mae_meV": metric if math.isfinite(metric) else 1e30},
        force=True,
    )
    manager.wait_until_finished()


def _restore_meta(manager, step: int) -> dict:
    import orbax.checkpoint as ocp

    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def _restore_state(manager, step: int, like: TrainState) -> TrainState:
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )["state"]
    return restored


def load_checkpoint(model_dir: str | os.PathLike, which: str = "best"):
    """Config and parameters of a trained model folder (the ``--out`` of ``hamjax train``).

    Args:
        model_dir: folder with ``checkpoints/`` written by :func:`train`.
        which: "best" (lowest validation total MAE) or "latest".

    Returns:
        ``(config, params, meta)``: the :class:`TrainConfig`, the parameter pytree (NumPy
        arrays) and the checkpoint's JSON record (epoch, step, history).
    """
    import orbax.checkpoint as ocp

    model_dir = Path(model_dir)
    directory = model_dir / "checkpoints"
    if not directory.is_dir():
        raise FileNotFoundError(f"{model_dir} has no checkpoints/ folder (not a model folder)")
    manager = _checkpoint_manager(directory, read_only=True)
    latest = manager.latest_step()
    if latest is None:
        raise FileNotFoundError(f"{directory} holds no finished checkpoint")
    meta = _restore_meta(manager, latest)
    step = latest
    if which == "best" and meta.get("best_step") in manager.all_steps():
        step = int(meta["best_step"])
        meta = _restore_meta(manager, step)
    elif which not in ("best", "latest"):
        raise ValueError(f"which={which!r}: choose 'best' or 'latest'")
    config = config_from_dict(meta["config"])
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))[
        "state"
    ]
    params = restored["params"] if isinstance(restored, Mapping) else restored.params
    return config, params, meta


# --------------------------------------------------------------------------- data
def load_split(config: TrainConfig) -> tuple[list, list]:
    """Training and validation records (:class:`hamjax.blocks.BlockHamiltonian`).

    Explicit ``validation_data`` wins; else ``validation_fraction`` of the ``data`` files
    (chosen with ``seed``) is held out; with neither, validation runs on the training set.
    """
    from hamjax.io import dataset

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


def _batch_dict(graphs_tuple, targets: Mapping) -> dict:
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


def _check_basis(record, basis, index: int) -> None:
    """Every element of ``record`` must have the same shells in the model's ``basis``."""
    from ase.data import chemical_symbols

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
    graph with its reference blocks gathered onto it (:func:`hamjax.graph.gather_targets`,
    Gamma-folded when the reference is Gamma-only); ``max_graphs_per_batch`` consecutive
    graphs form one batch padded to a bucketed budget (:func:`hamjax.batching.budget_for`).

    Returns:
        Batches in the layout of :func:`block_errors`.
    """
    from hamjax import batching
    from hamjax.graph import build_graph, gather_targets
    from hamjax.partition import partition, slice_targets

    model_config = config.model
    basis = model_config.basis
    items = []  # (graph, targets) of whole structures or slices
    for index, record in enumerate(records):
        _check_basis(record, basis, index)
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
        batches.append(_batch_dict(graphs_tuple, targets))
    return batches


# --------------------------------------------------------------------------- loop
def _check_resumable(saved: TrainConfig, config: TrainConfig, directory: Path) -> None:
    """A run resumes only with the same config (``epochs``, ``progress`` and
    ``checkpoint_every_epochs`` may change)."""
    a, b = config_to_dict(saved), config_to_dict(config)
    for key in ("epochs", "progress", "checkpoint_every_epochs"):
        a.pop(key), b.pop(key)
    if a != b:
        keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        raise ValueError(
            f"{directory} holds a run with a different config (keys {keys} differ); "
            "choose another --out folder or the saved config"
        )


def _flatten_metrics(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}_{k}": v for k, v in metrics.items()}


def _accumulate(sums_list: list) -> dict[str, float]:
    host = jax.device_get(sums_list)
    keys = (
        host[0].keys()
        if host
        else ("loss_sum", "loss_weight", "node_abs", "edge_abs", "node_count", "edge_count")
    )
    return {k: float(sum(float(s[k]) for s in host)) for k in keys}


def evaluate_batches(eval_step, params, batches: Sequence[Mapping], placement) -> dict:
    """Metrics (:func:`metrics_from_sums`) of ``params`` over padded batches."""
    sums = [
        eval_step(params, placement.batch(group))
        for group in stack_for_devices(batches, placement.n_shard)
    ]
    return metrics_from_sums(_accumulate(sums))


def evaluate_records(
    model_dir: str | os.PathLike, records: Sequence, *, which: str = "best"
) -> dict[str, float]:
    """Loss and node / edge / total MAE (mEh, meV) of a trained model on block records.

    Whole structures are evaluated (no slices), with the model's own loss settings
    (energy-reference alignment included when it was trained with it).
    """
    from hamjax.models import HamiltonianModel

    config, params, _ = load_checkpoint(model_dir, which)
    config = dataclasses.replace(config, slice_width_angstrom=None)
    batches = make_batches(list(records), config)
    eval_step = make_eval_step(HamiltonianModel(config.model), config)
    return evaluate_batches(eval_step, jax.device_put(params), batches, _Placement(False))


def mean_onsite_blocks(batches: Sequence[Mapping], basis) -> np.ndarray:
    """Mean labelled on-site target block of every element, ``[n_species, M, M]`` (Hartree).

    Elements in the order of :func:`hamjax.models.block_layout`; NaN for an element with no
    labelled atom in ``batches``.
    """
    from hamjax.models import block_layout

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


def _with_onsite_bias(state: TrainState, model_config, batches: Sequence[Mapping]) -> TrainState:
    """``state`` with the on-site bias set from the data (see ``onsite_bias_from_data``)."""
    from hamjax.models import onsite_bias_for_blocks

    bias = onsite_bias_for_blocks(model_config, mean_onsite_blocks(batches, model_config.basis))
    params = jax.tree.map(lambda x: x, state.params)  # a new dict tree, same leaves
    table = params["params"]["onsite_bias"]["embedding"]
    params["params"]["onsite_bias"]["embedding"] = jnp.asarray(bias, table.dtype)
    return dataclasses.replace(state, params=params)


def _with_parameters_from(state: TrainState, config: TrainConfig) -> TrainState:
    """``state`` with the best parameters of the model folder ``config.init_from``."""
    saved, params, _ = load_checkpoint(config.init_from, "best")
    dtype = config.model.dtype
    differ = [
        f"{f.name}: {getattr(saved.model, f.name)!r} there, {getattr(config.model, f.name)!r} here"
        for f in dataclasses.fields(config.model)
        if f.name != "dtype" and getattr(saved.model, f.name) != getattr(config.model, f.name)
    ]
    if differ:
        raise ValueError(
            f"init_from {config.init_from}: its model differs from this run's ({'; '.join(differ)})"
        )
    params = _cast_floats(jax.tree.map(jnp.asarray, params), jnp.dtype(dtype))
    if jax.tree.structure(params) != jax.tree.structure(state.params):
        raise ValueError(f"init_from {config.init_from}: its parameters do not fit this model")
    return dataclasses.replace(state, params=params)


FOLDED_CELLS_FILE = "folded_cells.json"


def save_folded_cells(out: Path, records, cutoff: float) -> None:
    """Write which cells the training set folds (:func:`hamjax.graph.gamma_folded_cells`) to
    ``out/folded_cells.json``, where :class:`hamjax.inference.Predictor` looks for it."""
    from hamjax.graph import gamma_folded_cells

    cells = [list(c) for c in gamma_folded_cells(records, cutoff)]
    data = {"cutoff_angstrom": float(cutoff), "multi_image_translations_angstrom": cells}
    write_text(Path(out) / FOLDED_CELLS_FILE, json.dumps(data) + "\n")


def train(
    config: TrainConfig,
    out_dir: str | os.PathLike,
    *,
    records: tuple[list, list] | None = None,
    echo: Callable[[str], None] | None = print,
    return_state: bool = False,
):
    """Train (or resume training) a model; write checkpoints and ``log.jsonl`` to ``out_dir``.

    Args:
        config: the run's configuration.
        out_dir: output folder; if it holds checkpoints of the same config, training resumes
            from the latest one.
        records: ``(train, validation)`` lists of BlockHamiltonian records to use instead of
            the ``data`` files of the config.
        echo: where one line per epoch goes (None: silent).
        return_state: also return the final :class:`TrainState` (host arrays).

    Returns:
        The last epoch's log record (see ``log.jsonl``), or the restored one when nothing
        was left to do; with ``return_state``, ``(record, state)``.
    """
    from tqdm.auto import tqdm

    from hamjax.models import HamiltonianModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manager = _checkpoint_manager(out / "checkpoints")
    latest = manager.latest_step()
    meta = None
    if latest is not None:
        meta = _restore_meta(manager, latest)
        _check_resumable(config_from_dict(meta["config"]), config, out)
    save_config(config, out / "config.json")

    train_records, val_records = records if records is not None else load_split(config)
    save_folded_cells(out, train_records, config.model.cutoff)
    train_batches = make_batches(train_records, config)
    val_batches = make_batches(val_records, config) if val_records else train_batches
    placement = _Placement(config.data_parallel)
    steps_per_epoch = len(stack_for_devices(train_batches, placement.n_shard))
    total_steps = steps_per_epoch * config.epochs
    optimizer, schedule = make_optimizer(config, total_steps, steps_per_epoch)

    dtype = jnp.dtype(config.model.dtype)
    model = HamiltonianModel(config.model)
    init_key, key = jax.random.split(jax.random.key(config.seed))

    @jax.jit
    def init(init_key, key, graph):
        params = _cast_floats(model.init(init_key, _cast_floats(graph, dtype)), dtype)
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.asarray(0, jnp.int32),
            rng=jax.random.key_data(key),
        )

    state = init(init_key, key, train_batches[0]["graph"])
    if config.init_from and meta is None:
        state = _with_parameters_from(state, config)
        if echo:
            echo(f"starting from the best parameters of {config.init_from}")
    elif config.onsite_bias_from_data and meta is None:
        state = _with_onsite_bias(state, config.model, train_batches)
    history: list[dict] = []
    start_epoch, best_step, best_metric = 0, None, math.inf
    if meta is not None:
        state = _restore_state(manager, latest, state)
        history = list(meta["history"])
        start_epoch = int(meta["epoch"])
        best_step, best_metric = meta.get("best_step"), float(meta.get("best_metric", math.inf))
        if echo:
            echo(f"resuming from {out / 'checkpoints'} at epoch {start_epoch}, step {latest}")
    # The log is rewritten from the checkpoint, so a kill between checkpoint and log write
    # neither repeats nor loses an epoch.
    write_text(out / "log.jsonl", "".join(json.dumps(r) + "\n" for r in history))

    state = placement.replicate(jax.tree.map(jnp.asarray, state))
    train_step = make_train_step(model, config, optimizer)
    eval_step = make_eval_step(model, config)
    record = history[-1] if history else {}
    for epoch in range(start_epoch + 1, config.epochs + 1):
        start = time.perf_counter()
        groups = stack_for_devices(
            train_batches, placement.n_shard, np.random.default_rng([config.seed, epoch])
        )
        sums = []
        bar = tqdm(
            groups,
            desc=f"epoch {epoch}/{config.epochs}",
            leave=False,
            disable=not config.progress,
            unit="step",
        )
        for group in bar:
            state, step_sums = train_step(state, placement.batch(group))
            sums.append(step_sums)
        train_metrics = metrics_from_sums(_accumulate(sums))
        train_time = time.perf_counter() - start
        val_metrics = evaluate_batches(eval_step, state.params, val_batches, placement)
        step = int(state.step)
        metric = val_metrics["total_mae_meV"]
        save = epoch % config.checkpoint_every_epochs == 0 or epoch == config.epochs
        if save and metric < best_metric:
            best_metric, best_step = metric, step
        record = {
            "epoch": epoch,
            "step": step,
            "learning_rate": float(np.asarray(schedule(max(step - 1, 0))))
            * _plateau_scale(state.opt_state),
            **_flatten_metrics("train", train_metrics),
            **_flatten_metrics("validation", val_metrics),
            "train_time_s": train_time,
            "epoch_time_s": time.perf_counter() - start,
        }
        history.append(record)
        meta = {
            "config": config_to_dict(config),
            "epoch": epoch,
            "step": step,
            "best_step": best_step,
            "best_metric": best_metric,
            "history": history,
        }
        with open(out / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if save:
            _save_checkpoint(manager, state, meta, metric)
        if echo:
            echo(
                f"epoch {epoch:4d}  step {step:6d}  loss {train_metrics['loss']:.3e}  "
                f"train MAE {train_metrics['total_mae_meV']:.3f} meV  "
                f"validation MAE {metric:.3f} meV (node {val_metrics['node_mae_meV']:.3f}, "
                f"edge {val_metrics['edge_mae_meV']:.3f})  {record['epoch_time_s']:.1f} s"
            )
    manager.close()
    if return_state:
        return record, jax.device_get(state)
    return record
