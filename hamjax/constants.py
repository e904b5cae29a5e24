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
