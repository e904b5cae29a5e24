"""Masked losses and metrics of padded block batches, with element weights and energy alignment.

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
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ase.data import atomic_numbers

from hamjax.constants import HARTREE_EV
from hamjax.folding import fold_gamma

__all__ = [
    "block_errors",
    "loss_and_mae_from_sums",
    "node_graph_index",
    "species_weights",
]


def species_weights(element_loss_weights: Mapping[str, float]) -> np.ndarray | None:
    """Loss weight of every atomic number, ``[119]`` (1 where not named); None for no weights.

    Raises ValueError naming an unknown element symbol or a weight that is not positive.
    """
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


def node_graph_index(n_node: jax.Array, total: int) -> jax.Array:
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
            Gamma-only reference ``fold_edge`` ``[n_edge]`` int (:func:`hamjax.folding.fold_gamma`
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
        segments = node_graph_index(graph.n_node, n_node_total)
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


def loss_and_mae_from_sums(sums: Mapping[str, Any]) -> dict[str, float]:
    """Loss and node / edge / total MAE (mEh and meV) from error sums of :func:`block_errors`."""
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
