"""Block-sparse Hamiltonian and overlap: the one record every source and model shares.

A matrix of a periodic (or finite) structure in a localized basis is stored as blocks
``(i, j, shift)``: the block couples the orbitals of atom ``i`` in the home cell to the
orbitals of atom ``j`` in the cell translated by the integer lattice vector ``shift``. The
values of all blocks are concatenated row-major into one flat array (``block_offsets`` says
where each block starts), so the record is compact and readable without hamjax.

Hermiticity reads ``H_ji(-shift) = H_ij(shift)^T``. A Gamma-point matrix is the sum over
shifts; a Bloch matrix at fractional wave vector ``k`` weights each shift by
``exp(2 pi i k . shift)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from hamjax.basis import Basis

__all__ = ["BlockHamiltonian"]


@dataclass(frozen=True, eq=False)
class BlockHamiltonian:
    """Hamiltonian (and overlap) of one structure as atom-pair blocks with cell shifts.

    Attributes:
        numbers: atomic numbers, ``[n_atoms]``.
        positions: Cartesian positions in Angstrom, ``[n_atoms, 3]``.
        cell: lattice vectors as rows in Angstrom, ``[3, 3]`` (zeros for a molecule).
        pbc: periodicity per lattice vector, ``[3]`` bool.
        basis: orbital shells per element; orbitals in hamjax order (:mod:`hamjax.basis`).
        pairs: ``[n_block, 2]`` atom indices ``(i, j)``.
        shifts: ``[n_block, 3]`` integer cell shift of atom ``j``.
        hamiltonian: flat block values in Hartree, ``[n_values]``.
        overlap: flat block values (dimensionless) in the same layout, or None.
        fermi_level: Fermi level (or mid-gap) in Hartree, or None.
        metadata: source, method, basis, code versions, ... (JSON-serialisable).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    basis: Basis
    pairs: np.ndarray
    shifts: np.ndarray
    hamiltonian: np.ndarray
    overlap: np.ndarray | None = None
    fermi_level: float | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        n_block = len(self.pairs)
        if self.pairs.shape != (n_block, 2) or self.shifts.shape != (n_block, 3):
            raise ValueError(
                f"pairs {self.pairs.shape} and shifts {self.shifts.shape} must be "
                f"[n_block, 2] and [n_block, 3]"
            )
        expected = int(self.block_offsets[-1])
        for name in ("hamiltonian", "overlap"):
            values = getattr(self, name)
            if values is not None and values.shape != (expected,):
                raise ValueError(f"{name} has shape {values.shape}, blocks need ({expected},)")

    # ------------------------------------------------------------------ layout
    @cached_property
    def orbital_counts(self) -> np.ndarray:
        return self.basis.orbital_counts(self.numbers)

    @cached_property
    def orbital_offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.orbital_counts)])

    @property
    def n_orbitals(self) -> int:
        return int(self.orbital_offsets[-1])

    @cached_property
    def block_offsets(self) -> np.ndarray:
        counts = self.basis.orbital_counts(self.numbers)
        sizes = counts[self.pairs[:, 0]] * counts[self.pairs[:, 1]]
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def block(self, index: int, which: str = "hamiltonian") -> np.ndarray:
        """Block ``index`` as a ``[n_orb(i), n_orb(j)]`` matrix."""
        i, j = self.pairs[index]
        values = getattr(self, which)
        start, stop = self.block_offsets[index], self.block_offsets[index + 1]
        return values[start:stop].reshape(self.orbital_counts[i], self.orbital_counts[j])

    def replace(self, **changes) -> BlockHamiltonian:
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------ conversions
    def to_dense(self, which: str = "hamiltonian", k=None) -> np.ndarray:
        """Dense ``[n_orb, n_orb]`` matrix at Gamma (``k=None``) or at fractional ``k``."""
        values = getattr(self, which)
        if values is None:
            raise ValueError(f"this record has no {which}")
        dtype = values.dtype if k is None else np.result_type(values.dtype, np.complex128)
        out = np.zeros((self.n_orbitals, self.n_orbitals), dtype=dtype)
        off = self.orbital_offsets
        phases = (
            None if k is None else np.exp(2j * np.pi * (self.shifts @ np.asarray(k, float)))
        )
        for b, (i, j) in enumerate(self.pairs):
            block = self.block(b, which)
            if phases is not None:
                block = block * phases[b]
            out[off[i] : off[i + 1], off[j] : off[j + 1]] += block
        return out

    @classmethod
    def from_dense(
        cls,
        numbers,
        positions,
        cell,
        pbc,
        basis: Basis,
        hamiltonian: Mapping[tuple[int, int, int], np.ndarray] | np.ndarray,
        overlap: Mapping[tuple[int, int, int], np.ndarray] | np.ndarray | None = None,
        *,
        threshold: float = 0.0,
        **kwargs,
    ) -> BlockHamiltonian:
        """Cut dense matrices (one per cell shift, or one Gamma/finite matrix) into blocks.

        A block is kept when any entry of H or S exceeds ``threshold`` in magnitude.
        """
        if not isinstance(hamiltonian, Mapping):
            hamiltonian = {(0, 0, 0): np.asarray(hamiltonian)}
            if overlap is not None:
                overlap = {(0, 0, 0): np.asarray(overlap)}
        numbers = np.asarray(numbers, dtype=int)
        off = basis.orbital_offsets(numbers)
        n = int(off[-1])
        pairs, shifts, h_values, s_values = [], [], [], []
        for shift, h in sorted(hamiltonian.items()):
            h = np.asarray(h)
            s = None if overlap is None else np.asarray(overlap[shift])
            if h.shape != (n, n):
                raise ValueError(f"matrix for shift {shift} is {h.shape}; the basis gives {n}")
            for i in range(len(numbers)):
                for j in range(len(numbers)):
                    hb = h[off[i] : off[i + 1], off[j] : off[j + 1]]
                    sb = None if s is None else s[off[i] : off[i + 1], off[j] : off[j + 1]]
                    big = np.abs(hb).max(initial=0) > threshold or (
                        sb is not None and np.abs(sb).max(initial=0) > threshold
                    )
                    if big:
                        pairs.append((i, j))
                        shifts.append(shift)
                        h_values.append(hb.ravel())
                        if sb is not None:
                            s_values.append(sb.ravel())
        return cls(
            numbers=numbers,
            positions=np.asarray(positions, dtype=float),
            cell=np.asarray(cell, dtype=float).reshape(3, 3),
            pbc=np.asarray(pbc, dtype=bool).reshape(3),
            basis=basis,
            pairs=np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
            shifts=np.asarray(shifts, dtype=np.int64).reshape(-1, 3),
            hamiltonian=np.concatenate(h_values) if h_values else np.zeros(0),
            overlap=(np.concatenate(s_values) if s_values else None)
            if overlap is not None
            else None,
            **kwargs,
        )
