"""Build time of VCM devices against atom count (JSON lines on stdout).

Each size is built from scratch (the melt-quench of the amorphous oxide included, the oxide
cache cleared first) and then again with a different vacancy layout, which reuses the kept
oxide: the difference is the cost of the oxide. The crystalline-oxide build of the same
geometry, where it fits, is the baseline measured in the same run.

    python benchmarks/bench_structures.py                 # toy, 300, 1000, paper
    python benchmarks/bench_structures.py --sizes toy 300 --repeat 3
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import time

import numpy as np

from hamjax.structures import DeviceSpec, build_device, clear_oxide_cache, paper_spec

SIZES = {
    "toy": DeviceSpec(),
    "300": DeviceSpec(transverse_cells=(2, 2), hfo2_thickness_angstrom=20.0),
    "1000": DeviceSpec(transverse_cells=(4, 4), hfo2_thickness_angstrom=15.0),
    "paper": paper_spec(),
}


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "n/a"


def _timed(spec: DeviceSpec):
    start = time.perf_counter()
    atoms = build_device(spec)
    return atoms, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--repeat", type=int, default=1, help="builds per size (median kept)")
    args = parser.parse_args()
    common = {
        "numpy": np.__version__,
        "ase": _version("ase"),
        "vesin": _version("vesin"),
        "jax": _version("jax"),
        "device": "cpu (numpy; the builder does not use jax)",
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    for name in args.sizes:
        spec = SIZES[name]
        full, cached = [], []
        for rep in range(args.repeat):
            clear_oxide_cache()
            atoms, seconds = _timed(spec.replace(seed=rep))
            full.append(seconds)
            _, seconds = _timed(
                spec.replace(seed=rep, vacancy_mode="filament", filament_radius_angstrom=3.0)
            )
            cached.append(seconds)
        record = {
            "benchmark": "build_device",
            "size": name,
            "n_atoms": len(atoms),
            "cell_angstrom": [round(float(v), 3) for v in atoms.cell.lengths()],
            "n_oxide_atoms": int(np.sum(atoms.arrays["region"] == "HfO2")),
            "ti_phase": atoms.info["ti_phase"],
            "build_s": float(np.median(full)),
            "rebuild_cached_oxide_s": float(np.median(cached)),
            "oxide_melt_quench_s": float(np.median(full) - np.median(cached)),
            "repeat": args.repeat,
            **common,
        }
        try:
            start = time.perf_counter()
            crystal = build_device(spec.replace(oxide="crystalline"))
            record["crystalline_baseline_s"] = time.perf_counter() - start
            record["crystalline_n_atoms"] = len(crystal)
        except ValueError as error:  # the transverse cell fits no fluorite cell
            record["crystalline_baseline_s"] = None
            record["crystalline_note"] = str(error).split(";")[0]
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
