"""TiN | HfO2 | Ti | TiN valence-change-memory devices along x, periodic along y and z.

Lattice matching
----------------
The transverse cell is set by the electrodes: ``ny x nz`` conventional rock-salt TiN cells
(a = 4.24 Angstrom), unstrained unless the caller asks for a transverse size in Angstrom (then
the nearest whole number of TiN cells, strained by at most ``max_strain``). Straining the
metallic electrode to fit the oxide (fluorite HfO2 a = 5.08 Angstrom is 20% larger) is what
not to do: it distorts the metal's bands and a tight-binding SCF of the strained electrode
barely converges. The oxide and the Ti layer are fitted to the electrode cell instead:

* HfO2, ``oxide="amorphous"`` (default): a melt-quenched slab built directly in the electrode's
  transverse cell at the density of amorphous hafnia (9.7 g/cm^3 by default; monoclinic HfO2 is
  9.68, films 9-10), see :mod:`hamjax.structures.amorphous`. It fits any transverse cell with
  zero strain, so toy training devices and paper-size test devices share one kind of oxide,
  and the paper's devices also use amorphous HfO2. Both faces are O-terminated.
* HfO2, ``oxide="crystalline"``: fluorite (cubic) HfO2 with (100) planes along x, m cells
  across each transverse length; allowed only when the strain is within ``max_strain``
  (6 TiN cells = 25.44 A against 5 HfO2 cells = 25.40 A: +0.16%). Along x it keeps a = 5.08
  and stacks O, Hf, O, Hf planes (a/4 apart): an O plane faces TiN_left, a Hf plane the Ti.
* Ti, ``ti_phase="hcp"``: hcp Ti (a = 2.95, c = 4.68 A) with c along x (basal planes parallel to
  the interfaces, the usual texture of Ti films) and the orthohexagonal axes a and a*sqrt(3)
  along y and z (whichever pairing strains less). ``ti_phase="fcc"``: a pseudomorphic fcc Ti
  layer on the Ti sublattice of TiN (a_fcc = 4.13 A from hcp Ti's atomic volume, strained by
  +2.7% to 4.24 A), the only choice that fits narrow toy cells. ``"auto"`` (default) takes hcp
  when its transverse strain is within ``max_strain`` and fcc otherwise.

The strain of every layer, per axis (x, y, z), is recorded in ``atoms.info["strain"]``.

Layout along x (Angstrom): TiN_left planes (spacing a/2) start at x = a/4 (half a plane
spacing from the cell boundary); each interface has a plane-to-plane gap
(``interface_gap_angstrom`` around the oxide, the mean plane spacing at Ti | TiN); the cell
ends half a TiN plane spacing after the last TiN_right plane, so across the periodic x boundary
TiN_right continues TiN_left as perfect rock salt (both electrodes have whole cells, starting
with the same plane parity). The cell is periodic in all three directions; set
``atoms.pbc[0] = False`` for an open-boundary cluster along x. Every device is checked for
atoms closer than ``min_distance_angstrom`` (periodic images included) before it is returned.

Vacancy shapes (only O of the oxide is removed): "random" picks a fraction of the O sites;
"filament" removes O inside a column along x that spans the oxide from its TiN_left face to
its Ti face, a cylinder, a cone (``filament_end_radius_angstrom``) or a tilted column
(``filament_end_center``), the shapes needed for different filaments; "broken" is the same
column with a length ``gap_angstrom`` of intact oxide at one end (``gap_side``).

Randomness: ``numpy.random.default_rng([seed, stream])`` with one stream per stage (oxide,
rattle, vacancies), so the same seed gives the same atoms, and two specs that differ only in
their vacancies share the same host oxide (a formed and a broken filament in the same film;
the oxide is also kept in memory, see :func:`clear_oxide_cache`).

Records on the returned ``ase.Atoms``:

* ``arrays["region"]``: per-atom str, one of :data:`REGIONS`.
* ``info["vacancies"]``: [n_vac, 3] float, Angstrom, positions of the removed O atoms.
* ``info["vacancy_region"]``: per vacancy, "filament" or "background".
* ``info["strain"]``: {layer: [eps_x, eps_y, eps_z]}.
* ``info["layers"]``: {region: [x_min, x_max, n_atoms]} (before rattling and vacancies).
* ``info["oxide_window"]``: [x_lo, x_hi] of the oxide's O sites, Angstrom.
* ``info["hfo2_density_g_cm3"]``: oxide mass (after vacancies) over transverse area times
  the oxide thickness (crystalline: whole cells).
* ``info["ti_phase"]``, ``info["oxide"]``, ``info["seed"]``,
  ``info["spec"]`` (the spec as a JSON string; :func:`DeviceSpec.from_json` restores it).
"""

from __future__ import annotations

import functools

import ase
import numpy as np
import vesin
from ase.data import atomic_masses

from hamjax.constants import AVOGADRO_PER_MOL
from hamjax.structures.amorphous import AmorphousSettings, amorphous_hfo2_slab
from hamjax.structures.spec import (
    A_HFO2,
    A_TI_FCC,
    A_TI_HCP,
    A_TIN,
    C_TI_HCP,
    REGIONS,
    DeviceSpec,
    paper_spec,
)

__all__ = [
    "A_HFO2",
    "A_TIN",
    "A_TI_HCP",
    "C_TI_HCP",
    "REGIONS",
    "DeviceSpec",
    "build_device",
    "check_min_distance",
    "clear_oxide_cache",
    "paper_spec",
]

_MASS_HFO2_G_MOL = atomic_masses[72] + 2 * atomic_masses[8]  # standard atomic weights


# ----------------------------------------------------------------------------- transverse cell


def _transverse(spec: DeviceSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_cells [2] int, lengths [2] Angstrom, TiN strain [2]) of the transverse cell."""
    if spec.transverse_angstrom is None:
        n = np.array(spec.transverse_cells, int)
        return n, n * A_TIN, np.zeros(2)
    lengths = np.array(spec.transverse_angstrom, float)
    n = np.round(lengths / A_TIN).astype(int)
    for axis, (length, count) in enumerate(zip(lengths, n, strict=True)):
        name = "yz"[axis]
        strain = length / (count * A_TIN) - 1.0 if count else np.inf
        if count < 1 or abs(strain) > spec.max_strain:
            raise ValueError(
                f"DeviceSpec: transverse length L{name} = {length} Angstrom fits no whole number "
                f"of TiN cells (a = {A_TIN} A) within max_strain = {spec.max_strain}: nearest is "
                f"{max(count, 1)} cell(s) = {max(count, 1) * A_TIN:.3f} A"
            )
    return n, lengths, lengths / (n * A_TIN) - 1.0


def _fit(length: float, period: float) -> tuple[int, float]:
    """Whole number of periods nearest to ``length`` (>= 1) and the strain to fit it exactly."""
    count = max(int(round(length / period)), 1)
    return count, length / (count * period) - 1.0


# ----------------------------------------------------------------------------- layers
# Each layer builder returns (symbols, positions) with the first atomic plane at x = 0.


def _tin_layer(n_cells_x: int, ncell: np.ndarray, lengths: np.ndarray):
    d = A_TIN / 2.0
    ny, nz = ncell
    ay, az = lengths / ncell
    symbols, positions = [], []
    for k in range(2 * n_cells_x):
        for iy in range(2 * ny):
            for iz in range(2 * nz):
                symbols.append("Ti" if (iy + iz + k) % 2 == 0 else "N")
                positions.append((k * d, iy * ay / 2.0, iz * az / 2.0))
    return symbols, np.array(positions)


def _hfo2_crystalline(spec: DeviceSpec, lengths: np.ndarray):
    """Fluorite HfO2, (100) planes along x: O, Hf, O, Hf, ... (spacing a/4), O facing TiN."""
    (my, sy), (mz, sz) = _fit(lengths[0], A_HFO2), _fit(lengths[1], A_HFO2)
    if max(abs(sy), abs(sz)) > spec.max_strain:
        raise ValueError(
            f"DeviceSpec: crystalline HfO2 (a = {A_HFO2} A) does not fit the transverse cell "
            f"{lengths[0]:.3f} x {lengths[1]:.3f} A within max_strain = {spec.max_strain} "
            f"(strain {sy:+.3f}, {sz:+.3f}); use oxide='amorphous' or a transverse size that "
            f"is a multiple of 25.44 A (6 TiN = 5 HfO2 cells)"
        )
    nx = max(int(round(spec.hfo2_thickness_angstrom / A_HFO2)), 1)
    by, bz = lengths[0] / my, lengths[1] / mz
    o_sites = [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]
    hf_even, hf_odd = [(0.0, 0.0), (0.5, 0.5)], [(0.0, 0.5), (0.5, 0.0)]
    symbols, positions = [], []
    for plane in range(4 * nx):
        x = plane * A_HFO2 / 4.0
        if plane % 2 == 0:
            sym, sites = "O", o_sites
        else:
            sym, sites = "Hf", hf_even if plane % 4 == 1 else hf_odd
        for iy in range(my):
            for iz in range(mz):
                for fy, fz in sites:
                    symbols.append(sym)
                    positions.append((x, (iy + fy) * by, (iz + fz) * bz))
    strain = [0.0, sy, sz]
    return symbols, np.array(positions), strain, nx * A_HFO2


@functools.lru_cache(maxsize=16)
def _amorphous_cached(n_fu, width, ly, lz, seed, melt, quench, relax, t_melt):
    settings = AmorphousSettings(
        melt_steps=melt, quench_steps=quench, relax_steps=relax, melt_temperature_k=t_melt
    )
    rng = np.random.default_rng([seed, 1])
    positions, symbols = amorphous_hfo2_slab(n_fu, width, ly, lz, rng, settings)
    positions.setflags(write=False)
    return positions, tuple(symbols)


def clear_oxide_cache() -> None:
    """Forget the amorphous oxides kept in memory.

    ``build_device`` keeps the last 16 melt-quenched oxides (keyed by everything they depend
    on: seed, cell, thickness, density, MD settings), so devices that differ only in their
    vacancies or rattling share one oxide and build in milliseconds.
    """
    _amorphous_cached.cache_clear()


def _hfo2_amorphous(spec: DeviceSpec, lengths: np.ndarray):
    """Melt-quenched HfO2 at the spec's density; atoms within [0, thickness - a/4]."""
    area = lengths[0] * lengths[1]
    n_fu = spec.hfo2_density_g_cm3 * area * spec.hfo2_thickness_angstrom * 1e-24 * AVOGADRO_PER_MOL
    n_fu = max(int(round(n_fu / _MASS_HFO2_G_MOL)), 1)
    width = spec.hfo2_thickness_angstrom - A_HFO2 / 4.0
    positions, symbols = _amorphous_cached(
        n_fu,
        float(width),
        float(lengths[0]),
        float(lengths[1]),
        int(spec.seed),
        int(spec.melt_steps),
        int(spec.quench_steps),
        int(spec.relax_steps),
        float(spec.melt_temperature_k),
    )
    return list(symbols), positions.copy(), [0.0, 0.0, 0.0], spec.hfo2_thickness_angstrom


def _ti_hcp_fit(lengths: np.ndarray):
    """Best pairing of hcp (a, a sqrt 3) with (y, z): (periods, counts, strains)."""
    best = None
    for periods in ((A_TI_HCP, A_TI_HCP * np.sqrt(3.0)), (A_TI_HCP * np.sqrt(3.0), A_TI_HCP)):
        fits = [_fit(length, period) for length, period in zip(lengths, periods, strict=True)]
        worst = max(abs(s) for _, s in fits)
        if best is None or worst < best[0]:
            best = (worst, periods, fits)
    return best


def _ti_layer(spec: DeviceSpec, ncell: np.ndarray, lengths: np.ndarray):
    """Ti layer, its phase, strain and plane spacing.

    fcc: the layer continues the Ti sublattice of the rock salt, so its last plane sits above
    the N atoms of the first TiN_right plane (as Ti does inside TiN).
    """
    worst, periods, fits = _ti_hcp_fit(lengths)
    phase = spec.ti_phase
    if phase == "auto":
        phase = "hcp" if worst <= spec.max_strain else "fcc"
    symbols, positions = [], []
    if phase == "hcp":
        if worst > spec.max_strain:
            raise ValueError(
                f"DeviceSpec: hcp Ti does not fit the transverse cell {lengths[0]:.3f} x "
                f"{lengths[1]:.3f} A within max_strain = {spec.max_strain} (worst strain "
                f"{worst:+.3f}); use ti_phase='fcc' or 'auto'"
            )
        (my, sy), (mz, sz) = fits
        by, bz = lengths[0] / my, lengths[1] / mz
        # Orthohexagonal cell (a, a sqrt3): A layer (0, 0), (1/2, 1/2);
        # B layer (1/2, 1/6), (0, 2/3).
        a_is_y = np.isclose(periods[0], A_TI_HCP)
        layer_a = [(0.0, 0.0), (0.5, 0.5)]
        layer_b = [(0.5, 1.0 / 6.0), (0.0, 2.0 / 3.0)]
        n_planes = max(int(round(spec.ti_thickness_angstrom / (C_TI_HCP / 2.0))), 1)
        for k in range(n_planes):
            for fa, fb in layer_a if k % 2 == 0 else layer_b:
                fy, fz = (fa, fb) if a_is_y else (fb, fa)
                for iy in range(my):
                    for iz in range(mz):
                        symbols.append("Ti")
                        positions.append((k * C_TI_HCP / 2.0, (iy + fy) * by, (iz + fz) * bz))
        strain = [0.0, sy, sz]
        spacing = C_TI_HCP / 2.0
    else:
        d = A_TI_FCC / 2.0
        n_planes = max(int(round(spec.ti_thickness_angstrom / d)), 1)
        ay, az = lengths / ncell
        for k in range(n_planes):
            parity = (n_planes - k) % 2  # last plane: parity 1, above the N of TiN plane 0
            for iy in range(2 * ncell[0]):
                for iz in range(2 * ncell[1]):
                    if (iy + iz) % 2 == parity:
                        symbols.append("Ti")
                        positions.append((k * d, iy * ay / 2.0, iz * az / 2.0))
        strain = [0.0, *(lengths / ncell / A_TI_FCC - 1.0)]
        spacing = d
    return symbols, np.array(positions), strain, phase, spacing


# ----------------------------------------------------------------------------- vacancies


def _filament_mask(spec: DeviceSpec, positions: np.ndarray, lengths: np.ndarray, window):
    """True for O sites inside the filament (cylinder, cone or tilted column along x)."""
    x_lo, x_hi = window
    s = np.clip((positions[:, 0] - x_lo) / max(x_hi - x_lo, 1e-9), 0.0, 1.0)
    c0 = np.array(spec.filament_center) * lengths
    c1 = np.array(spec.filament_end_center or spec.filament_center) * lengths
    r0 = spec.filament_radius_angstrom
    r1 = r0 if spec.filament_end_radius_angstrom is None else spec.filament_end_radius_angstrom
    centre = c0[None, :] + s[:, None] * (c1 - c0)[None, :]  # [n, 2]
    d = positions[:, 1:] - centre
    d -= np.round(d / lengths) * lengths  # minimum image in y, z
    radius = r0 + s * (r1 - r0)
    inside = np.einsum("nk,nk->n", d, d) <= radius**2
    if spec.vacancy_mode == "broken":
        if spec.gap_side == "tin":
            inside &= positions[:, 0] > x_lo + spec.gap_angstrom
        else:
            inside &= positions[:, 0] < x_hi - spec.gap_angstrom
    return inside


def _choose_vacancies(spec: DeviceSpec, o_positions, lengths, window, rng):
    """Indices (into o_positions) of removed O and their labels."""
    n_o = len(o_positions)
    if spec.vacancy_mode == "none":
        return np.zeros(0, int), np.zeros(0, "<U10")
    if spec.vacancy_mode == "random":
        count = int(round(spec.vacancy_density * n_o))
        chosen = np.sort(rng.choice(n_o, size=count, replace=False))
        return chosen, np.full(count, "background")
    inside = _filament_mask(spec, o_positions, lengths, window)
    idx_in, idx_out = np.flatnonzero(inside), np.flatnonzero(~inside)
    n_in = int(round(spec.filament_vacancy_fraction * len(idx_in)))
    n_out = int(round(spec.vacancy_density * len(idx_out)))
    chosen_in = rng.choice(idx_in, size=n_in, replace=False) if n_in else np.zeros(0, int)
    chosen_out = rng.choice(idx_out, size=n_out, replace=False) if n_out else np.zeros(0, int)
    chosen = np.concatenate([chosen_in, chosen_out]).astype(int)
    labels = np.array(["filament"] * n_in + ["background"] * n_out, "<U10")
    order = np.argsort(chosen)
    return chosen[order], labels[order]


# ----------------------------------------------------------------------------- checks


def check_min_distance(atoms: ase.Atoms, threshold_angstrom: float) -> None:
    """Raise ValueError naming the closest pair if two atoms are closer than the threshold.

    Uses the minimum image over the periodic directions of ``atoms``.
    """
    nl = vesin.NeighborList(cutoff=float(threshold_angstrom), full_list=False)
    i, j, d = nl.compute(
        points=atoms.positions, box=atoms.cell.array, periodic=list(atoms.pbc), quantities="ijd"
    )
    close = d < threshold_angstrom
    if np.any(close):
        k = np.flatnonzero(close)[np.argmin(d[close])]
        regions = atoms.arrays.get("region", np.full(len(atoms), "?"))
        a, b = int(i[k]), int(j[k])
        raise ValueError(
            f"device has atoms closer than {threshold_angstrom} Angstrom: "
            f"{atoms[a].symbol} {a} ({regions[a]}) and {atoms[b].symbol} {b} ({regions[b]}) "
            f"at {d[k]:.3f} A ({int(np.sum(close))} such pairs); increase "
            f"interface_gap_angstrom or check the layer settings"
        )


# ----------------------------------------------------------------------------- builder


def build_device(spec: DeviceSpec | None = None) -> ase.Atoms:
    """Build the device described by ``spec`` (see the module docstring for the records).

    Args:
        spec: device description; None gives ``DeviceSpec()`` (a ~60-atom toy).

    Returns:
        ase.Atoms with cell diag(Lx, Ly, Lz) Angstrom, pbc (True, True, True), region labels,
        vacancy sites and strains recorded.

    Raises:
        ValueError: bad spec, a layer that fits no cell, or atoms closer than
            ``spec.min_distance_angstrom``.
    """
    spec = spec or DeviceSpec()
    ncell, lengths, tin_strain = _transverse(spec)
    rng_rattle = np.random.default_rng([spec.seed, 2])
    rng_vac = np.random.default_rng([spec.seed, 3])

    d_tin = A_TIN / 2.0
    tin_left = _tin_layer(spec.tin_left_cells, ncell, lengths)
    tin_right = _tin_layer(spec.tin_right_cells, ncell, lengths)
    if spec.oxide == "crystalline":
        ox_sym, ox_pos, ox_strain, ox_thickness = _hfo2_crystalline(spec, lengths)
    else:
        ox_sym, ox_pos, ox_strain, ox_thickness = _hfo2_amorphous(spec, lengths)
    ti_sym, ti_pos, ti_strain, ti_phase, ti_spacing = _ti_layer(spec, ncell, lengths)

    gap = spec.interface_gap_angstrom
    gaps = {"HfO2": gap, "Ti": gap, "TiN_right": 0.5 * (ti_spacing + d_tin)}
    layers = [
        ("TiN_left", tin_left[0], tin_left[1]),
        ("HfO2", ox_sym, ox_pos),
        ("Ti", ti_sym, ti_pos),
        ("TiN_right", tin_right[0], tin_right[1]),
    ]
    symbols, positions, regions, extents = [], [], [], {}
    cursor = d_tin / 2.0
    for name, sym, pos in layers:
        if name != "TiN_left":
            cursor += gaps[name]
        pos = pos.copy()
        pos[:, 0] += cursor - pos[:, 0].min()
        extents[name] = [float(pos[:, 0].min()), float(pos[:, 0].max()), len(sym)]
        cursor = float(pos[:, 0].max())
        symbols += list(sym)
        positions.append(pos)
        regions += [name] * len(sym)
    lx = cursor + d_tin / 2.0
    positions = np.concatenate(positions)
    regions = np.array(regions)

    atoms = ase.Atoms(symbols, positions=positions, cell=np.diag([lx, *lengths]), pbc=True)
    atoms.arrays["region"] = regions
    atoms.wrap()
    if spec.rattle_angstrom > 0:
        atoms.positions += rng_rattle.normal(scale=spec.rattle_angstrom, size=(len(atoms), 3))

    is_o = (regions == "HfO2") & (atoms.numbers == 8)
    o_index = np.flatnonzero(is_o)
    o_sites = atoms.positions[o_index]
    window = (float(o_sites[:, 0].min()), float(o_sites[:, 0].max()))
    chosen, labels = _choose_vacancies(spec, o_sites, lengths, window, rng_vac)
    vacancies = o_sites[chosen].copy()
    keep = np.ones(len(atoms), bool)
    keep[o_index[chosen]] = False
    atoms = atoms[keep]

    ox_mass = np.sum(atoms.get_masses()[atoms.arrays["region"] == "HfO2"]) / AVOGADRO_PER_MOL  # g
    ox_volume = lengths[0] * lengths[1] * ox_thickness * 1e-24  # cm^3
    atoms.info.update(
        {
            "vacancies": vacancies.reshape(-1, 3),
            "vacancy_region": labels,
            "vacancy_mode": spec.vacancy_mode,
            "strain": {
                "TiN": [0.0, *map(float, tin_strain)],
                "HfO2": [float(v) for v in ox_strain],
                "Ti": [float(v) for v in ti_strain],
            },
            "layers": extents,
            "oxide_window": list(window),
            "hfo2_density_g_cm3": float(ox_mass / ox_volume),
            "ti_phase": ti_phase,
            "oxide": spec.oxide,
            "seed": int(spec.seed),
            "spec": spec.to_json(),
        }
    )
    for name, values in atoms.info["strain"].items():
        worst = max(abs(v) for v in values)
        if worst > spec.max_strain:  # pragma: no cover - the layer builders check this first
            raise ValueError(f"DeviceSpec: layer {name} strained by {worst:.3f} > max_strain")
    check_min_distance(atoms, spec.min_distance_angstrom)
    return atoms
