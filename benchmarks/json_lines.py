"""The benchmarks' output: one JSON record per line, on stdout and appended to ``--out``."""

from __future__ import annotations

import json


def emitter(common: dict, path=None):
    """``emit(record)``: print ``{**common, **record}`` as one JSON line (flushed) and, when
    ``path`` is given, append the line to that file (opened per record, so a run that is
    stopped keeps every line it printed)."""

    def emit(record: dict) -> None:
        line = json.dumps({**common, **record})
        print(line, flush=True)
        if path:
            with open(path, "a") as out:
                out.write(line + "\n")

    return emit
