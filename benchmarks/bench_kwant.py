"""hamjax against Kwant: T(E) of the same tight-binding wires, accuracy and speed in one run.

Systems: nearest-neighbour tight binding, onsite 0, hopping t = -1 eV, lattice constant 1;
a 2-D square-lattice wire of width W and length L (W = 64 and 128, L = 100) and a 3-D cubic
wire of W x W cross-section (W = 12 and 16, L = 50). The leads are the semi-infinite
continuations of the wire. hamjax gets H as a ``scipy.sparse`` matrix (its most economical
input: only the diagonal and neighbour blocks are ever formed) on L principal layers of W
(2-D) or W^2 (3-D) orbitals; its default leads repeat the first and the last layer, so the
infinite wire is the same one that Kwant builds from a scattering region of the same L slices
with leads attached at both ends. ``--disorder U1,U2,...`` runs each system once per U (default
0 and 1 eV), U > 0 adding a seeded uniform onsite potential in [-U/2, U/2] to the interior
slices (the same numbers in both codes; the end slices stay clean, they are lead cells for
hamjax).

For each system the script checks that hamjax's and Kwant's T(E) agree to ``--tolerance``
(1e-8 by default) and, for the clean wire, that hamjax's T(E) is the exact number of open
channels, the transverse modes n with ``|E - eps_n| < 2|t|``; ``eps_n = 2t cos(k_n)`` (2-D)
or ``2t (cos k_n + cos k_m)`` (3-D), ``k_n = n pi / (W + 1)``. The energies are a few points
inside the band, each moved (by at most 0.05 eV) to lie as far as possible from the subband
edges, where T(E) jumps. hamjax's leads carry a broadening eta (``--eta``, 1e-9 eV here);
Kwant's leads are exact (their modes). On the clean wires hamjax's T(E) is off by O(eta^2)
(prefactor a few hundred: up to 5e-8 at the library default of 1e-5 eV, above the 1e-8
tolerance), on the disordered 2-D wire (U = 1 eV) by O(eta) (prefactor 0.8: 8e-7 at 1e-6 eV,
8e-10 at 1e-9 eV). On the clean wires (separate runs) 1e-9 eV cost within 5% of 1e-6 eV per
energy at 2-D W = 64 and 3-D W = 12, 17-25% more at 2-D W = 128 and 3-D W = 16.

Timing: seconds per energy in the steady state. hamjax: one call of
``hamjax.transport.transmission`` on all energies (one chunk of ``len(energies)``, float64)
after a first call that compiles; ``hamjax_compile_s`` is the first call minus a steady one
(null when the same shapes were compiled for an earlier run of this process).
Kwant: ``kwant.smatrix(...).transmission(1, 0)`` energy by energy after a warm-up energy,
best of as many passes over the energies; Kwant's build and finalize time is reported apart.
Kwant runs in its own interpreter as a subprocess (this file with ``--kwant-worker``, which
imports only Kwant and NumPy), the two never at the same time.

Kwant is not a dependency of hamjax. Kwant 1.5 builds only against NumPy < 2, and without
MUMPS it solves with SciPy's sparse LU (SuperLU, one thread); make its environment apart:

    python3 -m venv /work/kwant-venv
    /work/kwant-venv/bin/pip install 'numpy<2' 'scipy<1.14' 'cython<3' tinyarray setuptools wheel
    /work/kwant-venv/bin/pip install --no-build-isolation kwant==1.5.0

(``--no-build-isolation``: Kwant's build needs the NumPy headers of the environment.) Then

    python benchmarks/bench_kwant.py --kwant-python /work/kwant-venv/bin/python

writes one JSON line per system and disorder strength to
``benchmarks/results/kwant_cpu.jsonl`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HOPPING = -1.0
SYSTEMS = {
    "2d-64": (2, 64, 100),
    "2d-128": (2, 128, 100),
    "3d-12": (3, 12, 50),
    "3d-16": (3, 16, 50),
}
TARGETS = {2: (-2.7, -1.1, 0.3, 1.9), 3: (-3.7, -1.3, 0.6, 2.4)}


# ----------------------------------------------------------------------------- both sides
def transverse_energies(dim: int, width: int) -> np.ndarray:
    """Energies eps_n of the transverse modes of a clean wire (hard walls)."""
    k = np.arange(1, width + 1) * np.pi / (width + 1)
    eps = 2 * HOPPING * np.cos(k)
    if dim == 2:
        return eps
    return (eps[:, None] + eps[None, :]).ravel()


def open_channels(dim: int, width: int, energies) -> np.ndarray:
    """Exact number of open channels of the clean wire at each energy."""
    eps = transverse_energies(dim, width)
    return np.sum(np.abs(np.asarray(energies)[:, None] - eps[None, :]) < 2 * abs(HOPPING), axis=1)


def pick_energies(dim: int, width: int, window: float = 0.05) -> np.ndarray:
    """The targets, each moved within +-window to the point farthest from any subband edge."""
    edges = np.concatenate(
        [transverse_energies(dim, width) + s * 2 * abs(HOPPING) for s in (-1, 1)]
    )
    out = []
    for target in TARGETS[dim]:
        grid = target + np.linspace(-window, window, 2001)
        distance = np.min(np.abs(grid[:, None] - edges[None, :]), axis=1)
        out.append(round(float(grid[np.argmax(distance)]), 6))
    return np.asarray(out)


def onsite_potential(dim: int, width: int, length: int, disorder: float, seed: int):
    """[L, W] or [L, W, W] onsite energies: 0, or uniform in [-U/2, U/2] inside."""
    shape = (length,) + (width,) * (dim - 1)
    onsite = np.zeros(shape)
    if disorder > 0:
        rng = np.random.default_rng(seed)
        onsite[1:-1] = disorder * (rng.random((length - 2,) + shape[1:]) - 0.5)
    return onsite


# ----------------------------------------------------------------------------- Kwant side
def kwant_worker() -> None:
    """Reads a JSON spec on stdin, prints Kwant's T(E) and timings as JSON. Runs in the Kwant
    environment: imports only Kwant and NumPy."""
    import kwant

    spec = json.loads(sys.stdin.read())
    dim, width, length = spec["dim"], spec["width"], spec["length"]
    energies = spec["energies"]
    onsite = np.asarray(spec["onsite"], dtype=float).reshape((length,) + (width,) * (dim - 1))

    t0 = time.perf_counter()
    lattice = kwant.lattice.general(np.eye(dim), norbs=1)
    cross = [tuple(c) for c in np.ndindex(*(width,) * (dim - 1))]
    system = kwant.Builder()
    for x in range(length):
        for c in cross:
            system[lattice(x, *c)] = float(onsite[(x, *c)])
    system[lattice.neighbors()] = HOPPING
    step = (-1,) + (0,) * (dim - 1)
    lead = kwant.Builder(kwant.TranslationalSymmetry(step))
    for c in cross:
        lead[lattice(0, *c)] = 0.0
    lead[lattice.neighbors()] = HOPPING
    system.attach_lead(lead)
    system.attach_lead(lead.reversed())
    finalized = system.finalized()
    build_s = time.perf_counter() - t0

    def transmission(energy):
        return kwant.smatrix(finalized, energy).transmission(1, 0)

    t0 = time.perf_counter()
    transmission(energies[0])
    warmup_s = time.perf_counter() - t0
    steady_s = float("inf")
    for _ in range(spec["repeat"]):
        t0 = time.perf_counter()
        values = [float(transmission(energy)) for energy in energies]
        steady_s = min(steady_s, time.perf_counter() - t0)
    solver = kwant.solvers.default.smatrix.__self__
    print(
        json.dumps(
            {
                "transmission": values,
                "build_s": build_s,
                "warmup_s": warmup_s,
                "per_energy_s": steady_s / len(energies),
                "kwant_version": kwant.__version__,
                "kwant_numpy_version": np.__version__,
                "kwant_solver": f"{type(solver).__module__}.{type(solver).__name__}",
                "n_sites": len(finalized.sites),
            }
        )
    )


def run_kwant(python: str, dim: int, width: int, length: int, energies, onsite, repeat) -> dict:
    spec = {
        "repeat": repeat,
        "dim": dim,
        "width": width,
        "length": length,
        "energies": [float(e) for e in energies],
        "onsite": onsite.ravel().tolist(),
    }
    done = subprocess.run(
        [python, os.path.abspath(__file__), "--kwant-worker"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"Kwant worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- hamjax side
def wire_hamiltonian(onsite: np.ndarray):
    """Sparse H of the wire, orbitals ordered slice by slice (site (x, y[, z]) at
    x W^(d-1) + y W^(d-2) [+ z]); returns (H, layers)."""
    import scipy.sparse as sp

    length, cross = onsite.shape[0], onsite.shape[1:]
    chain = [sp.diags([1.0, 1.0], [-1, 1], shape=(w, w)) for w in cross]
    eye = [sp.identity(w) for w in cross]
    perp = sp.csr_matrix((int(np.prod(cross)),) * 2)
    for i in range(len(cross)):  # hopping along each transverse axis
        factors = [chain[j] if j == i else eye[j] for j in range(len(cross))]
        term = factors[0]
        for f in factors[1:]:
            term = sp.kron(term, f)
        perp = perp + HOPPING * term
    b = perp.shape[0]
    along = sp.diags([1.0, 1.0], [-1, 1], shape=(length, length))
    h = sp.kron(sp.identity(length), perp) + HOPPING * sp.kron(along, sp.identity(b))
    h = (h + sp.diags(onsite.ravel())).tocsr()
    return h, [b] * length


def run_hamjax(onsite: np.ndarray, energies, eta: float, repeat: int) -> dict:
    import jax

    from hamjax.transport import transmission

    t0 = time.perf_counter()
    h, layers = wire_hamiltonian(onsite)
    build_s = time.perf_counter() - t0

    def call():
        out = transmission(h, None, layers, energies, eta=eta, chunk_size=len(energies))
        return np.asarray(jax.block_until_ready(out.transmission))

    t0 = time.perf_counter()
    values = call()
    first = time.perf_counter() - t0
    steady = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        steady = min(steady, time.perf_counter() - t0)
    return {
        "transmission": values,
        "build_s": build_s,
        "first_call_s": first,
        "compile_s": first - steady,
        "per_energy_s": steady / len(energies),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kwant-python", default="/work/kwant-venv/bin/python")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="of " + ", ".join(SYSTEMS))
    parser.add_argument("--disorder", default="0,1", help="onsite disorder U in eV, a list")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eta", type=float, default=1e-9, help="hamjax lead broadening, eV")
    parser.add_argument("--tolerance", type=float, default=1e-8)
    parser.add_argument("--repeat", type=int, default=3, help="steady passes, best taken")
    parser.add_argument("--no-kwant", action="store_true", help="hamjax side only")
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "results", "kwant_cpu.jsonl")
    )
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)

    records = []
    compiled = set()  # shapes compiled earlier in this process: no compile time to report
    runs = [(n, float(u)) for n in args.systems.split(",") for u in args.disorder.split(",")]
    for name, disorder in runs:
        dim, width, length = SYSTEMS[name]
        energies = pick_energies(dim, width)
        onsite = onsite_potential(dim, width, length, disorder, args.seed)
        ours = run_hamjax(onsite, energies, args.eta, args.repeat)
        record = {
            "system": name,
            "dim": dim,
            "width": width,
            "length": length,
            "orbitals": int(onsite.size),
            "layer_size": width ** (dim - 1),
            "hopping_eV": HOPPING,
            "disorder_eV": disorder,
            "seed": args.seed,
            "hamjax_eta_eV": args.eta,
            "energies_eV": energies.tolist(),
            "hamjax_transmission": ours["transmission"].tolist(),
            "hamjax_build_s": ours["build_s"],
            "hamjax_first_call_s": ours["first_call_s"],
            "hamjax_compile_s": None if (dim, width, length) in compiled else ours["compile_s"],
            "hamjax_per_energy_s": ours["per_energy_s"],
            "jax_version": jax.__version__,
            "device": str(jax.devices()[0]),
        }
        compiled.add((dim, width, length))
        if disorder == 0:
            channels = open_channels(dim, width, energies)
            record["open_channels"] = channels.tolist()
            error = float(np.max(np.abs(ours["transmission"] - channels)))
            record["max_abs_dT_exact"] = error
            assert error < args.tolerance, f"{name}: T(E) {ours['transmission']} != {channels}"
        if not args.no_kwant:
            theirs = run_kwant(args.kwant_python, dim, width, length, energies, onsite, args.repeat)
            difference = float(np.max(np.abs(ours["transmission"] - theirs["transmission"])))
            record.update(
                kwant_version=theirs["kwant_version"],
                kwant_numpy_version=theirs["kwant_numpy_version"],
                kwant_solver=theirs["kwant_solver"],
                kwant_transmission=theirs["transmission"],
                max_abs_dT=difference,
                kwant_build_s=theirs["build_s"],
                kwant_warmup_s=theirs["warmup_s"],
                kwant_per_energy_s=theirs["per_energy_s"],
                ratio_kwant_over_hamjax=theirs["per_energy_s"] / ours["per_energy_s"],
            )
            assert difference < args.tolerance, f"{name}: hamjax and Kwant differ by {difference}"
        record["load_average"] = round(os.getloadavg()[0], 2)
        print(json.dumps(record), flush=True)
        records.append(record)
    if not args.no_kwant:
        with open(args.out, "w") as f:
            for record in records:
                f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    if "--kwant-worker" in sys.argv:
        kwant_worker()
    else:
        main()
