"""An image-resolved block record from a periodic GFN1-xTB SCF.

The Gamma matrices of the SCF are separated into lattice images (:mod:`hamjax.reference.images`),
blocks below the settings' threshold are dropped, and the record is checked against the SCF
(:func:`hamjax.reference.checks.check_image_record`) before it is returned.
"""

from __future__ import annotations

import numpy as np

from hamjax.blocks import BlockHamiltonian
from hamjax.reference.checks import check_image_record, kgrid_electron_count
from hamjax.reference.images import unfold_gfn1

__all__ = ["image_record"]


def image_record(atoms, result, basis, perm, signs, fermi, used, settings, metadata):
    """The image-resolved record of a periodic GFN1-xTB SCF, checked.

    Args:
        atoms: the periodic cell.
        result: its :class:`hamjax.reference.tblite.TBLiteResult` (Gamma F, H0, S).
        basis, perm, signs: hamjax's basis and the map from tblite's orbital order.
        fermi: ``{"fermi_level", "n_electrons"}`` of the SCF (Hartree).
        used: the settings the SCF converged with; ``settings``: the requested ones.
        metadata: the record's metadata, completed with the unfolding and its checks.
    """
    numbers = np.asarray(atoms.numbers, dtype=int)
    pairs, shifts, h_blocks, core_blocks, s_blocks, diagnostics = unfold_gfn1(
        atoms,
        result.hamiltonian,
        result.core_hamiltonian,
        result.overlap,
        basis.orbital_counts(numbers),
        perm,
        signs,
        method=settings.method,
        accuracy=used.accuracy,
    )
    core = settings.hamiltonian == "core"
    if core:
        h_blocks = core_blocks
    big = np.array(
        [
            max(np.abs(h).max(initial=0), np.abs(s).max(initial=0))
            for h, s in zip(h_blocks, s_blocks, strict=True)
        ]
    )
    keep = (big > settings.threshold) | ((pairs[:, 0] == pairs[:, 1]) & ~shifts.any(axis=1))
    dropped = float(big[~keep].max(initial=0.0))
    record = BlockHamiltonian(
        numbers=numbers,
        positions=np.asarray(atoms.positions, dtype=float),
        cell=np.asarray(atoms.cell.array, dtype=float),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        basis=basis,
        pairs=pairs[keep],
        shifts=shifts[keep],
        hamiltonian=np.concatenate([b.ravel() for b, k in zip(h_blocks, keep, strict=True) if k]),
        overlap=np.concatenate([b.ravel() for b, k in zip(s_blocks, keep, strict=True) if k]),
        fermi_level=fermi["fermi_level"],
        metadata={},
    )
    flip = signs[:, None] * signs[None, :]
    gamma_h = flip * (result.core_hamiltonian if core else result.hamiltonian)[np.ix_(perm, perm)]
    gamma_s = flip * result.overlap[np.ix_(perm, perm)]
    kt = used.electronic_temperature_hartree
    electrons = None if core else fermi["n_electrons"] / np.prod(settings.scf_supercell)
    checks = check_image_record(
        record, gamma_h, gamma_s, electrons, kt, kgrid=settings.scf_supercell
    )
    if settings.kgrid_electron_count is not None and not core:
        grid = settings.kgrid_electron_count
        checks["electron_count_kgrid"] = list(grid)
        checks["electron_count_on_kgrid"] = kgrid_electron_count(
            record, grid, fermi["fermi_level"], kt
        )
    metadata.update(
        image_resolved=True,
        interaction_range_angstrom=diagnostics["cutoff_angstrom"],
        unfolding=diagnostics,
        image_checks=checks,
        max_dropped_block_hartree=dropped,
        block_threshold=float(settings.threshold),
        k_grid=list(settings.scf_supercell),
    )
    return record.replace(metadata=metadata)
