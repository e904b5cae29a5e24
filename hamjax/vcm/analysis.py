"""Errors of a predicted Hamiltonian against its reference, entry by entry.

:func:`fold_prediction` puts prediction and reference on the same blocks (per image, or
folded to Gamma); :func:`entry_errors` and :func:`mae_row` give the node, edge and total
errors and MAE; :func:`atom_errors` and :func:`error_profile` locate them along the device.
:func:`prediction_for_transport` completes the prediction for the transport problem.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from ase.data import chemical_symbols

from hamjax.blocks import BlockHamiltonian
from hamjax.constants import HARTREE_EV

__all__ = [
    "atom_errors",
    "block_sums",
    "entry_errors",
    "error_profile",
    "fold_prediction",
    "mae_row",
    "prediction_for_transport",
]


def _on_pairs(hamiltonian, reference, pairs: np.ndarray):
    """A record on ``pairs`` (shift 0) with blocks of the Gamma matrix ``hamiltonian`` and
    the reference's S (and geometry, Fermi level, metadata)."""
    return BlockHamiltonian.from_dense(
        reference.numbers,
        reference.positions,
        reference.cell,
        reference.pbc,
        reference.basis,
        hamiltonian,
        reference.to_sparse("overlap"),
        threshold=-1.0,
        candidate_pairs=pairs,
        fermi_level=reference.fermi_level,
        metadata=dict(reference.metadata),
    )


def fold_prediction(predicted, reference):
    """The predicted H next to the reference's on the same blocks, entry by entry.

    An image-resolved reference (:attr:`hamjax.blocks.BlockHamiltonian.image_resolved`) is
    compared block by block on the predicted blocks ``(i, j, R)`` (those within the model
    cutoff): the per-image MAE. A Gamma-folded reference holds sums over images, so the
    prediction is folded to Gamma first and both are compared on the predicted atom pairs.

    Returns:
        ``(prediction, reference_on_blocks)``: two records with identical pairs and shifts.
    """
    if reference.image_resolved:
        keys = np.unique(np.concatenate([predicted.pairs, predicted.shifts], axis=1), axis=0)
        pairs, shifts = keys[:, :2], keys[:, 2:]
        return predicted.on_blocks(pairs, shifts), reference.on_blocks(pairs, shifts)
    pairs = np.unique(predicted.pairs, axis=0)
    folded = _on_pairs(predicted.to_sparse("hamiltonian"), reference, pairs)
    on_pairs = _on_pairs(reference.to_sparse("hamiltonian"), reference, pairs)
    if not np.array_equal(folded.pairs, on_pairs.pairs):
        raise AssertionError("folded prediction and reference disagree on their pairs")
    return folded, on_pairs


def prediction_for_transport(predicted, reference):
    """Predicted H on every block of the reference, with the reference S.

    Blocks beyond the model cutoff get zero H but keep their overlap, so the open device has
    the same (positive definite) S as the reference's. A Gamma-folded reference gets the
    prediction folded to Gamma.
    """
    if reference.image_resolved:
        on_blocks = predicted.on_blocks(reference.pairs, reference.shifts)
        return on_blocks.replace(
            overlap=reference.overlap,
            fermi_level=reference.fermi_level,
            metadata=dict(reference.metadata),
        )
    pairs = np.unique(reference.pairs, axis=0)
    return _on_pairs(predicted.to_sparse("hamiltonian"), reference, pairs)


def entry_errors(folded, on_pairs) -> dict[str, np.ndarray]:
    """Per-entry H errors (prediction - reference, Hartree) of node blocks (an atom with
    itself in the home cell) and edge blocks (every other pair or image)."""
    sizes = np.diff(folded.block_offsets)
    on_site = (folded.pairs[:, 0] == folded.pairs[:, 1]) & ~folded.shifts.any(axis=1)
    is_node = np.repeat(on_site, sizes)
    error = folded.hamiltonian - on_pairs.hamiltonian
    return {"node": error[is_node], "edge": error[~is_node], "total": error}


def block_sums(record, values: np.ndarray) -> np.ndarray:
    """``values`` (one per stored entry of ``record``, e.g. ``|H error|``) summed per block."""
    sizes = np.diff(record.block_offsets)
    return np.bincount(np.repeat(np.arange(len(sizes)), sizes), values, len(sizes))


def atom_errors(folded, on_pairs) -> tuple[np.ndarray, np.ndarray]:
    """Sum of |H error| (Hartree) and number of entries per atom.

    Every entry of a block ``(i, j)`` counts for atom ``i`` and for atom ``j``; an on-site
    block counts once. Inputs are :func:`fold_prediction`'s two records.
    """
    sizes = np.diff(folded.block_offsets)
    per_block = block_sums(folded, np.abs(folded.hamiltonian - on_pairs.hamiltonian))
    i, j = folded.pairs.T
    other = (i != j) | folded.shifts.any(axis=1)
    n = len(folded.numbers)
    total = np.bincount(i, per_block, n) + np.bincount(j, per_block * other, n)
    count = np.bincount(i, sizes, n) + np.bincount(j, sizes * other, n)
    return total, count


def error_profile(folded, on_pairs, *, axis: int = 0, width: float = 2.0) -> dict:
    """MAE of the H entries of the atoms in slabs of ``width`` Angstrom along ``axis``.

    A slab's MAE is the mean |error| over the entries of every block that touches one of its
    atoms (:func:`atom_errors`): where along the device the prediction goes wrong
    (interfaces, filament, electrodes).

    Returns:
        ``{"axis", "width_angstrom", "start_angstrom", "mae_meV": [...],
        "elements": [[symbols], ...]}``: one entry per slab, None for an empty slab.
    """
    total, count = atom_errors(folded, on_pairs)
    coordinate = folded.positions[:, axis]
    start = float(np.floor(coordinate.min()))
    slab = ((coordinate - start) // width).astype(int)
    n_slab = int(slab.max()) + 1
    summed = np.bincount(slab, total, n_slab)
    entries = np.bincount(slab, count, n_slab)
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(entries > 0, summed / entries, np.nan) * HARTREE_EV * 1e3
    elements = [
        sorted({chemical_symbols[z] for z in folded.numbers[slab == k]}) for k in range(n_slab)
    ]
    return {
        "axis": axis,
        "width_angstrom": width,
        "start_angstrom": start,
        "mae_meV": [None if np.isnan(v) else float(v) for v in mae],
        "elements": elements,
    }


def mae_row(errors: Mapping[str, np.ndarray]) -> dict[str, float]:
    """Node, edge and total MAE in meV and mEh."""
    row = {}
    for part in ("node", "edge", "total"):
        mae = float(np.mean(np.abs(errors[part]))) if errors[part].size else float("nan")
        row[f"{part}_mae_meV"] = mae * HARTREE_EV * 1e3
        row[f"{part}_mae_mEh"] = mae * 1e3
    return row
