"""The current of the VCM test devices on growing transverse k-grids.

A device cell periodic across the transport axis conducts through every transverse wave
vector: T(E) = sum_k w_k T(E, k), with H(k) = sum_R H(R) exp(2 pi i k.R) from the
image-resolved reference (:func:`hamjax.transport.transmission_kpoints`). Gamma alone gives
the TiN leads the bands of a 4.24 A wide wire, with gaps bulk TiN does not have. This script
computes, for every test device of a run of ``experiments/vcm.py``, the reference current on
the grids ``(1, n, n)``, the open channels of both leads at E_F at every k-point of each grid,
and the transport time per k-point, so that the grid of the experiment can be chosen where
the current has converged.

    python experiments/vcm_kpoints.py RUN CONFIG --grids 1 2 3 4 --json OUT.json

RUN is the run folder of ``experiments/vcm.py`` (its ``data/``), CONFIG the config it ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np


def lead_overlap_min_eigenvalue(lead, n_theta: int = 24) -> float:
    """Smallest eigenvalue of a lead's Bloch overlap ``S00 + S01 e^(i t) + S01^H e^(-i t)``
    along the transport axis over ``n_theta`` phases ``t`` in [0, pi]."""
    s00, s01 = np.asarray(lead.overlap_onsite), np.asarray(lead.overlap_hopping)
    return float(
        min(
            np.linalg.eigvalsh(s00 + s01 * np.exp(1j * t) + s01.conj().T * np.exp(-1j * t))[0]
            for t in np.linspace(0.0, np.pi, n_theta)
        )
    )


def lead_channels_per_k(images, kgrid, fermi_level_ev: float) -> list[dict]:
    """Open channels of the left and right lead at ``fermi_level_ev`` for every k-point of the
    (time-reversal reduced) ``kgrid``: ``[{"k", "weight", "left", "right",
    "lead_overlap_min_eigenvalue"}, ...]``."""
    from hamjax.transport.kpoints import bloch_matrix, time_reversal_reduce
    from hamjax.two_terminal import default_leads
    from hamjax.vcm import lead_channels

    kpoints, weights = time_reversal_reduce(kgrid)
    rows = []
    for k, w in zip(kpoints, weights, strict=True):
        h = np.asarray(bloch_matrix(images.hamiltonians, images.shifts, k))
        s = np.asarray(bloch_matrix(images.overlaps, images.shifts, k))
        left, right = default_leads(h, s, images.layers)
        at = np.array([fermi_level_ev])
        rows.append(
            {
                "k": [float(x) for x in k],
                "weight": float(w),
                "left": float(np.round(lead_channels(left, at)[0], 3)),
                "right": float(np.round(lead_channels(right, at)[0], 3)),
                # the channel count needs a positive definite Bloch overlap of the lead
                "lead_overlap_min_eigenvalue": min(
                    lead_overlap_min_eigenvalue(lead) for lead in (left, right)
                ),
            }
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder of experiments/vcm.py")
    parser.add_argument("config", type=Path, help="the config that run used")
    parser.add_argument("--grids", type=int, nargs="+", default=[1, 2, 3, 4], help="n of (1, n, n)")
    parser.add_argument("--devices", nargs="+", default=None, help="test devices (default: all)")
    parser.add_argument("--json", type=Path, required=True, help="output JSON")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from hamjax import vcm
    from hamjax.constants import HARTREE_EV
    from hamjax.io import dataset
    from hamjax.structures import A_TIN
    from hamjax.two_terminal import open_device_images

    config = vcm.load_config(args.config)
    names = args.devices or list(config.test_devices)
    result = {"run": str(args.run), "config": str(args.config), "devices": {}}
    for name in names:
        path = vcm.reference_file(args.run / "data", name)
        if not path.exists():
            parser.error(f"{path}: no reference of {name!r} (run the references stage first)")
        record = vcm.aligned({name: dataset.load(path)}, config)[name]
        if not record.image_resolved:
            parser.error(f"{path}: a Gamma-folded reference has no images for k-points")
        device = vcm.transport_device(record, config)
        fermi_ev = vcm.electrode_side(record, device, config)["fermi_level"] * HARTREE_EV
        images = open_device_images(
            record, cutoff=config.transport_cutoff_angstrom, lead_width=config.lead_cells * A_TIN
        )
        rows = []
        for n in args.grids:
            grid = (1, n, n)
            chosen = dataclasses.replace(config, transport_kgrid=grid)
            t0 = time.perf_counter()
            out = vcm.device_transport(
                record, chosen, fermi_ev, channels=False, device=device, images=images
            )
            seconds = time.perf_counter() - t0
            channels = lead_channels_per_k(images, grid, fermi_ev)
            rows.append(
                {
                    "kgrid": list(grid),
                    "n_kpoints_reduced": len(channels),
                    "current_A": out["current"],
                    "current_coarse_grid_A": out["current_coarse"],
                    "n_energies": len(out["energies"]),
                    "transport_s": seconds,
                    "seconds_per_kpoint": seconds / len(channels),
                    "max_dyson_residual": out["max_residual"],
                    "lead_channels_at_fermi": channels,
                    "mean_lead_channels_at_fermi": float(
                        sum(c["weight"] * min(c["left"], c["right"]) for c in channels)
                    ),
                }
            )
            print(
                f"{name:>12} k-grid {grid}: I_ref = {out['current']:.3e} A, "
                f"{len(channels)} k-points, {seconds:.1f} s, mean open channels at E_F "
                f"{rows[-1]['mean_lead_channels_at_fermi']:.2f}",
                flush=True,
            )
        result["devices"][name] = {
            "atoms": len(record.numbers),
            "fermi_level_eV": fermi_ev,
            "n_images": len(images.shifts),
            "grids": rows,
        }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
