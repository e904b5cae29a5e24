"""GFN1-xTB reference Hamiltonians of the VCM devices (tblite), cached as dataset files.

Each device's SCF runs in a child process (:func:`hamjax.reference.worker.compute_in_subprocess`)
and is saved as a dataset file in the run's ``data/``; a file that matches the device, the
electronic temperature, the k-grid and the image resolution asked for is reused.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from hamjax.io import dataset
from hamjax.reference.tblite import TBLiteSettings
from hamjax.reference.worker import compute_in_subprocess
from hamjax.vcm.devices import reference_file

__all__ = ["check_temperatures", "compute_references", "device_tblite_settings"]


def device_tblite_settings(settings: Mapping, device: Mapping) -> dict:
    """The tblite settings of one device: ``scf_supercell`` is the k-sampling of a device one
    TiN cell across, so a device ``(n_y, n_z)`` cells across gets it divided by its cells
    (a 2 x 2 device at its Gamma point is sampled like a narrow one with (1, 2, 2))."""
    settings = dict(settings)
    supercell = tuple(settings.get("scf_supercell", (1, 1, 1)))
    spec = device.get("spec")
    cells = (1, *tuple(spec.transverse_cells)) if spec is not None else (1, 1, 1)
    if supercell == (1, 1, 1) or cells == (1, 1, 1):
        return settings
    if any(s > 1 and s % c for s, c in zip(supercell, cells, strict=True)):
        raise ValueError(
            f"tblite scf_supercell {supercell} is not a multiple of a device's cells {cells}"
        )
    settings["scf_supercell"] = tuple(max(1, s // c) for s, c in zip(supercell, cells, strict=True))
    return settings


def compute_references(devices: dict, folder: Path, settings: Mapping, progress: bool) -> dict:
    """Reference records of every device (tblite), cached as dataset files in ``folder``."""
    requested = TBLiteSettings(**settings)
    kt = requested.resolved(periodic=True).electronic_temperature_hartree
    images = requested.unfolds_images
    folder.mkdir(parents=True, exist_ok=True)
    records, timings = {}, {}
    bar = tqdm(devices.items(), desc="references (tblite)", disable=not progress, unit="device")
    for name, device in bar:
        path = reference_file(folder, name)
        own = device_tblite_settings(settings, device)
        if path.exists():
            try:
                cached = dataset.load(path)
            except ValueError:
                cached = None  # unreadable: compute again
            atoms = device["atoms"]
            if (
                cached is not None
                and np.array_equal(cached.numbers, atoms.numbers)
                and np.allclose(cached.positions, atoms.positions, atol=1e-6)
                and cached.metadata.get("electronic_temperature_hartree") == kt
                and cached.image_resolved == images
                and cached.metadata.get("k_grid", [1, 1, 1])
                == list(own.get("scf_supercell", (1, 1, 1)))
            ):
                records[name] = cached
                continue
            # A file from another device (changed config) under the same name, one whose
            # SCF converged at another electronic temperature or k-grid, or a Gamma-folded
            # one where images are asked for (or the reverse): recompute.
        bar.set_postfix_str(f"{name}: {len(device['atoms'])} atoms")
        summary = compute_in_subprocess(
            device["atoms"], path, engine="tblite", settings=own, name=name
        )
        if summary.get("status") != "done":
            raise RuntimeError(
                f"reference of device {name!r} failed ({summary.get('status')}): "
                f"{summary.get('error', summary)}"
            )
        timings[name] = summary.get("process_wall_time_s")
        records[name] = dataset.load(path)
    check_temperatures(records, kt)
    return {"records": records, "timings": timings}


def check_temperatures(records: Mapping, kt: float) -> None:
    """Every reference at the requested electronic temperature ``kt`` (Hartree), or an error.

    An SCF converged at another smearing is another electronic state: the demo's "Broken 2"
    converged at 0.12 Ha instead of 0.06 had 0.2 e more on each electrode Ti and its
    electrode Fermi level 3 eV above the other devices'; a model trained on the others was
    1.2 eV off on all its on-site energies.
    """
    odd = {
        name: r.metadata.get("electronic_temperature_hartree")
        for name, r in records.items()
        if r.metadata.get("electronic_temperature_hartree") != kt
    }
    if odd:
        listed = ", ".join(f"{name}: {t} Ha" for name, t in odd.items())
        raise ValueError(
            f"references at another electronic temperature than the requested {kt} Ha "
            f"({listed}): their SCF converged only in a retry at a raised temperature "
            "(tblite retry_mode 'raise'), a different electronic state that a model trained "
            "on the others cannot predict. Use retry_mode 'anneal' or more max_iterations."
        )
