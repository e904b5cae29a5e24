"""Pictures and files of devices: a two-view PNG and extended XYZ with the device records."""

from __future__ import annotations

import json
import os
from pathlib import Path

import ase
import ase.io
import numpy as np

from hamjax.io.files import UnreadableFileError, read_structures

__all__ = ["plot_device", "read_device_extxyz", "write_device_extxyz"]

_COLOURS = {"Ti": "#8c8c8c", "N": "#3050f8", "Hf": "#1f9e89", "O": "#ff9f1c"}
_SIZES = {"Ti": 14.0, "N": 10.0, "Hf": 20.0, "O": 8.0}
_JSON_INFO = ("strain", "layers", "oxide_window")


def plot_device(atoms: ase.Atoms, path: str | os.PathLike, *, title: str | None = None) -> Path:
    """Write a PNG with the x-y and x-z projections, atoms coloured by species.

    Removed oxygen sites (``atoms.info["vacancies"]``) are drawn as red crosses on top, so a
    filament shows as a red column across the oxide; layer boundaries are dashed lines.

    Args:
        atoms: a device from :func:`hamjax.structures.build_device` (any ase.Atoms works).
        path: output PNG path.
        title: figure title; default: formula, atom and vacancy counts.

    Returns:
        The path written.
    """
    import matplotlib  # slow to import, and only the pictures need it

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    cell = atoms.cell.lengths()
    vac = np.asarray(atoms.info.get("vacancies", np.zeros((0, 3)))).reshape(-1, 3)
    symbols = np.array(atoms.get_chemical_symbols())
    height = max(2.5, 9.0 * max(cell[1], cell[2]) / max(cell[0], 1e-9))
    fig, axes = plt.subplots(2, 1, figsize=(11, 2 * min(height, 5.0) + 1.2), sharex=True)
    for ax, axis, label in ((axes[0], 1, "y"), (axes[1], 2, "z")):
        # Draw heavy atoms last so that a thin slab stays readable.
        for sym in ("N", "Ti", "O", "Hf"):
            mask = symbols == sym
            if np.any(mask):
                ax.scatter(
                    atoms.positions[mask, 0],
                    atoms.positions[mask, axis],
                    s=_SIZES[sym],
                    c=_COLOURS[sym],
                    label=sym,
                    alpha=0.55,
                    linewidths=0,
                )
        if len(vac):
            ax.scatter(
                vac[:, 0],
                vac[:, axis],
                marker="x",
                c="red",
                s=30,
                linewidths=1.4,
                label=f"O vacancy ({len(vac)})",
            )
        extents = list(atoms.info.get("layers", {}).values())
        for before, after in zip(extents[:-1], extents[1:], strict=False):
            ax.axvline(0.5 * (before[1] + after[0]), color="k", lw=0.6, ls="--")
        ax.set_xlim(0, cell[0])
        ax.set_ylim(0, cell[axis])
        ax.set_aspect("equal")
        ax.set_ylabel(f"{label} (Angstrom)")
    axes[1].set_xlabel("x, transport axis (Angstrom)")
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    layers = atoms.info.get("layers", {})
    for name, extent in layers.items():
        axes[0].annotate(
            name,
            ((extent[0] + extent[1]) / 2, 1.01),
            xycoords=("data", "axes fraction"),
            ha="center",
            va="bottom",
            fontsize=8,
        )
    if title is None:
        title = (
            f"{atoms.get_chemical_formula()}: {len(atoms)} atoms, {len(vac)} O vacancies"
            f" ({atoms.info.get('vacancy_mode', 'n/a')})"
        )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def write_device_extxyz(atoms: ase.Atoms, path: str | os.PathLike) -> Path:
    """Write a device as extended XYZ, keeping its records.

    Per-atom arrays (``region``) become columns; vacancy sites and the nested records
    (strain, layers) are stored in the comment line as JSON strings, which
    :func:`read_device_extxyz` decodes. Any extxyz reader (ase, OVITO) reads the atoms.
    """
    path = Path(path)
    out = atoms.copy()
    info = {}
    for key, value in atoms.info.items():
        if key == "vacancies":
            info[key] = json.dumps(np.asarray(value).reshape(-1, 3).tolist())
        elif key == "vacancy_region":
            info[key] = json.dumps([str(v) for v in value])
        elif key in _JSON_INFO:
            info[key] = json.dumps(value)
        else:
            info[key] = value
    out.info = info
    ase.io.write(path, out, format="extxyz")
    return path


def read_device_extxyz(path: str | os.PathLike) -> ase.Atoms:
    """Read a file written by :func:`write_device_extxyz`, restoring the device records.

    Raises:
        FileNotFoundError: no such file.
        UnreadableFileError: (a ValueError naming the file) not readable as extxyz, or a
            device record in its comment line is not valid JSON.
    """
    atoms = read_structures(path, index=-1, format="extxyz")[0]
    info = atoms.info
    try:
        if "vacancies" in info:
            info["vacancies"] = np.array(json.loads(info["vacancies"]), float).reshape(-1, 3)
        if "vacancy_region" in info:
            info["vacancy_region"] = np.array(json.loads(info["vacancy_region"]), "<U10")
        for key in _JSON_INFO:
            if isinstance(info.get(key), str):
                info[key] = json.loads(info[key])
    except (ValueError, TypeError) as err:
        raise UnreadableFileError(
            path, f"a malformed device record in the comment line: {err}"
        ) from None
    return atoms
