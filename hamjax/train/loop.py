"""The training loop: train and evaluation steps, their state, and :func:`train`.

Everything here is a pure function around :class:`hamjax.models.HamiltonianModel`; no Flax
module is defined in this package. The pieces live beside it: the config
(:mod:`hamjax.train.config`), the masked losses (:mod:`hamjax.train.loss`), the optimiser
(:mod:`hamjax.train.optim`), batches and their placement on devices
(:mod:`hamjax.train.data`) and checkpoints (:mod:`hamjax.train.checkpoint`).

Data parallelism
----------------
Every step takes one padded batch per local device, stacked on a leading axis that is
sharded over a ``jax.sharding.Mesh`` of the local devices; parameters are replicated. On one
device the same code runs with a leading axis of one. The loss of a step is the error sum
over all shards divided by the summed weight over all shards, so the gradient does not
depend on how a batch is split.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from hamjax.folding import gamma_folded_cells
from hamjax.io.atomic import write_text
from hamjax.io.model_folder import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    FOLDED_CELLS_FILE,
    LOG_FILE,
    restore_meta,
)
from hamjax.models import HamiltonianModel, onsite_bias_for_blocks
from hamjax.train.checkpoint import (
    load_checkpoint,
    open_checkpoints,
    restore_state,
    save_checkpoint,
)
from hamjax.train.config import (
    TrainConfig,
    config_from_dict,
    config_to_dict,
    save_config,
    with_data_basis,
)
from hamjax.train.data import (
    Placement,
    load_split,
    make_batches,
    mean_onsite_blocks,
    stack_for_devices,
)
from hamjax.train.loss import block_errors, loss_and_mae_from_sums, species_weights
from hamjax.train.optim import make_optimizer, plateau_scale

__all__ = [
    "TrainState",
    "cast_floats",
    "check_resumable",
    "evaluate_batches",
    "loss_and_mae_of_model",
    "make_eval_step",
    "make_train_step",
    "save_folded_cells",
    "train",
]


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


def cast_floats(tree, dtype):
    """``tree`` with every floating array cast to ``dtype`` (integer and bool arrays kept)."""

    def cast(x):
        if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree.map(cast, tree)


def _sum_over_shards(model, params, stacked_batch, config: TrainConfig, dtype):
    """Error sums of a stacked batch ``[n_shard, ...]`` (one padded batch per device)."""

    weights = species_weights(config.element_loss_weights)

    def one(batch):
        batch = cast_floats(batch, dtype)
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


def check_resumable(saved: TrainConfig, config: TrainConfig, directory: Path) -> None:
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
    """Metrics (:func:`~hamjax.train.loss.loss_and_mae_from_sums`) of ``params`` over padded
    batches."""
    sums = [
        eval_step(params, placement.batch(group))
        for group in stack_for_devices(batches, placement.n_shard)
    ]
    return loss_and_mae_from_sums(_accumulate(sums))


def loss_and_mae_of_model(
    model_dir: str | os.PathLike, records: Sequence, *, which: str = "best"
) -> dict[str, float]:
    """Loss and node / edge / total MAE (mEh, meV) of a trained model on block records.

    Whole structures are evaluated (no slices), with the model's own loss settings
    (energy-reference alignment included when it was trained with it).
    """
    config, params, _ = load_checkpoint(model_dir, which)
    config = dataclasses.replace(config, slice_width_angstrom=None)
    batches = make_batches(list(records), config)
    eval_step = make_eval_step(HamiltonianModel(config.model), config)
    return evaluate_batches(eval_step, jax.device_put(params), batches, Placement(False))


def _with_onsite_bias(state: TrainState, model_config, batches: Sequence[Mapping]) -> TrainState:
    """``state`` with the on-site bias set from the data (see ``onsite_bias_from_data``)."""
    bias = onsite_bias_for_blocks(model_config, mean_onsite_blocks(batches, model_config.basis))
    params = jax.tree.map(lambda x: x, state.params)  # a new dict tree, same leaves
    table = params["params"]["onsite_bias"]["embedding"]
    params["params"]["onsite_bias"]["embedding"] = jnp.asarray(bias, table.dtype)
    return dataclasses.replace(state, params=params)


def _starting_parameters(config: TrainConfig):
    """The best parameters of the model folder ``config.init_from``, cast to this run's dtype;
    raises naming the fields where its model differs from this run's (the dtype may)."""
    saved, params, _ = load_checkpoint(config.init_from, "best")
    differ = [
        f"{f.name}: {getattr(saved.model, f.name)!r} there, {getattr(config.model, f.name)!r} here"
        for f in dataclasses.fields(config.model)
        if f.name != "dtype" and getattr(saved.model, f.name) != getattr(config.model, f.name)
    ]
    if differ:
        raise ValueError(
            f"init_from {config.init_from}: its model differs from this run's ({'; '.join(differ)})"
        )
    return cast_floats(jax.tree.map(jnp.asarray, params), jnp.dtype(config.model.dtype))


def _with_parameters(state: TrainState, params, source: str) -> TrainState:
    """``state`` with ``params`` (of the model folder ``source``) in place of its own."""
    if jax.tree.structure(params) != jax.tree.structure(state.params):
        raise ValueError(f"init_from {source}: its parameters do not fit this model")
    return dataclasses.replace(state, params=params)


def save_folded_cells(out: Path, records, cutoff: float) -> None:
    """Write which cells the training set folds (:func:`hamjax.folding.gamma_folded_cells`) to
    ``out/folded_cells.json``, where :class:`hamjax.inference.Predictor` looks for it."""
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
    until_epoch: int | None = None,
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
        until_epoch: stop after this epoch, its checkpoint written (training in sittings:
            a later call with the same config resumes there); None runs to the last epoch.

    Returns:
        The last epoch's log record (see ``log.jsonl``), or the restored one when nothing
        was left to do; with ``return_state``, ``(record, state)``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_records, val_records = records if records is not None else load_split(config)
    config = with_data_basis(config, train_records)
    manager = open_checkpoints(out)
    latest = manager.latest_step()
    meta = None
    if latest is not None:
        meta = restore_meta(manager, latest)
        check_resumable(config_from_dict(meta["config"]), config, out)
    save_config(config, out / CONFIG_FILE)
    save_folded_cells(out, train_records, config.model.cutoff)
    train_batches = make_batches(train_records, config)
    val_batches = make_batches(val_records, config) if val_records else train_batches
    placement = Placement(config.data_parallel)
    steps_per_epoch = len(stack_for_devices(train_batches, placement.n_shard))
    epochs = config.epochs if config.steps is None else -(-config.steps // steps_per_epoch)
    total_steps = steps_per_epoch * epochs
    optimizer, schedule = make_optimizer(config, total_steps, steps_per_epoch)

    dtype = jnp.dtype(config.model.dtype)
    model = HamiltonianModel(config.model)
    init_key, key = jax.random.split(jax.random.key(config.seed))

    @jax.jit
    def init(init_key, key, graph):
        params = cast_floats(model.init(init_key, cast_floats(graph, dtype)), dtype)
        return TrainState(
            params=params,
            opt_state=optimizer.init(params),
            step=jnp.asarray(0, jnp.int32),
            rng=jax.random.key_data(key),
        )

    # a model folder to start from is checked before anything is compiled
    start_params = _starting_parameters(config) if config.init_from and meta is None else None
    state = init(init_key, key, train_batches[0]["graph"])
    if start_params is not None:
        state = _with_parameters(state, start_params, config.init_from)
        if echo:
            echo(f"starting from the best parameters of {config.init_from}")
    elif config.onsite_bias_from_data and meta is None:
        state = _with_onsite_bias(state, config.model, train_batches)
    history: list[dict] = []
    start_epoch, best_step, best_metric = 0, None, math.inf
    if meta is not None:
        state = restore_state(manager, latest, state)
        history = list(meta["history"])
        start_epoch = int(meta["epoch"])
        best_step, best_metric = meta.get("best_step"), float(meta.get("best_metric", math.inf))
        if echo:
            echo(f"resuming from {out / CHECKPOINTS_DIR} at epoch {start_epoch}, step {latest}")
    # The log is rewritten from the checkpoint, so a kill between checkpoint and log write
    # neither repeats nor loses an epoch.
    write_text(out / LOG_FILE, "".join(json.dumps(r) + "\n" for r in history))

    state = placement.replicate(jax.tree.map(jnp.asarray, state))
    train_step = make_train_step(model, config, optimizer)
    eval_step = make_eval_step(model, config)
    record = history[-1] if history else {}
    last = epochs if until_epoch is None else min(epochs, until_epoch)
    for epoch in range(start_epoch + 1, last + 1):
        start = time.perf_counter()
        groups = stack_for_devices(
            train_batches, placement.n_shard, np.random.default_rng([config.seed, epoch])
        )
        sums = []
        bar = tqdm(
            groups,
            desc=f"epoch {epoch}/{epochs}",
            leave=False,
            disable=not config.progress,
            unit="step",
        )
        for group in bar:
            state, step_sums = train_step(state, placement.batch(group))
            sums.append(step_sums)
        train_metrics = loss_and_mae_from_sums(_accumulate(sums))
        train_time = time.perf_counter() - start
        val_metrics = evaluate_batches(eval_step, state.params, val_batches, placement)
        step = int(state.step)
        metric = val_metrics["total_mae_meV"]
        save = epoch % config.checkpoint_every_epochs == 0 or epoch in (epochs, last)
        if save and metric < best_metric:
            best_metric, best_step = metric, step
        record = {
            "epoch": epoch,
            "step": step,
            "learning_rate": float(np.asarray(schedule(max(step - 1, 0))))
            * plateau_scale(state.opt_state),
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
        with open(out / LOG_FILE, "a") as handle:
            handle.write(json.dumps(record) + "\n")
        if save:
            save_checkpoint(manager, state, meta, metric)
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
