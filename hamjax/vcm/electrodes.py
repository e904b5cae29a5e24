"""The VCM devices' electrodes: their Fermi level, and each Hamiltonian aligned on it.

A device between two large metallic electrodes has the electrodes' Fermi level: charge the
device region gains or loses (vacancy donors, the model's errors) flows to the electrodes'
reservoir without moving it. A periodic Gamma-point cell has no reservoir: filling its total
electron count (:func:`fermi_level_by_count`) moves E_F with every donor in the small device
region. Here instead E_F is set so that the electrode atoms (the lead cells of the open
device, :func:`electrode_atoms`) keep their Mulliken population, the reference SCF's own
(:func:`electrode_population` at the SCF's chemical potential and electronic temperature),
at the transport temperature (:func:`electrode_fermi_level`); for the prediction, the same
population in the predicted levels. For a bulk crystal whose atoms are all electrode this
is :func:`fermi_level_by_count`.

The Fermi-level arithmetic is :mod:`hamjax.occupations`'; this module says which atoms are
the electrodes and which temperatures and populations the experiment uses.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import scipy.linalg

from hamjax.constants import BOLTZMANN_EV_K, HARTREE_EV
from hamjax.occupations import (
    count_fermi_level,
    electron_count,
    mulliken_levels,
    population_fermi_level,
)
from hamjax.vcm.transport import transport_device

if TYPE_CHECKING:  # for annotations only
    from hamjax.vcm.config import VCMConfig

__all__ = [
    "align_to_electrodes",
    "aligned",
    "electrode_atoms",
    "electrode_fermi_level",
    "electrode_levels",
    "electrode_population",
    "electrode_side",
    "fermi_level_by_count",
]

#: Mulliken population of the electrode atoms (:func:`electrode_levels`) with the levels
#: filled Fermi-Dirac at a Fermi level and temperature (Hartree): for a reference, its SCF's
#: chemical potential ``record.fermi_level`` and electronic temperature
#: ``metadata["electronic_temperature_hartree"]``, its own SCF state.
electrode_population = electron_count

#: Fermi level (Hartree) at which the electrode atoms (:func:`electrode_levels`) hold a
#: population at a temperature (Hartree); see the module's description.
electrode_fermi_level = population_fermi_level


def electrode_atoms(device) -> np.ndarray:
    """Indices of the electrode atoms of an open device (:func:`transport_device`): those in
    its first and last principal layer, the lead cells."""
    last = device.atom_layer.max()
    return np.flatnonzero((device.atom_layer == 0) | (device.atom_layer == last))


def electrode_levels(record, atoms: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gamma levels of H, S (Hartree) and each level's Mulliken weight on ``atoms``.

    One generalised eigendecomposition (:func:`hamjax.occupations.mulliken_levels`);
    :func:`electrode_population` and :func:`electrode_fermi_level` work from its result.
    """
    off = record.orbital_offsets
    orbitals = np.concatenate([np.arange(off[a], off[a + 1]) for a in np.asarray(atoms)])
    return mulliken_levels(record.to_dense("hamiltonian"), record.to_dense("overlap"), orbitals)


def fermi_level_by_count(record, n_electrons: float, temperature_hartree: float) -> float:
    """Fermi level (Hartree) that puts ``n_electrons`` into the Gamma-point levels of H, S.

    Fermi-Dirac filling (two electrons per level) at ``temperature_hartree``, or the mid-gap
    when the gap is large on that scale (:func:`hamjax.occupations.count_fermi_level`).

    Neither this nor the chemical potential of the reference's SCF is the level transport
    uses (:func:`electrode_fermi_level`). The SCF's chemical potential belongs to its Fermi
    smearing (kT = 0.03-0.06 Ha, 0.8-1.6 eV, needed to converge metallic TiN), and
    with the TiN density of states, much larger above E_F (Ti d) than below (N p), it sits
    about 1 eV low, in the p-d pseudogap where the TiN electrodes have no open channel
    (96-atom bulk TiN, GFN1-xTB at kT = 0.03 Ha: SCF chemical potential -8.16 eV, the
    216th of 432 levels -7.32 eV with 114 levels within 0.5 eV of it, 9 of the former).
    """
    levels = scipy.linalg.eigh(
        record.to_dense("hamiltonian"), record.to_dense("overlap"), eigvals_only=True
    )
    return count_fermi_level(levels, n_electrons, temperature_hartree)


def electrode_side(record, device, config: VCMConfig) -> dict:
    """The electrode side of a reference: the lead-cell atoms of its open ``device``, its
    Gamma levels with their Mulliken weight on them, their population in the reference's
    SCF, and the Fermi level (Hartree) that holds it at ``config.temperature_k``."""
    atoms = electrode_atoms(device)
    levels, weights = electrode_levels(record, atoms)
    population = electrode_population(
        levels, weights, record.fermi_level, record.metadata["electronic_temperature_hartree"]
    )
    kt_hartree = BOLTZMANN_EV_K * config.temperature_k / HARTREE_EV
    return {
        "atoms": atoms,
        "levels": levels,
        "population": population,
        "kt_hartree": kt_hartree,
        "fermi_level": electrode_fermi_level(levels, weights, population, kt_hartree),
    }


def aligned(records: Mapping, config: VCMConfig) -> dict:
    """``records`` (name -> record) on the experiment's energy zero: each aligned to its
    electrodes' Fermi level (:func:`align_to_electrodes`) where the config asks for it."""
    if not config.align_to_electrode_fermi_level:
        return dict(records)
    return {name: align_to_electrodes(r, config)[0] for name, r in records.items()}


def align_to_electrodes(record, config: VCMConfig):
    """The record with its energy zero at its electrodes' Fermi level: ``H - E_F S``.

    A periodic cell's Hamiltonian has an arbitrary constant potential: the Ewald convention
    sets the cell's average potential to zero, so two devices with the same TiN electrodes
    but different vacancy patterns in the oxide have their electrode levels eV apart (demo
    devices, GFN1-xTB: electrode Fermi levels -6.6 eV for the random-vacancy devices,
    -5.5 eV with a filament). In GFN1-xTB (as in any Kohn-Sham H in a non-orthogonal basis)
    a constant potential ``c`` enters as ``H + c S``, off-diagonal blocks included. A local
    model cannot see that constant, so unaligned targets disagree with each other by up to
    ``1 eV x S``; aligned on the electrodes' Fermi level (:func:`electrode_fermi_level`, the
    physical common level of devices between the same metal contacts), they do not. The
    generalised eigenvalues shift by ``-E_F`` and nothing else changes.

    Returns:
        ``(aligned, fermi_level)``: the shifted record (its ``fermi_level``, the SCF's
        chemical potential, shifted alike; ``metadata["electrode_fermi_level_hartree"]``
        holds the shift) and the electrode Fermi level of the input in Hartree.
    """
    fermi = electrode_side(record, transport_device(record, config), config)["fermi_level"]
    metadata = dict(record.metadata)
    metadata["electrode_fermi_level_hartree"] = (
        metadata.get("electrode_fermi_level_hartree", 0.0) + fermi
    )
    aligned = record.replace(
        hamiltonian=record.hamiltonian - fermi * record.overlap,
        fermi_level=record.fermi_level - fermi,
        metadata=metadata,
    )
    return aligned, fermi
