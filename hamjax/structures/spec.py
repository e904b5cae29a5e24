"""The specification of a TiN | HfO2 | Ti | TiN device: :class:`DeviceSpec`, its checks, and
the lattice constants of its materials (the builder is :mod:`hamjax.structures.device`)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

__all__ = [
    "A_HFO2",
    "A_TIN",
    "A_TI_FCC",
    "A_TI_HCP",
    "C_TI_HCP",
    "REGIONS",
    "DeviceSpec",
    "paper_spec",
]

A_TIN = 4.24
"""Rock-salt TiN lattice constant, Angstrom."""
A_HFO2 = 5.08
"""Fluorite (cubic) HfO2 lattice constant, Angstrom."""
A_TI_HCP = 2.95
"""hcp Ti a, Angstrom."""
C_TI_HCP = 4.68
"""hcp Ti c, Angstrom."""
A_TI_FCC = (4.0 * (np.sqrt(3.0) / 2.0 * A_TI_HCP**2 * C_TI_HCP / 2.0)) ** (1.0 / 3.0)
"""fcc Ti lattice constant with hcp Ti's atomic volume (4.13 Angstrom)."""

REGIONS = ("TiN_left", "HfO2", "Ti", "TiN_right")
"""Region labels, left to right along x."""

_VACANCY_MODES = ("none", "random", "filament", "broken")
_OXIDES = ("amorphous", "crystalline")
_TI_PHASES = ("auto", "hcp", "fcc")


@dataclass(frozen=True)
class DeviceSpec:
    """Geometry, disorder and vacancies of a TiN | HfO2 | Ti | TiN device (lengths in Angstrom).

    The defaults give a ~60-atom toy device (one TiN cell across, 4.24 x 4.24 Angstrom).

    Attributes:
        transverse_cells: TiN conventional cells along (y, z).
        transverse_angstrom: (Ly, Lz) in Angstrom; when given it overrides ``transverse_cells``
            (nearest whole number of TiN cells, the electrode strained to fit, at most
            ``max_strain``).
        tin_left_cells, tin_right_cells: TiN conventional cells along x (4.24 A, 2 planes each).
        hfo2_thickness_angstrom: oxide thickness (crystalline: rounded to whole 5.08 A cells).
        ti_thickness_angstrom: Ti thickness (rounded to whole atomic planes, at least one).
        oxide: "amorphous" (melt-quenched, default) or "crystalline" (fluorite).
        ti_phase: "auto", "hcp" or "fcc" (see the module docstring).
        hfo2_density_g_cm3: density of the amorphous oxide.
        melt_steps, quench_steps, relax_steps: melt-quench MD (1 fs steps) and FIRE steps of
            the amorphous oxide; all zero leaves the unrelaxed random packing.
        melt_temperature_k: melt temperature, kelvin.
        rattle_angstrom: standard deviation of a Gaussian displacement of every atom.
        interface_gap_angstrom: plane-to-plane distance at both oxide interfaces.
        vacancy_mode: "none", "random", "filament" or "broken".
        vacancy_density: fraction of O sites removed uniformly at random ("random": all O of
            the oxide; "filament"/"broken": the O outside the filament, a background).
        filament_radius_angstrom: filament radius at the TiN_left side of the oxide.
        filament_end_radius_angstrom: radius at the Ti side; None = same (a cylinder), else a
            cone (truncated, linear in x).
        filament_center: fractional (y, z) of the filament axis at the TiN side.
        filament_end_center: fractional (y, z) of the axis at the Ti side; None = same
            (straight), else a tilted (offset) axis.
        filament_vacancy_fraction: fraction of the O sites inside the filament that are removed.
        gap_angstrom: length along x of the intact oxide ("broken" only) that interrupts the
            filament.
        gap_side: where the gap is: "tin" (against TiN_left) or "ti" (against the Ti layer).
        min_distance_angstrom: smallest allowed interatomic distance; a device with a closer
            pair raises ValueError naming the pair.
        max_strain: largest allowed |strain| of any layer in any direction.
        seed: random seed.
    """

    transverse_cells: tuple[int, int] = (1, 1)
    transverse_angstrom: tuple[float, float] | None = None
    tin_left_cells: int = 2
    hfo2_thickness_angstrom: float = 12.0
    ti_thickness_angstrom: float = 8.0
    tin_right_cells: int = 2
    oxide: str = "amorphous"
    ti_phase: str = "auto"
    hfo2_density_g_cm3: float = 9.7
    melt_steps: int = 250
    quench_steps: int = 250
    relax_steps: int = 100
    melt_temperature_k: float = 4000.0
    rattle_angstrom: float = 0.03
    interface_gap_angstrom: float = 2.0
    vacancy_mode: str = "none"
    vacancy_density: float = 0.0
    filament_radius_angstrom: float = 3.0
    filament_end_radius_angstrom: float | None = None
    filament_center: tuple[float, float] = (0.5, 0.5)
    filament_end_center: tuple[float, float] | None = None
    filament_vacancy_fraction: float = 1.0
    gap_angstrom: float = 0.0
    gap_side: str = "tin"
    min_distance_angstrom: float = 1.6
    max_strain: float = 0.05
    seed: int = 0

    def __post_init__(self):
        _validate(self)

    def replace(self, **changes) -> DeviceSpec:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """The spec as a JSON string (tuples become lists)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DeviceSpec:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        for key in (
            "transverse_cells",
            "transverse_angstrom",
            "filament_center",
            "filament_end_center",
        ):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def paper_spec(**changes) -> DeviceSpec:
    """A device of the paper's size: 92.9 x 25.44 x 25.44 Angstrom, about 5,300 atoms.

    The paper's cell is 93.4 x 26.2 x 26.3 A with 5,268 atoms. Here: 6 x 6 TiN cells across
    (25.44 A, unstrained; 5 fluorite HfO2 cells also fit there, +0.16% strain); 5 TiN cells
    (21.2 A) on each side, 36 A of HfO2 and 14 A (6 planes) of hcp Ti. The split between the
    layers is an estimate that reproduces the paper's overall size and atom count.
    """
    base = DeviceSpec(
        transverse_cells=(6, 6),
        tin_left_cells=5,
        hfo2_thickness_angstrom=36.0,
        ti_thickness_angstrom=14.0,
        tin_right_cells=5,
    )
    return base.replace(**changes)


def _validate(spec: DeviceSpec) -> None:
    def need(cond, msg):
        if not cond:
            raise ValueError(f"DeviceSpec: {msg}")

    ny, nz = spec.transverse_cells
    need(
        int(ny) == ny and int(nz) == nz and ny >= 1 and nz >= 1,
        f"transverse_cells must be two positive integers, got {spec.transverse_cells}",
    )
    if spec.transverse_angstrom is not None:
        need(
            len(spec.transverse_angstrom) == 2 and all(v > 0 for v in spec.transverse_angstrom),
            f"transverse_angstrom must be two positive lengths, got {spec.transverse_angstrom}",
        )
    for name in ("tin_left_cells", "tin_right_cells"):
        value = getattr(spec, name)
        need(int(value) == value and value >= 1, f"{name} must be an integer >= 1, got {value}")
    for name in ("hfo2_thickness_angstrom", "ti_thickness_angstrom"):
        value = getattr(spec, name)
        need(value > 0, f"{name} must be positive, got {value}")
    need(spec.oxide in _OXIDES, f"oxide must be one of {_OXIDES}, got {spec.oxide!r}")
    need(
        spec.ti_phase in _TI_PHASES, f"ti_phase must be one of {_TI_PHASES}, got {spec.ti_phase!r}"
    )
    need(
        spec.hfo2_density_g_cm3 > 0,
        f"hfo2_density_g_cm3 must be positive, got {spec.hfo2_density_g_cm3}",
    )
    for name in ("melt_steps", "quench_steps", "relax_steps"):
        value = getattr(spec, name)
        need(int(value) == value and value >= 0, f"{name} must be an integer >= 0, got {value}")
    need(spec.melt_temperature_k > 0, "melt_temperature_k must be positive")
    need(spec.rattle_angstrom >= 0, f"rattle_angstrom must be >= 0, got {spec.rattle_angstrom}")
    need(
        spec.interface_gap_angstrom > 0,
        f"interface_gap_angstrom must be positive, got {spec.interface_gap_angstrom}",
    )
    need(
        spec.vacancy_mode in _VACANCY_MODES,
        f"vacancy_mode must be one of {_VACANCY_MODES}, got {spec.vacancy_mode!r}",
    )
    need(
        0.0 <= spec.vacancy_density <= 1.0,
        f"vacancy_density is a fraction of O sites in [0, 1], got {spec.vacancy_density}",
    )
    need(
        0.0 <= spec.filament_vacancy_fraction <= 1.0,
        f"filament_vacancy_fraction must be in [0, 1], got {spec.filament_vacancy_fraction}",
    )
    need(
        spec.filament_radius_angstrom > 0,
        f"filament_radius_angstrom must be positive, got {spec.filament_radius_angstrom}",
    )
    if spec.filament_end_radius_angstrom is not None:
        need(
            spec.filament_end_radius_angstrom >= 0,
            f"filament_end_radius_angstrom must be >= 0, got {spec.filament_end_radius_angstrom}",
        )
    need(spec.gap_angstrom >= 0, f"gap_angstrom must be >= 0, got {spec.gap_angstrom}")
    need(spec.gap_side in ("tin", "ti"), f"gap_side must be 'tin' or 'ti', got {spec.gap_side!r}")
    if spec.vacancy_mode == "broken":
        need(spec.gap_angstrom > 0, "a broken filament needs gap_angstrom > 0")
        need(
            spec.gap_angstrom < spec.hfo2_thickness_angstrom,
            f"gap_angstrom ({spec.gap_angstrom}) must be shorter than the oxide "
            f"({spec.hfo2_thickness_angstrom} Angstrom)",
        )
    need(spec.min_distance_angstrom > 0, "min_distance_angstrom must be positive")
    need(0 <= spec.max_strain < 1, f"max_strain must be in [0, 1), got {spec.max_strain}")
    need(
        int(spec.seed) == spec.seed and spec.seed >= 0,
        f"seed must be an integer >= 0, got {spec.seed}",
    )
