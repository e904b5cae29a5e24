"""Checkpoints of a training run: save, restore to resume, and load a trained model folder.

``OUT/checkpoints/<step>/`` (orbax ``CheckpointManager``, see :mod:`hamjax.io.model_folder`)
holds the parameters, optimiser state, step, random key, and a JSON item with the config,
the epoch and the per-epoch log. The latest checkpoint and the best one (lowest validation
total MAE) are kept. Running the same command again restores the latest checkpoint and
continues; ``OUT/log.jsonl`` is rewritten from the checkpoint's history first, so an
interrupted run neither repeats nor loses an epoch in the log.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import numpy as np

from hamjax.io import model_folder
from hamjax.io.model_folder import BEST_METRIC, checkpoint_manager
from hamjax.train.config import TrainConfig, config_from_dict

if TYPE_CHECKING:
    from hamjax.train.loop import TrainState

__all__ = [
    "load_checkpoint",
    "open_checkpoints",
    "restore_state",
    "save_checkpoint",
]


def open_checkpoints(out: str | os.PathLike):
    """The writable checkpoint manager of the run folder ``out`` (creates ``checkpoints/``)."""
    return checkpoint_manager(Path(out) / model_folder.CHECKPOINTS_DIR)


def save_checkpoint(manager, state: TrainState, meta: dict, metric: float) -> None:
    """Save ``state`` (host copy) and the JSON record ``meta`` at step ``state.step``, with the
    validation ``metric`` that decides the best checkpoint; returns when it is on disk."""
    import orbax.checkpoint as ocp

    step = int(state.step)
    host_state = jax.tree.map(np.asarray, jax.device_get(state))
    manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(host_state), meta=ocp.args.JsonSave(meta)
        ),
        metrics={BEST_METRIC: metric if math.isfinite(metric) else 1e30},
        force=True,
    )
    manager.wait_until_finished()


def restore_state(manager, step: int, like: TrainState) -> TrainState:
    """The training state of checkpoint ``step``, with the structure and dtypes of ``like``."""
    import orbax.checkpoint as ocp

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), like)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
    )["state"]
    return restored


def load_checkpoint(model_dir: str | os.PathLike, which: str = "best"):
    """Config and parameters of a trained model folder (the ``--out`` of ``hamjax train``).

    Args:
        model_dir: folder with ``checkpoints/`` written by :func:`hamjax.train.train`.
        which: "best" (lowest validation total MAE) or "latest".

    Returns:
        ``(config, params, meta)``: the :class:`TrainConfig`, the parameter pytree (NumPy
        arrays) and the checkpoint's JSON record (epoch, step, history).

    Raises:
        FileNotFoundError, hamjax.io.model_folder.ModelFolderError: see
            :func:`hamjax.io.model_folder.read_checkpoint`; a saved config that is not a
            valid TrainConfig raises naming the folder, the checkpoint and the key.
    """
    saved = model_folder.read_checkpoint(model_dir, which)
    source = f"model folder {saved.folder}, checkpoint {saved.step}"
    config: TrainConfig = config_from_dict(saved.config, source=source)
    return config, saved.params, saved.meta
