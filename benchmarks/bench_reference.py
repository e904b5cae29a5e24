"""tblite reference cost against device size, with and without a preloaded OpenBLAS.

Every (size, BLAS) point runs in its own child process (``hamjax.reference.worker``), so the
peak resident memory (``getrusage`` ``ru_maxrss``) belongs to that calculation alone and the
BLAS choice is made when the process starts (``LD_PRELOAD``). One JSON line per point:

    python benchmarks/bench_reference.py --cells 1x1 2x2 3x3 4x4 --timeout-s 900 \
        --output bench_reference.jsonl

Devices come from :func:`hamjax.structures.build_device` (amorphous HfO2, random vacancies);
``--cells NyxNz`` sets the transverse TiN cells (57 atoms per cell with the default layer
thicknesses). Points without OpenBLAS are run only up to ``--max-atoms-reference`` atoms
(the bundled reference BLAS is several times slower). The machine load average is recorded
before and after each point; timings on a shared machine are only as good as that load.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np


def _round(value, digits=2):
    return None if value is None else round(float(value), digits)


def _parse_cells(text: str) -> tuple[int, int]:
    try:
        ny, nz = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"cells must look like 3x3, got {text!r}") from None
    return ny, nz


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", nargs="+", type=_parse_cells, default=[(1, 1), (2, 2)])
    parser.add_argument("--vacancy-density", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--blas", choices=("both", "openblas", "reference"), default="both")
    parser.add_argument("--max-atoms-reference", type=int, default=250)
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="tblite setting (JSON value), e.g. --set mixer_damping=0.05",
    )
    parser.add_argument("--output", default=None, help="append JSON lines to this file")
    args = parser.parse_args(argv)

    import jax

    from hamjax.reference.blas import find_openblas
    from hamjax.reference.tblite import tblite_version
    from hamjax.reference.worker import compute_in_subprocess
    from hamjax.structures import DeviceSpec, build_device

    settings = {}
    for item in args.set:
        key, value = item.split("=", 1)
        try:
            settings[key] = json.loads(value)
        except json.JSONDecodeError:
            settings[key] = value
    library = find_openblas()
    modes = {"both": [True, False], "openblas": [True], "reference": [False]}[args.blas]
    if library is None and True in modes:
        print(
            "# no system OpenBLAS found; running the bundled reference BLAS only", file=sys.stderr
        )
        modes = [False]
    common = {
        "bench": "tblite_reference",
        "tblite_version": tblite_version(),
        "jax_version": jax.__version__,
        "device": "cpu (tblite is CPU-only)",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "openblas_library": library,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS"),
    }
    sink = open(args.output, "a") if args.output else None  # noqa: SIM115
    for cells in args.cells:
        spec = DeviceSpec(
            transverse_cells=cells,
            vacancy_mode="random",
            vacancy_density=args.vacancy_density,
            seed=args.seed,
        )
        t0 = time.perf_counter()
        atoms = build_device(spec)
        build_s = time.perf_counter() - t0
        for openblas in modes:
            if not openblas and len(atoms) > args.max_atoms_reference:
                continue
            load_before = os.getloadavg()
            result = compute_in_subprocess(
                atoms,
                None,
                settings=settings,
                openblas=openblas,
                timeout_s=args.timeout_s,
                name=f"cells{cells}",
            )
            timing = result
            if result.get("status") == "not-converged" and result.get("attempts"):
                timing = result["attempts"][-1]  # a cycle-limited timing run
            cycles = timing.get("scf_cycles")
            wall = timing.get("wall_time_s")
            scf_s = timing.get("scf_s")
            line = {
                **common,
                "transverse_cells": list(cells),
                "cell_angstrom": np.round(atoms.cell.lengths(), 3).tolist(),
                "n_atoms": len(atoms),
                "formula": atoms.get_chemical_formula(),
                "build_s": round(build_s, 2),
                "openblas": bool(openblas and result.get("openblas_preload")),
                "status": result.get("status"),
                "n_orbitals": result.get("n_orbitals"),
                "scf_cycles": cycles,
                "attempts": result.get("n_attempts") or len(result.get("attempts", [])) or None,
                "tblite_wall_s": None if wall is None else round(wall, 2),
                "process_wall_s": round(result.get("process_wall_time_s", float("nan")), 2),
                "setup_s": _round(timing.get("setup_s")),
                "scf_s": _round(scf_s),
                "post_scf_s": _round(timing.get("post_scf_s")),
                "s_per_cycle": None if not (scf_s and cycles) else round(scf_s / cycles, 3),
                "peak_rss_mib": None
                if result.get("peak_rss_mib") is None
                else round(result["peak_rss_mib"], 1),
                "fermi_level_hartree": result.get("fermi_level_hartree"),
                "total_energy_hartree": result.get("total_energy_hartree"),
                "settings": result.get("settings") or settings,
                "load_avg_before": [round(v, 2) for v in load_before],
                "load_avg_after": [round(v, 2) for v in os.getloadavg()],
                "error": (result.get("error") or "")[-300:] or None,
            }
            text = json.dumps(line)
            print(text, flush=True)
            if sink:
                sink.write(text + "\n")
                sink.flush()
    if sink:
        sink.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
