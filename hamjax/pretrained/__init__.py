"""Trained models that ship with hamjax, found by name.

Each model is a folder next to this file, laid out like the model folder of ``hamjax train
--out`` (:mod:`hamjax.io.model_folder`: ``config.json``, ``log.jsonl``, ``checkpoints/``)
plus its model card: ``card.json`` (machine-readable: data, reference method, training,
errors, validity) and ``README.md`` (the same for people). :func:`resolve` turns a name such
as ``"vcm-gfn1"`` into its folder; :class:`hamjax.inference.Predictor`, ``hamjax predict
--model`` and a training config's ``init_from`` take either a name or a folder path.

>>> "vcm-gfn1" in names()
True
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["CARD_FILE", "card", "folder", "names", "resolve", "summary"]

#: The machine-readable model card inside each shipped model's folder.
CARD_FILE = "card.json"

_HERE = Path(__file__).parent


def names() -> list[str]:
    """Names of the shipped models (folders here holding a model card), sorted."""
    return sorted(p.name for p in _HERE.iterdir() if (p / CARD_FILE).is_file())


def folder(name: str) -> Path:
    """The folder of shipped model ``name``.

    Raises:
        FileNotFoundError: no shipped model of that name (the message lists the names).
    """
    path = _HERE / name
    if name not in names():
        known = ", ".join(names()) or "none"
        raise FileNotFoundError(f"no shipped model named {name!r} (shipped: {known})")
    return path


def card(name: str) -> dict:
    """The model card of shipped model ``name`` (``card.json`` as a dict)."""
    return json.loads((folder(name) / CARD_FILE).read_text())


def summary(name: str) -> str:
    """One line about shipped model ``name``: its card's summary and test error."""
    info = card(name)
    test = info.get("test_total_mae_meV")
    error = f"; test MAE {test:.1f} meV" if isinstance(test, int | float) else ""
    return f"{name}: {info.get('summary', '')}{error}"


def resolve(model: str | os.PathLike) -> Path:
    """A model folder from a folder path or a shipped model's name.

    An existing path wins over a name; a string that is neither raises naming both readings.

    Raises:
        FileNotFoundError: not an existing folder and not a shipped model's name.
    """
    path = Path(model)
    if path.exists():
        return path
    if os.fspath(model) in names():  # a name given as a Path (argparse type=Path) too
        return folder(os.fspath(model))
    known = ", ".join(names()) or "none"
    raise FileNotFoundError(
        f"model {str(model)!r} is neither a folder nor a shipped model (shipped: {known}; "
        "list them with 'hamjax models')"
    )
