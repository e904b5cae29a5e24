"""Thermal sampling and labelling of molecules (tblite GFN2-xTB MD, PySCF labels)."""

from __future__ import annotations

import os

# tblite's OpenMP threads spin-wait; on a busy 2-core machine one thread is ~100x faster
# for these 3-atom molecules. Read when tblite's library loads, so set before importing it.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tblite  # noqa: E402, F401  (a test dependency: missing, it fails, never skips)

from hamjax import molecules  # noqa: E402
from hamjax.io import dataset  # noqa: E402

FAST = molecules.SamplingSettings(equilibration_fs=5.0, interval_fs=2.0, seed=3)


def test_sampling_is_reproducible_from_the_seed():
    water = molecules.make_molecule("water")
    a = molecules.thermal_frames(water, 3, FAST)
    b = molecules.thermal_frames(water, 3, FAST)
    c = molecules.thermal_frames(
        water, 3, molecules.SamplingSettings(**{**FAST.as_dict(), "seed": 4})
    )
    for fa, fb in zip(a, b, strict=True):
        # identical up to round-off of the xTB forces (threaded sums)
        np.testing.assert_allclose(fa.positions, fb.positions, rtol=0.0, atol=1e-10)
    assert not np.allclose(a[-1].positions, c[-1].positions)
    # frames move, keep the molecule intact, and sit at their centre of mass
    assert not np.allclose(a[0].positions, a[1].positions)
    for frame in a:
        np.testing.assert_allclose(frame.get_center_of_mass(), 0.0, atol=1e-10)
        d = frame.get_all_distances()[0, 1:]
        assert np.all((d > 0.8) & (d < 1.3))
    assert a[1].info["time_fs"] == pytest.approx(4.0)
    np.testing.assert_array_equal(water.positions, molecules.make_molecule("H2O").positions)


@pytest.mark.slow
def test_langevin_kinetic_temperature_matches_the_bath():
    """Equipartition: mean kinetic temperature of 9 degrees of freedom equals 500 K.

    ASE's ``fixcm`` noise correction heats water to ~1,300 K; this test fails with it. A
    strong friction (0.1/fs, 10 fs correlation time) gives ~150 independent samples in
    3 ps, a standard error of ~12 K (block averages, seeds 1-3: 492, 510, 500 K); at the
    production friction of 0.01/fs the same run has ten times fewer and missed by 20%.
    """
    settings = molecules.SamplingSettings(
        equilibration_fs=200.0, interval_fs=5.0, friction_per_fs=0.1, seed=1
    )
    frames = molecules.thermal_frames(molecules.make_molecule("water"), 600, settings)
    temperature = np.array([f.info["temperature_k"] for f in frames])
    blocks = temperature.reshape(10, 60).mean(axis=1)
    standard_error = blocks.std() / np.sqrt(len(blocks))
    assert standard_error < 25.0
    assert temperature.mean() == pytest.approx(500.0, rel=0.10)


def test_split_indices_are_disjoint_reproducible_and_cover():
    splits = molecules.split_indices(20, {"train": 5, "val": 6, "test": None}, seed=2)
    assert [len(v) for v in splits.values()] == [5, 6, 9]
    everything = np.concatenate(list(splits.values()))
    np.testing.assert_array_equal(np.sort(everything), np.arange(20))
    again = molecules.split_indices(20, {"train": 5, "val": 6, "test": None}, seed=2)
    for k in splits:
        np.testing.assert_array_equal(splits[k], again[k])
    with pytest.raises(ValueError, match="do not fit"):
        molecules.split_indices(5, {"train": 4, "val": 2})
    with pytest.raises(ValueError, match="only one split"):
        molecules.split_indices(5, {"train": None, "val": None})


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="unknown molecule 'unobtainium'"):
        molecules.make_molecule("unobtainium")
    with pytest.raises(ValueError, match="method"):
        molecules.SamplingSettings(method="GFN0")
    with pytest.raises(ValueError, match="temperature_k"):
        molecules.SamplingSettings(temperature_k=0.0)


HF = {"xc": "HF", "basis": "sto-3g"}


def test_labels_match_pyscf_and_resume(tmp_path):
    """Saved H and S reproduce PySCF's orbital energies; valid files are skipped on rerun."""
    import scipy.linalg
    from pyscf import gto, scf

    frames = molecules.thermal_frames(molecules.make_molecule("water"), 2, FAST)
    paths = [tmp_path / f"frame_{k}.npz" for k in range(2)]
    first = molecules.label_frames(frames, paths, settings=HF, progress=False)
    assert first["written"] == 2 and first["skipped"] == 0
    record = dataset.load(paths[1])
    np.testing.assert_allclose(record.positions, frames[1].positions, atol=1e-12)
    mol = gto.M(
        atom=[
            (int(z), tuple(p)) for z, p in zip(frames[1].numbers, frames[1].positions, strict=True)
        ],
        basis="sto-3g",
        unit="Angstrom",
        verbose=0,
    )
    mf = scf.RHF(mol)
    mf.conv_tol = 1e-11
    mf.kernel()
    eps = scipy.linalg.eigh(record.to_dense(), record.to_dense("overlap"), eigvals_only=True)
    np.testing.assert_allclose(eps, mf.mo_energy, atol=1e-6)
    assert record.metadata["frame"]["time_fs"] == pytest.approx(frames[1].info["time_fs"])

    second = molecules.label_frames(frames, paths, settings=HF, progress=False)
    assert second["written"] == 0 and second["skipped"] == 2
    paths[0].write_bytes(b"truncated")
    assert not molecules.frame_file_is_valid(paths[0])
    assert not molecules.frame_file_is_valid(paths[1], frames[0])  # other geometry
    third = molecules.label_frames(frames, paths, settings=HF, progress=False)
    assert third["written"] == 1 and third["skipped"] == 1
    assert molecules.frame_file_is_valid(paths[0], frames[0])


def test_experiment_sample_and_label_steps(tmp_path, experiment):
    exp = experiment("molecules")
    config = {
        "molecule": "water",
        "data_dir": "data",
        "n_frames": 3,
        "splits": {"train": 1, "val": 1, "test": None},
        "label_order": ["train", "test"],
        "max_label": {"test": 1},
        "sampling": FAST.as_dict(),
        "reference": {"engine": "pyscf", **HF},
    }
    path = tmp_path / "water.json"
    path.write_text(json.dumps(config))
    assert exp.main(["sample", str(path), "--quiet"]) == 0
    assert exp.main(["label", str(path), "--quiet"]) == 0
    data = tmp_path / "data"
    splits = json.loads((data / "splits.json").read_text())
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == [0, 1, 2]
    frames = molecules.read_frames(data / "frames.extxyz")
    assert len(frames) == 3
    written = sorted(p.relative_to(data).as_posix() for p in data.glob("*/frame_*.npz"))
    expected = sorted(
        [f"train/frame_{splits['train'][0]:05d}.npz", f"test/frame_{splits['test'][0]:05d}.npz"]
    )
    assert written == expected
    i = splits["test"][0]
    assert molecules.frame_file_is_valid(data / f"test/frame_{i:05d}.npz", frames[i])


@pytest.mark.parametrize("molecule", ["water", "ethanol"])
def test_shipped_molecule_configs_match_pyscf_basis(molecule, experiment):
    """The shipped config's model basis is PySCF's def2-SVP for every element of the
    molecule, and its train section is a valid TrainConfig."""
    from hamjax import train
    from hamjax.basis import pyscf_basis

    exp = experiment("molecules")
    path = Path(__file__).resolve().parents[1] / "experiments" / f"molecules_{molecule}.json"
    config = exp.load_experiment(path)
    assert config["molecule"] == molecule
    numbers = molecules.make_molecule(molecule).numbers
    model = train.config_from_dict({**config["train"], "data": ["frame.npz"]}).model
    assert model.basis.as_dict() == pyscf_basis(config["reference"]["basis"], numbers).as_dict()
