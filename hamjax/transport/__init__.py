"""Differentiable NEGF transport: lead self-energies, RGF transmission, Landauer current.

The transport API takes H in eV, energies in eV, bias in volts, temperature in kelvin and
returns currents in amperes; everything inside is complex128 (enable float64 in the entry
point: ``jax.config.update("jax_enable_x64", True)``).

- :func:`transmission` — T(E) of a two-terminal device from H, S and principal layers
  (NumPy, scipy.sparse or JAX input; jit/grad/jvp with static layers).
- :func:`transmission_kpoints` — T(E) per transverse cell of a device periodic across the
  transport axis, averaged over transverse k-points (image matrices H(R), S(R)).
- :func:`open_channels` — number of open channels of a periodic lead (its own T(E)).
- :func:`lead_bands`, :func:`lead_fermi_level` — a lead's bands and the Fermi level its
  electrons set.
- :func:`current`, :func:`spectral_current` — Landauer current with ``mu_L,R = E_F +/- V/2``.
- :func:`linear_potential_drop` — add a linear bias drop ``S_ij (U_i + U_j) / 2`` to H.
- :func:`principal_layers` — layer sizes from atom order and the sparsity of H and S.
- :func:`self_energy`, :func:`surface_green_function` — one lead, one energy.
- :func:`check_device` — the input checks :func:`transmission` runs.
"""

from hamjax.transport.bands import lead_bands, lead_fermi_level
from hamjax.transport.current import (
    chemical_potentials,
    current,
    fermi_dirac,
    layer_potentials,
    linear_potential_drop,
    spectral_current,
)
from hamjax.transport.kpoints import (
    KPointTransmission,
    bloch_matrix,
    monkhorst_pack,
    time_reversal_reduce,
    transmission_kpoints,
)
from hamjax.transport.layers import check_device, principal_layers
from hamjax.transport.rgf import (
    DEFAULT_ETA,
    RESIDUAL_TOLERANCE,
    Lead,
    TransmissionResult,
    open_channels,
    transmission,
)
from hamjax.transport.surface import self_energy, surface_green_function

__all__ = [
    "DEFAULT_ETA",
    "RESIDUAL_TOLERANCE",
    "Lead",
    "TransmissionResult",
    "transmission",
    "KPointTransmission",
    "transmission_kpoints",
    "monkhorst_pack",
    "time_reversal_reduce",
    "bloch_matrix",
    "open_channels",
    "lead_bands",
    "lead_fermi_level",
    "current",
    "spectral_current",
    "chemical_potentials",
    "fermi_dirac",
    "layer_potentials",
    "linear_potential_drop",
    "principal_layers",
    "check_device",
    "self_energy",
    "surface_green_function",
]
