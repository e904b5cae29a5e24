"""Run one reference calculation in a child process (``python -m hamjax.reference.worker``).

A child process gets the optimised BLAS preloaded (see :mod:`hamjax.reference.blas`), its
peak memory can be measured on its own, and a crash or kill of the engine cannot take the
caller down. The child reads the structure from an ``.npz`` (numbers, positions, cell, pbc;
exact floats), computes the reference, saves the record with
:func:`hamjax.io.dataset.save` (atomic) and prints one line ``HAMJAX-RESULT {json}``.

Exit codes: 0 done, 3 SCF not converged, 4 bad input or engine error.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["RESULT_PREFIX", "compute_in_subprocess", "summarise", "main"]

RESULT_PREFIX = "HAMJAX-RESULT "


def _peak_rss_mib() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def summarise(record, path: str | os.PathLike | None = None) -> dict:
    """Short JSON-serialisable summary of a reference record."""
    meta = record.metadata
    return {
        "name": meta.get("name"),
        "path": None if path is None else str(path),
        "n_atoms": int(len(record.numbers)),
        "n_orbitals": int(record.n_orbitals),
        "n_blocks": int(len(record.pairs)),
        "source": meta.get("source"),
        "method": meta.get("method"),
        "scf_cycles": meta.get("scf_cycles"),
        "retried": meta.get("retried", False),
        "n_attempts": len(meta.get("attempts", [])) or 1,
        "wall_time_s": meta.get("wall_time_s"),
        "setup_s": meta.get("setup_s"),
        "scf_s": meta.get("scf_s"),
        "post_scf_s": meta.get("post_scf_s"),
        "fermi_level_hartree": record.fermi_level,
        "total_energy_hartree": meta.get("total_energy_hartree"),
        "gap_hartree": meta.get("gap_hartree"),
        "settings": meta.get("settings"),
        "openblas_preload": meta.get("openblas_preload"),
        "image_resolved": bool(meta.get("image_resolved", False)),
        "image_checks": meta.get("image_checks"),
        "unfolding_s": (meta.get("unfolding") or {}).get("wall_time_s"),
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m hamjax.reference.worker JOB.json", file=sys.stderr)
        return 4
    job = json.loads(Path(argv[0]).read_text())
    from ase import Atoms

    from hamjax.reference import SCFConvergenceError, compute_reference

    data = np.load(job["structure"])
    atoms = Atoms(
        numbers=data["numbers"], positions=data["positions"], cell=data["cell"], pbc=data["pbc"]
    )
    out = {"name": job.get("name"), "path": job.get("output")}
    t0 = time.perf_counter()
    try:
        record = compute_reference(
            atoms, job.get("engine", "tblite"), name=job.get("name"), **job.get("settings", {})
        )
        if job.get("output"):
            from hamjax.io.dataset import save

            save(record, job["output"])
        out.update(summarise(record, job.get("output")), status="done")
        code = 0
    except SCFConvergenceError as err:
        out.update(status="not-converged", error=str(err), attempts=err.attempts)
        code = 3
    except (ValueError, ImportError, RuntimeError) as err:
        out.update(status="error", error=f"{type(err).__name__}: {err}")
        code = 4
    out["process_wall_time_s"] = time.perf_counter() - t0
    out["peak_rss_mib"] = _peak_rss_mib()
    print(RESULT_PREFIX + json.dumps(out), flush=True)
    return code


def compute_in_subprocess(
    atoms,
    output: str | os.PathLike | None,
    *,
    engine: str = "tblite",
    settings: dict | None = None,
    name: str | None = None,
    openblas: bool = True,
    timeout_s: float | None = None,
    python: str | None = None,
) -> dict:
    """Compute the reference of ``atoms`` in a child process and save it to ``output``.

    Args:
        atoms: ``ase.Atoms`` (Angstrom).
        output: dataset file to write (atomically), or None to only compute.
        engine, settings, name: as :func:`hamjax.reference.compute_reference`.
        openblas: preload a system OpenBLAS when one is found (and not disabled by
            ``HAMJAX_OPENBLAS=0``).
        timeout_s: kill the child after this many seconds (status "timeout").

    Returns:
        The child's summary: ``status`` ("done", "not-converged", "error", "timeout"),
        ``peak_rss_mib`` (child's peak resident memory, MiB), ``process_wall_time_s``,
        ``openblas_preload``, and for "done" the fields of :func:`summarise`.
    """
    from hamjax.reference.blas import reference_environment

    if openblas:
        env, library = reference_environment()
    else:
        env = {k: v for k, v in os.environ.items()}
        env["LD_PRELOAD"] = " ".join(
            p for p in env.get("LD_PRELOAD", "").split() if "openblas" not in p.lower()
        )
        library = None
    with tempfile.TemporaryDirectory(prefix="hamjax-ref-") as tmp:
        structure = Path(tmp) / "structure.npz"
        np.savez(
            structure,
            numbers=np.asarray(atoms.numbers, dtype=np.int64),
            positions=np.asarray(atoms.positions, dtype=float),
            cell=np.asarray(atoms.cell.array, dtype=float),
            pbc=np.asarray(atoms.pbc, dtype=bool),
        )
        job = Path(tmp) / "job.json"
        job.write_text(
            json.dumps(
                {
                    "structure": str(structure),
                    "output": None if output is None else str(output),
                    "engine": engine,
                    "settings": settings or {},
                    "name": name,
                }
            )
        )
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(
                [python or sys.executable, "-m", "hamjax.reference.worker", str(job)],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout_s,
            )
        except subprocess.TimeoutExpired:
            return {
                "name": name,
                "status": "timeout",
                "error": f"killed after {timeout_s} s",
                "process_wall_time_s": time.perf_counter() - t0,
                "openblas_preload": library,
            }
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {
            "name": name,
            "status": "error",
            "error": f"worker exited with {proc.returncode}: " + " | ".join(tail),
            "process_wall_time_s": time.perf_counter() - t0,
            "openblas_preload": library,
        }
    result = json.loads(lines[-1][len(RESULT_PREFIX) :])
    result.setdefault("openblas_preload", library)
    return result


if __name__ == "__main__":
    sys.exit(main())
