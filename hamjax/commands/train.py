"""Train a Hamiltonian model from a JSON config; rerun the same command to resume.

The config file holds the fields of hamjax.train.TrainConfig (see hamjax.train.config);
missing keys take the defaults, unknown keys are an error naming the file and key; a model
without a "basis" takes the basis recorded in the training data files. Print the full
default file with --print-default-config. Output folder (--out): config.json, log.jsonl (one
line per epoch), folded_cells.json and checkpoints/ (latest and best, orbax). If the folder
already holds checkpoints of the same config, training continues from the latest one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path


def add_arguments(parser) -> None:
    parser.add_argument("--config", type=Path, help="JSON config file")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output folder (default: the config file's name without .json, next to it)",
    )
    parser.add_argument(
        "--print-default-config",
        action="store_true",
        help="print the default config as JSON and exit",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args) -> int:
    from hamjax import train  # deferred: JAX and the model, not needed by --help

    if args.print_default_config:
        print(train.format_config(train.default_config()))
        return 0
    if args.config is None:
        raise ValueError("give --config FILE (or --print-default-config)")
    config = train.load_config(args.config)
    if args.quiet:
        config = dataclasses.replace(config, progress=False)
    out = args.out if args.out is not None else args.config.with_suffix("")
    record = train.train(config, out)
    print(json.dumps({"out": str(out), **record}))
    return 0
