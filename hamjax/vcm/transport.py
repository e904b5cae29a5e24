"""Transport through the VCM devices: each periodic record opened between its TiN ends.

:func:`transport_device` opens a record (leads = ``VCMConfig.lead_cells`` TiN cells at each
end); :func:`device_transport` computes T(E) on a window around a Fermi level, refined where
it moves the current, the current at the bias and the leads' open channels
(:func:`lead_channels`); :func:`transmission_data` writes the curves as JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from hamjax.structures import A_TIN
from hamjax.transport import current, open_channels, transmission, transmission_kpoints
from hamjax.transport.grid import refine_grid
from hamjax.two_terminal import open_device, open_device_images

if TYPE_CHECKING:  # for annotations only
    from hamjax.vcm.config import VCMConfig

__all__ = ["device_transport", "lead_channels", "transmission_data", "transport_device"]


def transport_device(record, config: VCMConfig):
    """The open two-terminal device of a periodic record (``two_terminal.open_device``)."""
    return open_device(
        record, cutoff=config.transport_cutoff_angstrom, lead_width=config.lead_cells * A_TIN
    )


def lead_channels(lead, energies) -> np.ndarray:
    """Open channels of a lead: from its bands, or (S(k) indefinite) its transmission."""
    try:
        return open_channels(lead, energies, method="bands")
    except ValueError:
        return open_channels(lead, energies, method="transmission", check=False)


def device_transport(
    record,
    config: VCMConfig,
    fermi_level_ev: float,
    *,
    channels: bool = True,
    device=None,
    images=None,
) -> dict:
    """T(E) on ``E_F +/- window``, the current at the bias, and (``channels``) the leads'
    open channels.

    ``lead_channels`` is the smaller of the two electrodes' open-channel counts
    (:func:`hamjax.transport.open_channels`) at about ten energies of the window and at E_F
    (``lead_channel_energies``): where it is 0 the electrode itself does not conduct (a gap
    of its Gamma-point band structure), and T(E) there is evanescent tunnelling whatever the
    device does.

    With ``config.refine_energies`` the uniform grid is refined where T(E) can move the
    current (:func:`hamjax.transport.grid.refine_grid`). ``current_coarse`` is the current
    on a coarser grid: after half the refinement when refining, else on every second
    energy. Resonances narrower than the grid spacing make the Landauer integral depend on
    the grid (demo Filament 1, reference: 2.4e-7, 3.0e-7, 4.3e-7, 9.7e-7, 7.8e-7 A at 64,
    32, 16, 8, 4 meV spacing), and the two currents' ratio shows whether the refinement is
    still moving it. It cannot see a resonance that the refinement has not found yet: on
    the default run's Filament 1 reference 120 refined energies read 0.99 half-way while
    23% low (``experiments/results/vcm_filament1_dense_grid.json``); at 480, 0.98 and 2.6%.

    ``device`` (:func:`transport_device`) and, with ``config.transport_kgrid``, ``images``
    (:func:`hamjax.two_terminal.open_device_images`) are the record opened, when the caller
    has them already.
    """
    if device is None:
        device = transport_device(record, config)
    kgrid = tuple(config.transport_kgrid)
    if kgrid == (1, 1, 1):
        images = None
    elif images is None:
        images = open_device_images(
            record, cutoff=config.transport_cutoff_angstrom, lead_width=config.lead_cells * A_TIN
        )
    energies = fermi_level_ev + np.linspace(
        -config.energy_window_ev, config.energy_window_ev, config.n_energies
    )
    residuals = []

    def transmission_at(e):
        if images is not None:
            result = transmission_kpoints(
                images.hamiltonians, images.overlaps, images.shifts, images.layers, e, kgrid
            )
            residuals.append(max(np.max(result.residual_left), np.max(result.residual_right)))
            return np.asarray(result.transmission)
        result = transmission(
            device.hamiltonian, device.overlap, device.layers, e, leads=device.lead_blocks
        )
        residuals.append(max(np.max(result.residual_left), np.max(result.residual_right)))
        return np.asarray(result.transmission)

    def landauer(e, t) -> float:
        return float(
            current(
                e, t, config.bias_volt, fermi_level=fermi_level_ev, temperature=config.temperature_k
            )
        )

    def refined(e, t, extra):
        return refine_grid(
            transmission_at,
            e,
            bias=config.bias_volt,
            fermi_level=fermi_level_ev,
            temperature=config.temperature_k,
            extra_points=extra,
            values=t,
        )

    t = transmission_at(energies)
    if config.refine_energies > 0:
        # refine_grid depends only on the grid and T so far: two calls are one refinement
        # with a look at the current half-way
        half = config.refine_energies // 2
        energies, t = refined(energies, t, half)
        coarse = landauer(energies, t)
        energies, t = refined(energies, t, config.refine_energies - half)
    else:
        coarse = landauer(energies[::2], t[::2])
    i = landauer(energies, t)
    if channels:
        # every few energies and at E_F: integers that change only at band edges
        grid = np.union1d(energies[:: max(1, len(energies) // 10)], [fermi_level_ev])
        open_ = np.minimum(*(lead_channels(lead, grid) for lead in device.leads()))
        at_fermi = float(np.round(open_[np.argmin(np.abs(grid - fermi_level_ev))], 3))
    else:
        grid, open_, at_fermi = None, None, None
    return {
        "device": device,
        "energies": energies,
        "transmission": t,
        "current": i,
        "current_coarse": coarse,
        "fermi_level": fermi_level_ev,
        "lead_channel_energies": grid,
        "lead_channels": open_,
        "lead_channels_at_fermi": at_fermi,
        "max_residual": float(max(residuals)),
        "kgrid": list(kgrid),
    }


def transmission_data(transport: Mapping[str, Mapping]) -> dict:
    """The curves of ``transmission.png`` as JSON-ready lists.

    Per test device and curve (``reference``, ``prediction`` and, where computed,
    ``prediction_reference_leads``): the energies (eV, on the energy zero the Hamiltonians
    were transported on), T(E), the curve's Fermi level (eV) and its currents (A) on the whole
    grid and on the coarser one; for the reference, the open channels of its leads at
    ``lead_channel_energies_eV``. ``prediction_leads`` names the leads of ``prediction``.
    """
    out = {}
    for name, curves in transport.items():
        out[name] = {"prediction_leads": curves["prediction_leads"]}
        for which, result in curves.items():
            if which == "prediction_leads":
                continue
            entry = {
                "fermi_level_eV": float(result["fermi_level"]),
                "current_A": float(result["current"]),
                "current_coarse_grid_A": float(result["current_coarse"]),
                "energies_eV": np.asarray(result["energies"]).tolist(),
                "transmission": np.asarray(result["transmission"]).tolist(),
            }
            if result.get("lead_channels") is not None:
                entry["lead_channel_energies_eV"] = np.asarray(
                    result["lead_channel_energies"]
                ).tolist()
                entry["lead_channels"] = np.asarray(result["lead_channels"]).tolist()
            out[name][which] = entry
    return out
