"""Run the VCM experiment in its small demo setting (minutes on two CPU cores).

Builds TiN | HfO2 | Ti | TiN devices one TiN cell across (two with random oxygen vacancies
for training, one for validation, two unseen test devices: a formed filament and the same
filament broken), computes GFN1-xTB reference Hamiltonians with tblite, trains the
equivariant model on slices, predicts the test devices, and compares the currents at 1 V
from predicted and reference Hamiltonians, with the electrodes' open channels at E_F.

Writes to --out: table.md / table.json (MAE and currents per test device), summary.json,
errors.png, error_profile.png (the H error along the device), transmission.png and .json
(the T(E) curves), sensitivity.png and .json (per-atom dI/dH and dI/dR), device_*.png,
timings.json. Runs are resumable: references and checkpoints already in --out are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help=(
            "VCM experiment config instead of the demo's (JSON: what differs from the"
            " defaults of hamjax.vcm.VCMConfig, not from the demo's)"
        ),
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from hamjax import vcm

    config = vcm.demo_config() if args.config is None else vcm.load_config(args.config)
    echo = (lambda _: None) if args.quiet else print
    summary = vcm.run_experiment(config, args.out, progress=not args.quiet, echo=echo)
    print((args.out / "table.md").read_text())
    print(json.dumps(summary["devices"], indent=2))
    figures = "errors.png, error_profile.png, transmission.png, sensitivity.png"
    print(f"results in {args.out}/ (table.md, summary.json, {figures})")
    return 0
