"""Tests of the VCM device builder: stoichiometry, geometry, vacancies, filaments, errors."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import scipy.sparse.csgraph
from ase.neighborlist import neighbor_list

from hamjax.constants import AVOGADRO_PER_MOL
from hamjax.structures import (
    A_HFO2,
    A_TIN,
    REGIONS,
    DeviceSpec,
    build_device,
    clear_oxide_cache,
    plot_device,
    read_device_extxyz,
    write_device_extxyz,
)
from hamjax.structures.amorphous import AmorphousSettings, _ForceField, pair_forces

# Small, fast devices (amorphous oxide: ~1-4 s each on a laptop core).
SMALL = DeviceSpec(transverse_cells=(2, 2), tin_left_cells=1, tin_right_cells=1, seed=3)
LINK_ANGSTROM = 3.4  # vacancies closer than this are neighbours (O-O spacing in HfO2 ~2.5-3.0)


@pytest.fixture(scope="module")
def host():
    return build_device(SMALL)


@pytest.fixture(scope="module")
def formed():
    return build_device(SMALL.replace(vacancy_mode="filament", filament_radius_angstrom=3.0))


@pytest.fixture(scope="module")
def broken():
    return build_device(
        SMALL.replace(vacancy_mode="broken", filament_radius_angstrom=3.0, gap_angstrom=4.0)
    )


def _region(atoms, name):
    return np.array(atoms.get_chemical_symbols())[atoms.arrays["region"] == name]


def _count(symbols, element):
    return int(np.sum(symbols == element))


def _vacancy_path_exists(atoms, link):
    """Graph check: is there a chain of vacancies (steps < link) from one oxide side to the other?

    Uses only the atoms and the vacancy positions: the oxide's extent is taken from the O sites
    (remaining O of the HfO2 region plus vacancies), neighbours use the minimum image in y, z.
    """
    vac = np.asarray(atoms.info["vacancies"]).reshape(-1, 3)
    if len(vac) == 0:
        return False
    oxygen = atoms.positions[(atoms.arrays["region"] == "HfO2") & (atoms.numbers == 8)]
    all_x = np.concatenate([oxygen[:, 0], vac[:, 0]])
    x_lo, x_hi = all_x.min(), all_x.max()
    lengths = atoms.cell.lengths()
    d = vac[:, None, :] - vac[None, :, :]
    d[..., 1:] -= np.round(d[..., 1:] / lengths[1:]) * lengths[1:]
    adjacent = np.linalg.norm(d, axis=-1) < link
    n = len(vac)
    graph = np.zeros((n + 2, n + 2), bool)  # node n: left side, node n + 1: right side
    graph[:n, :n] = adjacent
    graph[n, :n] = vac[:, 0] - x_lo < link
    graph[n + 1, :n] = x_hi - vac[:, 0] < link
    graph = graph | graph.T
    _, labels = scipy.sparse.csgraph.connected_components(scipy.sparse.csr_matrix(graph))
    return labels[n] == labels[n + 1]


# ----------------------------------------------------------------------------- composition


@pytest.mark.parametrize("fixture", ["host", "formed", "broken"])
def test_layer_stoichiometry(fixture, request):
    atoms = request.getfixturevalue(fixture)
    assert set(atoms.arrays["region"]) == set(REGIONS)
    for name in ("TiN_left", "TiN_right"):
        sym = _region(atoms, name)
        assert _count(sym, "Ti") == _count(sym, "N") > 0
        assert set(sym) == {"Ti", "N"}
    ox = _region(atoms, "HfO2")
    assert set(ox) <= {"Hf", "O"}
    n_vac = len(atoms.info["vacancies"])
    assert _count(ox, "O") + n_vac == 2 * _count(ox, "Hf")
    assert set(_region(atoms, "Ti")) == {"Ti"}
    # Layers follow each other along x in the order of REGIONS.
    centres = [atoms.positions[atoms.arrays["region"] == r, 0].mean() for r in REGIONS]
    assert np.all(np.diff(centres) > 0)


def test_amorphous_density_and_chemistry(host):
    mask = host.arrays["region"] == "HfO2"
    mass_g = host.get_masses()[mask].sum() / AVOGADRO_PER_MOL
    volume_cm3 = np.prod(host.cell.lengths()[1:]) * SMALL.hfo2_thickness_angstrom * 1e-24
    assert mass_g / volume_cm3 == pytest.approx(SMALL.hfo2_density_g_cm3, rel=0.05)
    # Chemical order of a-HfO2: each Hf has O neighbours near 2.1 A (6-7 in the bulk; the slab
    # surfaces lower the mean), no O-O pair shorter than 2.1 A, no Hf-Hf shorter than 2.9 A.
    sub = host[mask]
    i, j, d = neighbor_list("ijd", sub, 3.2)
    z = sub.numbers
    hf_o = (z[i] == 72) & (z[j] == 8)
    assert 1.75 < np.median(d[hf_o & (d < 2.6)]) < 2.35
    coordination = np.bincount(i[hf_o & (d < 2.6)], minlength=len(sub))[z == 72]
    assert 4.5 < coordination.mean() < 8.0
    assert d[(z[i] == 8) & (z[j] == 8)].min() > 2.0
    assert d[(z[i] == 72) & (z[j] == 72)].min() > 2.9


def test_interfaces_are_oxygen_terminated(host):
    """Across each oxide interface the closest contacts are O-metal bonds (~2 A); Hf stays
    further away (>= 2.4 A) from the electrode and Ti atoms."""
    i, j, d = neighbor_list("ijd", host, 3.0)
    region = host.arrays["region"]
    cross = (region[i] == "HfO2") & (region[j] != "HfO2")
    z = host.numbers
    assert 1.8 < d[cross & (z[i] == 8)].min() < 2.3
    hf_contacts = d[cross & (z[i] == 72)]
    assert len(hf_contacts) == 0 or hf_contacts.min() > 2.4


def test_random_vacancy_count():
    density = 0.2
    atoms = build_device(SMALL.replace(vacancy_mode="random", vacancy_density=density))
    n_hf = _count(_region(atoms, "HfO2"), "Hf")
    vac = atoms.info["vacancies"]
    assert len(vac) == round(density * 2 * n_hf)
    # The sites are really empty: no atom remains on a vacancy site.
    d = np.linalg.norm(vac[:, None, :] - atoms.positions[None, :, :], axis=-1)
    assert d.min() > 1.0
    assert np.all(vac[:, 0] > atoms.info["layers"]["TiN_left"][1])
    assert np.all(vac[:, 0] < atoms.info["layers"]["Ti"][0])


def test_minimum_distance_with_pbc(host, formed, broken):
    for atoms in (host, formed, broken, build_device(DeviceSpec(seed=5))):
        i, _ = neighbor_list("ij", atoms, 1.6)  # ase's own neighbour search, periodic
        assert len(i) == 0


def test_tin_continues_across_periodic_boundary():
    """With no rattling every electrode Ti has 6 N at a/2, also across the x boundary."""
    atoms = build_device(
        DeviceSpec(oxide="crystalline", transverse_cells=(6, 6), rattle_angstrom=0)
    )
    i, j, d = neighbor_list("ijd", atoms, 2.2)
    left = atoms.arrays["region"] == "TiN_left"
    first_plane = left & (atoms.positions[:, 0] < A_TIN / 2)
    ti = np.flatnonzero(first_plane & (atoms.numbers == 22))
    assert len(ti) == 36 * 2
    for a in ti:
        neighbours = j[i == a]
        assert len(neighbours) == 6
        assert np.all(atoms.numbers[neighbours] == 7)
        assert np.allclose(d[i == a], A_TIN / 2, atol=1e-6)


def test_hcp_ti_coordination_in_paper_cell():
    atoms = build_device(
        DeviceSpec(
            oxide="crystalline",
            transverse_cells=(6, 6),
            ti_thickness_angstrom=12.0,
            rattle_angstrom=0,
        )
    )
    assert atoms.info["ti_phase"] == "hcp"
    ti = np.flatnonzero(atoms.arrays["region"] == "Ti")
    x = atoms.positions[ti, 0]
    inner = ti[(x > x.min() + 1.0) & (x < x.max() - 1.0)]
    i, j = neighbor_list("ij", atoms, 3.2)
    counts = np.bincount(i, minlength=len(atoms))[inner]
    assert np.all(counts == 12)  # hcp: 6 in-plane + 3 above + 3 below


# ----------------------------------------------------------------------------- lattice matching


def test_transverse_cell_follows_electrode():
    atoms = build_device(SMALL)
    assert np.allclose(atoms.cell.lengths()[1:], 2 * A_TIN)
    assert atoms.info["strain"]["TiN"] == [0.0, 0.0, 0.0]
    target = (8.6, 8.4)
    quick = {"melt_steps": 0, "quench_steps": 0, "rattle_angstrom": 0}
    strained = build_device(SMALL.replace(transverse_angstrom=target, **quick))
    eps = np.array(strained.info["strain"]["TiN"][1:])
    assert np.allclose(strained.cell.lengths()[1:], target)
    assert np.allclose(2 * A_TIN * (1 + eps), target)
    assert np.all(np.abs(eps) <= SMALL.max_strain)
    # Independent: the electrode's in-plane Ti-N distance is (a / 2)(1 + eps).
    tin = strained[strained.arrays["region"] == "TiN_left"]
    first = tin[tin.positions[:, 0] < tin.positions[:, 0].min() + 0.1]
    i, j, dvec = neighbor_list("ijD", first, 2.3)
    along_y = np.abs(dvec[:, 1]) > 1.0
    assert np.allclose(np.abs(dvec[along_y, 1]), A_TIN / 2 * (1 + eps[0]))


def test_crystalline_oxide_strain_in_paper_cell():
    atoms = build_device(DeviceSpec(oxide="crystalline", transverse_cells=(6, 6)))
    eps = atoms.info["strain"]["HfO2"]
    assert eps[1] == pytest.approx(6 * A_TIN / (5 * A_HFO2) - 1)
    assert abs(eps[1]) < 0.002 and eps[0] == 0.0
    for name in ("TiN", "HfO2", "Ti"):
        assert max(abs(v) for v in atoms.info["strain"][name]) <= 0.05


# ----------------------------------------------------------------------------- filaments


def test_formed_filament_bridges_oxide(formed):
    assert len(formed.info["vacancies"]) > 0
    assert _vacancy_path_exists(formed, LINK_ANGSTROM)
    # All vacancies lie inside the cylinder (minimum image across y, z).
    lengths = formed.cell.lengths()[1:]
    d = formed.info["vacancies"][:, 1:] - 0.5 * lengths
    d -= np.round(d / lengths) * lengths
    assert np.all(np.linalg.norm(d, axis=1) <= 3.0 + 1e-9)


def test_broken_filament_has_no_path(formed, broken):
    assert not _vacancy_path_exists(broken, LINK_ANGSTROM)
    # Same host oxide (same seed): the broken filament is the formed one minus the gap.
    f, b = formed.info["vacancies"], broken.info["vacancies"]
    assert 0 < len(b) < len(f)
    assert all(np.min(np.linalg.norm(f - v, axis=1)) < 1e-9 for v in b)
    ti_side = build_device(
        SMALL.replace(
            vacancy_mode="broken", filament_radius_angstrom=3.0, gap_angstrom=4.0, gap_side="ti"
        )
    )
    assert not _vacancy_path_exists(ti_side, LINK_ANGSTROM)


def test_conical_and_offset_filaments_differ():
    wide = SMALL.replace(vacancy_mode="filament", filament_radius_angstrom=3.0)
    cone = wide.replace(filament_end_radius_angstrom=1.0)
    tilted = wide.replace(filament_end_center=(0.85, 0.5))
    a, b, c = (build_device(s) for s in (wide, cone, tilted))
    assert len(b.info["vacancies"]) < len(a.info["vacancies"])
    # The tilted column: every vacancy lies within the radius of the tilted axis, and some lie
    # outside the straight column around the start axis (minimum image across y, z).
    vac = c.info["vacancies"]
    lengths = c.cell.lengths()[1:]
    oxygen_x = c.positions[(c.arrays["region"] == "HfO2") & (c.numbers == 8), 0]
    lo, hi = min(oxygen_x.min(), vac[:, 0].min()), max(oxygen_x.max(), vac[:, 0].max())
    s = np.clip((vac[:, 0] - lo) / (hi - lo), 0, 1)[:, None]
    start, end = np.array([0.5, 0.5]) * lengths, np.array([0.85, 0.5]) * lengths

    def off_axis(centre):
        d = vac[:, 1:] - centre
        d -= np.round(d / lengths) * lengths
        return np.linalg.norm(d, axis=1)

    assert np.all(off_axis(start + s * (end - start)) <= 3.0 + 1e-9)
    assert np.any(off_axis(start) > 3.0)
    assert _vacancy_path_exists(a, LINK_ANGSTROM)


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_atoms_different_seed_different(host):
    clear_oxide_cache()  # rebuild the melt-quench itself, not a kept copy
    again = build_device(SMALL)
    assert again.get_chemical_symbols() == host.get_chemical_symbols()
    assert np.array_equal(again.positions, host.positions)
    other = build_device(SMALL.replace(seed=4))
    assert len(other) != len(host) or not np.allclose(other.positions, host.positions, atol=0.1)
    spec = SMALL.replace(vacancy_mode="random", vacancy_density=0.3)
    v1, v2 = build_device(spec).info["vacancies"], build_device(spec).info["vacancies"]
    assert np.array_equal(v1, v2)
    v3 = build_device(spec.replace(seed=11)).info["vacancies"]
    assert v3.shape != v1.shape or not np.allclose(v3, v1)


def test_spec_json_round_trip():
    spec = SMALL.replace(filament_end_center=(0.2, 0.3), transverse_angstrom=(8.5, 8.5))
    assert DeviceSpec.from_json(spec.to_json()) == spec


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"hfo2_thickness_angstrom": -3.0}, "hfo2_thickness_angstrom must be positive"),
        ({"ti_thickness_angstrom": 0.0}, "ti_thickness_angstrom must be positive"),
        ({"tin_left_cells": 0}, "tin_left_cells"),
        ({"transverse_cells": (0, 2)}, "transverse_cells"),
        ({"vacancy_mode": "random", "vacancy_density": 1.5}, r"vacancy_density .* \[0, 1\]"),
        ({"vacancy_density": -0.1}, "vacancy_density"),
        ({"vacancy_mode": "broken", "gap_angstrom": 20.0}, "shorter than the oxide"),
        ({"vacancy_mode": "broken", "gap_angstrom": 0.0}, "gap_angstrom > 0"),
        ({"vacancy_mode": "cluster"}, "vacancy_mode must be one of"),
        ({"oxide": "glass"}, "oxide must be one of"),
        ({"filament_radius_angstrom": -1.0}, "filament_radius_angstrom"),
    ],
)
def test_bad_spec_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        DeviceSpec(**changes)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"transverse_angstrom": (2.0, 4.24)}, "Ly = 2.0 Angstrom fits no whole number"),
        ({"transverse_angstrom": (4.24, 5.5)}, "Lz = 5.5 Angstrom fits no whole number"),
        ({"oxide": "crystalline"}, "crystalline HfO2 .* does not fit"),
        ({"ti_phase": "hcp"}, "hcp Ti does not fit"),
        (
            {"interface_gap_angstrom": 0.4, "oxide": "crystalline", "transverse_cells": (6, 6)},
            "closer than 1.6 Angstrom",
        ),
    ],
)
def test_impossible_device_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        build_device(DeviceSpec(melt_steps=0, quench_steps=0, relax_steps=0, **changes))


# ----------------------------------------------------------------------------- output


def test_plot_writes_png(formed, tmp_path):
    path = plot_device(formed, tmp_path / "device.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 20_000


def test_extxyz_round_trip(formed, tmp_path):
    path = write_device_extxyz(formed, tmp_path / "device.extxyz")
    back = read_device_extxyz(path)
    assert back.get_chemical_symbols() == formed.get_chemical_symbols()
    assert np.allclose(back.positions, formed.positions)
    assert np.allclose(back.cell.array, formed.cell.array)
    assert list(back.arrays["region"]) == list(formed.arrays["region"])
    assert np.allclose(back.info["vacancies"], formed.info["vacancies"])
    assert back.info["strain"] == formed.info["strain"]
    assert DeviceSpec.from_json(back.info["spec"]) == DeviceSpec.from_json(formed.info["spec"])


# ----------------------------------------------------------------------------- oxide potential


def test_pair_forces_are_energy_gradient():
    rng = np.random.default_rng(0)
    box = np.diag([30.0, 9.0, 9.0])
    species = np.array([0] * 6 + [1] * 12)
    hf = rng.random((6, 3)) * [6, 9, 9]
    o = hf[np.repeat(np.arange(6), 2)] + rng.normal(size=(12, 3)) * 1.2 + 1.0
    positions = np.concatenate([hf, o])
    energy, forces = pair_forces(positions, species, box)
    h = 1e-5
    for atom, axis in [(0, 0), (7, 1), (15, 2)]:
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        numeric = -(pair_forces(plus, species, box)[0] - pair_forces(minus, species, box)[0]) / (
            2 * h
        )
        assert forces[atom, axis] == pytest.approx(numeric, rel=1e-5, abs=1e-6)
    tabulated = _ForceField(species, box, AmorphousSettings())(positions)
    assert np.allclose(tabulated, forces, atol=2e-3 * np.abs(forces).max())


def test_potential_fluorite_lattice_constant():
    """The rigid-ion model puts cubic HfO2's energy minimum within 3% of a = 5.08 A."""
    hf = np.array([[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]])
    o = np.array([[x, y, z] for x in (0.25, 0.75) for y in (0.25, 0.75) for z in (0.25, 0.75)])
    frac = np.concatenate([hf, o])
    species = np.array([0] * 4 + [1] * 8)
    cells = np.array([[i, j, k] for i in range(3) for j in range(3) for k in range(3)])
    grid = np.linspace(4.7, 5.5, 17)
    energies = []
    for a in grid:
        pos = ((frac[None, :, :] + cells[:, None, :]) * a).reshape(-1, 3)
        energies.append(
            pair_forces(pos, np.tile(species, 27), np.eye(3) * 3 * a, periodic=(True,) * 3)[0]
        )
    a_min = grid[int(np.argmin(energies))]
    assert abs(a_min / A_HFO2 - 1) < 0.03
