"""The devices of the VCM experiment and the names of their files.

Training devices with random oxygen vacancies (one per seed), the validation device and the
test devices, all :class:`hamjax.structures.DeviceSpec` fields on top of
``VCMConfig.device`` (:mod:`hamjax.vcm.config`).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from hamjax.structures import DeviceSpec, build_device

if TYPE_CHECKING:  # for annotations only: hamjax.vcm.config imports this module
    from hamjax.vcm.config import VCMConfig

__all__ = ["build_devices", "file_name", "reference_file"]


def build_devices(config: VCMConfig) -> dict[str, dict]:
    """Name -> ``{"atoms", "role", "spec"}`` for every device of the experiment."""
    base = dict(config.device)

    def as_given(fields: Mapping) -> dict:  # a vacancy pattern as specified, test background
        return {**base, "vacancy_density": config.filament_background_density, **fields}

    jobs: dict[str, tuple[str, dict]] = {}
    for seed in config.train_seeds:
        random = {"vacancy_mode": "random", "vacancy_density": config.vacancy_density}
        jobs[f"train-{seed}"] = ("train", {**base, **random, "seed": seed})
    for name, fields in config.train_devices.items():
        jobs[name] = ("train", as_given(fields))
    jobs["validation"] = (
        "validation",
        {
            **base,
            "vacancy_mode": "random",
            "vacancy_density": config.vacancy_density,
            "seed": config.validation_seed,
        },
    )
    for name, fields in config.test_devices.items():
        jobs[name] = ("test", as_given(fields))
    devices = {}
    for name, (role, fields) in jobs.items():
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        try:
            spec = DeviceSpec(**fields)
        except TypeError as err:
            raise ValueError(f"device {name!r}: {err}") from None
        devices[name] = {"atoms": build_device(spec), "role": role, "spec": spec}
    return devices


def file_name(name: str) -> str:
    """The file name of device ``name``: lower case, no spaces (``"Filament 1"`` ->
    ``"filament_1"``); two devices whose file names agree would share their files."""
    return name.lower().replace(" ", "_")


def reference_file(folder: Path, name: str) -> Path:
    """The dataset file of device ``name``'s reference in ``folder`` (an experiment's
    ``out/"data"``)."""
    return Path(folder) / f"{file_name(name)}.npz"
