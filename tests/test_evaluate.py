"""Evaluation metrics against independent dense references (numpy, scipy.linalg.eigh)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.linalg

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.evaluate import (
    block_error_sums,
    orbital_energy_errors,
    prediction_metrics,
)

# A def2-SVP-like shell layout for water: O s,s,s,p,p,d (14 orbitals), H s,s,p (5 orbitals).
BASIS = Basis.from_dict("test-svp", {8: (0, 0, 0, 1, 1, 2), 1: (0, 0, 1)})
NUMBERS = np.array([8, 1, 1])
POSITIONS = np.array([[0.0, 0.0, 0.12], [0.0, 0.76, -0.47], [0.0, -0.76, -0.47]])


def _random_reference(seed: int, n_electrons: int = 10) -> BlockHamiltonian:
    """A molecule record with a symmetric H and a positive-definite S (all pairs kept)."""
    rng = np.random.default_rng(seed)
    n = int(BASIS.orbital_counts(NUMBERS).sum())
    a = rng.normal(size=(n, n))
    h = 0.5 * (a + a.T)
    b = rng.normal(scale=0.2, size=(n, n))
    s = np.eye(n) + 0.5 * (b + b.T) / np.sqrt(n)
    assert np.linalg.eigvalsh(s).min() > 0.1
    return BlockHamiltonian.from_dense(
        NUMBERS,
        POSITIONS,
        np.zeros((3, 3)),
        np.zeros(3, bool),
        BASIS,
        h,
        s,
        metadata={"n_electrons": n_electrons},
    )


def _node_mask(record: BlockHamiltonian) -> np.ndarray:
    off = record.orbital_offsets
    atom = np.repeat(np.arange(len(record.numbers)), np.diff(off))
    return atom[:, None] == atom[None, :]


def _with_dense_h(record: BlockHamiltonian, h: np.ndarray) -> BlockHamiltonian:
    return BlockHamiltonian.from_dense(
        record.numbers, record.positions, record.cell, record.pbc, record.basis, h
    )


def test_mae_of_known_sign_noise_is_exact():
    """Noise of magnitude exactly 3 uEh on node and 7 uEh on edge entries, random signs."""
    ref = _random_reference(0)
    h = ref.to_dense()
    node = _node_mask(ref)
    rng = np.random.default_rng(1)
    signs = rng.choice([-1.0, 1.0], size=h.shape)
    noise = np.where(node, 3e-6, 7e-6) * signs
    metrics = prediction_metrics([ref], [_with_dense_h(ref, h + noise)], orbital_energies=False)
    n_node, n_all = int(node.sum()), node.size
    assert metrics["n_entries"] == n_all
    assert metrics["n_node_entries"] == n_node
    assert metrics["node_mae_uha"] == pytest.approx(3.0, rel=1e-8)
    assert metrics["edge_mae_uha"] == pytest.approx(7.0, rel=1e-8)
    expected = (3.0 * n_node + 7.0 * (n_all - n_node)) / n_all
    assert metrics["mae_uha"] == pytest.approx(expected, rel=1e-8)
    assert metrics["max_abs_uha"] == pytest.approx(7.0, rel=1e-8)


def test_mae_equals_dense_numpy_over_frames_and_missing_blocks():
    """Gaussian noise on two frames, one prediction lacking a pair: dense numpy MAE/RMSE."""
    refs = [_random_reference(2), _random_reference(3)]
    preds, diffs = [], []
    rng = np.random.default_rng(4)
    for ref in refs:
        h = ref.to_dense() + rng.normal(scale=1e-4, size=(ref.n_orbitals, ref.n_orbitals))
        pred = _with_dense_h(ref, h)
        preds.append(pred)
    # drop the (1, 2) and (2, 1) blocks of the second prediction: counted as zeros
    pred = preds[1]
    keep = ~(((pred.pairs[:, 0] == 1) & (pred.pairs[:, 1] == 2))
             | ((pred.pairs[:, 0] == 2) & (pred.pairs[:, 1] == 1)))  # fmt: skip
    blocks = [pred.block(b) for b in np.flatnonzero(keep)]
    preds[1] = BlockHamiltonian(
        numbers=pred.numbers, positions=pred.positions, cell=pred.cell, pbc=pred.pbc,
        basis=pred.basis, pairs=pred.pairs[keep], shifts=pred.shifts[keep],
        hamiltonian=np.concatenate([b.ravel() for b in blocks]),
    )  # fmt: skip
    for ref, pred in zip(refs, preds, strict=True):
        diffs.append(pred.to_dense() - ref.to_dense())
    assert np.any(diffs[1] == -refs[1].to_dense())  # the dropped block is a full error
    flat = np.concatenate([d.ravel() for d in diffs])
    node = np.concatenate([_node_mask(r).ravel() for r in refs])
    metrics = prediction_metrics(refs, preds, orbital_energies=False)
    assert metrics["n_frames"] == 2
    assert metrics["mae_uha"] == pytest.approx(1e6 * np.abs(flat).mean(), rel=1e-10)
    assert metrics["node_mae_uha"] == pytest.approx(1e6 * np.abs(flat[node]).mean(), rel=1e-10)
    assert metrics["edge_mae_uha"] == pytest.approx(1e6 * np.abs(flat[~node]).mean(), rel=1e-10)
    assert metrics["rmse_uha"] == pytest.approx(1e6 * np.sqrt((flat**2).mean()), rel=1e-10)
    assert metrics["max_abs_uha"] == pytest.approx(1e6 * np.abs(flat).max(), rel=1e-10)


def test_perfect_prediction_has_zero_error():
    ref = _random_reference(5)
    metrics = prediction_metrics([ref], [ref])
    for key in ("mae_uha", "node_mae_uha", "edge_mae_uha", "orbital_energy_mae_uha"):
        assert metrics[key] == pytest.approx(0.0, abs=1e-6)
    assert metrics["occupied_similarity"] == pytest.approx(1.0, abs=1e-9)


def test_orbital_energy_errors_equal_scipy_eigh():
    ref = _random_reference(6, n_electrons=10)
    rng = np.random.default_rng(7)
    h = ref.to_dense()
    e = rng.normal(scale=1e-3, size=h.shape)
    pred = _with_dense_h(ref, h + 0.5 * (e + e.T))
    s = ref.to_dense("overlap")
    e_ref = scipy.linalg.eigh(h, s, eigvals_only=True)
    e_pred = scipy.linalg.eigh(pred.to_dense(), s, eigvals_only=True)
    errors = orbital_energy_errors(ref, pred)
    np.testing.assert_allclose(errors["abs_errors"], np.abs(e_pred - e_ref), atol=1e-12)
    assert errors["n_occupied"] == 5
    assert errors["homo_error"] == pytest.approx(e_pred[4] - e_ref[4], abs=1e-12)
    assert errors["gap_error"] == pytest.approx(
        (e_pred[5] - e_pred[4]) - (e_ref[5] - e_ref[4]), abs=1e-12
    )
    metrics = prediction_metrics([ref], [pred])
    assert metrics["orbital_energy_mae_uha"] == pytest.approx(
        1e6 * np.abs(e_pred - e_ref).mean(), rel=1e-9
    )
    assert metrics["occupied_orbital_energy_mae_uha"] == pytest.approx(
        1e6 * np.abs(e_pred[:5] - e_ref[:5]).mean(), rel=1e-9
    )
    # a constant shift c*S moves every level by exactly c
    shifted = _with_dense_h(ref, h + 2e-5 * s)
    errors = orbital_energy_errors(ref, shifted)
    np.testing.assert_allclose(errors["abs_errors"], 2e-5, atol=1e-11)


def test_mismatched_structures_are_named():
    ref = _random_reference(8)
    other = BlockHamiltonian.from_dense(
        NUMBERS[:2], POSITIONS[:2], np.zeros((3, 3)), np.zeros(3, bool), BASIS,
        np.eye(int(BASIS.orbital_counts(NUMBERS[:2]).sum())),
    )  # fmt: skip
    with pytest.raises(ValueError, match="different atoms"):
        block_error_sums(ref, other)
    with pytest.raises(ValueError, match="orbital energies need the reference overlap"):
        orbital_energy_errors(other, other)


# ------------------------------------------------------------------ CLI with a trained model
@pytest.mark.slow
def test_cli_prints_and_writes_json_equal_to_dense_numpy(tmp_path, capsys):
    """Train a tiny model for one epoch, evaluate it with ``hamjax evaluate``, compare."""
    from hamjax import train
    from hamjax.cli import main
    from hamjax.inference import predict
    from hamjax.io import dataset
    from hamjax.models import ModelConfig

    paths = []
    for k in range(3):
        ref = _random_reference(10 + k)
        ref = ref.replace(positions=ref.positions + 0.02 * k)
        paths.append(str(dataset.save(ref, tmp_path / f"frame_{k}.npz")))
    model = ModelConfig(
        basis=BASIS, cutoff=5.0, max_ell=2, channels=4, heads=1, radial_hidden=(8,),
        attention_dim=4, radial_basis=4, dtype="float64",
    )  # fmt: skip
    config = train.TrainConfig(
        model=model, data=tuple(paths[:2]), validation_data=tuple(paths[2:]),
        slice_width_angstrom=None, epochs=1, warmup_steps=1, progress=False,
    )  # fmt: skip
    train.train(config, tmp_path / "run", echo=None)
    out = tmp_path / "metrics.json"
    pattern = str(tmp_path / "frame_*.npz")
    rc = main(["evaluate", "--model", str(tmp_path / "run"), "--data", pattern,
               "--out", str(out), "--quiet"])  # fmt: skip
    assert rc == 0
    printed = capsys.readouterr().out
    assert "H MAE, all entries" in printed and "uEh" in printed
    metrics = json.loads(out.read_text())
    refs = [dataset.load(p) for p in paths]
    preds = predict(tmp_path / "run", refs)
    pairs = list(zip(preds, refs, strict=True))
    diffs = np.concatenate([(p.to_dense() - r.to_dense()).ravel() for p, r in pairs])
    assert metrics["n_frames"] == 3
    assert metrics["mae_uha"] == pytest.approx(1e6 * np.abs(diffs).mean(), rel=1e-9)
    assert f"{metrics['mae_uha']:12.3f}" in printed
    s = [r.to_dense("overlap") for r in refs]
    e_err = np.concatenate([
        np.abs(scipy.linalg.eigh(0.5 * (p.to_dense() + p.to_dense().T), sk, eigvals_only=True)
               - scipy.linalg.eigh(r.to_dense(), sk, eigvals_only=True))
        for (p, r), sk in zip(pairs, s, strict=True)
    ])  # fmt: skip
    assert metrics["orbital_energy_mae_uha"] == pytest.approx(1e6 * e_err.mean(), rel=1e-8)
