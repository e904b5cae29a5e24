"""The shipped model vcm-gfn1: found by name, equivariant, and as accurate as its card says.

The card's reference-check MAE is reproduced on the record kept next to the model (a device
of a seed no training device has, its GFN1-xTB reference on the predicted blocks of its
middle atoms), the card
agrees with the checkpoint it describes, and ``pip wheel`` packs every file of the model.
"""

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import jax
import numpy as np
import pytest
from ase import Atoms

from hamjax import cli, pretrained
from hamjax.basis import basis_rotation_blocks
from hamjax.inference import Predictor
from hamjax.io import dataset
from hamjax.io.model_folder import read_checkpoint
from hamjax.vcm import entry_errors, fold_prediction, mae_row

NAME = "vcm-gfn1"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def predictor():
    return Predictor.load(NAME)


@pytest.fixture(scope="module")
def card():
    return pretrained.card(NAME)


def test_name_resolves_to_the_shipped_folder_and_unknown_names_are_listed(tmp_path):
    assert NAME in pretrained.names()
    assert pretrained.resolve(NAME) == pretrained.folder(NAME)
    assert pretrained.resolve(Path(NAME)) == pretrained.folder(NAME)  # argparse gives Paths
    assert pretrained.resolve(tmp_path) == tmp_path  # an existing folder wins
    with pytest.raises(FileNotFoundError, match=f"shipped: .*{NAME}"):
        pretrained.resolve("no-such-model")
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        Predictor.load("no-such-model")


def test_card_describes_the_shipped_checkpoint(card):
    saved = read_checkpoint(NAME)
    model = {k: v for k, v in saved.config["model"].items() if k != "basis"}
    assert {k: card["model"][k] for k in model} == model
    n_params = sum(np.size(x) for x in jax.tree.leaves(saved.params))
    assert card["model"]["parameters"] == n_params
    assert card["training"]["best_step"] == saved.step
    log = [json.loads(line) for line in (pretrained.folder(NAME) / "log.jsonl").open()]
    best = next(r for r in log if r["step"] == saved.step)
    assert card["validation_total_mae_meV"] == pytest.approx(best["validation_total_mae_meV"])
    assert card["training"]["steps_run"] == log[-1]["step"]
    assert set(card["elements"]) == {"N", "O", "Ti", "Hf"}
    assert card["reference"]["tblite"]["electronic_temperature_hartree"] == 0.06
    for field in ("data", "licence", "valid_for", "test", "reference_check", "made_by"):
        assert card[field], field
    seeds = {d["seed"] for d in card["data"]["train"].values()}
    assert not seeds & {d["seed"] for d in card["data"]["test"].values()}  # unseen devices
    size = sum(p.stat().st_size for p in pretrained.folder(NAME).rglob("*") if p.is_file())
    assert size < 5e6, size  # a few MB at most


def test_reproduces_the_card_mae_on_the_stored_reference(predictor, card):
    check = card["reference_check"]
    reference = dataset.load(pretrained.folder(NAME) / check["file"])
    assert reference.image_resolved
    predicted = predictor.predict([reference], with_overlap=False)[0]
    # the stored blocks are predicted blocks: those of the atoms kept, within the cutoff
    prediction, _ = fold_prediction(predicted, reference)
    kept = np.unique(reference.pairs[:, 0])
    assert len(kept) == check["atoms_kept"] and len(reference.pairs) == check["blocks"]
    assert len(reference.pairs) == np.isin(prediction.pairs[:, 0], kept).sum()
    row = mae_row(entry_errors(predicted.on_blocks(reference.pairs, reference.shifts), reference))
    for part in ("node", "edge", "total"):
        assert row[f"{part}_mae_meV"] == pytest.approx(check[f"{part}_mae_meV"], rel=0.01)


def _cluster() -> Atoms:
    """A small HfO2 / TiN cluster, no periodicity."""
    positions = [
        [0.0, 0.0, 0.0],
        [2.1, 0.1, 0.3],
        [-0.2, 2.0, 0.5],
        [0.3, -0.4, 2.2],
        [2.3, 2.2, 1.9],
        [4.2, 0.3, 0.4],
    ]
    return Atoms("HfO2TiNO", positions=positions)


def test_predictions_rotate_with_the_structure(predictor):
    rng = np.random.default_rng(5)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = q * np.sign(np.diag(r))
    rotation = -rotation if np.linalg.det(rotation) > 0 else rotation  # with an inversion
    atoms = _cluster()
    turned = atoms.copy()
    turned.positions = atoms.positions @ rotation.T
    plain, rotated = predictor.predict([atoms, turned])
    rotated = rotated.on_blocks(plain.pairs, plain.shifts)
    assert np.abs(plain.hamiltonian).max() > 1e-3
    d = basis_rotation_blocks(predictor.config.basis, rotation)
    offsets = plain.block_offsets
    scale = np.abs(plain.hamiltonian).max()
    for b, (i, j) in enumerate(plain.pairs):
        zi, zj = plain.numbers[i], plain.numbers[j]
        block = plain.hamiltonian[offsets[b] : offsets[b + 1]].reshape(len(d[zi]), len(d[zj]))
        turned_block = rotated.hamiltonian[offsets[b] : offsets[b + 1]].reshape(block.shape)
        np.testing.assert_allclose(turned_block, d[zi] @ block @ d[zj].T, atol=2e-5 * scale)


def test_models_command_and_predict_by_name(tmp_path, capsys):
    assert cli.main(["models"]) == 0
    listed = capsys.readouterr().out
    assert listed.startswith(f"{NAME}: ") and "test MAE" in listed
    structure = tmp_path / "cluster.xyz"
    _cluster().write(structure)
    out = tmp_path / "h.npz"
    assert (
        cli.main(["predict", "--model", NAME, "--structure", str(structure), "--out", str(out)])
        == 0
    )
    record = dataset.load(out)
    assert record.metadata["model"] == NAME and len(record.numbers) == 6


def test_wheel_packs_every_file_of_the_model(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
    )
    wheel = next(tmp_path.glob("hamjax-*.whl"))
    packed = set(zipfile.ZipFile(wheel).namelist())
    folder = pretrained.folder(NAME)
    shipped = {
        f"hamjax/pretrained/{NAME}/{p.relative_to(folder).as_posix()}"
        for p in folder.rglob("*")
        if p.is_file()
    }
    assert shipped and shipped <= packed, sorted(shipped - packed)[:5]


def test_demo_settings_predict_or_fine_tune_the_shipped_model():
    from hamjax import vcm

    shipped = vcm.demo_config(NAME)
    assert shipped.pretrained_model == NAME and shipped.transport_kgrid != (1, 1, 1)
    tuned = vcm.demo_config(NAME, fine_tune_steps=7)
    assert tuned.pretrained_model == ""  # the fine-tuned model in the run folder predicts
    settings = vcm.training_config(tuned, data=[], validation_data=[])
    assert settings.init_from == NAME and settings.steps == 7
    model = read_checkpoint(NAME).model  # the shipped architecture, on the data's basis
    for key in ("cutoff", "max_ell", "channels", "heads", "n_layers"):
        assert settings.model[key] == getattr(model, key), key
    with pytest.raises(ValueError, match="pretrained"):
        vcm.demo_config(None, fine_tune_steps=7)
