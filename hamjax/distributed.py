"""Streamed and distributed inference: exact tiles dealt to processes, blocks written to disk
as they come, merged by process 0.

A structure is cut into exact tiles (:mod:`hamjax.tiles`; with one cut axis these are the
slices of :func:`hamjax.partition.partition`, mode "exact"). Each process predicts its share
of the tiles with :class:`hamjax.inference.Predictor`, one tile (or a few) at a time, and
appends their labelled blocks to its part files (:mod:`hamjax.io.parts`); when every process
is done, process 0 merges the parts into one block record (npz) and, if asked, CP2K CSR
files, again a chunk at a time. No process holds the graph of the whole structure or the
whole matrix: peak memory is set by the largest tile.

Processes. :func:`initialize` starts ``jax.distributed`` from a :class:`ProcessEnv`
(coordinator ``host:port``, process count, process id), which :func:`process_env` reads
from flags, from ``HAMJAX_COORDINATOR`` / ``HAMJAX_NUM_PROCESSES`` / ``HAMJAX_PROCESS_ID``,
or under SLURM (``cluster="slurm"``) from ``SLURM_NTASKS`` / ``SLURM_PROCID`` with the first
host of ``SLURM_JOB_NODELIST`` as coordinator. The file route needs no collective beyond
two barriers (:func:`barrier`); the parts folder must be one that every process can reach
(a shared file system on a cluster). One device per process: launch one process per
accelerator. ``hamjax predict --slices exact --processes N`` runs ``N`` processes on this
machine (127.0.0.1, a port from :func:`free_port`).

Dealing (:func:`deal_tiles`): ``"balanced"`` (default) gives each tile, largest first, to
the process with the least work so far (work = atoms within the edge halo of the tile,
:attr:`hamjax.tiles.TilePlan.cost`); ``"round-robin"`` gives tile ``k`` to process
``k % n``. Both are deterministic, so every process computes the same deal without talking.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import re
import resource
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from hamjax import batching
from hamjax.folding import is_gamma_only
from hamjax.io.parts import Parts, PartWriter, prepare_folder, rank_summaries, write_record
from hamjax.io.parts_cp2k import write_cp2k_parts
from hamjax.tiles import Structure, Tiling, build_tile, labelled_blocks, normalize_widths

__all__ = [
    "ProcessEnv",
    "barrier",
    "deal_tiles",
    "first_slurm_host",
    "free_port",
    "initialize",
    "peak_rss_mib",
    "predict_parts",
    "predict_streamed",
    "process_env",
    "shutdown",
]


@dataclass(frozen=True)
class ProcessEnv:
    """Where this process stands in a distributed run.

    Attributes:
        num_processes: processes in the run (1: no ``jax.distributed``).
        process_id: this process, ``0 .. num_processes - 1``.
        coordinator: ``host:port`` of process 0's coordinator (None for one process).
        source: where the values came from ("flags", "HAMJAX_*", "SLURM" or "single").
    """

    num_processes: int = 1
    process_id: int = 0
    coordinator: str | None = None
    source: str = "single"

    @property
    def distributed(self) -> bool:
        return self.num_processes > 1


def first_slurm_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``"node[03-05,9],gpu1"`` -> ``"node03"``.

    Raises:
        ValueError: an empty or malformed list.
    """
    text = nodelist.strip()
    depth, end = 0, len(text)
    for k, ch in enumerate(text):  # the first top-level entry
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            end = k
            break
    entry = text[:end]
    host = re.sub(r"\[([^\]]*)\]", lambda m: re.split(r"[,-]", m.group(1))[0], entry)
    if not host or any(ch in host for ch in "[],") or not re.fullmatch(r"[\w.\-]+", host):
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read its first host")
    return host


def _int_of(value, name: str) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} is not an integer") from None


def process_env(
    *,
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    cluster: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> ProcessEnv | None:
    """The process layout from flags, else the environment; None when nothing is set.

    Order: the arguments (flags ``--coordinator``, ``--num-processes``, ``--process-id``),
    then ``HAMJAX_COORDINATOR``, ``HAMJAX_NUM_PROCESSES``, ``HAMJAX_PROCESS_ID``, then, with
    ``cluster="slurm"`` (or ``HAMJAX_CLUSTER=slurm``), ``SLURM_NTASKS``, ``SLURM_PROCID`` and
    the first host of ``SLURM_JOB_NODELIST`` at port ``HAMJAX_COORDINATOR_PORT`` (default
    ``20000 + SLURM_JOB_ID % 10000``). SLURM is not read unasked: a batch script runs inside
    an allocation of many tasks as one process.

    Raises:
        ValueError: a value that is not a number, an id outside ``0 .. n - 1``, or several
            processes without a coordinator; the message names the flag or variable.
    """
    env = os.environ if environ is None else environ
    cluster = cluster or env.get("HAMJAX_CLUSTER")
    if cluster not in (None, "", "slurm"):
        raise ValueError(f"cluster={cluster!r}: the only cluster read is 'slurm'")
    source = "flags" if num_processes is not None or process_id is not None else None
    if num_processes is None and "HAMJAX_NUM_PROCESSES" in env:
        num_processes = _int_of(env["HAMJAX_NUM_PROCESSES"], "HAMJAX_NUM_PROCESSES")
        source = source or "HAMJAX_*"
    if process_id is None and "HAMJAX_PROCESS_ID" in env:
        process_id = _int_of(env["HAMJAX_PROCESS_ID"], "HAMJAX_PROCESS_ID")
        source = source or "HAMJAX_*"
    coordinator = coordinator or env.get("HAMJAX_COORDINATOR") or None
    if cluster == "slurm":
        if num_processes is None:
            if "SLURM_NTASKS" not in env and "SLURM_NPROCS" not in env:
                raise ValueError("cluster 'slurm': SLURM_NTASKS is not set (not inside srun?)")
            name = "SLURM_NTASKS" if "SLURM_NTASKS" in env else "SLURM_NPROCS"
            num_processes = _int_of(env[name], name)
        if process_id is None:
            if "SLURM_PROCID" not in env:
                raise ValueError("cluster 'slurm': SLURM_PROCID is not set (not inside srun?)")
            process_id = _int_of(env["SLURM_PROCID"], "SLURM_PROCID")
        if coordinator is None and num_processes > 1:
            nodes = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
            if not nodes:
                raise ValueError("cluster 'slurm': SLURM_JOB_NODELIST is not set")
            port = env.get("HAMJAX_COORDINATOR_PORT")
            if port is None:
                port = 20000 + _int_of(env.get("SLURM_JOB_ID", "0"), "SLURM_JOB_ID") % 10000
            coordinator = f"{first_slurm_host(nodes)}:{_int_of(port, 'HAMJAX_COORDINATOR_PORT')}"
        source = source or "SLURM"
    if num_processes is None and process_id is None:
        return None
    if num_processes is None:
        raise ValueError("a process id is given but no process count (--num-processes)")
    if num_processes < 1:
        raise ValueError(f"process count (--num-processes) must be >= 1, got {num_processes}")
    process_id = 0 if process_id is None else process_id
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"process id (--process-id) {process_id} is outside 0..{num_processes - 1}"
        )
    if num_processes > 1:
        if not coordinator:
            raise ValueError(
                f"{num_processes} processes need a coordinator host:port (--coordinator or "
                "HAMJAX_COORDINATOR)"
            )
        if not re.fullmatch(r"\[?[\w.:\-]+\]?:\d+", coordinator):
            raise ValueError(f"coordinator {coordinator!r} is not host:port")
    return ProcessEnv(num_processes, process_id, coordinator if num_processes > 1 else None, source)


def initialize(env: ProcessEnv, *, timeout_s: int = 300) -> None:
    """Start ``jax.distributed`` for a run of several processes (nothing for one).

    Call it before any JAX computation.
    """
    if not env.distributed:
        return
    import jax

    try:  # the collectives of the fallback barrier on the CPU
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except (AttributeError, ValueError):  # a jax without the option
        pass
    jax.distributed.initialize(
        coordinator_address=env.coordinator,
        num_processes=env.num_processes,
        process_id=env.process_id,
        initialization_timeout=timeout_s,
    )


_BARRIERS: dict[str, int] = {}


def _coordination_client():
    """The client of ``jax.distributed``'s coordination service, where this jax exposes it."""
    try:
        from jax._src import distributed as jax_distributed

        client = jax_distributed.global_state.client
    except (ImportError, AttributeError):
        return None
    return client if hasattr(client, "wait_at_barrier") else None


def barrier(name: str, timeout_s: float = 7 * 24 * 3600) -> None:
    """Wait until every process of the run has reached ``name`` (nothing for one process).

    The barrier of ``jax.distributed``'s coordination service: no device computation, so
    it works for any device layout (several processes sharing one accelerator too) and
    waits as long as the slowest process predicts (up to ``timeout_s``). Where a jax does
    not expose it, ``multihost_utils.sync_global_devices`` (a collective) is used. Every
    process must pass the same names in the same order.
    """
    import jax

    if jax.process_count() <= 1:
        return
    count = _BARRIERS.get(name, 0)
    _BARRIERS[name] = count + 1
    client = _coordination_client()
    if client is not None:
        client.wait_at_barrier(f"hamjax:{name}:{count}", timeout_in_ms=int(timeout_s * 1000))
        return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f"{name}:{count}")


def shutdown() -> None:
    """Leave ``jax.distributed`` (every process calls it; nothing when not started)."""
    import jax

    if jax.process_count() > 1:
        jax.distributed.shutdown()


def deal_tiles(costs: Sequence[float], n_processes: int, how: str = "balanced") -> list[list[int]]:
    """Tile numbers per process (each list ascending); see the module docstring."""
    if n_processes < 1:
        raise ValueError(f"n_processes must be >= 1, got {n_processes}")
    if how == "round-robin":
        return [list(range(p, len(costs), n_processes)) for p in range(n_processes)]
    if how != "balanced":
        raise ValueError(f"deal={how!r}: choose 'balanced' or 'round-robin'")
    heap = [(0.0, p) for p in range(n_processes)]
    out: list[list[int]] = [[] for _ in range(n_processes)]
    for k in sorted(range(len(costs)), key=lambda k: (-costs[k], k)):
        load, p = heapq.heappop(heap)
        out[p].append(k)
        heapq.heappush(heap, (load + float(costs[k]), p))
    return [sorted(tiles) for tiles in out]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _overlap_source(structure):
    """The record whose overlap predictions carry over (as :meth:`Predictor.predict` does:
    a record with S whose blocks are per image), else None."""
    overlap = getattr(structure, "overlap", None)
    if overlap is None or is_gamma_only(structure):
        return None
    return structure


def predict_parts(
    predictor,
    structure,
    folder: str | os.PathLike,
    *,
    widths,
    run: str,
    rank: int = 0,
    n_ranks: int = 1,
    deal: str = "balanced",
    tiles_per_batch: int = 1,
    growth: float = 1.25,
    time_compile: bool = False,
    max_tiles: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Predict this process's tiles and append their blocks to its part files.

    Args:
        predictor: a :class:`hamjax.inference.Predictor`.
        structure: ``ase.Atoms`` or a block record (its geometry; S carried over as
            :meth:`Predictor.predict` does).
        folder: the parts folder, prepared by process 0 (:func:`hamjax.io.parts.prepare_folder`).
        widths: tile widths per lattice vector (:func:`hamjax.tiles.normalize_widths`).
        run: the run id in ``run.json``.
        rank, n_ranks: this process and the process count.
        deal: "balanced" or "round-robin" (:func:`deal_tiles`).
        tiles_per_batch: tiles in one padded batch (1 keeps memory lowest).
        growth: padding ladder ratio (:func:`hamjax.batching.batch_graphs`).
        time_compile: run each newly compiled shape a second time to split compile time from
            steady state (costs one more forward pass per shape).
        max_tiles: predict only this rank's first ``max_tiles`` tiles (a partial run, to
            measure time and memory per tile on a structure too large to finish; its parts
            cannot be merged).
        progress: callable taking a line of text (e.g. ``print`` to stderr).

    Returns:
        This rank's summary (also stored in its ``rank-<r>.json``): tiles, atoms, blocks,
        labelled and computed edges, seconds spent building graphs, in the forward pass
        (``compile_seconds`` apart when measured), writing, and the peak RSS.
    """
    import jax
    import jax.numpy as jnp

    start = time.perf_counter()
    say = progress or (lambda _: None)
    config = predictor.config
    overlap_from = _overlap_source(structure)
    tiling = Tiling(structure, widths, cutoff=config.cutoff, n_layers=config.n_layers)
    plans = tiling.plans()
    mine = [plans[k] for k in deal_tiles([p.cost for p in plans], n_ranks, deal)[rank]]
    tiles_mine = len(mine)
    mine = mine[:max_tiles] if max_tiles is not None else mine
    plan_seconds = time.perf_counter() - start
    counts = config.basis.orbital_counts(tiling.structure.numbers)
    writer = PartWriter(folder, rank, run, counts, has_overlap=overlap_from is not None)
    stats = dict.fromkeys(("graph_seconds", "forward_seconds", "compile_seconds"), 0.0)
    stats["write_seconds"] = 0.0
    totals = dict.fromkeys(("atoms", "blocks", "edges", "tile_edges", "tile_nodes"), 0)
    largest = {"edges": 0, "nodes": 0, "padded_edges": 0}
    new_shapes = 0
    for first in range(0, len(mine), max(1, tiles_per_batch)):
        batch_plans = mine[first : first + max(1, tiles_per_batch)]
        t0 = time.perf_counter()
        tiles = [build_tile(tiling, plan, basis=config.basis) for plan in batch_plans]
        graphs_tuple, _ = batching.batch_graphs([t.graph for t in tiles], growth=growth)
        arrays = jax.tree.map(jnp.asarray, graphs_tuple)
        t1 = time.perf_counter()
        traces = predictor.n_traces
        node, edge = jax.device_get(predictor.apply(arrays))
        t2 = time.perf_counter()
        forward = t2 - t1
        if predictor.n_traces > traces:
            new_shapes += 1
            if time_compile:
                again = time.perf_counter()
                jax.block_until_ready(predictor.apply(arrays))
                steady = time.perf_counter() - again
                stats["compile_seconds"] += max(forward - steady, 0.0)
                forward = steady
                t2 = time.perf_counter()
        node_off = np.concatenate([[0], np.cumsum([t.graph.n_node for t in tiles])])
        edge_off = np.concatenate([[0], np.cumsum([t.graph.n_edge for t in tiles])])
        for slot, tile in enumerate(tiles):
            pairs, shifts, values = labelled_blocks(
                tile,
                node[node_off[slot] : node_off[slot + 1]],
                edge[edge_off[slot] : edge_off[slot + 1]],
                counts,
            )
            overlap = None
            if overlap_from is not None:
                overlap = overlap_from.on_blocks(pairs, shifts).overlap
            writer.append(pairs, shifts, values, overlap)
            for key, value in (
                ("atoms", int(tile.node_label.sum())),
                ("blocks", len(pairs)),
                ("edges", int(tile.edge_label.sum())),
                ("tile_edges", tile.graph.n_edge),
                ("tile_nodes", tile.graph.n_node),
            ):
                totals[key] += value
            largest["edges"] = max(largest["edges"], tile.graph.n_edge)
            largest["nodes"] = max(largest["nodes"], tile.graph.n_node)
        largest["padded_edges"] = max(largest["padded_edges"], int(graphs_tuple.n_edge.sum()))
        t3 = time.perf_counter()
        stats["graph_seconds"] += t1 - t0
        stats["forward_seconds"] += forward
        stats["write_seconds"] += t3 - t2
        done = first + len(batch_plans)
        say(
            f"rank {rank}/{n_ranks}: tiles {done}/{len(mine)} (last: "
            f"{sum(t.graph.n_node for t in tiles)} atoms, "
            f"{sum(t.graph.n_edge for t in tiles)} edges, {t3 - t0:.1f} s; "
            f"peak RSS {peak_rss_mib():.0f} MiB)"
        )
    summary = {
        "rank": rank,
        "processes": n_ranks,
        "tiles": len(mine),
        "tiles_dealt": tiles_mine,
        "tiles_all": len(plans),
        "plan_seconds": round(plan_seconds, 3),
        **totals,
        "largest_tile": largest,
        "compilations": new_shapes,
        **{k: round(v, 3) for k, v in stats.items()},
        "seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }
    writer.close(summary)
    return summary


def _run_id(structure: Structure, widths, n_ranks: int, name) -> str:
    digest = hashlib.sha1()
    for array in (structure.numbers, structure.positions, structure.cell, structure.pbc):
        digest.update(np.ascontiguousarray(array).tobytes())
    digest.update(json.dumps([list(widths), n_ranks, str(name)]).encode())
    return digest.hexdigest()[:16]


def predict_streamed(
    predictor,
    structure,
    folder: str | os.PathLike,
    *,
    widths,
    env: ProcessEnv | None = None,
    out: str | os.PathLike | None = None,
    cp2k: str | os.PathLike | None = None,
    cp2k_binary: bool = False,
    deal: str = "balanced",
    tiles_per_batch: int = 1,
    growth: float = 1.25,
    time_compile: bool = False,
    metadata: dict | None = None,
    max_tiles: int | None = None,
    progress: Callable[[str], None] | None = None,
    shutdown_after: bool = True,
) -> dict:
    """The whole streamed run on one process of ``env``: parts, barriers, merge on rank 0.

    Every process calls it with the same arguments (after :func:`initialize`). Process 0
    prepares ``folder``; all predict their tiles (:func:`predict_parts`); after the last
    barrier ``jax.distributed`` is shut down (unless ``shutdown_after`` is False, for
    another run in the same processes) and process 0 writes ``out`` (a dataset file,
    :func:`hamjax.io.parts.write_record`) and the CP2K files with prefix ``cp2k``
    (:func:`hamjax.io.parts_cp2k.write_cp2k_parts`), if given.

    ``max_tiles`` makes a partial run (:func:`predict_parts`): nothing is merged.

    Returns:
        On process 0: ``{"ranks": [summary per rank], "written": [...], "merge_seconds":
        ..., "blocks": ..., "atoms": ...}`` (a partial run: ``{"ranks": ...}``); on the
        others their own summary.
    """
    if max_tiles is not None and (out is not None or cp2k is not None):
        raise ValueError("a partial run (max_tiles) writes parts only: no out or cp2k")
    env = env or ProcessEnv()
    widths = normalize_widths(widths)
    geometry = Structure.of(structure)
    config = predictor.config
    run = _run_id(geometry, widths, env.num_processes, predictor.name)
    cut = [a for a in range(3) if widths[a] is not None]
    info = {
        "source": "hamjax model",
        "model": predictor.name,
        "inference": "exact slices",
        "cutoff_angstrom": float(config.cutoff),
        "units": {"hamiltonian": "Hartree"},
        "tile_widths_angstrom": [w or 0.0 for w in widths],
        "processes": env.num_processes,
    }
    if len(cut) == 1:
        info["slice_width_angstrom"] = float(widths[cut[0]])
        info["slice_axis"] = int(cut[0])
    info.update(metadata or {})
    if env.process_id == 0:
        predictor.check_cells([structure])
        prepare_folder(
            folder,
            geometry,
            config.basis,
            run=run,
            n_ranks=env.num_processes,
            metadata=info,
            has_overlap=_overlap_source(structure) is not None,
        )
    barrier("hamjax-parts-ready")
    summary = predict_parts(
        predictor,
        structure,
        folder,
        widths=widths,
        run=run,
        rank=env.process_id,
        n_ranks=env.num_processes,
        deal=deal,
        tiles_per_batch=tiles_per_batch,
        growth=growth,
        time_compile=time_compile,
        max_tiles=max_tiles,
        progress=progress,
    )
    barrier("hamjax-parts-done")
    if shutdown_after:
        shutdown()
    if env.process_id != 0:
        return summary
    if max_tiles is not None:
        return {"ranks": rank_summaries(folder), "partial": True}
    start = time.perf_counter()
    parts = Parts(folder)
    written = []
    if out is not None:
        written.append(str(write_record(parts, out, progress=progress)))
    if cp2k is not None:
        files = write_cp2k_parts(parts, cp2k, binary=cp2k_binary, progress=progress)
        written.extend(str(p) for p in files)
    return {
        "atoms": parts.n_atoms,
        "blocks": parts.n_blocks,
        "values": parts.n_values,
        "ranks": parts.summaries(),
        "written": written,
        "merge_seconds": round(time.perf_counter() - start, 3),
        "merge_peak_rss_mib": round(peak_rss_mib(), 1),
    }


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the coordinator of a local run)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])
