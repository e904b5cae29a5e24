"""Checks of an image-resolved record against the calculation it came from.

A record whose blocks are the lattice images ``H(R)``, ``S(R)`` of a periodic SCF must give
back that SCF: its blocks summed over the images equal the SCF's Gamma matrices, the blocks
of ``R`` and ``-R`` are transposes of each other, and its levels on the SCF's k-grid hold the
SCF's electrons at its Fermi level. :func:`check_image_record` runs all three when a record
is made (:mod:`hamjax.reference.tblite`); a record that fails is not written.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from hamjax.kgrid import monkhorst_pack
from hamjax.occupations import electron_count
from hamjax.reference.images import FOLDING_TOLERANCE_HARTREE

__all__ = [
    "check_image_record",
    "check_supercell_levels",
    "grid_levels",
    "hermiticity_error",
    "kgrid_electron_count",
]


def grid_levels(record, grid) -> list[np.ndarray]:
    """Generalised eigenvalues (Hartree) of the record's ``H(k)``, ``S(k)`` at every point
    of the Gamma-centred ``grid``, one array per k-point."""
    levels = []
    for k in monkhorst_pack(grid, gamma_centred=True):
        kk = None if not np.any(k) else k
        levels.append(
            scipy.linalg.eigh(
                record.to_dense("hamiltonian", k=kk),
                record.to_dense("overlap", k=kk),
                eigvals_only=True,
            )
        )
    return levels


def kgrid_electron_count(record, grid, fermi_level: float, kt: float) -> float:
    """Electrons per cell of the record's ``H(k)``, ``S(k)`` on a Gamma-centred ``grid``
    (spin degenerate) at ``fermi_level`` (Hartree) and Fermi-Dirac smearing ``kt`` (Hartree;
    0: every level below ``fermi_level`` filled)."""
    levels = np.concatenate(grid_levels(record, grid))
    weight = 1.0 / int(np.prod(grid))
    if kt <= 0:
        return (
            2.0 * weight * float(np.sum(levels < fermi_level) + 0.5 * np.sum(levels == fermi_level))
        )
    return electron_count(levels, weight, fermi_level, kt)


def check_image_record(
    record, gamma_hamiltonian, gamma_overlap, n_electrons, kt, *, kgrid=(1, 1, 1)
) -> dict:
    """The three checks every image-resolved record passes (module docstring).

    Args:
        record: image-resolved :class:`BlockHamiltonian` (Hartree, hamjax order).
        gamma_hamiltonian, gamma_overlap: the SCF's Gamma-point F and S (hamjax order).
        n_electrons: electrons of the SCF per cell (None: no count, e.g. for a core
            Hamiltonian).
        kt: its electronic temperature (Hartree).
        kgrid: the SCF's own k-grid (Gamma-centred; ``(1, 1, 1)``: the cell at Gamma, else
            ``scf_supercell``), on which the electrons are counted.

    Returns:
        the residuals: ``hamiltonian_folding_hartree``, ``overlap_folding``,
        ``hermiticity_hartree``, ``electron_count`` and ``electron_count_error``.

    Raises:
        ValueError: a check fails (folding or hermiticity above
            ``FOLDING_TOLERANCE_HARTREE``, electron count off by more than 1e-4).
    """
    checks = {
        "hamiltonian_folding_hartree": float(np.abs(record.to_dense() - gamma_hamiltonian).max()),
        "overlap_folding": float(np.abs(record.to_dense("overlap") - gamma_overlap).max()),
        "hermiticity_hartree": hermiticity_error(record),
    }
    if n_electrons is not None:
        count = kgrid_electron_count(record, kgrid, record.fermi_level, kt)
        checks["electron_count"] = count
        checks["electron_count_error"] = abs(count - n_electrons)
    name = record.metadata.get("name") if record.metadata else None
    for key in ("hamiltonian_folding_hartree", "overlap_folding", "hermiticity_hartree"):
        if not checks[key] <= FOLDING_TOLERANCE_HARTREE:
            raise ValueError(
                f"image-resolved record {name or ''} fails {key}: {checks[key]:.2e} "
                f"(tolerance {FOLDING_TOLERANCE_HARTREE:g})"
            )
    if n_electrons is not None and not checks["electron_count_error"] <= 1e-4:
        raise ValueError(
            f"image-resolved record {name or ''}: {count:.6f} electrons at its Fermi level, "
            f"the SCF has {n_electrons:.6f}"
        )
    return checks


def hermiticity_error(record) -> float:
    """Largest ``|H_ij(R) - H_ji(-R)^T|`` (and the same for S) over the blocks of ``record``
    (Hartree); a block whose mirror is missing counts with its full size."""
    mirror = record.on_blocks(record.pairs[:, ::-1], -record.shifts)  # block b: (j, i, -R)
    counts = record.orbital_counts
    rows, cols = counts[record.pairs[:, 0]], counts[record.pairs[:, 1]]
    worst = 0.0
    for a, b in set(zip(rows.tolist(), cols.tolist(), strict=True)):
        sel = np.flatnonzero((rows == a) & (cols == b))
        where = record.block_offsets[sel][:, None] + np.arange(a * b)
        for which in ("hamiltonian", "overlap"):
            mine = getattr(record, which)[where].reshape(-1, a, b)
            theirs = getattr(mirror, which)[where].reshape(-1, b, a).transpose(0, 2, 1)
            worst = max(worst, float(np.abs(mine - theirs).max(initial=0.0)))
    return worst


def check_supercell_levels(record, supercell, grid, tolerance: float = 1e-6):
    """The levels of the record's ``H(k)``, ``S(k)`` on the Gamma-centred ``grid`` are the
    supercell SCF's orbital energies (a supercell's Gamma point folds exactly those k);
    records the largest difference (Hartree) and raises above ``tolerance``."""
    levels = grid_levels(record, grid)
    error = float(
        np.abs(np.sort(np.concatenate(levels)) - np.sort(supercell.orbital_energies)).max()
    )
    record.metadata["image_checks"]["supercell_level_error_hartree"] = error
    if error > tolerance:
        raise ValueError(
            f"image-resolved record {record.metadata.get('name') or ''}: its levels on the "
            f"k-grid {tuple(grid)} differ from the supercell SCF's by {error:.2e} Ha"
        )
