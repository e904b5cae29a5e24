"""Run the VCM experiment in its small demo setting (minutes on two CPU cores).

Builds TiN | HfO2 | Ti | TiN devices one TiN cell across: two unseen test devices (a formed
filament and the same filament broken), computes their GFN1-xTB reference Hamiltonians with
tblite, predicts them with the shipped model vcm-gfn1 (trained on other devices: 'hamjax
models'), and compares the currents at 1 V from predicted and reference Hamiltonians on a
1 x 2 x 2 transverse k-grid, with the electrodes' open channels at E_F.

--train instead trains a small model from scratch on two training devices (a minute of
training, far from the shipped model's accuracy; transport at Gamma); --fine-tune N
continues the shipped model for N steps on the demo's own training devices.

Writes to --out: table.md / table.json (MAE and currents per test device), summary.json,
errors.png, error_profile.png (the H error along the device), transmission.png and .json
(the T(E) curves), sensitivity.png and .json (per-atom dI/dH and dI/dR), device_*.png,
timings.json. Runs are resumable: references and checkpoints already in --out are reused.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

#: The shipped model the demo predicts with.
DEMO_MODEL = "vcm-gfn1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--train", action="store_true", help="train a small model from scratch instead"
    )
    mode.add_argument(
        "--fine-tune",
        type=int,
        default=0,
        metavar="N",
        help=f"continue {DEMO_MODEL} for N steps on the demo's training devices",
    )
    mode.add_argument(
        "--config",
        type=Path,
        default=None,
        help=(
            "VCM experiment config instead of the demo's (JSON: what differs from the"
            " defaults of hamjax.vcm.VCMConfig, not from the demo's)"
        ),
    )
    parser.add_argument(
        "--model",
        default=DEMO_MODEL,
        help=f"shipped model name or model folder to predict with (default {DEMO_MODEL})",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from hamjax import vcm

    if args.config is not None:
        config = vcm.load_config(args.config)
    elif args.train:
        config = vcm.demo_config()
    else:
        if args.fine_tune < 0:
            raise ValueError(f"--fine-tune takes a number of steps >= 1, got {args.fine_tune}")
        config = vcm.demo_config(pretrained=args.model, fine_tune_steps=args.fine_tune)
    echo = (lambda _: None) if args.quiet else print
    summary = vcm.run_experiment(config, args.out, progress=not args.quiet, echo=echo)
    print((args.out / "table.md").read_text())
    print(json.dumps(summary["devices"], indent=2))
    figures = "errors.png, error_profile.png, transmission.png, sensitivity.png"
    print(f"results in {args.out}/ (table.md, summary.json, {figures})")
    return 0
