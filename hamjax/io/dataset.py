"""The hamjax dataset file: one structure with its H and S blocks and metadata in one ``.npz``.

Layout (format ``"hamjax-blocks"``, version 1). Every member is a plain numpy array; strings
are 0-d unicode arrays, so ``np.load(path)`` reads the file without pickle and without hamjax:

==================  ===============  =====================================================
key                 dtype, shape     meaning
==================  ===============  =====================================================
``format``          str              ``"hamjax-blocks"``
``version``         int64, ()        layout version (1)
``numbers``         int64 [A]        atomic numbers
``positions``       float64 [A, 3]   Cartesian positions, Angstrom
``cell``            float64 [3, 3]   lattice vectors as rows, Angstrom (zeros: molecule)
``pbc``             bool [3]         periodic directions
``basis``           str (JSON)       ``{"name": ..., "shells": {"Z": [l, ...]}}``, shells in
                                     file order; in-shell order m = -l..l of hamjax (real
                                     harmonics, p = y, z, x), see :mod:`hamjax.basis`
``orbital_offsets`` int64 [A + 1]    first orbital of each atom (last = orbital count)
``pairs``           int64 [B, 2]     atoms ``(i, j)`` of each block
``shifts``          int64 [B, 3]     cell of atom ``j`` (integer lattice vector)
``block_offsets``   int64 [B + 1]    start of each block in the value arrays
``hamiltonian``     float64 [V]      block values, row-major, Hartree
``overlap``         float64 [V]      same layout, dimensionless (absent when not known)
``fermi_level``     float64 ()       Hartree; NaN when not known
``metadata``        str (JSON)       source, method, basis, units, code versions, ...
==================  ===============  =====================================================

Block ``b`` couples the orbitals of atom ``i`` in the home cell with those of atom ``j`` in
the cell ``shifts[b]``: ``r_ij = positions[j] + shifts[b] @ cell - positions[i]``. With plain
numpy::

    f = np.load("structure.npz")
    n_orb = np.diff(f["orbital_offsets"])
    i, j = f["pairs"][b]
    start, stop = f["block_offsets"][b], f["block_offsets"][b + 1]
    H_b = f["hamiltonian"][start:stop].reshape(n_orb[i], n_orb[j])   # Hartree
    # Gamma-point matrix: H[o[i]:o[i+1], o[j]:o[j+1]] += H_b for every block

Why npz and not HDF5: it needs nothing beyond numpy to read (HDF5 would add h5py and a C
library to every reader), one structure per file makes writing atomic (a temporary file in
the same folder, then ``os.replace``: a killed writer never leaves a half-written target,
which a partially written HDF5 file cannot promise) and makes resumable generation a check
for the file's existence; the flat block values are large float arrays that npz stores at
native speed. Cross-file queries, which HDF5 would help with, are not needed: training loads
whole structures.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path

import numpy as np

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.io.atomic import replacing
from hamjax.io.files import read_npz

__all__ = ["FORMAT", "VERSION", "expand_paths", "load", "save"]

FORMAT = "hamjax-blocks"
VERSION = 1


def expand_paths(patterns) -> list[Path]:
    """Dataset files named by paths or glob patterns, in the order given (globs sorted).

    Raises:
        FileNotFoundError: a pattern that matches nothing, or a path that is not a file.
    """
    paths: list[Path] = []
    for pattern in patterns:
        pattern = str(pattern)
        if any(ch in pattern for ch in "*?["):
            found = sorted(glob.glob(pattern))
            if not found:
                raise FileNotFoundError(f"data pattern {pattern!r} matches no file")
            paths.extend(Path(p) for p in found)
        else:
            path = Path(pattern)
            if not path.is_file():
                raise FileNotFoundError(f"dataset file {path} does not exist")
            paths.append(path)
    return paths


_REQUIRED = (
    "format",
    "version",
    "numbers",
    "positions",
    "cell",
    "pbc",
    "basis",
    "orbital_offsets",
    "pairs",
    "shifts",
    "block_offsets",
    "hamiltonian",
    "fermi_level",
    "metadata",
)


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metadata value {value!r} of type {type(value).__name__} is not JSON")


def save(record: BlockHamiltonian, path: str | os.PathLike, *, compress: bool = False) -> Path:
    """Write ``record`` to ``path`` (``.npz``) atomically.

    The arrays go to a temporary file in the target's folder, which is flushed to disk and
    then renamed over the target (``os.replace``), so the target is either the old file or
    the complete new one, never a partial write.

    Args:
        record: the block record (Hartree).
        path: the target file; ``.npz`` is the customary suffix (not added).
        compress: zip-deflate the members (smaller, slower).

    Returns:
        The path written.
    """
    path = Path(path)
    basis_json = json.dumps(
        {"name": record.basis.name, "shells": {str(z): list(ls) for z, ls in record.basis.shells}}
    )
    try:
        metadata_json = json.dumps(record.metadata, default=_json_default, sort_keys=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: metadata cannot be stored as JSON: {err}") from None
    arrays = {
        "format": np.array(FORMAT),
        "version": np.array(VERSION, dtype=np.int64),
        "numbers": np.asarray(record.numbers, dtype=np.int64),
        "positions": np.asarray(record.positions, dtype=np.float64),
        "cell": np.asarray(record.cell, dtype=np.float64),
        "pbc": np.asarray(record.pbc, dtype=bool),
        "basis": np.array(basis_json),
        "orbital_offsets": np.asarray(record.orbital_offsets, dtype=np.int64),
        "pairs": np.asarray(record.pairs, dtype=np.int64),
        "shifts": np.asarray(record.shifts, dtype=np.int64),
        "block_offsets": np.asarray(record.block_offsets, dtype=np.int64),
        "hamiltonian": np.asarray(record.hamiltonian, dtype=np.float64),
        "fermi_level": np.array(
            np.nan if record.fermi_level is None else record.fermi_level, dtype=np.float64
        ),
        "metadata": np.array(metadata_json),
    }
    if record.overlap is not None:
        arrays["overlap"] = np.asarray(record.overlap, dtype=np.float64)
    with replacing(path) as tmp_name, open(tmp_name, "wb") as out:
        (np.savez_compressed if compress else np.savez)(out, **arrays)
    return path


def load(path: str | os.PathLike) -> BlockHamiltonian:
    """Read a dataset file written by :func:`save`.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a hamjax dataset file, a newer layout version, a missing key or
            inconsistent arrays; the message names the file.
            :class:`~hamjax.io.files.UnreadableFileError` (a ValueError): not a readable npz
            archive at all (truncated, damaged, another format).
    """
    path = Path(path)
    data = read_npz(path, what="npz file")
    keys = set(data)
    if "format" not in keys or str(data["format"]) != FORMAT:
        raise ValueError(f"{path}: not a hamjax dataset file (no format={FORMAT!r} entry)")
    try:
        version = int(data["version"]) if "version" in keys else None
    except (TypeError, ValueError):
        version = None
    if version != VERSION:
        raise ValueError(
            f"{path}: dataset layout version {version}; this hamjax reads version {VERSION}"
        )
    missing = [key for key in _REQUIRED if key not in keys]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing} (a truncated or foreign file?)")
    try:
        basis_info = json.loads(str(data["basis"]))
        basis = Basis.from_dict(
            basis_info["name"], {int(z): ls for z, ls in basis_info["shells"].items()}
        )
        metadata = json.loads(str(data["metadata"]))
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: malformed basis or metadata JSON: {err}") from None
    try:
        fermi = float(data["fermi_level"])
        record = BlockHamiltonian(
            numbers=data["numbers"].astype(int),
            positions=data["positions"],
            cell=data["cell"],
            pbc=data["pbc"].astype(bool),
            basis=basis,
            pairs=data["pairs"],
            shifts=data["shifts"],
            hamiltonian=data["hamiltonian"],
            overlap=data.get("overlap"),
            fermi_level=None if np.isnan(fermi) else fermi,
            metadata=metadata,
        )
        consistent = np.array_equal(record.orbital_offsets, data["orbital_offsets"]) and (
            np.array_equal(record.block_offsets, data["block_offsets"])
        )
    except (ValueError, TypeError, IndexError) as err:
        raise ValueError(f"{path}: inconsistent arrays: {err}") from None
    if not consistent:
        raise ValueError(f"{path}: orbital or block offsets disagree with the stored basis")
    return record
