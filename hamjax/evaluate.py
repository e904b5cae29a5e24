"""Accuracy of predicted Hamiltonians against reference records: the MD17-style metrics.

Matrix-entry errors
-------------------
The MAE "over all H entries" of the molecular benchmarks is the mean of ``|H_pred - H_ref|``
over every entry of the full matrix. Here it is computed block by block on the union of the
atom-pair blocks ``(i, j, shift)`` of the reference and the prediction; a block present in
only one of them counts with zeros for the other (a pair the model leaves out is predicted as
zero). For a molecule whose reference holds every atom pair (PySCF records do) this union is
the whole matrix, so the MAE equals the dense-matrix MAE. Node entries are those of the
on-site blocks ``(i, i, 0)``, edge entries all others. Errors are accumulated as sums and
counts, so the MAE over a data set weighs every entry equally (the mean over frames of
per-frame MAEs when all frames have the same molecule).

Orbital energies
----------------
The generalised eigenproblem ``H C = S C diag(eps)`` is solved for the predicted H with the
reference S and for the reference H with the same S (dense, Gamma point for periodic
records); ``|eps_pred - eps_ref|`` is averaged over all orbitals and over the occupied ones
(``n_electrons / 2`` lowest, from the reference metadata when known), and HOMO, LUMO and gap
errors are reported. The occupied-orbital similarity is the mean of ``|c_pred^T S c_ref|``
over occupied orbitals (1 for identical orbitals; degenerate levels can lower it).

All values are reported in micro-Hartree (``*_uha``); 1 uEh = 2.72e-5 eV.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import scipy.linalg
from tqdm.auto import tqdm

from hamjax.blocks import BlockHamiltonian
from hamjax.inference import Predictor
from hamjax.io.dataset import load

__all__ = [
    "MICRO",
    "block_error_sums",
    "evaluate_model",
    "orbital_energy_errors",
    "prediction_metrics",
    "prediction_metrics_from_sums",
]

#: Hartree -> micro-Hartree.
MICRO = 1e6


def _block_map(record: BlockHamiltonian) -> dict:
    return {
        (int(i), int(j), *map(int, s)): b
        for b, ((i, j), s) in enumerate(zip(record.pairs, record.shifts, strict=True))
    }


def block_error_sums(reference: BlockHamiltonian, prediction: BlockHamiltonian) -> dict:
    """Sums of absolute and squared H errors over node and edge entries (Hartree).

    Args:
        reference: reference record (Hartree).
        prediction: predicted record of the same structure (same atoms and orbital counts).

    Returns:
        ``{"node_abs", "node_sq", "node_count", "edge_abs", "edge_sq", "edge_count",
        "max_abs"}``; sums in Hartree and Hartree^2, counts of matrix entries.

    Raises:
        ValueError: the records describe different atoms or orbital counts.
    """
    if not np.array_equal(reference.numbers, prediction.numbers):
        raise ValueError(
            "reference and prediction have different atoms "
            f"({len(reference.numbers)} vs {len(prediction.numbers)} atoms or other elements)"
        )
    counts = reference.orbital_counts
    if not np.array_equal(counts, prediction.orbital_counts):
        raise ValueError("reference and prediction have different orbitals per atom")
    ref_map, pred_map = _block_map(reference), _block_map(prediction)
    sums = dict.fromkeys(("node_abs", "node_sq", "edge_abs", "edge_sq", "max_abs"), 0.0)
    sums["node_count"] = 0
    sums["edge_count"] = 0
    for key in set(ref_map) | set(pred_map):
        i, j = key[0], key[1]
        shape = (int(counts[i]), int(counts[j]))
        ref = reference.block(ref_map[key]) if key in ref_map else np.zeros(shape)
        pred = prediction.block(pred_map[key]) if key in pred_map else np.zeros(shape)
        err = np.abs(np.asarray(pred, dtype=np.float64) - ref)
        kind = "node" if i == j and key[2:] == (0, 0, 0) else "edge"
        sums[f"{kind}_abs"] += float(err.sum())
        sums[f"{kind}_sq"] += float((err**2).sum())
        sums[f"{kind}_count"] += err.size
        if err.size:
            sums["max_abs"] = max(sums["max_abs"], float(err.max()))
    return sums


def _n_occupied(reference: BlockHamiltonian, n_occupied: int | None) -> int | None:
    if n_occupied is not None:
        return int(n_occupied)
    n_el = reference.metadata.get("n_electrons")
    if n_el is None:
        return None
    return int(round(float(n_el))) // 2


def orbital_energy_errors(
    reference: BlockHamiltonian,
    prediction: BlockHamiltonian,
    n_occupied: int | None = None,
) -> dict:
    """Errors of the generalised eigenvalues of H (Hartree), both with the reference S.

    Args:
        reference: record with H and S.
        prediction: predicted record (its H is used; its S is ignored).
        n_occupied: doubly occupied orbitals; default ``n_electrons / 2`` from the reference
            metadata (None: occupied metrics are left out).

    Returns:
        ``{"abs_errors": [n_orb] |eps_pred - eps_ref| (Hartree, ascending levels),
        "n_occupied", "homo_error", "lumo_error", "gap_error" (signed, Hartree),
        "occupied_similarity" (mean |c_pred^T S c_ref| over occupied orbitals)}``.

    Raises:
        ValueError: the reference has no overlap.
    """
    if reference.overlap is None:
        raise ValueError("orbital energies need the reference overlap S; the record has none")
    s = reference.to_dense("overlap")
    h_ref = reference.to_dense("hamiltonian")
    h_pred = prediction.to_dense("hamiltonian")
    if h_pred.shape != h_ref.shape:
        raise ValueError(f"prediction is {h_pred.shape}, reference {h_ref.shape}")
    if np.iscomplexobj(s) or np.iscomplexobj(h_ref) or np.iscomplexobj(h_pred):
        s, h_ref, h_pred = s.real, h_ref.real, h_pred.real
    h_pred = 0.5 * (h_pred + h_pred.T)
    e_ref, c_ref = scipy.linalg.eigh(h_ref, s)
    e_pred, c_pred = scipy.linalg.eigh(h_pred, s)
    out = {"abs_errors": np.abs(e_pred - e_ref)}
    n_occ = _n_occupied(reference, n_occupied)
    out["n_occupied"] = n_occ
    if n_occ is not None and 0 < n_occ < len(e_ref):
        diff = e_pred - e_ref
        out["homo_error"] = float(diff[n_occ - 1])
        out["lumo_error"] = float(diff[n_occ])
        out["gap_error"] = float(diff[n_occ] - diff[n_occ - 1])
        overlap = np.abs(np.einsum("mi,mn,ni->i", c_pred[:, :n_occ], s, c_ref[:, :n_occ]))
        out["occupied_similarity"] = float(overlap.mean())
    return out


def prediction_metrics_from_sums(sums: dict) -> dict:
    """Micro-Hartree metrics from accumulated sums (see :func:`prediction_metrics`)."""
    n_node, n_edge = sums["node_count"], sums["edge_count"]
    n = n_node + n_edge

    def ratio(a, b):
        return float(a / b) if b else float("nan")

    out = {
        "n_frames": sums["n_frames"],
        "n_entries": n,
        "n_node_entries": n_node,
        "n_edge_entries": n_edge,
        "mae_uha": MICRO * ratio(sums["node_abs"] + sums["edge_abs"], n),
        "node_mae_uha": MICRO * ratio(sums["node_abs"], n_node),
        "edge_mae_uha": MICRO * ratio(sums["edge_abs"], n_edge),
        "rmse_uha": MICRO * float(np.sqrt(ratio(sums["node_sq"] + sums["edge_sq"], n))),
        "max_abs_uha": MICRO * sums["max_abs"],
    }
    if sums.get("orbital_count"):
        out["orbital_energy_mae_uha"] = MICRO * ratio(sums["orbital_abs"], sums["orbital_count"])
        if sums.get("occupied_count"):
            out["occupied_orbital_energy_mae_uha"] = MICRO * ratio(
                sums["occupied_abs"], sums["occupied_count"]
            )
            for key in ("homo", "lumo", "gap"):
                out[f"{key}_mae_uha"] = MICRO * ratio(sums[f"{key}_abs"], sums["occupied_frames"])
            out["occupied_similarity"] = ratio(sums["similarity"], sums["occupied_frames"])
    return out


def _new_sums() -> dict:
    return {
        "n_frames": 0, "node_abs": 0.0, "node_sq": 0.0, "node_count": 0, "edge_abs": 0.0,
        "edge_sq": 0.0, "edge_count": 0, "max_abs": 0.0, "orbital_abs": 0.0,
        "orbital_count": 0, "occupied_abs": 0.0, "occupied_count": 0, "homo_abs": 0.0,
        "lumo_abs": 0.0, "gap_abs": 0.0, "similarity": 0.0, "occupied_frames": 0,
    }  # fmt: skip


def _add(sums: dict, ref, pred, index: int, orbital_energies: bool) -> None:
    """Accumulate the errors of one structure into ``sums``."""
    try:
        part = block_error_sums(ref, pred)
    except ValueError as err:
        name = ref.metadata.get("name") or f"structure {index}"
        raise ValueError(f"{name}: {err}") from None
    sums["n_frames"] += 1
    for key in ("node_abs", "node_sq", "node_count", "edge_abs", "edge_sq", "edge_count"):
        sums[key] += part[key]
    sums["max_abs"] = max(sums["max_abs"], part["max_abs"])
    if orbital_energies and ref.overlap is not None:
        orb = orbital_energy_errors(ref, pred)
        sums["orbital_abs"] += float(orb["abs_errors"].sum())
        sums["orbital_count"] += orb["abs_errors"].size
        n_occ = orb["n_occupied"]
        if "homo_error" in orb:
            sums["occupied_abs"] += float(orb["abs_errors"][:n_occ].sum())
            sums["occupied_count"] += n_occ
            for key in ("homo", "lumo", "gap"):
                sums[f"{key}_abs"] += abs(orb[f"{key}_error"])
            sums["similarity"] += orb["occupied_similarity"]
            sums["occupied_frames"] += 1


def prediction_metrics(
    references: Sequence[BlockHamiltonian],
    predictions: Sequence[BlockHamiltonian],
    *,
    orbital_energies: bool = True,
) -> dict:
    """MD17-style metrics of predictions against references (micro-Hartree).

    Args:
        references: reference records (Hartree) with S for orbital energies.
        predictions: one predicted record per reference, same structures.
        orbital_energies: also compute the orbital-energy metrics (needs S).

    Returns:
        ``{"n_frames", "n_entries", "n_node_entries", "n_edge_entries", "mae_uha",
        "node_mae_uha", "edge_mae_uha", "rmse_uha", "max_abs_uha"}`` and, with orbital
        energies, ``"orbital_energy_mae_uha"`` (all orbitals),
        ``"occupied_orbital_energy_mae_uha"``, ``"homo_mae_uha"``, ``"lumo_mae_uha"``,
        ``"gap_mae_uha"`` and ``"occupied_similarity"``.
    """
    if len(references) != len(predictions):
        raise ValueError(f"{len(references)} references but {len(predictions)} predictions")
    sums = _new_sums()
    for index, (ref, pred) in enumerate(zip(references, predictions, strict=True)):
        _add(sums, ref, pred, index, orbital_energies)
    return prediction_metrics_from_sums(sums)


def evaluate_model(
    model,
    files: Iterable[str | os.PathLike],
    *,
    which: str = "best",
    batch_frames: int = 64,
    max_graphs_per_batch: int = 16,
    orbital_energies: bool = True,
    progress: bool = False,
) -> dict:
    """Metrics of a trained model on dataset files (any files, seen in training or not).

    Args:
        model: model folder written by ``hamjax train`` or a
            :class:`hamjax.inference.Predictor`.
        files: dataset files (:mod:`hamjax.io.dataset`) with reference H (and S).
        which: checkpoint of a model folder, "best" or "latest".
        batch_frames: frames loaded and predicted at a time (bounds memory).
        max_graphs_per_batch: structures per padded model batch.
        orbital_energies: also compute the orbital-energy metrics.
        progress: show a tqdm bar.

    Returns:
        The dictionary of :func:`prediction_metrics` over all files, plus ``"files"``.
    """
    files = [Path(f) for f in files]
    if not files:
        raise ValueError("no dataset files to evaluate")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"dataset file {f} does not exist")
    predictor = model if isinstance(model, Predictor) else Predictor.load(model, which)
    sums = _new_sums()
    chunks = range(0, len(files), batch_frames)
    if progress:
        chunks = tqdm(chunks, desc="evaluate", unit="chunk")
    for start in chunks:
        refs = [load(f) for f in files[start : start + batch_frames]]
        preds = predictor.predict(refs, max_graphs_per_batch=max_graphs_per_batch)
        for k, (f, ref, pred) in enumerate(
            zip(files[start : start + batch_frames], refs, preds, strict=True)
        ):
            ref.metadata["name"] = str(f)
            _add(sums, ref, pred, start + k, orbital_energies)
    metrics = prediction_metrics_from_sums(sums)
    metrics["files"] = len(files)
    return metrics
