"""End to end on a tiny model: train, resume, fine-tune, predict and evaluate through the CLI.

One tiny model (lmax 1, 4 channels, one layer, 3 Angstrom cutoff, float64) is trained for a
few steps on tblite GFN1-xTB references of two rattled water molecules; a third one is the
unseen test structure. The config file gives no basis: the model takes the one recorded in
the data files. The facts checked are those of the slow tests in ``test_train.py``,
``test_inference.py`` and ``test_evaluate.py``, on a model small enough to compile in
seconds: a run stopped after two epochs and run again equals a straight run; ``init_from``
starts at the saved parameters; checkpoints reproduce the parameters in memory; predicted
blocks are Hermitian; exact slices equal the full graph; ``hamjax evaluate`` equals a numpy
MAE of the ``hamjax predict`` output; a corrupt model folder is reported by name.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import jax
import numpy as np
import pytest
from ase import Atoms
from ase.io import write as ase_write
from test_inference import water_chain

from hamjax import train
from hamjax.basis import gfn1_xtb_basis, to_hamjax_order
from hamjax.cli import main
from hamjax.inference import Predictor
from hamjax.io import dataset, read_csr

EPOCHS = 4

#: The run's config file (data paths relative to it; no basis: it comes from the data).
CONFIG = {
    "data": ["data/w0.npz", "data/w1.npz"],
    "validation_fraction": 0.0,  # validation on the training set (checked below)
    "slice_width_angstrom": None,
    "max_graphs_per_batch": 2,  # both structures in one batch: one step per epoch
    "epochs": EPOCHS,
    "checkpoint_every_epochs": 1,
    "learning_rate": 1e-2,
    "warmup_steps": 1,
    "schedule": "plateau",  # constant after warm-up: the same steps whatever the epochs
    "progress": False,
    "model": {
        "cutoff": 3.0,
        "max_ell": 1,
        "channels": 4,
        "heads": 1,
        "radial_basis": 4,
        "radial_hidden": [8],
        "attention_dim": 4,
        "dtype": "float64",
    },
}


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _config_file(folder: Path, **changes) -> Path:
    path = folder / f"cfg_{len(list(folder.glob('cfg_*.json')))}.json"
    path.write_text(json.dumps({**CONFIG, **changes}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A straight run, the same run stopped after two epochs and resumed, and the data."""
    from ase.build import molecule

    from hamjax.reference import compute_reference

    folder = tmp_path_factory.mktemp("e2e")
    rng = np.random.default_rng(11)
    records = []
    (folder / "data").mkdir()
    for k in range(3):
        atoms = molecule("H2O")
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        records.append(compute_reference(atoms, "tblite"))
        dataset.save(records[-1], folder / "data" / f"w{k}.npz")
    cfg = _config_file(folder)
    # the stopped run goes first: the CLI sets XLA flags for the process, and every
    # compilation after it shares them (and the compilation cache)
    stopped = folder / "resumed"
    args = ["train", "--out", str(stopped), "--quiet", "--config"]
    assert main([*args, str(_config_file(folder, epochs=2))]) == 0
    first_log = _log(stopped)
    config = train.load_config(cfg)
    _, state = train.train(config, folder / "straight", echo=None, return_state=True)
    return {
        "folder": folder,
        "records": records,
        "config": config,
        "state": state,
        "straight": folder / "straight",
        "resumed": stopped,
        "first_log": first_log,
        "resume_args": [*args, str(cfg)],
    }


def test_resumed_run_equals_a_straight_run(runs, capsys):
    stopped = runs["resumed"]
    assert [r["epoch"] for r in runs["first_log"]] == [1, 2]
    capsys.readouterr()
    assert main(runs["resume_args"]) == 0
    printed = capsys.readouterr().out
    assert "resuming from" in printed and "at epoch 2, step 2" in printed
    log = _log(stopped)
    assert [r["epoch"] for r in log] == list(range(1, EPOCHS + 1))  # each epoch once
    assert [r["step"] for r in log] == list(range(1, EPOCHS + 1))
    assert log[:2] == runs["first_log"]  # epochs before the stop are the first run's lines
    straight = _log(runs["straight"])
    for a, b in zip(log, straight, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
        assert a["validation_total_mae_meV"] == pytest.approx(
            b["validation_total_mae_meV"], rel=1e-9
        )
    _, resumed, _ = train.load_checkpoint(stopped, "latest")
    _, direct, _ = train.load_checkpoint(runs["straight"], "latest")
    for x, y in zip(jax.tree.leaves(resumed), jax.tree.leaves(direct), strict=True):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-9, atol=1e-12)
    # a few steps of Adam at 1e-2 lower the training loss
    assert straight[-1]["train_loss"] < straight[0]["train_loss"]


def test_checkpoint_holds_the_parameters_in_memory_and_the_data_basis(runs):
    run, config, state = runs["straight"], runs["config"], runs["state"]
    loaded, params, meta = train.load_checkpoint(run, "latest")
    assert meta["epoch"] == EPOCHS and meta["step"] == EPOCHS
    # the model took the basis recorded in the data files: GFN1-xTB of H and O
    assert loaded.model.basis == gfn1_xtb_basis(["H", "O"])
    assert loaded == train.with_data_basis(config, runs["records"][:2])
    assert train.load_config(run / "config.json").model == loaded.model
    for x, y in zip(jax.tree.leaves(state.params), jax.tree.leaves(params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    records = runs["records"]
    from_disk = Predictor.load(run, "latest").predict(records[2:])
    in_memory = Predictor(loaded.model, state.params).predict(records[2:])
    for a, b in zip(from_disk, in_memory, strict=True):
        np.testing.assert_array_equal(a.hamiltonian, b.hamiltonian)
    # the restored model reproduces the last validation metric (on the training set)
    metrics = train.loss_and_mae_of_model(run, records[:2], which="latest")
    last = _log(run)[-1]
    assert metrics["total_mae_meV"] == pytest.approx(last["validation_total_mae_meV"], rel=1e-9)
    assert metrics["entries"] == last["validation_entries"] == last["train_entries"]


def test_init_from_starts_at_the_saved_parameters(runs):
    # one step per epoch: the first epoch's training metrics are those of the starting
    # parameters, which are the straight run's best, evaluated on the same training set
    best = train.load_checkpoint(runs["straight"], "best")[2]
    config = train.load_config(
        _config_file(runs["folder"], epochs=1, init_from=str(runs["straight"]))
    )
    record = train.train(config, runs["folder"] / "finetune", echo=None)
    expected = best["history"][-1]["validation_total_mae_meV"]
    assert record["train_total_mae_meV"] == pytest.approx(expected, rel=1e-9)
    other = train.load_config(
        _config_file(
            runs["folder"],
            epochs=1,
            init_from=str(runs["straight"]),
            model={**CONFIG["model"], "radial_hidden": [6]},
        )
    )
    with pytest.raises(ValueError, match="radial_hidden"):
        train.train(other, runs["folder"] / "other", echo=None)


def test_predict_and_evaluate_cli(runs, tmp_path, capsys, caplog):
    run, test_file = runs["straight"], runs["folder"] / "data" / "w2.npz"
    out = tmp_path / "pred.npz"
    with caplog.at_level(logging.INFO):
        rc = main(["predict", "--model", str(run), "--structure", str(test_file),
                   "--out", str(out), "--cp2k", str(tmp_path / "pred")])  # fmt: skip
    assert rc == 0
    # no third-party warning from reading the model folder
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.records
    summary = json.loads(capsys.readouterr().out)
    assert summary["structures"] == 1 and summary["compilations"] == 1
    # frames of one padded size share one compilation
    frames = tmp_path / "frames.xyz"
    ase_write(frames, [Atoms(numbers=r.numbers, positions=r.positions) for r in runs["records"]])
    rc = main(["predict", "--model", str(run), "--structure", str(frames), "--batch", "1",
               "--out", str(tmp_path / "frames.npz")])  # fmt: skip
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["structures"] == 3 and summary["compilations"] == 1
    assert len(summary["written"]) == 3
    predicted, reference = dataset.load(out), dataset.load(test_file)
    h_pred, h_ref = predicted.to_dense(), reference.to_dense()
    np.testing.assert_allclose(h_pred, h_pred.T, atol=1e-12)  # H_ji = H_ij^T, on-site too
    for b, ((i, j), s) in enumerate(zip(predicted.pairs, predicted.shifts, strict=True)):
        if i == j and not s.any():
            np.testing.assert_allclose(predicted.block(b), predicted.block(b).T, atol=1e-12)
    # the overlap of the input record is carried over; CP2K CSR holds the same H
    np.testing.assert_allclose(predicted.to_dense("overlap"), reference.to_dense("overlap"))
    ks = read_csr(tmp_path / "pred-KS_SPIN_1-1_0.csr", predicted.n_orbitals)
    basis = predicted.basis
    np.testing.assert_allclose(
        to_hamjax_order(ks.toarray(), basis, predicted.numbers, "cp2k"), h_pred, atol=1e-12
    )
    # hamjax evaluate: the MAE over all H entries is numpy's on the dense matrices
    metrics_file = tmp_path / "metrics.json"
    rc = main(["evaluate", "--model", str(run), "--data", str(test_file), "--out",
               str(metrics_file), "--quiet", "--no-orbital-energies"])  # fmt: skip
    assert rc == 0
    metrics = json.loads(metrics_file.read_text())
    assert metrics["n_frames"] == 1 and metrics["n_entries"] == h_ref.size
    assert metrics["mae_uha"] == pytest.approx(1e6 * np.abs(h_pred - h_ref).mean(), rel=1e-12)
    diag = np.zeros_like(h_ref, bool)
    offsets = reference.orbital_offsets
    for a in range(len(reference.numbers)):
        diag[offsets[a] : offsets[a + 1], offsets[a] : offsets[a + 1]] = True
    node_mae = 1e6 * np.abs(h_pred - h_ref)[diag].mean()
    assert metrics["node_mae_uha"] == pytest.approx(node_mae, rel=1e-12)


def test_periodic_prediction_is_hermitian_and_slices_equal_the_full_graph(runs):
    predictor = Predictor.load(runs["straight"])
    atoms = water_chain(4, 1)  # 11.6 Angstrom along x: several 3-Angstrom slices
    full = predictor.predict([atoms], growth=2.0)[0]
    sliced = predictor.predict([atoms], slices="exact", slice_width_angstrom=3.0, growth=2.0)[0]
    np.testing.assert_array_equal(full.pairs, sliced.pairs)
    np.testing.assert_array_equal(full.shifts, sliced.shifts)
    scale = np.abs(full.hamiltonian).max()
    assert scale > 1e-3
    assert np.abs(sliced.hamiltonian - full.hamiltonian).max() <= 1e-10 * scale
    hk = full.to_dense(k=(0.3, 0.0, 0.0))
    np.testing.assert_allclose(hk, hk.conj().T, atol=1e-12)
    assert full.shifts.any()  # periodic images are among the blocks


# a failed orbax read leaves callbacks on a closed event loop: third-party noise, not ours
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", ["meta", "state", "empty"])
def test_corrupt_model_folder_names_the_folder_and_the_problem(runs, tmp_path, capsys, damage):
    broken = tmp_path / "broken"
    shutil.copytree(runs["straight"], broken)
    steps = sorted((broken / "checkpoints").iterdir())
    for step in steps:
        if damage == "meta":
            (step / "meta" / "metadata").write_text('{"config": ')
        elif damage == "state":
            for f in (step / "state").rglob("*"):
                if f.is_file() and f.parent.name == "d":
                    f.write_bytes(f.read_bytes()[:10])  # truncated array data
        else:
            shutil.rmtree(step)
    structure = runs["folder"] / "data" / "w2.npz"
    rc = main(["predict", "--model", str(broken), "--structure", str(structure),
               "--out", str(tmp_path / "p.npz")])  # fmt: skip
    assert rc == 2
    err = capsys.readouterr().err
    assert str(broken) in err
    expected = {
        "meta": "its JSON record cannot be read",
        "state": "parameters cannot be read",
        "empty": "holds no finished checkpoint",
    }[damage]
    assert expected in err, err
