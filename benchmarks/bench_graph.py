"""Graph building, partitioning and padding time for VCM devices of 500-5,500 atoms.

Devices are TiN | HfO2 | Ti | TiN stacks of the paper's length (93 Angstrom along x) with
2x2 ... 6x6 TiN cells across (600 ... 5,500 atoms). The oxide is crystalline fluorite where
it fits the electrode cell (6x6) and otherwise the builder's relaxed random packing without
melt-quench, which has the right density, so the neighbour counts are realistic.
Without ``hamjax.structures`` a rattled fluorite HfO2 supercell of similar size is used.

Per size, one JSON line with (seconds; median of ``--repeat`` runs):

* ``search_vesin`` / ``search_matscipy``: the bare neighbour search (baseline for the ratio);
  ``build_graph``: hamjax's graph (search + distance check + sorting + reverse index).
* ``partition_exact`` / ``partition_paper``: slicing along x (``--width``), halos included.
* ``pad_full``: :func:`hamjax.batching.batch_graphs` of the whole device;
  ``pad_slices``: all exact slices, each padded to its bucket; ``device_put``: moving the
  padded full graph to the JAX device (``block_until_ready``).
* edge/node counts, slice sizes, number of distinct padded shapes.

    python benchmarks/bench_graph.py                      # all sizes
    python benchmarks/bench_graph.py --sizes 2 6 --repeat 3
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import statistics
import time

import numpy as np


def _version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "n/a"


def make_device(n_across: int):
    """A VCM device with ``n_across x n_across`` TiN cells across (periodic in x, y, z)."""
    try:
        from hamjax.structures import build_device, paper_spec
    except ImportError:
        from ase.build import bulk

        atoms = bulk("HfO2", "fluorite", a=5.08, cubic=True).repeat((18, n_across, n_across))
        atoms.rattle(0.03, seed=0)
        return atoms, "fluorite HfO2 supercell (hamjax.structures missing)"
    try:  # crystalline fluorite oxide where it fits the electrode cell (6 x 6)
        spec = paper_spec(transverse_cells=(n_across, n_across), oxide="crystalline")
        return build_device(spec), "TiN|HfO2|Ti|TiN device, crystalline oxide"
    except ValueError:
        pass
    spec = paper_spec(
        transverse_cells=(n_across, n_across),
        melt_steps=0,
        quench_steps=0,
        min_distance_angstrom=1.3,
    )
    return build_device(spec), "TiN|HfO2|Ti|TiN device, packed amorphous oxide (no melt)"


def timed(fn, repeat):
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return out, statistics.median(times)


def bench_size(n: int, args, common: dict) -> dict:
    """One JSON record for a device with ``n x n`` TiN cells across."""
    import jax
    import matscipy.neighbours
    import vesin

    from hamjax.batching import batch_graphs, count_shapes
    from hamjax.graph import build_graph
    from hamjax.partition import partition

    atoms, kind = make_device(n)
    pos, cell, pbc = atoms.positions, atoms.cell.array, atoms.pbc

    def search_vesin():
        nl = vesin.NeighborList(cutoff=args.cutoff, full_list=True)
        return nl.compute(pos, cell, pbc, quantities="ijS")

    _, t_vesin = timed(search_vesin, args.repeat)
    _, t_matscipy = timed(
        lambda: matscipy.neighbours.neighbour_list("ijS", atoms, args.cutoff), args.repeat
    )
    graph, t_build = timed(lambda: build_graph(atoms, args.cutoff), args.repeat)
    slices, t_exact = timed(
        lambda: partition(graph, 0, width=args.width, mode="exact"), args.repeat
    )
    _, t_paper = timed(lambda: partition(graph, 0, width=args.width, mode="paper"), args.repeat)
    (full_batch, _), t_pad = timed(lambda: batch_graphs([graph]), args.repeat)
    padded, t_pad_slices = timed(lambda: [batch_graphs([s.graph])[0] for s in slices], args.repeat)

    def put():
        return jax.block_until_ready(jax.device_put(full_batch))

    _, t_put = timed(put, args.repeat)
    sub_nodes = [s.graph.n_node for s in slices]
    sub_edges = [s.graph.n_edge for s in slices]
    record = {
        **common,
        "structure": kind,
        "n_atoms": len(atoms),
        "cell_angstrom": [round(float(x), 3) for x in atoms.cell.lengths()],
        "n_edge": graph.n_edge,
        "edges_per_atom": round(graph.n_edge / len(atoms), 1),
        "search_vesin_s": round(t_vesin, 4),
        "search_matscipy_s": round(t_matscipy, 4),
        "matscipy_over_vesin": round(t_matscipy / t_vesin, 2),
        "build_graph_s": round(t_build, 4),
        "build_over_vesin_search": round(t_build / t_vesin, 2),
        "partition_exact_s": round(t_exact, 4),
        "partition_paper_s": round(t_paper, 4),
        "n_slices": len(slices),
        "slice_nodes_max": max(sub_nodes),
        "slice_edges_max": max(sub_edges),
        "slice_edges_mean": round(float(np.mean(sub_edges))),
        "pad_full_s": round(t_pad, 4),
        "padded_full_n_edge": int(len(full_batch.senders)),
        "pad_slices_s": round(t_pad_slices, 4),
        "distinct_slice_shapes": count_shapes(padded),
        "device_put_full_s": round(t_put, 4),
    }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[2, 3, 4, 5, 6])
    parser.add_argument("--cutoff", type=float, default=8.0, help="Angstrom")
    parser.add_argument("--width", type=float, default=4.0, help="slice width, Angstrom")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)

    common = {
        "benchmark": "graph",
        "jax": jax.__version__,
        "device": str(jax.devices()[0]),
        "numpy": np.__version__,
        "vesin": _version("vesin"),
        "matscipy": _version("matscipy"),
        "ase": _version("ase"),
        "jraph": _version("jraph"),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "cutoff_angstrom": args.cutoff,
        "slice_width_angstrom": args.width,
        "repeat": args.repeat,
    }
    for n in args.sizes:
        print(json.dumps(bench_size(n, args, common)), flush=True)


if __name__ == "__main__":
    main()
