"""Training configuration: :class:`TrainConfig`, its JSON file, the model's basis from the data.

Config file (JSON)
------------------
``hamjax train --config cfg.json`` reads one JSON object whose keys are the fields of
:class:`TrainConfig` (through :mod:`hamjax.config`: an unknown key or a value of the wrong
type is an error naming the file and the key); ``"model"`` is a nested object with the fields
of the model config (:class:`hamjax.models.ModelConfig`). Missing keys take the defaults (one
interaction layer, lmax 4, 16 channels, 2 heads, 8 Angstrom cutoff, float32, AdamW 1e-4 ->
1e-5, MSE on the blocks, slices of 4 Angstrom along x). ``hamjax train
--print-default-config`` prints the full default file; a minimal one::

    {
      "data": ["data/vcm_0.npz", "data/vcm_1.npz"],
      "validation_data": ["data/vcm_val.npz"],
      "slice_width_angstrom": 4.0,
      "epochs": 200,
      "model": {"max_ell": 4, "channels": 16}
    }

Relative data paths are relative to the config file. The config is saved as ``config.json``
in the output folder and inside every checkpoint, with the model's basis written out.

The model's basis
-----------------
A model object without ``"basis"`` takes the basis of the training data: every dataset file
records the basis of its reference (name and shells of each element, e.g. tblite GFN1-xTB
for the elements of the structure), and the model gets that basis for every element present
in the training structures (:func:`data_basis`). The files must agree on the basis name and
on the shells of each element; a model for other elements, or for a basis the data do not
use, names its ``"basis"`` explicitly (``{"name": ..., "shells": {"Z": [l, ...]}}``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hamjax import config as json_config
from hamjax.basis import Basis
from hamjax.io.atomic import write_text
from hamjax.models import ModelConfig
from hamjax.train.loss import species_weights

__all__ = [
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "data_basis",
    "default_config",
    "default_model_settings",
    "format_config",
    "load_config",
    "model_from_json",
    "save_config",
    "with_data_basis",
]

#: An s-only basis that lets ModelConfig check the other fields of a model without a basis.
_PROBE_BASIS = Basis.from_dict("probe", {1: (0,)})


def default_model_settings() -> dict[str, Any]:
    """The ModelConfig defaults of every field except ``basis``."""
    return {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.name != "basis"}


def model_from_json(data) -> ModelConfig | dict[str, Any]:
    """The model of a config from a (partial) JSON object merged onto the defaults.

    Returns:
        A :class:`~hamjax.models.ModelConfig` when ``data`` names a ``basis`` (or is a
        ModelConfig already); otherwise the dict of every other field, checked by
        ModelConfig, whose basis comes from the training data (:func:`with_data_basis`).

    Raises:
        ValueError: not an object, an unknown key, or a value ModelConfig rejects.
    """
    if isinstance(data, ModelConfig):
        return data
    if not isinstance(data, Mapping):
        raise ValueError(f"the model must be an object, got {data!r}")
    merged = {**default_model_settings(), **data}
    if "basis" in data:
        return ModelConfig.from_dict(merged)
    checked = ModelConfig.from_dict({**merged, "basis": _PROBE_BASIS})
    return {name: getattr(checked, name) for name in default_model_settings()}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs (frozen); saved as JSON with the checkpoints.

    Attributes:
        model: the model (:class:`hamjax.models.ModelConfig`), or its fields other than
            ``basis`` as a dict (missing ones take the ModelConfig defaults): the model then
            takes the basis of the training data (:func:`with_data_basis`, at the start of
            :func:`hamjax.train.train`). In JSON, a partial object is merged onto the
            defaults; with a ``"basis"`` it is a complete model.
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
        steps: optimiser steps to train instead of ``epochs`` epochs (rounded up to whole
            epochs; the schedule spans them), e.g. a short fine-tuning; None: ``epochs``.
        init_from: a model folder written by :func:`train`, or a shipped model's name
            (:mod:`hamjax.pretrained`), whose best parameters start this run (fine-tuning on
            new data, or a new schedule after an unfinished one); the optimiser and schedule
            start fresh. Its model must equal this run's (the dtype may differ).
    """

    model: Any = field(default=None, metadata={"from_json": model_from_json})
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
    element_loss_weights: Mapping[str, float] = field(default_factory=dict)
    align_energy_reference: bool = False
    data_parallel: bool = True
    progress: bool = True
    init_from: str | None = None
    steps: int | None = None

    def __post_init__(self):
        if self.model is None:
            object.__setattr__(self, "model", default_model_settings())
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
        if self.steps is not None and self.steps < 1:
            raise ValueError("config key 'steps' must be at least 1 or null")
        if self.padding_growth <= 1.0:
            raise ValueError("config key 'padding_growth' must be above 1")
        if self.learning_rate <= 0 or self.final_learning_rate < 0:
            raise ValueError("config keys 'learning_rate' > 0 and 'final_learning_rate' >= 0")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise ValueError("config key 'validation_fraction' must lie in [0, 1)")
        species_weights(self.element_loss_weights)  # raises naming a bad entry


def default_config() -> TrainConfig:
    """The default configuration (its model takes the basis of the training data)."""
    return TrainConfig()


def config_to_dict(config) -> dict:
    """A JSON-ready nested dict of a (nested) config dataclass; tuples become lists."""
    return json_config.to_dict(config)


def config_from_dict(data: Mapping, *, source: str = "") -> TrainConfig:
    """Build a :class:`TrainConfig` from a (JSON) dict.

    Raises:
        hamjax.config.ConfigError: an unknown key or a bad value, named with ``source`` (the
            file it came from) and the key.
    """
    return json_config.from_dict(TrainConfig, data, source=source)


def load_config(path: str | os.PathLike) -> TrainConfig:
    """Read a JSON config file (errors name the file and the key).

    Relative ``data`` and ``validation_data`` paths (and glob patterns) are taken relative
    to the config file's folder.
    """
    path = Path(path)
    config = config_from_dict(json_config.read_json_object(path), source=str(path))
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


def _structure_name(record, index: int) -> str:
    name = record.metadata.get("name")
    return f"structure {index} ({name})" if name else f"structure {index}"


def data_basis(records: Sequence) -> Basis:
    """The basis of the training data: the records' common basis name, restricted to the
    elements present in them (shells as each record's basis gives them).

    Raises:
        ValueError: no records, records of different bases, or an element whose shells
            differ between records (naming the structures).
    """
    from ase.data import chemical_symbols

    if not records:
        raise ValueError("no training structures to take the model's basis from")
    name = records[0].basis.name
    shells: dict[int, tuple[int, ...]] = {}
    first: dict[int, str] = {}
    for index, record in enumerate(records):
        where = _structure_name(record, index)
        if record.basis.name != name:
            raise ValueError(
                f"the training structures use different bases ({name!r} in "
                f"{_structure_name(records[0], 0)}, {record.basis.name!r} in {where}); give the "
                "model's basis in the config"
            )
        for z in sorted({int(n) for n in record.numbers}):
            own = record.basis.shells_of(z)
            if shells.setdefault(z, own) != own:
                raise ValueError(
                    f"element {chemical_symbols[z]} has shells {shells[z]} in {first[z]} but "
                    f"{own} in {where} (basis {name!r})"
                )
            first.setdefault(z, where)
    return Basis.from_dict(name, shells)


def with_data_basis(config: TrainConfig, records: Sequence) -> TrainConfig:
    """``config`` with a complete model: one without a basis takes :func:`data_basis` of
    ``records`` (the training structures); a ModelConfig is kept as it is."""
    if isinstance(config.model, ModelConfig):
        return config
    basis = data_basis(records)
    try:
        model = ModelConfig(basis=basis, **config.model)
    except ValueError as err:
        raise ValueError(f"config key 'model' with the training data's basis: {err}") from None
    return dataclasses.replace(config, model=model)
