"""Reference engines (tblite, PySCF) and the ``hamjax generate`` command.

Independent references: a direct tblite call (its overlap, core Hamiltonian, orbital energies
and occupations), PySCF's own ``mo_energy``, the Fermi-Dirac formula, and the file system.
"""

import json
import sys

import ase.io
import numpy as np
import pytest
import scipy.linalg
from ase import Atoms
from ase.build import bulk, molecule

from hamjax.constants import BOHR_ANGSTROM
from hamjax.io.dataset import load
from hamjax.reference import (
    MissingEngineError,
    SCFConvergenceError,
    compute_reference,
    fermi_level_from_orbitals,
)
from hamjax.reference.tblite import TBLiteSettings, run_tblite


def _ticl4() -> Atoms:
    """Tetrahedral TiCl4 (Ti-Cl 2.17 Angstrom): a molecule with a Ti d shell."""
    d = 2.17 / np.sqrt(3.0)
    corners = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) * d
    atoms = Atoms("TiCl4", positions=np.vstack([[0, 0, 0], corners]))
    # break the symmetry a little so that no orbital energies are degenerate by accident
    atoms.positions += np.random.default_rng(3).normal(scale=0.03, size=(5, 3))
    return atoms


def _tin_cell() -> Atoms:
    """Cubic rock-salt TiN (8 atoms, a = 4.24 Angstrom), slightly rattled: a metal."""
    atoms = bulk("TiN", "rocksalt", a=4.24, cubic=True)
    atoms.rattle(0.02, seed=1)
    return atoms


def _direct_tblite(atoms, temperature_hartree, damping=0.4):
    """tblite called directly, without hamjax."""
    from tblite.interface import Calculator

    kwargs = {}
    if atoms.pbc.any():
        kwargs = dict(lattice=atoms.cell.array / BOHR_ANGSTROM, periodic=atoms.pbc.copy())
    calc = Calculator(
        "GFN1-xTB", atoms.numbers, atoms.positions / BOHR_ANGSTROM, logger=lambda _: None, **kwargs
    )
    calc.set("save-integrals", 1)
    calc.set("temperature", temperature_hartree)
    calc.set("mixer-damping", damping)
    res = calc.singlepoint()
    return {
        k: np.asarray(res.get(k))
        for k in ("orbital-energies", "orbital-occupations", "overlap-matrix", "hamiltonian-matrix")
    }


def _generalised_eigenvalues(record):
    return scipy.linalg.eigh(record.to_dense(), record.to_dense("overlap"), eigvals_only=True)


# ----------------------------------------------------------------------------- Fermi level
def test_fermi_level_metal_reproduces_electron_count():
    rng = np.random.default_rng(0)
    energies = np.sort(rng.uniform(-1.0, 1.0, 50))
    kt = 0.02
    mu_true = 0.137
    occ = 2.0 / (1.0 + np.exp((energies - mu_true) / kt))
    out = fermi_level_from_orbitals(energies, occ, kt)
    assert out["method"] == "fermi-dirac"
    assert out["fermi_level"] == pytest.approx(mu_true, abs=1e-10)


def test_fermi_level_insulator_is_mid_gap():
    energies = np.array([-0.9, -0.5, -0.3, 0.1, 0.4])
    occ = np.array([2.0, 2.0, 2.0, 0.0, 0.0])
    out = fermi_level_from_orbitals(energies, occ, 9.5e-4)
    assert out["method"] == "mid-gap"
    assert (out["homo"], out["lumo"]) == (-0.3, 0.1)
    assert out["fermi_level"] == pytest.approx(-0.1)
    assert out["gap"] == pytest.approx(0.4)


# ----------------------------------------------------------------------------- tblite
def test_tblite_molecule_matches_direct_call():
    atoms = _ticl4()
    record = compute_reference(atoms, "tblite")
    direct = _direct_tblite(atoms, 9.5e-4)
    # H and S in hamjax order have the same spectrum as tblite's own problem
    assert np.allclose(_generalised_eigenvalues(record), direct["orbital-energies"], atol=1e-9)
    s_direct = np.linalg.eigvalsh(direct["overlap-matrix"])
    assert np.allclose(np.linalg.eigvalsh(record.to_dense("overlap")), s_direct, atol=1e-12)
    # the documented permutation maps tblite's S and H0 onto the record's entries
    from hamjax.reference.tblite import _conversion

    result = run_tblite(atoms, TBLiteSettings())
    _, perm, signs = _conversion(atoms.numbers, result)
    flip = signs[:, None] * signs[None, :]
    assert np.allclose(
        record.to_dense("overlap"), flip * direct["overlap-matrix"][np.ix_(perm, perm)], atol=1e-12
    )
    core = compute_reference(atoms, "tblite", hamiltonian="core")
    assert np.allclose(
        core.to_dense(), flip * direct["hamiltonian-matrix"][np.ix_(perm, perm)], atol=1e-12
    )
    # the SCF Hamiltonian is not the core one (the distinction matters)
    assert np.abs(core.to_dense() - record.to_dense()).max() > 1e-3
    meta = record.metadata
    assert meta["source"] == "tblite" and meta["method"] == "GFN1-xTB"
    assert meta["units"]["hamiltonian"] == "Hartree" and meta["gamma_folded"] is False
    assert meta["scf_cycles"] > 0 and meta["code_version"].count(".") == 2
    homo = direct["orbital-energies"][direct["orbital-occupations"] > 1].max()
    assert meta["homo_hartree"] == pytest.approx(homo, abs=1e-9)
    assert record.fermi_level > homo and record.fermi_level < meta["lumo_hartree"]


def test_tblite_periodic_metal_gamma_folded():
    atoms = _tin_cell()
    kt = 0.01
    record = compute_reference(
        atoms,
        "tblite",
        electronic_temperature_hartree=kt,
        mixer_damping=0.4,
        image_resolved=False,
    )
    direct = _direct_tblite(atoms, kt)
    assert record.metadata["gamma_folded"] is True
    assert np.all(record.shifts == 0)
    assert np.allclose(_generalised_eigenvalues(record), direct["orbital-energies"], atol=1e-8)
    # Fermi-Dirac occupations at the recorded Fermi level equal tblite's occupations
    e = direct["orbital-energies"]
    occ = 2.0 / (1.0 + np.exp(np.clip((e - record.fermi_level) / kt, -700, 700)))
    assert np.allclose(occ, direct["orbital-occupations"], atol=1e-6)
    assert record.metadata["fermi_level_method"] == "fermi-dirac"
    # Hermitian blocks: H_ji = H_ij^T
    dense = record.to_dense()
    assert np.allclose(dense, dense.T, atol=1e-12)


def test_tblite_non_convergence_names_structure_and_settings():
    atoms = molecule("H2O")
    with pytest.raises(SCFConvergenceError) as info:
        compute_reference(atoms, "tblite", max_iterations=2, retry=False, name="water")
    message = str(info.value)
    assert "'water'" in message and "H2O" in message and "2 cycles" in message
    assert "mixer damping=0.4" in message and len(info.value.attempts) == 1
    with pytest.raises(SCFConvergenceError) as info:
        compute_reference(atoms, "tblite", max_iterations=2)
    assert len(info.value.attempts) == 2
    assert "attempt 2" in str(info.value)


def test_tblite_retry_is_recorded():
    atoms = molecule("H2O")
    cycles = {
        d: run_tblite(atoms, TBLiteSettings(retry=False, mixer_damping=d)).scf_cycles
        for d in (0.4, 0.8)
    }
    if not cycles[0.8] < cycles[0.4]:
        pytest.skip(f"mixing 0.8 is not faster than 0.4 for water here: {cycles}")
    # the first attempt (mixing 0.4) misses the cycle limit, the retry (0.8) meets it
    record = compute_reference(
        atoms,
        "tblite",
        max_iterations=cycles[0.8],
        retry_damping_factor=2.0,
        retry_temperature_factor=1.0,
    )
    meta = record.metadata
    assert meta["retried"] is True and len(meta["attempts"]) == 2
    assert meta["attempts"][0]["converged"] is False
    assert meta["settings"]["mixer_damping"] == pytest.approx(0.8)
    assert meta["scf_cycles"] == cycles[0.8]


def test_tblite_retry_keeps_the_requested_temperature():
    # a retry that anneals back to the requested kT reaches the state a converged first run
    # has; a dataset mixing electronic temperatures would mix electronic states
    atoms = molecule("H2O")
    direct = compute_reference(atoms, "tblite", retry=False)
    cycles = direct.metadata["scf_cycles"]
    record = compute_reference(atoms, "tblite", max_iterations=cycles - 1)
    meta = record.metadata
    assert meta["retried"] is True and meta["attempts"][0]["converged"] is False
    kt = direct.metadata["electronic_temperature_hartree"]
    assert meta["electronic_temperature_hartree"] == kt
    assert meta["attempts"][1]["settings"]["annealing"][0] == pytest.approx(2 * kt)
    # equal to the SCF convergence of either run (3e-6 Ha seen)
    np.testing.assert_allclose(
        record.to_dense("hamiltonian"), direct.to_dense("hamiltonian"), atol=2e-5
    )


def test_tblite_raise_mode_retry_stays_at_the_raised_temperature():
    atoms = molecule("H2O")
    cycles = run_tblite(atoms, TBLiteSettings(retry=False, mixer_damping=0.8)).scf_cycles
    record = compute_reference(
        atoms, "tblite", max_iterations=cycles, retry_mode="raise", retry_damping_factor=2.0
    )
    meta = record.metadata
    kt = meta["attempts"][0]["settings"]["electronic_temperature_hartree"]
    if not meta["retried"]:
        pytest.skip("the first attempt converged (mixing 0.4 as fast as 0.8 here)")
    assert meta["electronic_temperature_hartree"] == pytest.approx(2 * kt)
    assert meta["settings"]["annealing"] is None


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="mixer_dampin"):
        compute_reference(molecule("H2O"), "tblite", mixer_dampin=0.1)
    with pytest.raises(ValueError, match="GFN3"):
        compute_reference(molecule("H2O"), "tblite", method="GFN3-xTB")
    with pytest.raises(ValueError, match="engine"):
        compute_reference(molecule("H2O"), "orca")


# ----------------------------------------------------------------------------- PySCF
def test_pyscf_water_eigenvalues_equal_mo_energy():
    from hamjax.reference.pyscf import run_pyscf

    atoms = molecule("H2O")
    record = compute_reference(atoms, "pyscf")
    _, mf, _, _, _ = run_pyscf(atoms)
    assert record.n_orbitals == 24  # def2-SVP: O 3s2p1d = 14, H 2s1p = 5
    assert np.allclose(_generalised_eigenvalues(record), mf.mo_energy, atol=1e-5)
    assert np.linalg.eigvalsh(record.to_dense("overlap")).min() > 0
    homo = mf.mo_energy[mf.mo_occ > 0].max()
    assert record.metadata["homo_hartree"] == pytest.approx(homo, abs=1e-9)
    assert record.metadata["method"] == "RKS/PBE" and record.metadata["basis"]


def test_pyscf_missing_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "pyscf", None)
    with pytest.raises(MissingEngineError, match=r"hamjax\[dft\]"):
        compute_reference(molecule("H2O"), "pyscf")


def test_pyscf_rejects_periodic():
    with pytest.raises(ValueError, match="finite structures only"):
        compute_reference(_tin_cell(), "pyscf")


# ----------------------------------------------------------------------- OpenBLAS / MKL
def test_optimised_blas_preload_gives_the_same_result(tmp_path):
    from hamjax.reference.blas import find_openblas
    from hamjax.reference.worker import compute_in_subprocess

    if find_openblas() is None:
        pytest.skip("no optimised BLAS: no system OpenBLAS and no mkl wheel")
    atoms = _tin_cell()
    settings = {"electronic_temperature_hartree": 0.01, "mixer_damping": 0.4}
    runs = {}
    for openblas in (True, False):
        path = tmp_path / f"tin-{openblas}.npz"
        summary = compute_in_subprocess(atoms, path, settings=settings, openblas=openblas)
        assert summary["status"] == "done", summary
        assert bool(summary["openblas_preload"]) is openblas
        runs[openblas] = load(path)
    a, b = runs[True], runs[False]
    np.testing.assert_array_equal(a.pairs, b.pairs)
    assert np.abs(a.overlap - b.overlap).max() < 1e-12
    assert np.abs(a.hamiltonian - b.hamiltonian).max() < 1e-6  # SCF precision
    assert a.fermi_level == pytest.approx(b.fermi_level, abs=1e-6)


# ----------------------------------------------------------------------------- generate
def _generate(*argv):
    from hamjax.cli import main

    return main(["generate", *map(str, argv)])


def test_generate_is_resumable(tmp_path):
    frames = [molecule("H2O"), molecule("NH3")]
    structures = tmp_path / "mols.extxyz"
    ase.io.write(structures, frames)
    out = tmp_path / "out"
    assert _generate("--structures", structures, "-o", out, "--in-process") == 0
    files = sorted(out.glob("*.npz"))
    assert [f.name for f in files] == ["mols-000.npz", "mols-001.npz"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["status"] for k, v in manifest["structures"].items()} == {
        "mols-000": "done",
        "mols-001": "done",
    }
    record = load(files[0])
    assert np.allclose(
        _generalised_eigenvalues(record)[:5],
        _direct_tblite(frames[0], 9.5e-4)["orbital-energies"][:5],
        atol=1e-9,
    )
    # second run: nothing is recomputed
    stamps = [f.stat().st_mtime_ns for f in files]
    assert _generate("--structures", structures, "-o", out, "--in-process") == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps
    # a file cut short (as by a kill during a non-atomic copy) is not counted as done
    files[1].write_bytes(files[1].read_bytes()[:100])
    assert _generate("--structures", structures, "-o", out) == 0  # child-process path
    assert files[0].stat().st_mtime_ns == stamps[0]
    assert load(files[1]).n_orbitals == 4 + 3 * 2  # N: s,p; H: s,s (GFN1-xTB)


def test_generate_bad_config_names_the_key(tmp_path, capsys):
    config = tmp_path / "cfg.json"
    config.write_text(json.dumps({"devices": [{"name": "x", "cout": 2}]}))
    assert _generate("--config", config, "-o", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "devices[0]" in err and "cout" in err
    config.write_text(json.dumps({"devices": [{"spec": {"vacancy_mod": "random"}}]}))
    assert _generate("--config", config, "-o", tmp_path / "out") == 2
    assert "vacancy_mod" in capsys.readouterr().err
    config.write_text(json.dumps({"settings": {"temperature": 0.01}, "structures": []}))
    assert _generate("--config", config, "-o", tmp_path / "out") == 2
    assert "temperature" in capsys.readouterr().err


def test_generate_records_a_failed_scf_and_writes_no_file(tmp_path):
    structures = tmp_path / "water.xyz"
    ase.io.write(structures, molecule("H2O"))
    out = tmp_path / "out"
    rc = _generate(
        "--structures",
        structures,
        "-o",
        out,
        "--in-process",
        "--set",
        "max_iterations=2",
        "--set",
        "retry=false",
    )
    assert rc == 1
    entry = json.loads((out / "manifest.json").read_text())["structures"]["water"]
    assert entry["status"] == "not-converged" and "2 cycles" in entry["error"]
    assert not list(out.glob("*.npz"))


# ------------------------------------------------------------- image-resolved references
def _direct_integrals(atoms):
    """tblite's Gamma-point S and H0 of a periodic cell, hamjax order, no SCF (stopped
    before its first cycle: the integrals do not depend on it)."""
    from tblite.interface import Calculator, Result

    from hamjax.reference._conventions import tblite_conversion

    calc = Calculator(
        "GFN1-xTB",
        atoms.numbers,
        atoms.positions / BOHR_ANGSTROM,
        lattice=atoms.cell.array / BOHR_ANGSTROM,
        periodic=atoms.pbc.copy(),
        logger=lambda _: None,
    )
    calc.set("save-integrals", 1)
    calc.set("max-iter", 0)
    res = Result()
    with pytest.raises(Exception, match="not converged"):
        calc.singlepoint(res)
    _, perm, signs = tblite_conversion(
        atoms.numbers, calc.get("angular-momenta"), calc.get("shell-map")
    )
    flip = np.outer(signs, signs)
    return {
        k: flip * np.asarray(res.get(k))[np.ix_(perm, perm)]
        for k in ("overlap-matrix", "hamiltonian-matrix")
    }


@pytest.fixture(scope="module")
def tin_core_images():
    """Image-resolved S(R), H0(R) of the rattled TiN cell (8 atoms)."""
    return compute_reference(_tin_cell(), "tblite", hamiltonian="core")


@pytest.mark.parametrize("repeat", [(2, 1, 1), (1, 1, 2)])
def test_image_blocks_reproduce_a_supercell(tin_core_images, repeat):
    # A supercell's Gamma matrix samples the cell at k = 0 and k = 1/2 along the doubled axis:
    # its (copy a, copy b) block sums the images R with R_axis = b - a (mod 2), so it tests
    # the split into images, not only their sum.
    record = tin_core_images
    axis = int(np.argmax(repeat))
    half = np.zeros(3)
    half[axis] = 0.5
    supercell = _direct_integrals(_tin_cell().repeat(repeat))  # copy-major atom order
    for which, key in (("overlap", "overlap-matrix"), ("hamiltonian", "hamiltonian-matrix")):
        gamma = record.to_dense(which)
        zone_edge = record.to_dense(which, k=half)
        assert np.abs(zone_edge.imag).max() < 1e-12
        same, other = 0.5 * (gamma + zone_edge.real), 0.5 * (gamma - zone_edge.real)
        expected = np.block([[same, other], [other, same]])
        assert np.abs(expected - supercell[key]).max() < 1e-8, which


def test_image_resolved_record_passes_its_checks(tin_core_images):
    atoms = _tin_cell()
    kt = 0.01
    record = compute_reference(
        atoms,
        "tblite",
        electronic_temperature_hartree=kt,
        mixer_damping=0.4,
        kgrid_electron_count=(2, 2, 2),
    )
    meta = record.metadata
    assert meta["gamma_folded"] is False and meta["image_resolved"] is True
    assert record.shifts.any(axis=1).sum() > 0.9 * len(record.pairs)  # mostly images
    checks = meta["image_checks"]
    assert checks["hamiltonian_folding_hartree"] < 1e-8
    assert checks["overlap_folding"] < 1e-12
    assert checks["hermiticity_hartree"] < 1e-12
    assert checks["electron_count_error"] < 1e-4
    # independent: Gamma eigenvalues equal tblite's orbital energies
    direct = _direct_tblite(atoms, kt)
    assert np.allclose(_generalised_eigenvalues(record), direct["orbital-energies"], atol=1e-8)
    # the core record of the same cell: same overlap blocks, S(R) = S(-R)^T
    assert np.array_equal(record.pairs, tin_core_images.pairs)
    assert np.allclose(record.overlap, tin_core_images.overlap, atol=1e-14)
    # a finer grid than the SCF's Gamma point holds a different count (recorded, not forced)
    assert abs(checks["electron_count_on_kgrid"] - checks["electron_count"]) > 1e-3


def test_image_unfolding_is_exact_only_for_gfn1_form():
    from hamjax.reference.images import unfold_gfn1

    atoms = _tin_cell()
    n = 36 + 8 * 4  # any square matrices: F - H0 without the S o (v + v) / 2 form
    rng = np.random.default_rng(0)
    h = rng.normal(size=(n, n))
    with pytest.raises(ValueError, match="GFN1-type"):
        unfold_gfn1(
            atoms, h + h.T, np.zeros((n, n)), np.eye(n) + 0.1, [9, 4] * 4, np.arange(n), np.ones(n)
        )


def test_supercell_scf_gives_the_cells_blocks_on_its_k_grid():
    # tblite has no k-points; an SCF on a 2 x 1 x 1 supercell samples k = 0 and 1/2 along x.
    # The cell's image blocks with that SCF potential must have, at those two k, exactly
    # the supercell's levels (direct tblite) and hold the cell's electrons there.
    atoms = _tin_cell()
    kt = 0.01
    record = compute_reference(
        atoms,
        "tblite",
        electronic_temperature_hartree=kt,
        mixer_damping=0.4,
        scf_supercell=(2, 1, 1),
    )
    assert record.metadata["k_grid"] == [2, 1, 1] and len(record.numbers) == 8
    direct = _direct_tblite(atoms.repeat((2, 1, 1)), kt)
    levels = np.concatenate(
        [
            scipy.linalg.eigh(
                record.to_dense(k=k), record.to_dense("overlap", k=k), eigvals_only=True
            )
            for k in (None, (0.5, 0.0, 0.0))
        ]
    )
    assert np.abs(np.sort(levels) - np.sort(direct["orbital-energies"])).max() < 1e-6
    checks = record.metadata["image_checks"]
    assert checks["electron_count_error"] < 1e-4
    assert record.metadata["n_electrons"] == pytest.approx(direct["orbital-occupations"].sum() / 2)


def test_supercell_scf_needs_periodic_axes():
    molecule_like = _tin_cell()
    molecule_like.pbc = [True, True, False]
    with pytest.raises(ValueError, match="non-periodic axis"):
        compute_reference(molecule_like, "tblite", scf_supercell=(1, 1, 2))


def test_windowed_clusters_give_the_same_images(tin_core_images, monkeypatch):
    # Clusters cut into windows along the cell (cheaper for long cells) must give the same
    # blocks as whole clusters: force the most windows and compare.
    from hamjax.reference import images

    monkeypatch.setattr(images, "_CALL_COST_PAIRS", -(10**9))
    windowed = compute_reference(_tin_cell(), "tblite", hamiltonian="core")
    unfolding = windowed.metadata["unfolding"]
    assert unfolding["n_clusters"] > (unfolding["n_images"] + 1) // 2
    reference = tin_core_images
    same = windowed.on_blocks(reference.pairs, reference.shifts)
    assert len(windowed.pairs) == len(reference.pairs)
    np.testing.assert_allclose(same.hamiltonian, reference.hamiltonian, atol=1e-12)
    np.testing.assert_allclose(same.overlap, reference.overlap, atol=1e-14)
