"""Predict Hamiltonians of structures with a trained model (dataset npz, optionally CP2K CSR).

--structure takes any file ase can read (all frames are used: .xyz, .extxyz, .cif, ...) or a
hamjax dataset file (.npz, whose geometry is used and whose overlap S is copied onto the
predicted blocks). With one structure --out is the output file; with several, the frames go
to OUT_STEM-<k>.npz next to it. --cp2k PREFIX also writes the CP2K CSR files
(PREFIX-KS_SPIN_1-1_0.csr ...; PREFIX-<k> for several frames). --slices exact predicts by
exact slices of --slice-width Angstrom (equal to full-graph inference, for structures too
large for one pass).

Streamed and distributed (one structure, --slices exact): --stream predicts tile by tile and
appends the blocks to part files (--parts, default OUT.parts) that are merged into --out
(and --cp2k) without holding the whole matrix; --tile-widths WX WY WZ cuts along several
lattice vectors (0 = not cut). --processes N runs N processes on this machine (127.0.0.1, a
free port); on a cluster every rank runs the same command with --num-processes,
--process-id and --coordinator HOST:PORT (or HAMJAX_NUM_PROCESSES, HAMJAX_PROCESS_ID,
HAMJAX_COORDINATOR; or --cluster slurm under srun) and a --parts folder all ranks can reach.
Process 0 merges and prints the summary (docs/distributed.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="folder of a trained model")
    parser.add_argument(
        "--structure", type=Path, required=True, help="structure file (ase-readable or .npz)"
    )
    parser.add_argument("--out", type=Path, required=True, help="output dataset file (.npz)")
    parser.add_argument("--cp2k", default=None, metavar="PREFIX", help="also write CP2K CSR")
    parser.add_argument(
        "--slices", choices=("exact",), default=None, help="predict by exact slices"
    )
    parser.add_argument(
        "--slice-width", type=float, default=10.0, help="slice width, Angstrom (default 10)"
    )
    parser.add_argument(
        "--slice-axis", type=int, default=0, choices=(0, 1, 2), help="lattice vector to slice"
    )
    parser.add_argument(
        "--checkpoint", choices=("best", "latest"), default="best", help="which checkpoint"
    )
    parser.add_argument(
        "--batch",
        type=int,
        default=None,
        help="structures (or slices) per padded batch (default 8; streamed: 1 tile)",
    )
    group = parser.add_argument_group("streamed and distributed prediction (--slices exact)")
    group.add_argument(
        "--stream", action="store_true", help="predict tile by tile into part files, then merge"
    )
    group.add_argument(
        "--parts", type=Path, default=None, help="folder of the part files (default OUT.parts)"
    )
    group.add_argument(
        "--keep-parts", action="store_true", help="keep the part files after the merge"
    )
    group.add_argument(
        "--tile-widths",
        type=float,
        nargs=3,
        default=None,
        metavar=("WX", "WY", "WZ"),
        help="tile width per lattice vector, Angstrom (0: not cut); default --slice-width "
        "along --slice-axis",
    )
    group.add_argument(
        "--deal",
        choices=("balanced", "round-robin"),
        default="balanced",
        help="how tiles are dealt to processes",
    )
    group.add_argument(
        "--processes", type=int, default=None, help="run N processes on this machine"
    )
    group.add_argument("--num-processes", type=int, default=None, help="cluster: process count")
    group.add_argument("--process-id", type=int, default=None, help="cluster: this process")
    group.add_argument("--coordinator", default=None, help="cluster: HOST:PORT of process 0")
    group.add_argument(
        "--cluster", choices=("slurm",), default=None, help="read the process layout from SLURM"
    )
    group.add_argument("--cp2k-binary", action="store_true", help="binary CP2K CSR files")


def read_structures(path: Path) -> list:
    """Structures of a file: a dataset record (.npz) or every frame ase reads."""
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} does not exist")
    if path.suffix == ".npz":
        from hamjax.io import dataset  # deferred: not needed by --help

        return [dataset.load(path)]
    from hamjax.io.files import read_structures as read_frames  # deferred: ase, not for --help

    return read_frames(path)


def _streamed_options(args) -> bool:
    """Whether the streamed (parts) route is asked for; raises for inconsistent options."""
    from hamjax.distributed import process_env  # deferred: not needed by --help

    args.process_env = process_env(
        coordinator=args.coordinator,
        num_processes=args.num_processes,
        process_id=args.process_id,
        cluster=args.cluster,
    )
    streamed = bool(
        args.stream or args.parts or args.processes is not None or args.tile_widths is not None
    )
    streamed = streamed or args.process_env is not None
    if streamed and args.slices != "exact":
        raise ValueError(
            "--stream, --parts, --tile-widths and several processes predict by exact slices: "
            "add --slices exact"
        )
    if args.processes is not None and args.processes < 1:
        raise ValueError(f"--processes must be >= 1, got {args.processes}")
    if args.processes is not None and args.process_env is not None:
        raise ValueError(
            "--processes launches its own processes; it does not go with --num-processes, "
            "--process-id, --cluster or HAMJAX_NUM_PROCESSES"
        )
    return streamed


def _child_arguments(args) -> list[str]:
    """The command line every rank of a local launch runs (--processes left out)."""
    out = ["predict", "--model", str(args.model), "--structure", str(args.structure)]
    out += ["--out", str(args.out), "--slices", "exact"]
    out += ["--slice-width", repr(args.slice_width), "--slice-axis", str(args.slice_axis)]
    out += ["--checkpoint", args.checkpoint, "--deal", args.deal, "--stream"]
    if args.cp2k:
        out += ["--cp2k", str(args.cp2k)]
    if args.batch is not None:
        out += ["--batch", str(args.batch)]
    if args.parts is not None:
        out += ["--parts", str(args.parts)]
    if args.tile_widths is not None:
        out += ["--tile-widths", *map(repr, args.tile_widths)]
    out += ["--keep-parts"] * args.keep_parts + ["--cp2k-binary"] * args.cp2k_binary
    return out


def _run_streamed(args) -> int:
    import shutil

    from hamjax import distributed
    from hamjax.inference import Predictor

    env = args.process_env or distributed.ProcessEnv()
    distributed.initialize(env)  # before the model touches a device
    structures = read_structures(args.structure)
    if len(structures) != 1:
        raise ValueError(
            f"{args.structure}: {len(structures)} frames; streamed and distributed prediction "
            "take one structure"
        )
    predictor = Predictor.load(args.model, args.checkpoint)
    widths = args.tile_widths
    if widths is None:
        widths = [0.0, 0.0, 0.0]
        widths[args.slice_axis] = args.slice_width
    parts = args.parts or args.out.with_name(args.out.name + ".parts")

    def progress(line: str) -> None:
        print(f"hamjax predict: {line}", file=sys.stderr, flush=True)

    start = time.perf_counter()
    result = distributed.predict_streamed(
        predictor,
        structures[0],
        parts,
        widths=widths,
        env=env,
        out=args.out,
        cp2k=args.cp2k,
        cp2k_binary=args.cp2k_binary,
        deal=args.deal,
        tiles_per_batch=args.batch or 1,
        progress=progress,
    )
    if env.process_id != 0:
        return 0
    if not args.keep_parts:
        shutil.rmtree(parts)
    ranks = result["ranks"]
    summary = {
        "structures": 1,
        "atoms": result["atoms"],
        "blocks": result["blocks"],
        "seconds": round(time.perf_counter() - start, 3),
        "compilations": int(sum(r["compilations"] for r in ranks)),
        "written": result["written"],
        "processes": env.num_processes,
        "tiles": int(sum(r["tiles"] for r in ranks)),
        "merge_seconds": result["merge_seconds"],
        "peak_rss_mib": [r["peak_rss_mib"] for r in ranks],
    }
    if args.keep_parts:
        summary["parts"] = str(parts)
    print(json.dumps(summary))
    return 0


def launch_local(
    arguments: Sequence[str],
    n_processes: int,
    *,
    module: str = "hamjax.cli",
    python: str | None = None,
    poll_seconds: float = 0.2,
) -> int:
    """Run ``python -m module ARGUMENTS`` as ``n_processes`` ranks on this machine.

    Each rank gets ``--num-processes N --process-id k --coordinator 127.0.0.1:PORT``
    appended (PORT free at launch) and inherits stdout and stderr. When a rank fails, the
    others are stopped.

    Returns:
        0 when every rank succeeded, else the first failing rank's exit status (a line on
        stderr names the rank).
    """
    if n_processes < 1:
        raise ValueError(f"--processes must be >= 1, got {n_processes}")
    from hamjax.distributed import free_port  # deferred: not needed by --help

    coordinator = f"127.0.0.1:{free_port()}"
    ranks = []
    for k in range(n_processes):
        command = [python or sys.executable, "-m", module, *arguments]
        command += ["--num-processes", str(n_processes), "--process-id", str(k)]
        command += ["--coordinator", coordinator]
        ranks.append(subprocess.Popen(command))  # noqa: S603 - our own interpreter and module
    failed = None
    try:
        while any(p.poll() is None for p in ranks):
            for k, p in enumerate(ranks):
                if p.returncode not in (None, 0) and failed is None:
                    failed = (k, p.returncode)
            if failed is not None:
                break
            time.sleep(poll_seconds)
    finally:
        for p in ranks:
            if p.poll() is None:
                p.terminate()
        for p in ranks:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    if failed is None:
        bad = [(k, p.returncode) for k, p in enumerate(ranks) if p.returncode != 0]
        failed = bad[0] if bad else None
    if failed is not None:
        k, code = failed
        print(f"hamjax: process {k} of {n_processes} failed (exit status {code})", file=sys.stderr)
        return int(code) if code > 0 else 1
    return 0


def run(args) -> int:
    if _streamed_options(args):
        if args.processes is not None:
            if not args.structure.is_file():
                raise FileNotFoundError(f"structure file {args.structure} does not exist")

            return launch_local(_child_arguments(args), args.processes)
        return _run_streamed(args)
    # deferred: JAX and the model, not needed by --help
    from hamjax.inference import Predictor
    from hamjax.io import dataset

    structures = read_structures(args.structure)
    predictor = Predictor.load(args.model, args.checkpoint)
    start = time.perf_counter()
    records = predictor.predict(
        structures,
        slices=args.slices,
        slice_width_angstrom=args.slice_width,
        slice_axis=args.slice_axis,
        max_graphs_per_batch=args.batch or 8,
    )
    elapsed = time.perf_counter() - start
    written = []
    for k, record in enumerate(records):
        out = args.out
        if len(records) > 1:
            out = args.out.with_name(f"{args.out.stem}-{k}{args.out.suffix or '.npz'}")
        written.append(str(dataset.save(record, out)))
        if args.cp2k:
            from hamjax.io import write_cp2k  # deferred: only with --cp2k

            prefix = args.cp2k if len(records) == 1 else f"{args.cp2k}-{k}"
            written.extend(str(p) for p in write_cp2k(record, prefix, binary=args.cp2k_binary))
    summary = {
        "structures": len(records),
        "atoms": int(sum(len(r.numbers) for r in records)),
        "blocks": int(sum(len(r.pairs) for r in records)),
        "seconds": round(elapsed, 3),
        "compilations": predictor.n_traces,
        "written": written,
    }
    print(json.dumps(summary))
    return 0
