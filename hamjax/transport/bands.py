"""Band structure of a periodic lead and the Fermi level it sets.

A lead (:class:`hamjax.transport.Lead`) is a crystal along the transport axis with Bloch
Hamiltonian ``H(k) = h00 + h01 e^{ik} + h01^H e^{-ik}`` and overlap ``S(k)`` alike, k in
[0, 2 pi) per cell. Its bands ``E_n(k)`` count its open channels at an energy (band
crossings, :func:`hamjax.transport.open_channels`) and, filled with the electrons of one
cell, give the electrode's Fermi level: the chemical potential a device between two such
electrodes sees, in the energy reference of the calculation the blocks come from.

Plain NumPy/SciPy (small dense eigenproblems; not differentiated).
"""

from __future__ import annotations

import numpy as np

from hamjax.constants import BOLTZMANN_EV_K
from hamjax.occupations import band_fermi_level

__all__ = ["lead_bands", "lead_fermi_level"]


def lead_arrays(lead):
    """``(h00, h01, s00, s01)`` of a lead as 2-D NumPy arrays (identity ``s00`` and zero
    ``s01`` where the lead has no overlap)."""
    h00, h01 = np.atleast_2d(lead.onsite), np.atleast_2d(lead.hopping)
    b = h00.shape[0]
    s00 = np.eye(b) if lead.overlap_onsite is None else np.atleast_2d(lead.overlap_onsite)
    s01 = np.zeros((b, b)) if lead.overlap_hopping is None else np.atleast_2d(lead.overlap_hopping)
    return h00, h01, s00, s01


def lead_bands(lead, n_k: int = 96) -> np.ndarray:
    """Bands ``E_n(k)`` (eV) of a lead on ``k = 2 pi j / n_k``, ``j = 0 .. n_k - 1``.

    Returns:
        ``[n_k, b]`` ascending at every k.

    Raises:
        ValueError: ``S(k)`` is not positive definite at some k (a truncated overlap need
            not be), so the bands are undefined; the message names k and the eigenvalue.
    """
    import scipy.linalg

    h00, h01, s00, s01 = lead_arrays(lead)
    bands = []
    for k in np.linspace(0.0, 2.0 * np.pi, n_k, endpoint=False):
        phase = np.exp(1j * k)
        hk = h00 + h01 * phase + h01.conj().T / phase
        sk = s00 + s01 * phase + s01.conj().T / phase
        try:
            bands.append(scipy.linalg.eigh(hk, sk, eigvals_only=True))
        except np.linalg.LinAlgError:
            lowest = float(np.linalg.eigvalsh(sk)[0])
            raise ValueError(
                f"the lead's Bloch overlap S(k) is not positive definite at k = {k:.3f} "
                f"(lowest eigenvalue {lowest:.3g}), so its bands are undefined"
            ) from None
    return np.asarray(bands)


def lead_fermi_level(
    lead, electrons_per_cell: float, temperature: float = 300.0, n_k: int = 96
) -> float:
    """Fermi level (eV) of a lead holding ``electrons_per_cell`` (spin-degenerate bands).

    Solves ``(2 / n_k) sum_{n,k} f((E_n(k) - mu) / kT) = electrons_per_cell`` by bisection,
    with Fermi-Dirac ``f`` at ``temperature`` (kelvin; 0 fills the lowest states): the
    filling of :func:`hamjax.occupations.band_fermi_level` on the bands of :func:`lead_bands`.

    >>> import numpy as np
    >>> from hamjax.transport import Lead
    >>> chain = Lead(np.zeros((1, 1)), -np.ones((1, 1)))  # E(k) = -2 cos k
    >>> round(lead_fermi_level(chain, 1.0, temperature=0.0), 6)  # half filling: band centre
    0.0
    """
    kt = BOLTZMANN_EV_K * float(temperature)
    return band_fermi_level(lead_bands(lead, n_k), electrons_per_cell, kt)
