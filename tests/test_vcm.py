"""Pieces of the VCM experiment: error folding against exact values, config checks."""

import json

import numpy as np
import pytest

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.constants import HARTREE_EV
from hamjax.transport import current
from hamjax.vcm import (
    VCMConfig,
    atom_errors,
    entry_errors,
    error_profile,
    fold_prediction,
    load_config,
    mae_row,
    prediction_for_transport,
)

BASIS = Basis.from_dict("two-s", {"H": (0, 0)})


def _reference():
    rng = np.random.default_rng(0)
    n = 4
    h = rng.normal(size=(2 * n, 2 * n))
    s = np.eye(2 * n) + 0.05 * rng.normal(size=(2 * n, 2 * n))
    positions = np.array([[0.5, 0, 0], [1.5, 0, 0], [2.5, 0, 0], [3.5, 0, 0]])
    return BlockHamiltonian.from_dense(
        np.ones(n, int),
        positions,
        np.diag([4.0, 3.0, 3.0]),
        [True, True, True],
        BASIS,
        h + h.T,
        s + s.T,
        fermi_level=-0.1,
    )


def test_folded_prediction_errors_are_exact():
    reference = _reference()
    # A prediction with two periodic images of pair (0, 1): (0, 1, 0) and (0, 1, (0, 1, 0)).
    # Folded, their sum must equal reference block + 0.01 exactly.
    target = reference.to_dense()
    pairs, shifts, values = [], [], []
    for i in range(4):
        for j in range(4):
            block = target[2 * i : 2 * i + 2, 2 * j : 2 * j + 2] + 0.01
            if (i, j) in [(0, 1), (1, 0)]:
                pairs += [(i, j), (i, j)]
                shift = (0, 1, 0) if (i, j) == (0, 1) else (0, -1, 0)
                shifts += [(0, 0, 0), shift]
                values += [block.ravel() * 0.25, block.ravel() * 0.75]
            else:
                pairs.append((i, j))
                shifts.append((0, 0, 0))
                values.append(block.ravel())
    predicted = reference.replace(
        pairs=np.array(pairs),
        shifts=np.array(shifts),
        hamiltonian=np.concatenate(values),
        overlap=None,
    )
    folded, on_pairs = fold_prediction(predicted, reference)
    np.testing.assert_allclose(folded.to_dense("overlap"), reference.to_dense("overlap"))
    errors = entry_errors(folded, on_pairs)
    assert errors["node"].size == 4 * 4 and errors["edge"].size == 12 * 4
    np.testing.assert_allclose(errors["total"], 0.01, atol=1e-12)
    row = mae_row(errors)
    assert row["total_mae_mEh"] == pytest.approx(10.0)
    assert row["edge_mae_meV"] == pytest.approx(0.01 * HARTREE_EV * 1e3)


def _with_error(reference, error):
    """The reference plus a dense error matrix, as a prediction on the same pairs."""
    return reference.replace(
        hamiltonian=BlockHamiltonian.from_dense(
            reference.numbers,
            reference.positions,
            reference.cell,
            reference.pbc,
            reference.basis,
            reference.to_dense() + error,
            threshold=-1.0,
            candidate_pairs=np.unique(reference.pairs, axis=0),
        ).hamiltonian,
        overlap=None,
    )


def test_atom_errors_and_profile_against_dense_sums():
    reference = _reference()
    rng = np.random.default_rng(1)
    error = rng.normal(scale=0.01, size=(8, 8))
    folded, on_pairs = fold_prediction(_with_error(reference, error), reference)
    total, count = atom_errors(folded, on_pairs)
    # Direct sums over the dense error: atom a owns rows and columns 2a, 2a + 1; every
    # entry of block (a, b) counts for a and for b, an on-site block once.
    blocks = np.abs(error).reshape(4, 2, 4, 2).sum(axis=(1, 3))  # [a, b]
    expected = blocks.sum(axis=1) + blocks.sum(axis=0) - np.diag(blocks)
    np.testing.assert_allclose(total, expected, rtol=1e-12)
    np.testing.assert_array_equal(count, [4 + 2 * 3 * 4] * 4)

    # Atoms at x = 0.5, 1.5 | 2.5, 3.5: two 2 A slabs.
    profile = error_profile(folded, on_pairs, width=2.0)
    assert profile["start_angstrom"] == 0.0 and profile["elements"] == [["H"], ["H"]]
    for k, atoms in enumerate(([0, 1], [2, 3])):
        mae = expected[atoms].sum() / (2 * 28) * HARTREE_EV * 1e3
        assert profile["mae_meV"][k] == pytest.approx(mae, rel=1e-12)

    # An error on atom 3's on-site block alone: nothing in the first slab.
    local = np.zeros((8, 8))
    local[6:, 6:] = 0.01
    profile = error_profile(*fold_prediction(_with_error(reference, local), reference))
    assert profile["mae_meV"][0] == 0.0
    assert profile["mae_meV"][1] == pytest.approx(4 * 0.01 / 56 * HARTREE_EV * 1e3, rel=1e-12)


def test_config_rejects_unknown_keys_and_bad_window(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps({"bias_volt": 1.0, "nonsense": 3}))
    with pytest.raises(ValueError, match="nonsense"):
        load_config(path)
    with pytest.raises(ValueError, match="energy_window_ev"):
        VCMConfig(bias_volt=3.0, energy_window_ev=1.0)
    with pytest.raises(ValueError, match="sensitivity_device"):
        VCMConfig(sensitivity_device="Filament 9")
    with pytest.raises(ValueError, match="prediction_leads"):
        VCMConfig(prediction_leads="bulk")
    with pytest.raises(ValueError, match="Filament 1"):
        VCMConfig(train_devices={"Filament 1": {"vacancy_mode": "filament"}})
    with pytest.raises(ValueError, match="Train-1"):
        VCMConfig(train_devices={"Train-1": {}})  # the file name of train-1
    with pytest.raises(ValueError, match="no training device"):
        VCMConfig(train_seeds=())
    # training and model keys are checked before any reference is computed
    with pytest.raises(ValueError, match="learning_rat"):
        VCMConfig(train={"learning_rat": 1e-3})
    with pytest.raises(ValueError, match="chanels"):
        VCMConfig(model={"chanels": 8})
    with pytest.raises(ValueError, match="Qq"):
        VCMConfig(train={"element_loss_weights": {"Qq": 2.0}})
    with pytest.raises(ValueError, match="set by the experiment"):
        VCMConfig(train={"data": ["x.npz"]})
    path.write_text(json.dumps({"train_seeds": [4, 5], "n_energies": 11}))
    config = load_config(path)
    assert config.train_seeds == (4, 5) and config.n_energies == 11


def test_shipped_experiment_configs_load():
    """Every config in experiments/ is valid; vcm_default.json is exactly the defaults."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "experiments"
    paths = sorted(folder.glob("vcm*.json"))
    assert len(paths) >= 3
    for path in paths:
        load_config(path)
    assert load_config(folder / "vcm_default.json").to_dict() == VCMConfig().to_dict()


def test_config_files_hold_only_what_differs_from_the_defaults(tmp_path):
    """A partial settings object keeps the default's other keys; device maps replace whole."""
    default = VCMConfig()
    path = tmp_path / "partial.json"
    path.write_text(
        json.dumps(
            {
                "train": {"epochs": 7},
                "test_devices": {"F": {"vacancy_mode": "filament"}},
                "sensitivity_device": "F",
            }
        )
    )
    config = load_config(path)
    assert config.train == {**default.train, "epochs": 7}
    assert config.train["learning_rate"] == default.train["learning_rate"]
    assert config.device == default.device and config.model == default.model
    assert list(config.test_devices) == ["F"]
    path.write_text(json.dumps({"train": [1, 2]}))
    with pytest.raises(ValueError, match="'train' must be an object"):
        load_config(path)


def test_train_devices_join_the_training_set_as_specified():
    from hamjax.structures import DeviceSpec, build_device
    from hamjax.vcm import TEST_DEVICES, build_devices

    cluster = {**TEST_DEVICES["Filament 1"], "seed": 7}
    config = VCMConfig(train_seeds=(1,), train_devices={"Cluster": cluster})
    devices = build_devices(config)
    roles = {name: d["role"] for name, d in devices.items()}
    assert roles["Cluster"] == "train" and roles["train-1"] == "train"
    # The same fields make the same structure whether a device trains or tests.
    as_test = build_devices(VCMConfig(test_devices={"Cluster": cluster}, sensitivity_device=""))
    np.testing.assert_array_equal(
        devices["Cluster"]["atoms"].positions, as_test["Cluster"]["atoms"].positions
    )
    pristine = build_device(DeviceSpec(**config.device, vacancy_mode="random", vacancy_density=0.0))
    oxygens = np.sum(devices["Cluster"]["atoms"].numbers == 8)
    assert oxygens < np.sum(pristine.numbers == 8)  # the filament's vacancies are there


def test_fermi_level_by_count_fills_the_requested_electrons():
    import scipy.linalg

    from hamjax.vcm import fermi_level_by_count

    reference = _reference()
    levels = scipy.linalg.eigh(reference.to_dense(), reference.to_dense("overlap"))[0]
    kt = 0.5  # levels are O(1) Hartree apart: a smearing that makes the count continuous
    for n_electrons in (3.0, 6.0, 9.5):
        mu = fermi_level_by_count(reference, n_electrons, kt)
        count = np.sum(2.0 / (1.0 + np.exp((levels - mu) / kt)))
        assert count == pytest.approx(n_electrons, abs=1e-9)


def test_tin_is_a_metal_at_the_transport_fermi_level():
    """Rock-salt TiN (GFN1-xTB, 8-atom cubic cell, Gamma point) has 9 valence electrons per
    formula unit, an odd count: its Fermi level at the electrodes' 300 K must fall on a
    partially filled level. The SCF's own chemical potential, taken at its 0.8 eV Fermi
    smearing, need not (it sits in the N p - Ti d pseudogap in larger cells)."""
    import scipy.linalg
    import scipy.special
    from ase.build import bulk

    from hamjax.constants import BOLTZMANN_EV_K
    from hamjax.reference import compute_reference
    from hamjax.vcm import fermi_level_by_count

    record = compute_reference(bulk("TiN", "rocksalt", a=4.24, cubic=True), name="TiN")
    n_electrons = record.metadata["n_electrons"]
    assert n_electrons == pytest.approx(36.0)
    kt = BOLTZMANN_EV_K * 300.0 / HARTREE_EV
    mu = fermi_level_by_count(record, n_electrons, kt)
    levels = scipy.linalg.eigh(record.to_dense(), record.to_dense("overlap"))[0]
    occupations = 2.0 * scipy.special.expit(-(levels - mu) / kt)  # no overflow far above mu
    assert occupations.sum() == pytest.approx(n_electrons, abs=1e-8)
    assert np.any((occupations > 0.05) & (occupations < 1.95))  # a partially filled level


def test_electrode_fermi_level_ignores_charge_of_the_device_region():
    """A 40-site ring (hopping -0.1 Ha) is the 'electrode'; one decoupled site at +0.3 Ha,
    above the band, is a donor in the 'device'. Filling 41 electrons into the whole cell
    pushes E_F above the band centre (kT ln 3); the electrode's half-filling population (20 of its
    40 sites' electrons on sites 0-19, Mulliken, exact for the ring's degenerate pairs)
    keeps E_F at the centre, 0 by particle-hole symmetry."""
    from hamjax.vcm import (
        electrode_fermi_level,
        electrode_levels,
        electrode_population,
        fermi_level_by_count,
    )

    n = 40
    h = np.zeros((n + 1, n + 1))
    for i in range(n):
        h[i, (i + 1) % n] = h[(i + 1) % n, i] = -0.1
    h[n, n] = 0.3
    basis = Basis.from_dict("one-s", {"H": (0,)})
    positions = np.column_stack([np.arange(n + 1.0), np.zeros(n + 1), np.zeros(n + 1)])
    record = BlockHamiltonian.from_dense(
        np.ones(n + 1, int),
        positions,
        np.diag([n + 1.0, 10.0, 10.0]),
        [True, True, True],
        basis,
        h,
        np.eye(n + 1),
        fermi_level=0.0,
        metadata={"electronic_temperature_hartree": 1e-3},
    )
    kt = 1e-3
    electrodes = np.arange(20)
    levels, weights = electrode_levels(record, electrodes)
    assert electrode_population(levels, weights, 0.0, kt) == pytest.approx(20.0, abs=1e-9)
    mu = electrode_fermi_level(levels, weights, 20.0, kt)
    assert mu == pytest.approx(0.0, abs=1e-9)
    # the whole-cell count puts the donor's electron into the ring's two levels at E = 0
    # (3 of their 4 states filled: f = 3/4, mu = kT ln 3)
    assert fermi_level_by_count(record, 41.0, kt) == pytest.approx(kt * np.log(3), rel=1e-6)
    everything = np.arange(n + 1)  # all atoms electrode: the plain count
    assert electrode_fermi_level(*electrode_levels(record, everything), 43.0, kt) == pytest.approx(
        fermi_level_by_count(record, 43.0, kt), abs=1e-9
    )


@pytest.mark.slow
def test_experiment_end_to_end_is_consistent(tmp_path):
    """A minimal run (one training device, one test device, a few epochs): the outputs
    exist, the current through the differentiable model chain equals the current from the
    predicted H, and dI/dR agrees with central differences."""
    import dataclasses

    import jax

    jax.config.update("jax_enable_x64", True)
    from hamjax import vcm

    config = dataclasses.replace(
        vcm.demo_config(),
        train_seeds=(1,),
        test_devices={"Filament 1": vcm.TEST_DEVICES["Filament 1"]},
        train={**vcm.demo_config().train, "epochs": 3},
        n_energies=13,
        refine_energies=12,  # the refined, non-uniform grid through transport and gradients
    )
    summary = vcm.run_experiment(config, tmp_path, progress=False, echo=lambda _: None)
    for name in (
        "table.md",
        "table.json",
        "summary.json",
        "errors.png",
        "error_profile.png",
        "transmission.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    profile = json.loads((tmp_path / "error_profile.json").read_text())["Filament 1"]
    assert len(profile["mae_meV"]) >= 20  # 2 A slabs along a device of more than 50 A
    assert all(v is None or v > 0 for v in profile["mae_meV"])
    assert ["Hf", "O"] in profile["elements"] and ["N", "Ti"] in profile["elements"]
    assert (tmp_path / "sensitivity.png").exists()
    row = summary["devices"]["Filament 1"]
    assert 0 < row["total_mae_meV"] < 5000
    assert np.isfinite(summary["validation_total_mae_meV"])
    assert row["lead_channels_at_fermi_ref"] >= 0
    # the default "both": the predicted device also between the reference's leads
    assert row["prediction_leads"] == "predicted"
    assert 0 < row["current_pred_reference_leads_A"] < 1e-3
    assert "reference leads" in (tmp_path / "table.md").read_text()

    sens = summary["sensitivity"]
    assert sens["current_through_model_A"] == pytest.approx(
        sens["current_from_predicted_H_A"], rel=1e-4
    )
    (check,) = sens["finite_difference_check"]
    assert check["finite_difference_A_per_angstrom"] == pytest.approx(
        check["analytic_A_per_angstrom"], rel=0.02
    )
    # the saved per-atom dI/dR: H depends on relative positions only, so moving every atom
    # alike changes nothing and the forces on the current sum to zero
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    grad_r = np.asarray(saved["dI_dR_A_per_angstrom"])
    assert grad_r.shape == (len(saved["elements"]), 3)
    assert np.abs(grad_r.sum(axis=0)).max() < 1e-8 * np.linalg.norm(grad_r, axis=1).max()
    assert np.linalg.norm(grad_r[check["atom"]]) == pytest.approx(
        check["analytic_A_per_angstrom"], rel=1e-12
    )

    # the saved T(E) curves integrate to the table's currents
    curves = json.loads((tmp_path / "transmission.json").read_text())["Filament 1"]
    assert_curves_give_currents(curves, row, config)
    assert len(curves["reference"]["lead_channels"]) == len(
        curves["reference"]["lead_channel_energies_eV"]
    )


def test_alignment_removes_a_constant_potential_exactly():
    """A constant potential c enters a non-orthogonal H as H + c S. Aligned on their
    electrodes' Fermi level, a chain and the same chain at +c must give the same H, the
    shift must be c apart, and the levels must move by exactly -E_F."""
    import scipy.linalg

    from hamjax.vcm import align_to_electrodes

    n, spacing = 24, 1.06  # four atoms per 4.24 A lead cell, six lead cells
    rng = np.random.default_rng(5)
    onsite = np.zeros(n)
    onsite[8:16] = rng.normal(0.0, 0.05, 8)  # the "device" region (Hartree)
    h = np.diag(onsite)
    s = np.eye(n)
    for i in range(n):
        j = (i + 1) % n
        h[i, j] = h[j, i] = -0.1
        s[i, j] = s[j, i] = 0.1
    positions = np.column_stack([spacing * (np.arange(n) + 0.5), np.zeros(n), np.zeros(n)])

    def record(c):
        return BlockHamiltonian.from_dense(
            np.ones(n, int),
            positions,
            np.diag([spacing * n, 10.0, 10.0]),
            [True, False, False],
            Basis.from_dict("one-s", {"H": (0,)}),
            h + c * s,
            s,
            fermi_level=0.03 + c,
            metadata={"electronic_temperature_hartree": 0.01},
        )

    config = VCMConfig(transport_cutoff_angstrom=2.0, lead_cells=1)
    c = 0.37
    first, fermi_first = align_to_electrodes(record(0.0), config)
    second, fermi_second = align_to_electrodes(record(c), config)
    assert fermi_second - fermi_first == pytest.approx(c, abs=1e-10)
    np.testing.assert_allclose(second.hamiltonian, first.hamiltonian, atol=1e-12)
    assert second.fermi_level == pytest.approx(first.fermi_level, abs=1e-12)
    raw = scipy.linalg.eigh(h, s, eigvals_only=True)
    aligned = scipy.linalg.eigh(first.to_dense(), first.to_dense("overlap"), eigvals_only=True)
    np.testing.assert_allclose(aligned, raw - fermi_first, atol=1e-12)
    again, fermi_again = align_to_electrodes(first, config)  # already aligned: E_F = 0
    assert fermi_again == pytest.approx(0.0, abs=1e-10)
    assert again.metadata["electrode_fermi_level_hartree"] == pytest.approx(fermi_first)


def test_references_at_another_electronic_temperature_are_refused():
    from hamjax.vcm import check_temperatures

    same = _reference()
    same = same.replace(metadata={**same.metadata, "electronic_temperature_hartree": 0.06})
    hot = same.replace(metadata={**same.metadata, "electronic_temperature_hartree": 0.12})
    check_temperatures({"train-1": same, "Broken 1": same}, 0.06)
    with pytest.raises(ValueError, match=r"Broken 2: 0\.12 Ha"):
        check_temperatures({"train-1": same, "Broken 2": hot}, 0.06)


def test_region_shares_split_the_sum_over_the_stack():
    """Shares of a per-atom quantity by region: they sum to one, follow the values exactly,
    and count each region's atoms (the oxide's atoms carry a known fraction here)."""
    from hamjax.vcm import build_devices, demo_config, region_shares

    atoms = build_devices(demo_config())["Filament 1"]["atoms"]
    regions = atoms.arrays["region"]
    values = np.where(regions == "HfO2", 3.0, 1.0) * np.sign(np.arange(len(atoms)) % 2 - 0.5)
    shares = region_shares(atoms, values)
    assert list(shares) == ["TiN_left", "HfO2", "Ti", "TiN_right"]  # in order along x
    n_oxide = int(np.sum(regions == "HfO2"))
    assert shares["HfO2"]["atoms"] == n_oxide
    assert sum(v["atoms"] for v in shares.values()) == len(atoms)
    expected = 3.0 * n_oxide / (3.0 * n_oxide + len(atoms) - n_oxide)
    assert shares["HfO2"]["share"] == pytest.approx(expected, rel=1e-12)
    assert sum(v["share"] for v in shares.values()) == pytest.approx(1.0, rel=1e-12)


def test_image_resolved_reference_is_compared_per_image():
    # The reference holds pair (0, 1) at two images; a prediction that puts their sum on one
    # image has the right Gamma matrix but per-image errors of the full image block.
    reference = _reference()
    rng = np.random.default_rng(2)
    far = rng.normal(size=(2, 2))
    images = {(0, 0, 0): reference.to_dense(), (0, 1, 0): np.zeros((8, 8))}
    images[(0, 1, 0)][0:2, 2:4] = far
    images[(0, -1, 0)] = images[(0, 1, 0)].T
    resolved = BlockHamiltonian.from_dense(
        reference.numbers,
        reference.positions,
        reference.cell,
        reference.pbc,
        BASIS,
        images,
        {k: v * 0.01 for k, v in images.items()},
        fermi_level=-0.1,
    )
    assert resolved.image_resolved
    folded_sum = images[(0, 0, 0)] + images[(0, 1, 0)] + images[(0, -1, 0)]
    predicted = _with_error(reference, folded_sum - reference.to_dense())  # Gamma only
    prediction, on_blocks = fold_prediction(predicted, resolved)
    assert np.array_equal(prediction.pairs, on_blocks.pairs)
    errors = entry_errors(prediction, on_blocks)
    # the (0, 1, 0) and (1, 0, 0) blocks are off by the far image; nothing else
    expected = np.sort(np.abs(np.concatenate([far.ravel(), far.T.ravel()])))
    assert np.allclose(np.sort(np.abs(errors["total"]))[-8:], expected, atol=1e-12)
    assert np.abs(errors["total"]).sum() == pytest.approx(expected.sum(), rel=1e-12)
    # for transport, the prediction lands on every reference image, with the reference S
    for_transport = prediction_for_transport(predicted, resolved)
    assert np.array_equal(for_transport.shifts, resolved.shifts)
    np.testing.assert_array_equal(for_transport.overlap, resolved.overlap)
    # (predicted on the home cell, zero on the images it does not predict)
    np.testing.assert_allclose(for_transport.to_dense(), folded_sum, atol=1e-12)


def test_wider_devices_keep_the_k_sampling_of_the_narrow_ones():
    from types import SimpleNamespace

    from hamjax.vcm import device_tblite_settings

    settings = {"electronic_temperature_hartree": 0.06, "scf_supercell": (1, 2, 2)}
    narrow = {"spec": SimpleNamespace(transverse_cells=(1, 1))}
    wide = {"spec": SimpleNamespace(transverse_cells=(2, 2))}
    odd = {"spec": SimpleNamespace(transverse_cells=(3, 1))}
    assert device_tblite_settings(settings, narrow)["scf_supercell"] == (1, 2, 2)
    assert device_tblite_settings(settings, wide) == {**settings, "scf_supercell": (1, 1, 1)}
    with pytest.raises(ValueError, match="not a multiple"):
        device_tblite_settings(settings, odd)
    assert device_tblite_settings({"electronic_temperature_hartree": 0.06}, wide) == {
        "electronic_temperature_hartree": 0.06
    }


def _chain_device(seed: int, n: int = 24, spacing: float = 1.06):
    """A device in miniature: ``n`` H atoms along x (four per 4.24 A lead cell), periodic
    along x, the middle third rattled by ``seed`` (the "oxide"), the outer thirds regular (the
    "electrodes")."""
    from ase import Atoms

    rng = np.random.default_rng(seed)
    positions = np.column_stack([spacing * (np.arange(n) + 0.5), np.zeros(n), np.zeros(n)])
    middle = slice(n // 3, 2 * n // 3)
    positions[middle] += rng.normal(0.0, 0.08, (n // 3, 3))
    atoms = Atoms("H" * n, positions=positions + [0, 5, 5], cell=[n * spacing, 10, 10])
    atoms.pbc = [True, False, False]
    return atoms


def _chain_record(atoms, reach: float = 4.0):
    """An image-resolved one-s tight-binding record of a chain (Hartree): hopping and overlap
    decaying with distance to ``reach``, on-site energies from the neighbours' distances."""
    n, length = len(atoms), atoms.cell[0, 0]
    images = {}
    for m in (-1, 0, 1):
        d = atoms.positions[None, :, :] + [m * length, 0, 0] - atoms.positions[:, None, :]
        r = np.linalg.norm(d, axis=-1)
        near = (r < reach) & (r > 0)
        images[(m, 0, 0)] = (
            np.where(near, -0.1 * np.exp(-(r - 1.0) / 0.5), 0.0),
            np.where(near, 0.1 * np.exp(-(r - 1.0) / 0.5), 0.0),
        )
    onsite = -0.2 + 0.05 * sum(np.sum(s, axis=1) for _, s in images.values())
    h0, s0 = images[(0, 0, 0)]
    images[(0, 0, 0)] = (h0 + np.diag(onsite), s0 + np.eye(n))
    return BlockHamiltonian.from_dense(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array,
        atoms.pbc,
        Basis.from_dict("one-s", {"H": (0,)}),
        {k: h for k, (h, _) in images.items()},
        {k: s for k, (_, s) in images.items()},
        fermi_level=0.0,
        metadata={"electronic_temperature_hartree": 0.06, "n_electrons": float(n)},
    )


def test_stages_on_a_tiny_device_are_consistent(tmp_path):
    """The facts of the slow end-to-end test on a 24-atom tight-binding chain and a tiny model
    trained for two steps: cached references are reused and aligned, the outputs exist, the
    current through the model chain equals the current from the predicted H, dI/dR agrees
    with central differences and sums to zero, and the saved T(E) integrate to the table."""
    import dataclasses

    import jax

    jax.config.update("jax_enable_x64", True)
    from hamjax import vcm
    from hamjax.io import dataset

    config = dataclasses.replace(
        vcm.demo_config(),
        train_seeds=(1,),
        test_devices={"Chain": {}},
        sensitivity_device="Chain",
        tblite={"electronic_temperature_hartree": 0.06},
        model={
            "cutoff": 3.0,
            "max_ell": 1,
            "channels": 4,
            "heads": 1,
            "radial_basis": 4,
            "radial_hidden": [8],
            "attention_dim": 4,
            "dtype": "float64",
        },
        train={"epochs": 2, "max_graphs_per_batch": 1, "slice_width_angstrom": None},
        transport_cutoff_angstrom=4.0,
        lead_cells=1,
        n_energies=13,
        refine_energies=6,  # a refined, non-uniform grid through transport and gradients
    )
    devices = {
        name: {"atoms": _chain_device(seed), "role": role, "spec": None}
        for name, role, seed in (("train-1", "train", 1), ("validation", "validation", 2))
    }
    devices["Chain"] = {"atoms": _chain_device(3), "role": "test", "spec": None}
    data = tmp_path / "data"
    data.mkdir()
    for name, device in devices.items():
        dataset.save(_chain_record(device["atoms"]), vcm.reference_file(data, name))
    # the files match the devices and the settings: read, not recomputed (no tblite here)
    records = vcm.compute_references(devices, data, config.tblite, progress=False)
    assert records["timings"] == {}
    records = vcm.aligned(records["records"], config)

    vcm.train_stage(config, tmp_path, records, devices, progress=False)
    summary = vcm.evaluate_stage(config, tmp_path, records, devices, {}, echo=lambda _: None)
    for name in ("table.md", "errors.png", "error_profile.png", "transmission.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "sensitivity.png").stat().st_size > 0
    profile = json.loads((tmp_path / "error_profile.json").read_text())["Chain"]
    assert len(profile["mae_meV"]) == 13  # 2 A slabs along the 25.4 A chain
    assert all(v > 0 for v in profile["mae_meV"])
    row = summary["devices"]["Chain"]
    assert np.isfinite(summary["validation_total_mae_meV"])
    assert row["prediction_leads"] == "predicted" and row["current_pred_reference_leads_A"] > 0
    assert "reference leads" in (tmp_path / "table.md").read_text()
    assert row["lead_channels_at_fermi_ref"] >= 1  # a metallic chain conducts

    sens = summary["sensitivity"]
    assert sens["current_through_model_A"] == pytest.approx(
        sens["current_from_predicted_H_A"], rel=1e-4
    )
    (check,) = sens["finite_difference_check"]
    assert check["finite_difference_A_per_angstrom"] == pytest.approx(
        check["analytic_A_per_angstrom"], rel=0.02
    )
    saved = json.loads((tmp_path / "sensitivity.json").read_text())
    grad_r = np.asarray(saved["dI_dR_A_per_angstrom"])
    assert np.abs(grad_r.sum(axis=0)).max() < 1e-8 * np.linalg.norm(grad_r, axis=1).max()

    table = json.loads((tmp_path / "table.json").read_text())[0]
    curves = json.loads((tmp_path / "transmission.json").read_text())["Chain"]
    assert_curves_give_currents(curves, table, config)

    # the same model given as a pretrained model: another folder, no training, same table
    shipped = dataclasses.replace(config, pretrained_model=str(tmp_path / "model"))
    again = tmp_path / "again"
    again.mkdir()
    repeated = vcm.evaluate_stage(
        shipped, again, records, {"Chain": devices["Chain"]}, {}, echo=lambda _: None
    )
    assert not (again / "model").exists() and repeated["model"] == str(tmp_path / "model")
    assert repeated["devices"]["Chain"] == summary["devices"]["Chain"]


def assert_curves_give_currents(curves, row, config):
    """The saved T(E) curves of a device integrate to its table row's currents."""
    for which, key in (
        ("reference", "current_ref_A"),
        ("prediction", "current_pred_A"),
        ("prediction_reference_leads", "current_pred_reference_leads_A"),
    ):
        curve = curves[which]
        again = current(
            np.asarray(curve["energies_eV"]),
            np.asarray(curve["transmission"]),
            config.bias_volt,
            fermi_level=curve["fermi_level_eV"],
            temperature=config.temperature_k,
        )
        assert float(again) == pytest.approx(row[key], rel=1e-12), which
