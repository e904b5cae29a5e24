"""Valence-change-memory devices: TiN | HfO2 | Ti | TiN stacks with oxygen vacancies.

>>> from hamjax.structures import DeviceSpec, build_device
>>> atoms = build_device(DeviceSpec(oxide="crystalline", transverse_cells=(6, 6), seed=1))

See :mod:`hamjax.structures.device` for the lattice matching and the records on the atoms,
and :mod:`hamjax.structures.amorphous` for how the amorphous oxide is made.
"""

from hamjax.structures.amorphous import AmorphousSettings, amorphous_hfo2_slab
from hamjax.structures.device import (
    A_HFO2,
    A_TI_HCP,
    A_TIN,
    C_TI_HCP,
    REGIONS,
    DeviceSpec,
    build_device,
    check_min_distance,
    clear_oxide_cache,
    paper_spec,
)
from hamjax.structures.output import plot_device, read_device_extxyz, write_device_extxyz

__all__ = [
    "A_HFO2",
    "A_TIN",
    "A_TI_HCP",
    "C_TI_HCP",
    "REGIONS",
    "AmorphousSettings",
    "DeviceSpec",
    "amorphous_hfo2_slab",
    "build_device",
    "check_min_distance",
    "clear_oxide_cache",
    "paper_spec",
    "plot_device",
    "read_device_extxyz",
    "write_device_extxyz",
]
