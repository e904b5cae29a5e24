"""Predict Hamiltonians of structures with a trained model (dataset npz, optionally CP2K CSR).

--structure takes any file ase can read (all frames are used: .xyz, .extxyz, .cif, ...) or a
hamjax dataset file (.npz, whose geometry is used and whose overlap S is copied onto the
predicted blocks). With one structure --out is the output file; with several, the frames go
to OUT_STEM-<k>.npz next to it. --cp2k PREFIX also writes the CP2K CSR files
(PREFIX-KS_SPIN_1-1_0.csr ...; PREFIX-<k> for several frames). --slices exact predicts by
exact slices of --slice-width Angstrom (equal to full-graph inference, for structures too
large for one pass).
"""

from __future__ import annotations

import json
import time
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
        "--batch", type=int, default=8, help="structures (or slices) per padded batch"
    )


def read_structures(path: Path) -> list:
    """Structures of a file: a dataset record (.npz) or every frame ase reads."""
    if not path.is_file():
        raise FileNotFoundError(f"structure file {path} does not exist")
    if path.suffix == ".npz":
        from hamjax.io import dataset  # deferred: not needed by --help

        return [dataset.load(path)]
    from hamjax.io.files import read_structures as read_frames  # deferred: ase, not for --help

    return read_frames(path)


def run(args) -> int:
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
        max_graphs_per_batch=args.batch,
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
            written.extend(str(p) for p in write_cp2k(record, prefix))
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
