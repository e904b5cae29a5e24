"""Pieces shared by the reference engines: errors, dense -> block record.

The Fermi level of orbital energies and occupations lives in :mod:`hamjax.occupations`
(:func:`~hamjax.occupations.fermi_level_from_orbitals`, re-exported here).
"""

from __future__ import annotations

import numpy as np

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.occupations import fermi_level_from_orbitals

__all__ = [
    "SCFConvergenceError",
    "MissingEngineError",
    "describe_structure",
    "fermi_level_from_orbitals",
    "dense_to_record",
]


class SCFConvergenceError(RuntimeError):
    """The self-consistent field did not converge with any of the settings tried.

    Attributes:
        structure: a short description of the structure (formula, atom count, name).
        attempts: one dict per attempt: the settings and the number of SCF cycles run.
    """

    def __init__(self, message: str, structure: str = "", attempts: list | None = None):
        super().__init__(message)
        self.structure = structure
        self.attempts = list(attempts or [])


class MissingEngineError(ImportError):
    """An optional reference engine (e.g. PySCF) is not installed."""


def describe_structure(atoms, name: str | None = None) -> str:
    """``"'name' Hf32O62Ti... (128 atoms, pbc=[F, T, T])"`` for error messages."""
    label = f"{name!r} " if name else ""
    pbc = ", ".join("T" if p else "F" for p in atoms.pbc)
    return f"{label}{atoms.get_chemical_formula()} ({len(atoms)} atoms, pbc=[{pbc}])"


def _atom_pair_max(matrix: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """``[n_atoms, n_atoms]`` largest magnitude inside every atom-pair block."""
    a = np.abs(matrix)
    a = np.maximum.reduceat(a, offsets[:-1], axis=0)
    return np.maximum.reduceat(a, offsets[:-1], axis=1)


def dense_to_record(
    atoms,
    basis: Basis,
    hamiltonian: np.ndarray,
    overlap: np.ndarray,
    *,
    pattern_from: tuple[np.ndarray, ...] = (),
    threshold: float = 0.0,
    fermi_level: float | None = None,
    metadata: dict | None = None,
) -> BlockHamiltonian:
    """Cut dense Gamma-point (or molecular) matrices in hamjax order into a block record.

    The atom pairs stored are those where the overlap, or any matrix in ``pattern_from``,
    has an entry with magnitude above ``threshold`` (plus all on-site pairs); every block
    gets shift (0, 0, 0). The largest Hamiltonian entry left out is recorded in
    ``metadata["max_dropped_hamiltonian_hartree"]``.

    Args:
        atoms: the structure (``ase.Atoms``, Angstrom).
        basis: hamjax basis of the matrices.
        hamiltonian: ``[n_orb, n_orb]`` Hartree, hamjax orbital order.
        overlap: ``[n_orb, n_orb]``, hamjax orbital order.
        pattern_from: further ``[n_orb, n_orb]`` matrices that decide the kept pairs.
    """
    numbers = np.asarray(atoms.numbers, dtype=int)
    counts = basis.orbital_counts(numbers)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n = int(offsets[-1])
    for label, m in (("hamiltonian", hamiltonian), ("overlap", overlap)):
        if m.shape != (n, n):
            raise ValueError(f"{label} is {m.shape}; basis {basis.name!r} gives {n} orbitals")
    keep = _atom_pair_max(overlap, offsets) > threshold
    for extra in pattern_from:
        keep |= _atom_pair_max(extra, offsets) > threshold
    np.fill_diagonal(keep, True)
    h_max = _atom_pair_max(hamiltonian, offsets)
    dropped = float(h_max[~keep].max(initial=0.0))

    ii, jj = np.nonzero(keep)  # row-major: sorted by i, then j
    sizes = counts[ii] * counts[jj]
    block_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    h_values = np.empty(int(block_offsets[-1]), dtype=float)
    s_values = np.empty_like(h_values)
    size_pairs = np.stack([counts[ii], counts[jj]], axis=1)
    for ci, cj in np.unique(size_pairs, axis=0):
        sel = np.nonzero((size_pairs[:, 0] == ci) & (size_pairs[:, 1] == cj))[0]
        rows = offsets[ii[sel]][:, None] + np.arange(ci)  # [k, ci]
        cols = offsets[jj[sel]][:, None] + np.arange(cj)  # [k, cj]
        where = block_offsets[sel][:, None] + np.arange(ci * cj)  # [k, ci*cj]
        h_values[where] = hamiltonian[rows[:, :, None], cols[:, None, :]].reshape(len(sel), -1)
        s_values[where] = overlap[rows[:, :, None], cols[:, None, :]].reshape(len(sel), -1)

    meta = dict(metadata or {})
    meta["max_dropped_hamiltonian_hartree"] = dropped
    meta["block_threshold"] = float(threshold)
    return BlockHamiltonian(
        numbers=numbers,
        positions=np.asarray(atoms.positions, dtype=float),
        cell=np.asarray(atoms.cell.array, dtype=float),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        basis=basis,
        pairs=np.stack([ii, jj], axis=1).astype(np.int64),
        shifts=np.zeros((len(ii), 3), dtype=np.int64),
        hamiltonian=h_values,
        overlap=s_values,
        fermi_level=fermi_level,
        metadata=meta,
    )
