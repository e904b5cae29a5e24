"""The model folder written by ``hamjax train --out``: read-only access for inference.

Layout::

    config.json           the training config (hamjax.train.TrainConfig as JSON)
    log.jsonl             one line per epoch
    folded_cells.json     cells the training set folds (see hamjax.inference.Predictor)
    checkpoints/<step>/   orbax checkpoints: "state" (parameters, optimiser state, step,
                          random key) and "meta" (JSON: config, epoch, step, best step and
                          metric, per-epoch history); the latest and the best are kept

This module reads the folder without the training code (no optimiser library is imported):
:func:`read_checkpoint` returns the model config, the parameters and the checkpoint's JSON
record of the best or latest checkpoint. The training loop (:mod:`hamjax.train`) writes the
folder with the manager of :func:`checkpoint_manager` and reads it back to resume.

A folder that is not a model folder, or whose checkpoint is truncated or corrupt, raises
:class:`ModelFolderError` naming the folder, the checkpoint and what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hamjax.pretrained import resolve

__all__ = [
    "CHECKPOINTS_DIR",
    "CONFIG_FILE",
    "FOLDED_CELLS_FILE",
    "LOG_FILE",
    "ModelFolderError",
    "SavedModel",
    "checkpoint_manager",
    "read_checkpoint",
    "read_folded_cells",
]

CHECKPOINTS_DIR = "checkpoints"
CONFIG_FILE = "config.json"
LOG_FILE = "log.jsonl"
FOLDED_CELLS_FILE = "folded_cells.json"

#: Checkpoint metric that decides which checkpoint is the best one (lowest wins).
BEST_METRIC = "validation_total_mae_meV"


class ModelFolderError(ValueError):
    """A model folder that cannot be read; the message names the folder and the problem."""


@contextmanager
def _quiet_absl():
    """Raise absl's threshold to ERROR while an orbax manager is set up.

    A read-only manager reports through absl logging that its folder is read-only, a
    warning of every ``hamjax predict`` that says nothing to its user. hamjax's own warnings
    go through :mod:`warnings` and are not affected; orbax's errors still show.
    """
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def checkpoint_manager(directory: str | os.PathLike, *, read_only: bool = False):
    """The orbax ``CheckpointManager`` of ``directory`` (``<model folder>/checkpoints``).

    Writable: keeps the latest checkpoint and the best one (lowest ``BEST_METRIC``), saves
    synchronously. Read-only: saves and deletes nothing and creates no folder.
    """
    import orbax.checkpoint as ocp
    from orbax.checkpoint import checkpoint_managers as policies

    if read_only:
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            read_only=True,
            create=False,
            save_interval_steps=0,
        )
    else:
        options = ocp.CheckpointManagerOptions(
            enable_async_checkpointing=False,
            create=True,
            preservation_policy=policies.AnyPreservationPolicy(
                [
                    policies.LatestN(n=1),
                    policies.BestN(
                        get_metric_fn=lambda m: -float(m[BEST_METRIC]),
                        n=1,
                        keep_checkpoints_without_metrics=False,
                    ),
                ]
            ),
        )
    with _quiet_absl():
        return ocp.CheckpointManager(
            Path(directory).absolute(), options=options, item_names=("state", "meta")
        )


def restore_meta(manager, step: int) -> dict:
    """The JSON record ("meta" item) of checkpoint ``step``."""
    import orbax.checkpoint as ocp

    return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


@dataclass(frozen=True)
class SavedModel:
    """One checkpoint of a model folder.

    Attributes:
        folder: the model folder.
        step: optimiser step of the checkpoint.
        config: the training config as saved (a JSON dict; ``hamjax.train`` turns it into a
            ``TrainConfig``).
        model: the model config (:class:`hamjax.models.ModelConfig`).
        params: the parameter pytree (NumPy arrays).
        meta: the checkpoint's JSON record (config, epoch, step, best step, history).
    """

    folder: Path
    step: int
    config: dict
    model: Any
    params: Any
    meta: dict


def _fail(folder: Path, what: str, err: BaseException | None = None) -> ModelFolderError:
    reason = f" ({type(err).__name__}: {err})" if err is not None else ""
    return ModelFolderError(f"model folder {folder}: {what}{reason}")


def read_checkpoint(model_dir: str | os.PathLike, which: str = "best") -> SavedModel:
    """The best or latest checkpoint of a model folder (read-only).

    Args:
        model_dir: folder with ``checkpoints/`` written by ``hamjax train``, or the name of a
            model shipped with hamjax (:mod:`hamjax.pretrained`, e.g. ``"vcm-gfn1"``).
        which: "best" (lowest validation total MAE among the kept checkpoints) or "latest".

    Raises:
        FileNotFoundError: no ``checkpoints/`` folder, or no finished checkpoint in it.
        ModelFolderError: a checkpoint whose record or parameters cannot be read (truncated,
            corrupt, or not written by hamjax), or whose model config is invalid.
    """
    from hamjax.models import ModelConfig

    if which not in ("best", "latest"):
        raise ValueError(f"which={which!r}: choose 'best' or 'latest'")
    folder = resolve(model_dir)
    directory = folder / CHECKPOINTS_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"{folder} has no {CHECKPOINTS_DIR}/ folder (not a model folder)")
    manager = checkpoint_manager(directory, read_only=True)
    try:
        latest = manager.latest_step()
        if latest is None:
            raise FileNotFoundError(f"{directory} holds no finished checkpoint")
        step = latest
        meta = _read_meta(manager, folder, step)
        if which == "best" and meta.get("best_step") in manager.all_steps():
            step = int(meta["best_step"])
            meta = _read_meta(manager, folder, step)
        config = meta.get("config")
        if not isinstance(config, Mapping) or not isinstance(config.get("model"), Mapping):
            raise _fail(folder, f"checkpoint {step} records no training config with a model")
        try:
            model = ModelConfig.from_dict(dict(config["model"]))
        except (KeyError, TypeError, ValueError) as err:
            raise _fail(folder, f"checkpoint {step}: invalid model config", err) from None
        try:
            restored = manager.restore(step, args=_state_restore_args())["state"]
        except Exception as err:  # orbax and tensorstore raise many types for bad files
            raise _fail(folder, f"checkpoint {step}: parameters cannot be read", err) from None
        params = restored["params"] if isinstance(restored, Mapping) else restored.params
        return SavedModel(folder, step, dict(config), model, params, meta)
    finally:
        manager.close()


def _state_restore_args():
    import orbax.checkpoint as ocp

    return ocp.args.Composite(state=ocp.args.StandardRestore())


def _read_meta(manager, folder: Path, step: int) -> dict:
    try:
        meta = restore_meta(manager, step)
    except Exception as err:  # orbax raises many types for a missing or corrupt item
        raise _fail(folder, f"checkpoint {step}: its JSON record cannot be read", err) from None
    if not isinstance(meta, Mapping):
        raise _fail(folder, f"checkpoint {step}: its JSON record is not an object")
    return dict(meta)


def read_folded_cells(model_dir: str | os.PathLike) -> list[tuple[float, ...]]:
    """Multi-image translations of the Gamma-folded training cells (empty when not recorded).

    Raises:
        ModelFolderError: the file exists but is not the JSON that training writes.
    """
    path = resolve(model_dir) / FOLDED_CELLS_FILE
    if not path.exists():
        return []
    try:
        cells = json.loads(path.read_text())["multi_image_translations_angstrom"]
        return [tuple(float(x) for x in c) for c in cells]
    except (ValueError, KeyError, TypeError) as err:
        raise _fail(Path(model_dir), f"{FOLDED_CELLS_FILE} is not readable", err) from None
