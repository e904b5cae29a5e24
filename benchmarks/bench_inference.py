"""Inference and training-step speed of the Hamiltonian model on VCM devices.

For devices of 500 to ~5,300 atoms (the paper's device, cut along x for the smaller sizes):
graph building, padding, compile time of the forward pass (apart), its steady-state time
(median of ``--repeat`` calls, ``block_until_ready``; also the process's CPU time, which a
shared machine disturbs less than wall time), atoms/s and edges/s, and peak memory
(device memory statistics where the backend has them, else the process's peak RSS). Then the
time of one training step (forward, backward, AdamW) on one training slice of the device.

One JSON line per measurement (stdout, and appended to ``--out``), with the jax version and
the device. Runs unchanged on CPU or GPU (``--device cpu|gpu``)::

    python benchmarks/bench_inference.py --sizes 500 1000 --repeat 3
    python benchmarks/bench_inference.py --device gpu --sizes 500 1000 2000 5300
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time

from json_lines import emitter


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 1000, 2000, 5300])
    parser.add_argument("--device", choices=("cpu", "gpu"), default=None)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--config", default=None, help="model config JSON (default: VCM model)")
    parser.add_argument("--slice-width", type=float, default=4.0, help="training slice, A")
    parser.add_argument(
        "--growth", type=float, default=1.25, help="padding ladder ratio (2.0: powers of two)"
    )
    parser.add_argument("--no-train-step", action="store_true")
    parser.add_argument(
        "--modes", nargs="+", default=["paper", "exact"], help="partition modes of the step"
    )
    parser.add_argument("--out", default=None, help="append JSON lines to this file")
    return parser.parse_args(argv)


def peak_memory_mib(device) -> dict:
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:  # CPU backends may not implement it
        stats = None
    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if stats and "peak_bytes_in_use" in stats:
        out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
    return out


def vcm_device(n_atoms_target: int, full):
    """The paper-size device cut to about ``n_atoms_target`` atoms along x (open along x)."""
    import numpy as np

    if n_atoms_target >= len(full):
        return full
    x = full.positions[:, 0]
    cut = np.sort(x)[n_atoms_target - 1] + 1e-6
    atoms = full[x <= cut]
    atoms.pbc = (False, True, True)
    return atoms


def main(argv=None) -> int:
    args = parse_args(argv)
    import jax

    if args.device:
        jax.config.update("jax_platforms", args.device.replace("gpu", "cuda"))
    import jax.numpy as jnp
    import numpy as np

    from hamjax import batching, train
    from hamjax.basis import gfn1_xtb_basis
    from hamjax.config import read_json_object
    from hamjax.graph import build_graph
    from hamjax.inference import Predictor
    from hamjax.models import HamiltonianModel, ModelConfig
    from hamjax.partition import partition
    from hamjax.structures.device import build_device, paper_spec
    from hamjax.targets import gather_targets

    device = jax.devices()[0]
    vcm_basis = gfn1_xtb_basis(["N", "O", "Ti", "Hf"])  # the elements of the VCM devices
    model_config = ModelConfig(basis=vcm_basis)
    if args.config:
        data = read_json_object(args.config)
        try:
            model_config = train.model_from_json(data.get("model", data))
        except ValueError as err:
            raise ValueError(f"{args.config}: key 'model': {err}") from None
        if not isinstance(model_config, ModelConfig):  # no basis given: the VCM devices'
            model_config = ModelConfig(basis=vcm_basis, **model_config)
    common = {
        "jax": jax.__version__,
        "device": str(device.device_kind),
        "platform": device.platform,
        "model": {k: v for k, v in model_config.to_dict().items() if k != "basis"},
    }

    emit = emitter(common, args.out)

    start = time.perf_counter()
    full = build_device(paper_spec(oxide="crystalline", seed=0))
    emit({"what": "build_device", "atoms": len(full), "seconds": time.perf_counter() - start})

    predictor = None
    for size in args.sizes:
        atoms = vcm_device(size, full)
        start = time.perf_counter()
        graph = build_graph(atoms, model_config.cutoff, basis=model_config.basis)
        t_graph = time.perf_counter() - start
        start = time.perf_counter()
        batch, _ = batching.batch_graphs(
            [graph], dtype=np.dtype(model_config.dtype), growth=args.growth
        )
        batch = jax.device_put(jax.tree.map(jnp.asarray, batch))
        t_pad = time.perf_counter() - start
        if predictor is None:
            params = jax.jit(HamiltonianModel(model_config).init)(jax.random.key(0), batch)
            predictor = Predictor(model_config, params)
        start = time.perf_counter()
        jax.block_until_ready(predictor.apply(batch))
        t_first = time.perf_counter() - start
        times, cpu = [], []
        for _ in range(args.repeat):
            start, start_cpu = time.perf_counter(), time.process_time()
            jax.block_until_ready(predictor.apply(batch))
            times.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        steady = statistics.median(times)
        emit(
            {
                "what": "forward",
                "atoms": graph.n_node,
                "edges": graph.n_edge,
                "padded_atoms": int(batch.n_node.sum()),
                "padded_edges": int(batch.n_edge.sum()),
                "graph_seconds": t_graph,
                "pad_seconds": t_pad,
                "compile_seconds": t_first - steady,
                "forward_seconds": steady,
                "forward_seconds_all": times,
                "forward_cpu_seconds": statistics.median(cpu),
                "atoms_per_second": graph.n_node / steady,
                "edges_per_second": graph.n_edge / steady,
                **peak_memory_mib(device),
            }
        )

    if not args.no_train_step:
        # one training step on the largest slice of the full paper-size device (zero
        # targets: timing only); the slice plus its halo is what one step sees
        graph = build_graph(full, model_config.cutoff, basis=model_config.basis)
        for mode in args.modes:
            pieces = partition(
                graph, 0, width=args.slice_width, mode=mode, n_layers=model_config.n_layers
            )
            piece = max(pieces, key=lambda p: p.graph.n_edge)
            m = max(model_config.basis.n_orbitals(z) for z in model_config.basis.elements)
            targets = gather_targets(
                piece.graph, _zero_record(piece.graph, model_config.basis), basis=model_config.basis
            )
            targets = _labelled(targets, piece)
            graphs_tuple, padded = batching.batch_graphs(
                [piece.graph], [targets], dtype=np.dtype(model_config.dtype), growth=args.growth
            )
            stacked = jax.tree.map(
                lambda x: jnp.asarray(x)[None], train.batch_dict(graphs_tuple, padded)
            )
            config = train.TrainConfig(model=model_config)
            optimizer, _ = train.make_optimizer(config, 1000)
            model = HamiltonianModel(model_config)
            params = predictor.params
            state = train.TrainState(
                params, optimizer.init(params), jnp.asarray(0), jnp.zeros(2, jnp.uint32)
            )
            step = train.make_train_step(model, config, optimizer)
            start = time.perf_counter()
            state, _ = step(state, stacked)
            jax.block_until_ready(state.params)
            t_first = time.perf_counter() - start
            times, cpu = [], []
            for _ in range(args.repeat):
                start, start_cpu = time.perf_counter(), time.process_time()
                state, _ = step(state, stacked)
                jax.block_until_ready(state.params)
                times.append(time.perf_counter() - start)
                cpu.append(time.process_time() - start_cpu)
            steady = statistics.median(times)
            emit(
                {
                    "what": "train_step",
                    "partition_mode": mode,
                    "slice_width_angstrom": args.slice_width,
                    "device_atoms": graph.n_node,
                    "slices": len(pieces),
                    "slice_atoms": piece.graph.n_node,
                    "slice_edges": piece.graph.n_edge,
                    "labelled_atoms": int(piece.node_label.sum()),
                    "orbitals_per_atom_max": m,
                    "compile_seconds": t_first - steady,
                    "step_seconds": steady,
                    "step_seconds_all": times,
                    "step_cpu_seconds": statistics.median(cpu),
                    **peak_memory_mib(device),
                }
            )
    return 0


def _zero_record(graph, basis):
    """A record with zero H on every node and edge block of ``graph`` (timing only)."""
    import numpy as np

    from hamjax.inference import blocks_to_record

    m = max(basis.n_orbitals(z) for z in basis.elements)
    return blocks_to_record(
        graph, np.zeros((graph.n_node, m, m)), np.zeros((graph.n_edge, m, m)), basis
    )


def _labelled(targets, piece):
    import dataclasses

    return dataclasses.replace(
        targets,
        node_mask=targets.node_mask & piece.node_label,
        edge_mask=targets.edge_mask & piece.edge_label,
    )


if __name__ == "__main__":
    sys.exit(main())
