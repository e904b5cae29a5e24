"""Physical constants and unit conversions used throughout hamjax (CODATA 2018).

Every number with a unit in hamjax is converted here and nowhere else.
"""

HARTREE_EV = 27.211386245981
"""1 Hartree in electronvolts."""

BOHR_ANGSTROM = 0.529177210903
"""1 Bohr in Angstrom."""

CONDUCTANCE_QUANTUM_S = 7.748091729863649e-5
"""G0 = 2 e^2 / h in siemens (spin-degenerate conductance quantum)."""

ELEMENTARY_CHARGE_C = 1.602176634e-19
"""e in coulombs."""

PLANCK_EV_S = 4.135667696e-15
"""h in eV s."""

BOLTZMANN_EV_K = 8.617333262e-5
"""k_B in eV / K."""

AVOGADRO_PER_MOL = 6.02214076e23
"""N_A in 1 / mol (exact in the SI since 2019)."""

COULOMB_EV_ANGSTROM = 14.399645478425668
"""e^2 / (4 pi eps0) in eV Angstrom, from e and eps0."""

ACCELERATION_ANGSTROM_FS2 = 9.648533212331e-3
"""Acceleration in Angstrom / fs^2 of a mass of 1 amu under a force of 1 eV / Angstrom,
``e / u`` scaled (u = 1.66053906660e-27 kg, the atomic mass constant)."""
