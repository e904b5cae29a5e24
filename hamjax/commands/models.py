"""List the trained models that ship with hamjax, with their model cards' summaries.

Each name works wherever a model folder does: 'hamjax predict --model NAME',
'hamjax.inference.Predictor.load(NAME)', a training config's "init_from". --card NAME prints
that model's whole card (JSON: training data, reference method, errors, validity).
"""

from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("--card", metavar="NAME", default=None, help="print one model's card")


def run(args) -> int:
    from hamjax import pretrained

    if args.card is not None:
        print(json.dumps(pretrained.card(args.card), indent=2))
        return 0
    for name in pretrained.names():
        print(pretrained.summary(name))
        print(f"    {pretrained.folder(name)}")
    return 0
