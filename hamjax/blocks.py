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
import scipy.sparse

from hamjax.basis import Basis

__all__ = ["BlockHamiltonian", "atom_pair_max", "block_keys"]


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

    @property
    def image_resolved(self) -> bool:
        """Whether the blocks are per lattice image: a molecule, or a periodic record that
        holds non-zero shifts (a periodic record with zero shifts only is Gamma-folded)."""
        return not (np.asarray(self.pbc).any() and not np.asarray(self.shifts).any())

    def on_blocks(self, pairs, shifts) -> BlockHamiltonian:
        """This record on the blocks ``(pairs[b], shifts[b])``, in that order.

        Blocks this record lacks come out zero (H and S); blocks it has but not listed are
        left out. Two records put on the same blocks line up entry by entry.

        Args:
            pairs: ``[n_block, 2]`` atom pairs ``(i, j)``.
            shifts: ``[n_block, 3]`` integer cell shifts of ``j``.

        Returns:
            :class:`BlockHamiltonian` with the same structure, Fermi level and metadata.
        """
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        shifts = np.asarray(shifts, dtype=np.int64).reshape(-1, 3)
        if len(pairs) != len(shifts):
            raise ValueError(f"{len(pairs)} pairs but {len(shifts)} shifts")
        n_atoms = len(self.numbers)
        own_pairs = np.asarray(self.pairs, dtype=np.int64)
        own_shifts = np.asarray(self.shifts, dtype=np.int64)
        span = int(max(np.abs(shifts).max(initial=0), np.abs(own_shifts).max(initial=0)))
        own = block_keys(own_pairs[:, 0], own_pairs[:, 1], own_shifts, n_atoms, span)
        wanted = block_keys(pairs[:, 0], pairs[:, 1], shifts, n_atoms, span)
        order = np.argsort(own)
        pos = np.minimum(np.searchsorted(own[order], wanted), max(len(own) - 1, 0))
        found = np.zeros(len(wanted), dtype=bool)
        if len(own):
            found = own[order][pos] == wanted
        source = np.where(found, order[pos] if len(own) else 0, -1)
        counts = self.orbital_counts
        sizes = counts[pairs[:, 0]] * counts[pairs[:, 1]]
        new_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        # flat index of every new value in the old layout (-1: absent)
        src = np.full(int(new_offsets[-1]), -1, dtype=np.int64)
        within = np.arange(len(src)) - np.repeat(new_offsets[:-1], sizes)
        start = np.repeat(np.where(found, self.block_offsets[np.maximum(source, 0)], -1), sizes)
        src = np.where(start >= 0, start + within, -1)

        def take(values):
            if values is None:
                return None
            out = np.zeros(len(src), dtype=values.dtype)
            out[src >= 0] = values[src[src >= 0]]
            return out

        return dataclasses.replace(
            self,
            pairs=pairs,
            shifts=shifts,
            hamiltonian=take(self.hamiltonian),
            overlap=take(self.overlap),
        )

    # ------------------------------------------------------------ conversions
    @cached_property
    def entry_indices(self) -> tuple[np.ndarray, np.ndarray]:
        """Global ``(row, col)`` orbital index of every flat value of ``hamiltonian`` and
        ``overlap``, each ``[n_values]`` (computed once, then cached)."""
        counts, off = self.orbital_counts, self.orbital_offsets
        rows = np.empty(int(self.block_offsets[-1]), dtype=np.int64)
        cols = np.empty_like(rows)
        ci_all, cj_all = counts[self.pairs[:, 0]], counts[self.pairs[:, 1]]
        for ci, cj in set(zip(ci_all.tolist(), cj_all.tolist(), strict=True)):
            sel = np.nonzero((ci_all == ci) & (cj_all == cj))[0]
            where = self.block_offsets[sel][:, None] + np.arange(ci * cj)  # [k, ci*cj]
            r = off[self.pairs[sel, 0]][:, None] + np.repeat(np.arange(ci), cj)[None, :]
            c = off[self.pairs[sel, 1]][:, None] + np.tile(np.arange(cj), ci)[None, :]
            rows[where] = r
            cols[where] = c
        return rows, cols

    def _coo(self, which: str, k):
        values = getattr(self, which)
        if values is None:
            raise ValueError(f"this record has no {which}")
        if k is not None:
            phases = np.exp(2j * np.pi * (self.shifts @ np.asarray(k, dtype=float)))
            values = values * np.repeat(phases, np.diff(self.block_offsets))
        rows, cols = self.entry_indices
        n = self.n_orbitals
        return scipy.sparse.coo_matrix((values, (rows, cols)), shape=(n, n))

    def to_sparse(self, which: str = "hamiltonian", k=None):
        """``scipy.sparse.csr_matrix`` ``[n_orb, n_orb]`` at Gamma (``k=None``) or fractional ``k``.

        Blocks of the same atom pair with different shifts are summed (weighted by
        ``exp(2 pi i k . shift)`` when ``k`` is given).
        """
        return self._coo(which, k).tocsr()

    def to_dense(self, which: str = "hamiltonian", k=None) -> np.ndarray:
        """Dense ``[n_orb, n_orb]`` matrix at Gamma (``k=None``) or at fractional ``k``."""
        return self._coo(which, k).toarray()

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
        candidate_pairs: np.ndarray | None = None,
        **kwargs,
    ) -> BlockHamiltonian:
        """Cut matrices (one per cell shift, or one Gamma/finite matrix) into blocks.

        A block is kept when any entry of H or S exceeds ``threshold`` in magnitude. The work
        is vectorised: per-atom-pair maxima by ``reduceat`` over row chunks of a dense matrix,
        or straight from the stored entries of a ``scipy.sparse`` matrix, then one gather per
        block size; a 35,000-orbital dense matrix is cut in seconds.

        Args:
            numbers, positions, cell, pbc: the structure (Angstrom).
            basis: shells per element; the matrices are in hamjax orbital order.
            hamiltonian: ``{shift: [n_orb, n_orb]}`` (numpy or ``scipy.sparse``), or one matrix
                for shift (0, 0, 0). Hartree.
            overlap: same layout as ``hamiltonian`` (the same shifts), or None.
            threshold: magnitude below which a whole block is dropped.
            candidate_pairs: optional ``[n_cand, 2]`` atom pairs ``(i, j)``; only these are
                considered (e.g. pairs within a cutoff), which skips the scan of the rest.
            **kwargs: further record fields (``fermi_level``, ``metadata``).

        Blocks come sorted by shift, then ``i``, then ``j``.
        """
        single = not isinstance(hamiltonian, Mapping)
        if single:
            hamiltonian = {(0, 0, 0): hamiltonian}
            if overlap is not None:
                overlap = {(0, 0, 0): overlap}
        if overlap is not None and set(map(tuple, overlap)) != set(map(tuple, hamiltonian)):
            raise ValueError("hamiltonian and overlap must have the same cell shifts")
        numbers = np.asarray(numbers, dtype=int).reshape(-1)
        counts = basis.orbital_counts(numbers)
        off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        n = int(off[-1])
        n_atoms = len(numbers)
        candidates = None
        if candidate_pairs is not None:
            candidates = np.unique(
                np.asarray(candidate_pairs, dtype=np.int64).reshape(-1, 2), axis=0
            )
            if len(candidates) and (candidates.min() < 0 or candidates.max() >= n_atoms):
                raise ValueError(f"candidate_pairs index atoms outside 0..{n_atoms - 1}")

        all_pairs, all_shifts, h_parts, s_parts = [], [], [], []
        for shift in sorted(tuple(int(x) for x in key) for key in hamiltonian):
            h = hamiltonian[shift]
            s = None if overlap is None else overlap[shift]
            for label, m in (("hamiltonian", h), ("overlap", s)):
                if m is not None and m.shape != (n, n):
                    raise ValueError(
                        f"{label} for shift {shift} is {m.shape}; the basis gives {n} orbitals"
                    )
            keep = _pairs_above(h, off, threshold, candidates)
            if s is not None:
                keep = np.union1d(keep, _pairs_above(s, off, threshold, candidates))
            ii, jj = keep // n_atoms, keep % n_atoms
            all_pairs.append(np.stack([ii, jj], axis=1))
            all_shifts.append(np.broadcast_to(np.asarray(shift, dtype=np.int64), (len(ii), 3)))
            h_parts.append(_gather_blocks(h, off, counts, ii, jj))
            if s is not None:
                s_parts.append(_gather_blocks(s, off, counts, ii, jj))
        return cls(
            numbers=numbers,
            positions=np.asarray(positions, dtype=float),
            cell=np.asarray(cell, dtype=float).reshape(3, 3),
            pbc=np.asarray(pbc, dtype=bool).reshape(3),
            basis=basis,
            pairs=np.concatenate(all_pairs).astype(np.int64).reshape(-1, 2),
            shifts=np.concatenate(all_shifts).astype(np.int64).reshape(-1, 3),
            hamiltonian=np.concatenate(h_parts) if h_parts else np.zeros(0),
            overlap=np.concatenate(s_parts) if s_parts and overlap is not None else None,
            **kwargs,
        )


def block_keys(first, second, shifts, n_atoms: int, span: int) -> np.ndarray:
    """One int64 key per block (or directed edge) ``(first, second, shift)``, equal for equal
    triples; every shift component must lie in ``[-span, span]``."""
    base = 2 * span + 1
    s = np.asarray(shifts, dtype=np.int64) + span
    key = np.asarray(first, dtype=np.int64) * n_atoms + np.asarray(second, dtype=np.int64)
    for axis in range(3):
        key = key * base + s[:, axis]
    return key


def _unique_entries(matrix):
    """COO view of a sparse matrix with each (row, col) once (cheap for canonical CSR)."""
    csr = scipy.sparse.csr_matrix(matrix)
    csr.sum_duplicates()  # no-op when already canonical
    return csr.tocoo()


def _is_sparse(matrix) -> bool:
    return scipy.sparse.issparse(matrix)


def atom_pair_max(matrix, orbital_offsets: np.ndarray, chunk_orbitals: int = 2048) -> np.ndarray:
    """Largest ``|entry|`` of every atom-pair block, ``[n_atoms, n_atoms]``.

    Args:
        matrix: ``[n_orb, n_orb]`` numpy array or ``scipy.sparse`` matrix.
        orbital_offsets: ``[n_atoms + 1]`` first orbital of each atom (last = n_orb).
        chunk_orbitals: rows handled at once for a dense matrix (bounds the temporary memory).
    """
    off = np.asarray(orbital_offsets, dtype=np.int64)
    n_atoms = len(off) - 1
    out = np.zeros((n_atoms, n_atoms))
    if n_atoms == 0:
        return out
    if _is_sparse(matrix):
        coo = _unique_entries(matrix)
        if coo.nnz == 0:
            return out
        atom_of = np.repeat(np.arange(n_atoms), np.diff(off))  # [n_orb]
        keys = atom_of[coo.row] * n_atoms + atom_of[coo.col]
        order = np.argsort(keys, kind="stable")
        keys = keys[order]
        first = np.concatenate([[0], np.flatnonzero(np.diff(keys)) + 1])
        out.flat[keys[first]] = np.maximum.reduceat(np.abs(coo.data[order]), first)
        return out
    matrix = np.asarray(matrix)
    starts = off[:-1]
    nonempty = np.diff(off) > 0
    atom = 0
    while atom < n_atoms:  # chunks of whole atoms, about chunk_orbitals rows each
        stop = int(np.searchsorted(off, off[atom] + chunk_orbitals, side="right")) - 1
        stop = min(max(stop, atom + 1), n_atoms)
        rows = matrix[off[atom] : off[stop]]  # a view: no copy of the dense matrix
        if np.iscomplexobj(rows):
            cols_max = np.maximum.reduceat(np.abs(rows), starts[nonempty], axis=1)
        else:  # max |x| = max(max x, -min x), without an |x| temporary of the rows
            cols_max = np.maximum(
                np.maximum.reduceat(rows, starts[nonempty], axis=1),
                -np.minimum.reduceat(rows, starts[nonempty], axis=1),
            )  # [rows, n_nonempty]
        sub = np.zeros((rows.shape[0], n_atoms))
        sub[:, nonempty] = cols_max
        local = starts[atom:stop] - off[atom]
        good = nonempty[atom:stop]
        out[atom:stop][good] = np.maximum.reduceat(sub, local[good], axis=0)
        atom = stop
    return out


def _pairs_above(matrix, off, threshold, candidates) -> np.ndarray:
    """Flat indices ``i * n_atoms + j`` (sorted) of the blocks with ``|entry| > threshold``."""
    n_atoms = len(off) - 1
    if candidates is None:
        return np.flatnonzero(atom_pair_max(matrix, off) > threshold)
    if len(candidates) == 0:
        return np.zeros(0, dtype=np.int64)
    counts = np.diff(off)
    blocks = _gather_blocks(matrix, off, counts, candidates[:, 0], candidates[:, 1])
    sizes = counts[candidates[:, 0]] * counts[candidates[:, 1]]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    nonempty = sizes > 0
    big = np.zeros(len(candidates), dtype=bool)
    if blocks.size:
        big[nonempty] = np.maximum.reduceat(np.abs(blocks), starts[nonempty]) > threshold
    keep = candidates[big]
    return np.sort(keep[:, 0] * n_atoms + keep[:, 1])


def _gather_blocks(matrix, off, counts, ii, jj) -> np.ndarray:
    """Row-major values of the blocks ``(ii[b], jj[b])`` concatenated, ``[sum ci * cj]``."""
    ci_all, cj_all = counts[ii], counts[jj]
    sizes = ci_all * cj_all
    block_offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    if _is_sparse(matrix):
        return _gather_blocks_sparse(matrix, off, counts, ii, jj, block_offsets)
    matrix = np.asarray(matrix)
    out = np.zeros(int(block_offsets[-1]), dtype=matrix.dtype)
    for ci, cj in set(zip(ci_all.tolist(), cj_all.tolist(), strict=True)):
        sel = np.nonzero((ci_all == ci) & (cj_all == cj))[0]
        if ci * cj == 0:
            continue
        for start in range(0, len(sel), 65536):  # bounded temporaries
            part = sel[start : start + 65536]
            rows = off[ii[part]][:, None, None] + np.arange(ci)[None, :, None]  # [k, ci, 1]
            cols = off[jj[part]][:, None, None] + np.arange(cj)[None, None, :]  # [k, 1, cj]
            rows, cols = np.broadcast_arrays(rows, cols)
            values = matrix[rows, cols].reshape(len(part), -1)
            out[block_offsets[part][:, None] + np.arange(ci * cj)] = values
    return out


def _gather_blocks_sparse(matrix, off, counts, ii, jj, block_offsets) -> np.ndarray:
    """:func:`_gather_blocks` for a ``scipy.sparse`` matrix, straight from its stored entries."""
    coo = _unique_entries(matrix)  # unique (row, col): plain assignment below
    n_atoms = len(off) - 1
    out = np.zeros(int(block_offsets[-1]), dtype=coo.dtype)
    if len(ii) == 0 or coo.nnz == 0:
        return out
    atom_of = np.repeat(np.arange(n_atoms), np.diff(off))  # [n_orb]
    ai, aj = atom_of[coo.row], atom_of[coo.col]
    keys = np.asarray(ii, dtype=np.int64) * n_atoms + np.asarray(jj, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    entry_keys = ai * n_atoms + aj
    pos = np.searchsorted(keys[order], entry_keys)
    pos = np.minimum(pos, len(keys) - 1)
    found = keys[order][pos] == entry_keys
    block = order[pos[found]]
    within = (coo.row[found] - off[ai[found]]) * counts[aj[found]] + (
        coo.col[found] - off[aj[found]]
    )
    out[block_offsets[block] + within] = coo.data[found]
    return out
