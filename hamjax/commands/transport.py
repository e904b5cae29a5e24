"""Transmission T(E) and Landauer current of a two-terminal device (NEGF, RGF).

Without an input file this runs an embedded example that can be checked by eye: a 1-D chain
(onsite 0, hopping -1 eV, 20 sites) with one impurity of +1 eV in the middle. Its exact
transmission is T(E) = (4 - E^2) / (5 - E^2) inside the band |E| < 2 eV (T(0) = 0.8,
T(+-1) = 0.75) and 0 outside; the computed and exact values are printed side by side.

Input: an .npz file with these arrays (energies in eV):

  hamiltonian     [n, n] float or complex, Hermitian, eV
  overlap         [n, n] Hermitian positive definite (optional; identity if absent)
  layers          [n_layers] int, principal-layer sizes in orbitals along the transport
                  axis, summing to n; H and S may couple only neighbouring layers. Layer 0
                  repeated (cell coupling H[layer 0, layer 1]) is the left lead, layer N-1
                  (cell coupling H[layer N-2, layer N-1]) the right lead.
  positions       [n_atoms] (or [n_atoms, 3], x used) Angstrom and
  orbital_counts  [n_atoms] int: used to derive `layers` when it is absent (atoms ordered
                  along the transport axis)
  fermi_level     scalar eV (optional; --fermi-level overrides it, default 0)

A device periodic across the transport axis is given by its image matrices instead, with
--kgrid 1 N2 N3 (a Monkhorst-Pack grid of transverse k-points, hamjax.transport.
transmission_kpoints); T(E) and the current are then k-averaged, per transverse cell:

  hamiltonians    [n_R, n, n] eV, H(R) couples the home cell to the cell shifted by R;
                  H(-R) = H(R)^T (conjugate transpose if complex)
  shifts          [n_R, 3] int transverse lattice shifts R, component 0 (the transport
                  axis) zero; couplings along the transport axis sit inside each H(R)
  overlaps        [n_R, n, n] S(R) (optional; S(k) = 1 if absent)
  layers (or positions and orbital_counts) and fermi_level as above

Output in --out: transport.json (inputs, current in amperes, T(E); with --kgrid also
kpoints, kpoint_weights, transmission_k [n_k][n_E] and the smallest eigenvalue of S(k) per
k-point), transmission.csv (energy_ev, transmission, spectral_current_a_per_ev,
residual_left, residual_right; residuals the largest over k-points) and transmission.png
(T(E) on a log scale, bias window [mu_R, mu_L] shaded). Convention: mu_L = E_F + V/2,
mu_R = E_F - V/2; I > 0 when electrons flow from left to right.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

EXAMPLE_SITES = 20
EXAMPLE_HOPPING_EV = 1.0
EXAMPLE_IMPURITY_EV = 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "input", nargs="?", type=Path, help="device .npz (layout above); default: the example"
    )
    parser.add_argument("--out", type=Path, default=Path("transport_out"), help="output folder")
    parser.add_argument(
        "--energies",
        nargs=3,
        type=float,
        metavar=("START", "STOP", "NUM"),
        help="energy grid in eV (default: -3 3 601 around the Fermi level)",
    )
    parser.add_argument("--bias", type=float, default=0.5, help="bias V in volts (default 0.5)")
    parser.add_argument(
        "--temperature", type=float, default=300.0, help="lead temperature in kelvin"
    )
    parser.add_argument("--fermi-level", type=float, help="E_F in eV (default: file or 0)")
    parser.add_argument("--eta", type=float, default=1e-5, help="lead broadening in eV")
    parser.add_argument(
        "--potential-drop",
        action="store_true",
        help="add a linear potential drop +V/2 -> -V/2 across the device layers",
    )
    parser.add_argument("--chunk-size", type=int, help="energies per compiled chunk")
    parser.add_argument(
        "--kgrid",
        nargs=3,
        type=int,
        metavar=("N1", "N2", "N3"),
        help="transverse k-point grid for an .npz of image matrices (N1 = 1: transport axis)",
    )
    parser.add_argument(
        "--write-example", type=Path, metavar="NPZ", help="write the example as an .npz and exit"
    )


def example_device() -> dict[str, np.ndarray]:
    """The embedded example: chain with an impurity, in the npz layout."""
    n, t = EXAMPLE_SITES, EXAMPLE_HOPPING_EV
    h = -t * (np.eye(n, k=1) + np.eye(n, k=-1))
    h[n // 2, n // 2] = EXAMPLE_IMPURITY_EV
    return {
        "hamiltonian": h,
        "overlap": np.eye(n),
        "layers": np.ones(n, dtype=np.int64),
        "fermi_level": np.array(0.0),
    }


def example_exact_transmission(energies: np.ndarray) -> np.ndarray:
    """T(E) = (4t^2 - E^2) / (4t^2 - E^2 + eps^2) inside the band, 0 outside."""
    open_band = np.maximum(4 * EXAMPLE_HOPPING_EV**2 - np.asarray(energies) ** 2, 0.0)
    return open_band / (open_band + EXAMPLE_IMPURITY_EV**2)


def _load(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    from hamjax.io.files import read_npz  # deferred: hamjax.io loads ase, not for --help

    arrays = read_npz(path, what="device file")  # a damaged file: an error naming it
    if "hamiltonian" not in arrays and "hamiltonians" not in arrays:
        raise ValueError(
            f"{path}: missing array 'hamiltonian' (or 'hamiltonians' and 'shifts' for image "
            f"matrices; keys: {sorted(arrays)})"
        )
    if "hamiltonians" in arrays and "shifts" not in arrays:
        raise ValueError(f"{path}: image matrices 'hamiltonians' need their 'shifts' [n_R, 3]")
    if "layers" not in arrays and not {"positions", "orbital_counts"} <= arrays.keys():
        raise ValueError(
            f"{path}: give 'layers' (principal-layer sizes) or both 'positions' and "
            f"'orbital_counts' to derive them"
        )
    return arrays


def _device(arrays, path_label: str):
    from hamjax.transport import principal_layers

    images = "hamiltonians" in arrays
    key = "hamiltonians" if images else "hamiltonian"
    h = np.asarray(arrays[key])
    s_key = "overlaps" if images else "overlap"
    s = np.asarray(arrays[s_key]) if s_key in arrays else None
    if not np.issubdtype(h.dtype, np.number) or h.dtype == bool:
        raise ValueError(f"{path_label}: '{key}' must be numeric, got {h.dtype}")
    if images and h.ndim != 3:
        raise ValueError(f"{path_label}: 'hamiltonians' must be [n_R, n, n], got {h.shape}")
    if "layers" in arrays:
        layers = np.asarray(arrays["layers"])
        if layers.ndim != 1 or not np.issubdtype(layers.dtype, np.integer):
            raise ValueError(f"{path_label}: 'layers' must be a 1-D integer array")
        layers = tuple(int(b) for b in layers)
    elif images:  # the sparsity of all images together
        pattern_s = None if s is None else np.abs(s).sum(0)
        layers = principal_layers(
            arrays["positions"], arrays["orbital_counts"], np.abs(h).sum(0), pattern_s
        )
    else:
        layers = principal_layers(arrays["positions"], arrays["orbital_counts"], h, s)
    return h, s, layers


def _image_potential_drop(hamiltonians, overlaps, shifts, layers, bias):
    """The linear potential drop of :func:`hamjax.transport.linear_potential_drop` on every
    image: ``H_ij(R) += S_ij(R) (U_i + U_j) / 2`` (U depends on the layer only, which a
    transverse shift keeps); without overlaps only ``H(0)`` changes."""
    from hamjax.transport import linear_potential_drop

    out = np.array(hamiltonians, dtype=np.result_type(hamiltonians, np.float64))
    for r, shift in enumerate(np.asarray(shifts)):
        if overlaps is not None:
            out[r] = linear_potential_drop(out[r], overlaps[r], layers, bias)
        elif not np.any(shift):
            out[r] = linear_potential_drop(out[r], None, layers, bias)
    return out


def _write_png(path, energies, t, mu_l, mu_r, exact=None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    floor = 1e-12
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    ax.axvspan(min(mu_l, mu_r), max(mu_l, mu_r), color="tab:orange", alpha=0.2, label="bias window")
    ax.semilogy(energies, np.maximum(t, floor), color="tab:blue", label="T(E), RGF")
    if exact is not None:
        ax.semilogy(energies, np.maximum(exact, floor), "k--", lw=1, label="exact")
    ax.set_xlabel("E (eV)")
    ax.set_ylabel("T(E)")
    ax.set_ylim(floor, max(2.0, 2 * float(np.max(t))))
    ax.legend(loc="center right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run(args: argparse.Namespace) -> int:
    import jax

    from hamjax.transport import (
        chemical_potentials,
        current,
        linear_potential_drop,
        spectral_current,
        transmission,
        transmission_kpoints,
    )

    if args.write_example is not None:
        np.savez(args.write_example, **example_device())
        print(f"wrote {args.write_example}")
        return 0
    is_example = args.input is None
    if is_example:
        arrays, label = example_device(), "embedded example"
        print(
            f"embedded example: chain of {EXAMPLE_SITES} sites, hopping -{EXAMPLE_HOPPING_EV} "
            f"eV, impurity +{EXAMPLE_IMPURITY_EV} eV at site {EXAMPLE_SITES // 2}"
        )
    else:
        arrays, label = _load(args.input), str(args.input)
    fermi = args.fermi_level
    if fermi is None:
        fermi = float(arrays["fermi_level"]) if "fermi_level" in arrays else 0.0
    if args.energies is None:
        start, stop, num = fermi - 3.0, fermi + 3.0, 601
    else:
        start, stop, num = args.energies
    if not (math.isfinite(start) and math.isfinite(stop) and stop > start and num >= 2):
        raise ValueError(f"--energies needs START < STOP and NUM >= 2, got {start} {stop} {num}")
    if num != int(num):
        raise ValueError(f"--energies NUM must be an integer, got {num}")
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0 kelvin, got {args.temperature}")
    if not args.eta > 0:
        raise ValueError(f"--eta must be positive, got {args.eta}")
    energies = np.linspace(start, stop, int(num))
    images = "hamiltonians" in arrays
    progress = sys.stderr.isatty()  # no progress bars in logs and pipes
    if images and args.kgrid is None:
        raise ValueError(
            f"{label}: image matrices ('hamiltonians', 'shifts') need --kgrid 1 N2 N3 "
            "(transverse k-points; 1 1 1 for Gamma only)"
        )
    if args.kgrid is not None and not images:
        raise ValueError(
            f"{label}: --kgrid needs an .npz with image matrices 'hamiltonians' and 'shifts' "
            "(one [n, n] matrix per transverse lattice shift)"
        )

    try:
        h, s, layers = _device(arrays, label)
        if images:
            shifts = np.asarray(arrays["shifts"])
            if args.potential_drop:
                if shifts.ndim != 2 or shifts.shape[1:] != (3,):
                    raise ValueError(f"shifts must be [n_R, 3], got shape {shifts.shape}")
                h = _image_potential_drop(h, s, shifts, layers, args.bias)
            t0 = time.perf_counter()
            kresult = transmission_kpoints(
                h,
                s,
                shifts,
                layers,
                energies,
                tuple(args.kgrid),
                eta=args.eta,
                chunk_size=args.chunk_size,
                progress=progress,
            )
            residual_left = np.max(np.asarray(kresult.residual_left), axis=0)
            residual_right = np.max(np.asarray(kresult.residual_right), axis=0)
            result = (kresult.transmission, residual_left, residual_right)
        else:
            kresult = None
            if args.potential_drop:
                h = linear_potential_drop(h, s, layers, args.bias)
            t0 = time.perf_counter()
            result = transmission(
                h, s, layers, energies, eta=args.eta, chunk_size=args.chunk_size, progress=progress
            )
    except ValueError as err:
        raise ValueError(f"{label}: {err}") from err
    seconds = time.perf_counter() - t0
    t, residual_left, residual_right = (np.asarray(x) for x in result)
    amps = float(current(energies, t, args.bias, fermi_level=fermi, temperature=args.temperature))
    density = np.asarray(
        spectral_current(energies, t, args.bias, fermi_level=fermi, temperature=args.temperature)
    )
    mu_l, mu_r = (float(x) for x in chemical_potentials(args.bias, fermi))

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "transmission.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            [
                "energy_ev",
                "transmission",
                "spectral_current_a_per_ev",
                "residual_left",
                "residual_right",
            ]
        )
        for row in zip(
            energies,
            t,
            density,
            residual_left,
            residual_right,
            strict=True,
        ):
            writer.writerow([f"{x:.12g}" for x in row])
    summary = {
        "input": label,
        "n_orbitals": int(h.shape[-1]),
        "layers": list(layers),
        "bias_v": args.bias,
        "temperature_k": args.temperature,
        "fermi_level_ev": fermi,
        "mu_left_ev": mu_l,
        "mu_right_ev": mu_r,
        "eta_ev": args.eta,
        "potential_drop": bool(args.potential_drop),
        "current_a": amps,
        "max_residual_left": float(np.max(residual_left)),
        "max_residual_right": float(np.max(residual_right)),
        "seconds": seconds,
        "jax_version": jax.__version__,
        "device": str(jax.devices()[0]),
        "energies_ev": energies.tolist(),
        "transmission": t.tolist(),
    }
    if kresult is not None:
        summary.update(
            {
                "kgrid": [int(n) for n in args.kgrid],
                "n_images": int(h.shape[0]),
                "shifts": np.asarray(arrays["shifts"]).astype(int).tolist(),
                "kpoints": np.asarray(kresult.kpoints).tolist(),
                "kpoint_weights": np.asarray(kresult.weights).tolist(),
                "overlap_min_eigenvalue": np.asarray(kresult.overlap_min_eigenvalue).tolist(),
                "transmission_k": np.asarray(kresult.transmission_k).tolist(),
            }
        )
    exact = None
    if is_example:
        exact = example_exact_transmission(energies)
        summary["exact_transmission"] = exact.tolist()
        summary["exact_current_a"] = _example_exact_current(args.bias, fermi, args.temperature)
    (out / "transport.json").write_text(json.dumps(summary, indent=1))
    _write_png(out / "transmission.png", energies, t, mu_l, mu_r, exact)

    size = f"{h.shape[-1]} orbitals, {len(layers)} layers"
    if kresult is None:
        print(f"{len(energies)} energies in {seconds:.2f} s ({size})")
    else:
        n_k = len(kresult.kpoints)
        print(
            f"{len(energies)} energies x {n_k} k-points (grid {' x '.join(map(str, args.kgrid))}"
            f", {h.shape[0]} images) in {seconds:.2f} s ({size}); T(E) averaged over k-points, "
            "per transverse cell"
        )
        print("   E (eV)   T(E) k-averaged")
        for k in np.unique(np.linspace(0, len(energies) - 1, min(9, len(energies))).astype(int)):
            print(f"  {energies[k]:7.3f}   {t[k]:10.6f}")
    if is_example:
        print("   E (eV)   T computed   T exact")
        for e in (-2.5, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.5):
            k = int(np.argmin(np.abs(energies - e)))
            print(f"  {energies[k]:7.3f}   {t[k]:10.6f}   {exact[k]:8.6f}")
    print(
        f"current at {args.bias} V, {args.temperature} K, E_F = {fermi} eV: {amps * 1e6:.6f} uA",
        end="",
    )
    if is_example:
        print(f" (exact {summary['exact_current_a'] * 1e6:.6f} uA)")
    else:
        print()
    print(f"wrote {out / 'transport.json'}, {out / 'transmission.csv'}, {out / 'transmission.png'}")
    return 0


def _example_exact_current(bias: float, fermi: float, temperature: float) -> float:
    """Exact current of the example: adaptive quadrature of the exact T(E) (amperes)."""
    from scipy.integrate import quad

    from hamjax.constants import BOLTZMANN_EV_K, CONDUCTANCE_QUANTUM_S

    mu_l, mu_r = fermi + bias / 2, fermi - bias / 2
    band = 2 * EXAMPLE_HOPPING_EV

    def window(e):
        if temperature == 0:
            return float(min(mu_l, mu_r) < e < max(mu_l, mu_r)) * math.copysign(1, bias)
        kt = BOLTZMANN_EV_K * temperature
        return 0.5 * (math.tanh((e - mu_r) / (2 * kt)) - math.tanh((e - mu_l) / (2 * kt)))

    def integrand(e):
        t = (band**2 - e**2) / (band**2 - e**2 + EXAMPLE_IMPURITY_EV**2)
        return t * window(e)

    points = [p for p in (mu_l, mu_r) if -band < p < band]
    value, _ = quad(integrand, -band, band, points=points or None, limit=200, epsabs=1e-14)
    return CONDUCTANCE_QUANTUM_S * value
