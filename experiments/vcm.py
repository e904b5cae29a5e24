"""The valence-change-memory experiment (the paper's Table I and Fig. 4) from a config file.

Usage (every stage is resumable; rerun to continue)::

    python experiments/vcm.py all        experiments/vcm_default.json --out runs/vcm
    python experiments/vcm.py references experiments/vcm_default.json --out runs/vcm
    python experiments/vcm.py train      experiments/vcm_default.json --out runs/vcm
    python experiments/vcm.py evaluate   experiments/vcm_default.json --out runs/vcm

    # the test table of a shipped model (its test devices' references, no training)
    python experiments/vcm.py evaluate experiments/vcm_pretrained.json --model vcm-gfn1 \
        --out runs/vcm_gfn1

The stages can run on different machines that share the output folder: references with
tblite on CPU cores, training on a GPU, the evaluation (predictions, MAE table, T(E) and
currents, sensitivity maps) anywhere. The config's keys are the fields of
:class:`hamjax.vcm.VCMConfig`, given where they differ from its defaults
(:func:`hamjax.vcm.load_config`). ``experiments/vcm_default.json`` is the full default run
(the defaults: devices of about 110 atoms, the paper's model, 500 epochs; about 2 h
on two CPU cores), ``experiments/vcm_wide.json`` the next size up (2 x 2 TiN cells across, about
500 atoms: hours of tblite, training on a GPU), and ``hamjax demo`` runs the same pipeline
on :func:`hamjax.vcm.demo_config`. Outputs: see :mod:`hamjax.vcm`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

STAGES = {
    "references": ("references",),
    "train": ("references", "train"),
    "evaluate": ("references", "evaluate"),
    "all": ("references", "train", "evaluate"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("config", type=Path, help="VCM config (JSON, keys of VCMConfig)")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument(
        "--model",
        default=None,
        help="predict the test devices with this shipped model or model folder (no training)",
    )
    parser.add_argument(
        "--until-epoch",
        type=int,
        default=None,
        help="stop training after this epoch (a sitting; the next run resumes there)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from hamjax import vcm

    config = vcm.load_config(args.config)
    if args.model is not None:
        config = dataclasses.replace(config, pretrained_model=args.model)
    echo = (lambda _: None) if args.quiet else print
    summary = vcm.run_experiment(
        config,
        args.out,
        progress=not args.quiet,
        echo=echo,
        stages=STAGES[args.stage],
        until_epoch=args.until_epoch,
    )
    if summary is not None:
        print((args.out / "table.md").read_text())
        print(json.dumps(summary["devices"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
