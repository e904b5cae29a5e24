"""Scale: a TiN | HfO2 | Ti | TiN device of up to ~100,000 atoms predicted by streamed exact
tiles with one and with two processes.

The device is the paper's stack (:func:`hamjax.structures.paper_spec`: 93 A along x,
crystalline fluorite HfO2) made wide by ``transverse_cells`` (the builder tiles the TiN
cell across; only cell counts whose oxide and Ti fit within the builder's strain limit are
used); below ~3,800 atoms, the builder's default short stack (35 A). The model is the
default :class:`hamjax.models.ModelConfig` on the GFN1-xTB basis of N, O, Ti and Hf with
random parameters (``HamiltonianModel.init`` with ``jax.random.key(0)``), float32 (x64 off).

Tiles (:mod:`hamjax.tiles`) are cubes of one width along the lattice vectors (``--tile-widths``
or, by default, the widest whose subgraph has at most ``--tile-edges`` edges, so that peak
memory per process is bounded). For every process count, the ranks run as separate
processes (``jax.distributed`` on 127.0.0.1) that write part files; then a separate process
merges them into the dataset npz and CP2K CSR files (binary unless ``--cp2k text``). JSON
lines (stdout, and appended to ``--out``): the plan (atoms, tiles, edges computed with the
halo), one line per process count (wall time, per rank: compile and steady forward time,
graph building, writing, peak RSS; the merge's time, peak RSS and output sizes), and a
check that the blocks of every process count equal those of the first.

    python benchmarks/bench_scale.py --atoms 2000 --processes 1 2
    python benchmarks/bench_scale.py --atoms 100000 --plan-only      # tiles and work only
    python benchmarks/bench_scale.py --atoms 100000 --max-tiles 4    # memory at full size
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from json_lines import emitter

ATOMS_PER_CELL = {"paper": 153.3, "short": 54.1}  # atoms per transverse TiN cell (6x6, 5x5)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--atoms", type=int, default=100_000, help="target atom count")
    parser.add_argument("--shape", choices=("square", "strip"), default="square")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tile-widths", type=float, nargs=3, default=None)
    parser.add_argument("--tile-edges", type=int, default=200_000, help="edges per tile")
    parser.add_argument("--cp2k", choices=("binary", "text", "none"), default="binary")
    parser.add_argument(
        "--merge", choices=("all", "first"), default="all", help="merge every run or the first"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="parts and outputs")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--plan-only", action="store_true", help="plan the tiles, no model")
    parser.add_argument(
        "--max-tiles",
        type=int,
        default=None,
        help="partial run: each rank predicts only its first K tiles (time and memory per "
        "tile at full size; nothing merged)",
    )
    parser.add_argument("--out", default=None, help="append JSON lines to this file")
    parser.add_argument(
        "--tiny-model",
        action="store_true",
        help="pipeline check only: max_ell 2, 4 channels, 5 A cutoff (not the default model)",
    )
    # internal: one rank, or the merge, in its own process
    parser.add_argument("--role", choices=("rank", "merge"), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--job", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- structure
def device_spec(n_atoms: int, shape: str):
    """The DeviceSpec of about ``n_atoms`` atoms (paper stack, wider; short stack if small)."""
    from hamjax.structures import DeviceSpec, paper_spec

    stack = "paper" if n_atoms >= 5 * 5 * ATOMS_PER_CELL["paper"] else "short"
    cells = n_atoms / ATOMS_PER_CELL[stack]
    if shape == "square":
        wanted = [(n, n) for n in range(5, 200)]
    else:
        wanted = [(6, n) for n in range(5, 2000)]
    wanted.sort(key=lambda c: abs(c[0] * c[1] - cells))
    for ny, nz in wanted[:40]:
        if stack == "paper":
            spec = paper_spec(oxide="crystalline", transverse_cells=(ny, nz), seed=0)
        else:
            spec = DeviceSpec(oxide="crystalline", transverse_cells=(ny, nz), seed=0)
        if _fits(spec):
            return spec
    raise ValueError(f"no device of about {n_atoms} atoms fits the builder's strain limits")


def _fits(spec) -> bool:
    """Whether the builder's layers fit this transverse cell (a dry build of a thin copy)."""
    from hamjax.structures import build_device

    try:
        build_device(spec.replace(tin_left_cells=1, tin_right_cells=1))
    except ValueError:
        return False
    return True


TINY = {"max_ell": 2, "channels": 4, "heads": 1, "cutoff": 5.0, "radial_hidden": (16,)}
_SETTINGS = {"tiny": False}


def model_config():
    from hamjax.basis import gfn1_xtb_basis
    from hamjax.models import ModelConfig

    extra = TINY if _SETTINGS["tiny"] else {}
    return ModelConfig(basis=gfn1_xtb_basis(["N", "O", "Ti", "Hf"]), **extra)


def make_predictor(atoms):
    """The default model with random parameters (key 0), initialised on a small cut."""
    import jax
    import numpy as np

    from hamjax import batching
    from hamjax.graph import build_graph
    from hamjax.inference import Predictor
    from hamjax.models import HamiltonianModel

    config = model_config()
    sample = atoms[np.argsort(atoms.positions[:, 0])[:64]]
    graph = build_graph(sample, config.cutoff, basis=config.basis)
    graphs_tuple, _ = batching.batch_graphs([graph], dtype=np.float32)
    params = jax.jit(HamiltonianModel(config).init)(jax.random.key(0), graphs_tuple)
    return Predictor(config, params, name="default ModelConfig, random parameters (key 0)")


def choose_widths(atoms, budget: int) -> list[float]:
    """The widest cube tiles whose largest subgraph has at most ``budget`` edges.

    The edges of a tile's subgraph are proportional to the atoms of its edge region
    (:attr:`hamjax.tiles.TilePlan.cost`, positions only); one built tile gives the ratio, a
    bisection on the width the estimate, and the largest tile of the choice is built to
    check it.
    """
    from hamjax.tiles import Tiling, build_tile

    config = model_config()

    def tiling(width):
        return Tiling(atoms, [width] * 3, cutoff=config.cutoff, n_layers=config.n_layers)

    def largest(width):
        t = tiling(width)
        return t, max(t.plans(), key=lambda p: p.cost)

    t, probe = largest(6.0)
    ratio = build_tile(t, probe, basis=config.basis).graph.n_edge / probe.cost
    low, high = 4.0, float(max(atoms.cell.lengths()))
    if ratio * largest(high)[1].cost <= budget:
        low = high
    else:
        for _ in range(10):
            mid = 0.5 * (low + high)
            low, high = (mid, high) if ratio * largest(mid)[1].cost <= budget else (low, mid)
    width = low
    while True:
        t, probe = largest(width)
        if build_tile(t, probe, basis=config.basis).graph.n_edge <= budget or width < 4.0:
            return [round(width, 2)] * 3
        width *= 0.95


def plan(atoms, widths) -> dict:
    """Tiles and the work they imply (no model): atoms, tiles, edges with and without halo."""
    import numpy as np

    from hamjax.tiles import Tiling, build_tile

    config = model_config()
    tiling = Tiling(atoms, widths, cutoff=config.cutoff, n_layers=config.n_layers)
    plans = tiling.plans()
    # one built tile per distinct size gives edges per cost unit; the rest is extrapolated
    probe = max(plans, key=lambda p: p.cost)
    tile = build_tile(tiling, probe, basis=config.basis)
    degree = tile.edge_label.sum() / max(tile.node_label.sum(), 1)
    per_cost = tile.graph.n_edge / probe.cost
    costs = np.array([p.cost for p in plans])
    return {
        "what": "plan",
        "atoms": len(atoms),
        "cell_angstrom": [round(float(x), 2) for x in atoms.cell.lengths()],
        "tile_widths_angstrom": widths,
        "tiles": len(plans),
        "edges_estimate": int(degree * len(atoms)),
        "tile_edges_estimate": int(per_cost * costs.sum()),
        "largest_tile_edges": int(tile.graph.n_edge),
        "halo_factor_estimate": round(float(per_cost * costs.sum() / (degree * len(atoms))), 2),
    }


# ------------------------------------------------------------------------ child roles
def run_rank(job: dict) -> None:
    import jax

    from hamjax import distributed
    from hamjax.structures import DeviceSpec, build_device

    env = distributed.ProcessEnv(job["processes"], job["rank"], job["coordinator"], "flags")
    distributed.initialize(env)
    atoms = build_device(DeviceSpec.from_json(job["spec"]))
    predictor = make_predictor(atoms)
    summary = distributed.predict_streamed(
        predictor,
        atoms,
        job["parts"],
        widths=job["widths"],
        env=env,
        time_compile=True,
        max_tiles=job.get("max_tiles"),
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if job["rank"] == 0:
        summary = summary["ranks"][0]
    summary["peak_rss_mib_end"] = round(_peak_rss_mib(), 1)
    device = jax.local_devices()[0]
    summary["device"] = f"{device.platform}: {device.device_kind}"
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - backends without memory statistics
        stats = {}
    if "peak_bytes_in_use" in stats:
        summary["device_peak_mib"] = round(stats["peak_bytes_in_use"] / 2**20, 1)
    Path(job["result"]).write_text(json.dumps(summary))


def run_merge(job: dict) -> None:
    from hamjax.io.parts import Parts, write_record
    from hamjax.io.parts_cp2k import write_cp2k_parts

    start = time.perf_counter()
    parts = Parts(job["parts"])
    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    npz = write_record(parts, job["npz"], progress=say)
    t_npz = time.perf_counter() - start
    files = []
    if job["cp2k"] != "none":
        files = write_cp2k_parts(parts, job["prefix"], binary=job["cp2k"] == "binary", progress=say)
    result = {
        "npz_seconds": round(t_npz, 2),
        "cp2k_seconds": round(time.perf_counter() - start - t_npz, 2),
        "npz_bytes": npz.stat().st_size,
        "cp2k_bytes": int(sum(Path(f).stat().st_size for f in files)),
        "cp2k_files": len(files),
        "cp2k_format": job["cp2k"],
        "peak_rss_mib": round(_peak_rss_mib(), 1),
    }
    Path(job["result"]).write_text(json.dumps(result))


def _child(role: str, job: dict, folder: Path, name: str) -> subprocess.Popen:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(job))
    command = [sys.executable, str(Path(__file__).resolve()), "--role", role, "--job", str(path)]
    return subprocess.Popen(command)  # noqa: S603 - this script, this interpreter


def _wait(children: list) -> None:
    while any(c.poll() is None for c in children):
        if any(c.returncode not in (None, 0) for c in children):
            for c in children:
                if c.poll() is None:
                    c.terminate()
            break
        time.sleep(0.5)
    codes = [c.wait() for c in children]
    if any(codes):
        raise RuntimeError(f"a child process failed: exit statuses {codes}")


def compare(folder_a: Path, folder_b: Path) -> dict:
    """Blocks of two parts folders, a chunk at a time: same keys, largest value difference."""
    import numpy as np

    from hamjax.io.parts import Parts

    a, b = Parts(folder_a), Parts(folder_b)
    same_keys = a.n_blocks == b.n_blocks and a.n_values == b.n_values
    worst = 0.0
    scale = 0.0
    for lo, hi in a.chunks():
        ra, rb = a.rows(lo, hi, ("keys", "values")), b.rows(lo, hi, ("keys", "values"))
        same_keys = same_keys and np.array_equal(ra["keys"], rb["keys"])
        if not same_keys:
            break
        worst = max(worst, float(np.abs(ra["values"] - rb["values"]).max(initial=0.0)))
        scale = max(scale, float(np.abs(ra["values"]).max(initial=0.0)))
    return {"same_blocks": bool(same_keys), "max_abs_diff": worst, "max_abs_value": scale}


def run_merge_child(work: Path, parts: Path, n: int, cp2k: str) -> dict:
    """Merge a parts folder in a process of its own (its own peak RSS); outputs measured."""
    job = {
        "parts": str(parts),
        "npz": str(work / f"H-{n}.npz"),
        "prefix": str(work / f"H-{n}"),
        "cp2k": cp2k,
        "result": str(work / f"merge-{n}.result"),
    }
    start = time.perf_counter()
    _wait([_child("merge", job, work, f"merge-{n}")])
    merge = json.loads(Path(job["result"]).read_text())
    merge["seconds"] = round(time.perf_counter() - start, 2)
    return merge


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.role:
        job = json.loads(args.job.read_text())
        _SETTINGS["tiny"] = job.get("tiny", False)
        (run_rank if args.role == "rank" else run_merge)(job)
        return 0
    import jax

    from hamjax.distributed import free_port

    _SETTINGS["tiny"] = args.tiny_model
    from hamjax.structures import build_device

    common = {
        "jax": jax.__version__,
        "cpus": os.cpu_count(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "model": {k: v for k, v in model_config().to_dict().items() if k != "basis"},
        "parameters": "random, HamiltonianModel.init(jax.random.key(0)), float32",
    }

    emit = emitter(common, args.out)

    start = time.perf_counter()
    spec = device_spec(args.atoms, args.shape)
    atoms = build_device(spec)
    t_build = time.perf_counter() - start
    widths = args.tile_widths or choose_widths(atoms, args.tile_edges)
    emit(
        {
            **plan(atoms, widths),
            "transverse_cells": list(spec.transverse_cells),
            "stack": "paper" if spec.tin_left_cells == 5 else "short",
            "build_seconds": round(t_build, 2),
            "plan_seconds": round(time.perf_counter() - start - t_build, 2),
        }
    )
    if args.plan_only:
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="hamjax-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    folders = []
    try:
        for n in args.processes:
            parts = work / f"parts-{n}"
            coordinator = f"127.0.0.1:{free_port()}"
            jobs = [
                {
                    "processes": n,
                    "rank": k,
                    "coordinator": coordinator,
                    "spec": spec.to_json(),
                    "parts": str(parts),
                    "widths": widths,
                    "result": str(work / f"rank-{n}-{k}.result"),
                    "max_tiles": args.max_tiles,
                    "tiny": args.tiny_model,
                }
                for k in range(n)
            ]
            t0 = time.perf_counter()
            _wait([_child("rank", job, work, f"rank-{n}-{job['rank']}") for job in jobs])
            wall = time.perf_counter() - t0
            ranks = [json.loads(Path(job["result"]).read_text()) for job in jobs]
            if args.max_tiles is not None:
                steady = sum(r["forward_seconds"] for r in ranks)
                emit(
                    {
                        "what": "partial",
                        "processes": n,
                        "atoms": len(atoms),
                        "device": ranks[0]["device"],
                        "tiles_predicted": int(sum(r["tiles"] for r in ranks)),
                        "tiles_all": ranks[0]["tiles_all"],
                        "tile_edges": int(sum(r["tile_edges"] for r in ranks)),
                        "tile_edges_per_steady_second": round(
                            sum(r["tile_edges"] for r in ranks) / max(steady, 1e-9), 1
                        ),
                        "wall_seconds": round(wall, 2),
                        "peak_rss_mib_per_rank": [r["peak_rss_mib_end"] for r in ranks],
                        "ranks": ranks,
                    }
                )
                shutil.rmtree(parts)
                continue
            merge = None
            if args.merge == "all" or not folders:
                merge = run_merge_child(work, parts, n, args.cp2k)
            emit(
                {
                    "what": "scale",
                    "processes": n,
                    "atoms": len(atoms),
                    "device": ranks[0]["device"],
                    "edges": int(sum(r["edges"] for r in ranks)),
                    "tile_edges": int(sum(r["tile_edges"] for r in ranks)),
                    "tiles": int(sum(r["tiles"] for r in ranks)),
                    "tile_widths_angstrom": widths,
                    "wall_seconds": round(wall, 2),
                    "peak_rss_mib_per_rank": [r["peak_rss_mib_end"] for r in ranks],
                    "ranks": ranks,
                    "merge": merge,
                    "parts_bytes": _size(parts),
                }
            )
            folders.append((n, parts))
            for path in work.glob(f"H-{n}*"):
                path.unlink()  # outputs measured; keep the disk free for the next run
        for n, parts in folders[1:]:
            emit(
                {"what": "check", "processes": [folders[0][0], n], **compare(folders[0][1], parts)}
            )
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
