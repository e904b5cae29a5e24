"""Evaluate a trained model on dataset files: H MAE (micro-Hartree), node/edge, orbital energies.

--data takes dataset files (.npz) or glob patterns (quoted), seen in training or not. Prints
the MAE over all H entries, its node (on-site) and edge parts, RMSE and maximum error, and
the MAE of the generalised eigenvalues of the predicted H with the reference S (all orbitals,
occupied orbitals, HOMO, LUMO, gap), all in micro-Hartree; --out FILE also writes them (JSON).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

_LABELS = (
    ("mae_uha", "H MAE, all entries"),
    ("node_mae_uha", "  node (on-site) blocks"),
    ("edge_mae_uha", "  edge blocks"),
    ("rmse_uha", "H RMSE"),
    ("max_abs_uha", "H max |error|"),
    ("orbital_energy_mae_uha", "orbital energy MAE, all"),
    ("occupied_orbital_energy_mae_uha", "orbital energy MAE, occupied"),
    ("homo_mae_uha", "HOMO MAE"),
    ("lumo_mae_uha", "LUMO MAE"),
    ("gap_mae_uha", "gap MAE"),
)


def add_arguments(parser) -> None:
    parser.add_argument("--model", type=Path, required=True, help="folder of a trained model")
    parser.add_argument(
        "--data", nargs="+", required=True, help="dataset files (.npz) or quoted glob patterns"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the metrics here (JSON)")
    # --json: the earlier name of --out, kept so that scripts keep working
    parser.add_argument("--json", dest="out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument(
        "--checkpoint", choices=("best", "latest"), default="best", help="which checkpoint"
    )
    parser.add_argument(
        "--no-orbital-energies", action="store_true", help="skip the eigenvalue metrics"
    )
    parser.add_argument("--batch", type=int, default=16, help="structures per padded model batch")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def expand(patterns) -> list[Path]:
    """Files named by paths or glob patterns, in order, each once."""
    from hamjax.io.dataset import expand_paths  # deferred: not needed by --help

    return list(dict.fromkeys(expand_paths(patterns)))


def format_metrics(metrics: dict) -> str:
    """Human-readable lines, micro-Hartree."""
    lines = [
        f"{metrics['n_frames']} structures, {metrics['n_entries']} H entries "
        f"({metrics['n_node_entries']} node, {metrics['n_edge_entries']} edge)"
    ]
    for key, label in _LABELS:
        if key in metrics:
            lines.append(f"{label:32s} {metrics[key]:12.3f} uEh")
    if "occupied_similarity" in metrics:
        lines.append(f"{'occupied orbital similarity':32s} {metrics['occupied_similarity']:12.6f}")
    return "\n".join(lines)


def run(args) -> int:
    from hamjax.evaluate import evaluate_model  # deferred: JAX and the model, not by --help

    files = expand(args.data)
    if not (Path(args.model) / "checkpoints").is_dir():
        raise FileNotFoundError(f"{args.model} has no checkpoints/ folder (not a model folder)")
    start = time.perf_counter()
    metrics = evaluate_model(
        args.model,
        files,
        which=args.checkpoint,
        max_graphs_per_batch=args.batch,
        orbital_energies=not args.no_orbital_energies,
        progress=not args.quiet,
    )
    metrics["wall_time_s"] = time.perf_counter() - start
    metrics["model"] = str(args.model)
    metrics["checkpoint"] = args.checkpoint
    print(format_metrics(metrics))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(metrics, indent=2) + "\n")
        print(f"metrics written to {args.out}")
    return 0
