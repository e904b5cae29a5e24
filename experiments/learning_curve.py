"""Learning curve of a chain of warm-restarted molecular runs, and what its trend predicts.

Usage::

    python experiments/learning_curve.py experiments/results --prefix water \\
        --out docs/water_learning_curve.png --json experiments/results/water_learning_curve.json

Reads every ``<prefix>_<run>_config.json`` in the folder with its ``_log.jsonl`` (one line
per epoch, as :func:`hamjax.train.train` writes it) and its test metrics
(``<prefix>_<run>_test.json``, or the ``metrics`` of ``<prefix>_<run>.json``). A run whose
``train.init_from`` names another run's ``run_dir`` continues it: its steps are counted
from the step of that run's lowest validation MAE (the best checkpoint that ``init_from``
loads; checkpoints are saved every few epochs, so this is within a few epochs of it).

Writes the PNG (validation MAE against the cumulative optimiser step, log-log, test MAE at
the end of each run, the learning rate below, the published numbers as lines) and a JSON
(``--json``, else beside the PNG): per run its steps and test MAE, and a power law
``MAE = a * steps^-alpha`` fitted to the test MAE at the ends of the last ``--fit-last``
runs of the longest chain, with the steps at which it would reach each published number.
Those steps are an extrapolation of a trend, not a promise: they say what more of the same
training would buy, not what a different model or recipe would.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from hamjax.config import read_json_object


def load_runs(folder: Path, prefix: str) -> dict[str, dict]:
    """Run name -> ``{"config", "log", "test"}`` for every config with a log."""
    runs = {}
    for path in sorted(folder.glob(f"{prefix}_*_config.json")):
        name = path.name[len(prefix) + 1 : -len("_config.json")]
        log_path = folder / f"{prefix}_{name}_log.jsonl"
        if not log_path.exists():
            continue
        log = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
        if not log:
            raise ValueError(f"{log_path}: no epochs")
        test_path, results_path = (
            folder / f"{prefix}_{name}_test.json",
            folder / f"{prefix}_{name}.json",
        )
        test = None
        if test_path.exists():
            test = json.loads(test_path.read_text())
        elif results_path.exists():
            test = json.loads(results_path.read_text()).get("metrics")
        runs[name] = {"config": read_json_object(path), "log": log, "test": test}
    if not runs:
        raise FileNotFoundError(f"{folder}: no {prefix}_*_config.json with a _log.jsonl")
    return runs


def _run_dir(config: dict) -> str:
    return Path(config.get("run_dir", "run")).name


def chains(runs: dict[str, dict]) -> list[list[str]]:
    """Runs in order of continuation (``init_from`` -> ``run_dir``), longest chain first."""
    by_dir = {_run_dir(r["config"]): name for name, r in runs.items()}
    parent = {}
    for name, run in runs.items():
        source = run["config"].get("train", {}).get("init_from")
        if source is not None:
            if Path(source).name not in by_dir:
                raise ValueError(f"run {name!r} continues {source!r}, which is not among the runs")
            parent[name] = by_dir[Path(source).name]
    children: dict[str, list[str]] = {}
    for child, par in parent.items():
        children.setdefault(par, []).append(child)
    result = []
    for root in (n for n in runs if n not in parent):
        chain, node = [root], root
        while len(children.get(node, [])) == 1:
            node = children[node][0]
            chain.append(node)
        if children.get(node):
            raise ValueError(f"run {node!r} is continued by several runs: {children[node]}")
        result.append(chain)
    return sorted(result, key=len, reverse=True)


def curve(runs: dict[str, dict], chain: list[str]) -> list[dict]:
    """Per run of ``chain``: cumulative steps, validation MAE and learning rate (uEh)."""
    out, offset = [], 0
    for name in chain:
        log = runs[name]["log"]
        steps = offset + np.array([r["step"] for r in log], dtype=float)
        val = 1e3 * np.array([r["validation_total_mae_mEh"] for r in log])
        best = int(np.argmin(val))
        test = runs[name]["test"]
        out.append(
            {
                "run": name,
                "steps": steps,
                "validation_uha": val,
                "learning_rate": np.array([r["learning_rate"] for r in log]),
                "start_step": offset,
                "end_step": float(steps[-1]),
                "test_mae_uha": None if test is None else float(test["mae_uha"]),
            }
        )
        offset = float(steps[best])
    return out


def fit_power_law(steps, mae) -> tuple[float, float]:
    """``(a, alpha)`` of ``mae = a * steps^-alpha`` by least squares in log-log."""
    slope, intercept = np.polyfit(np.log(steps), np.log(mae), 1)
    return float(np.exp(intercept)), float(-slope)


def summarise(curves: list[dict], published: dict, fit_last: int) -> dict:
    tested = [c for c in curves if c["test_mae_uha"] is not None]
    ends = [(c["end_step"], c["test_mae_uha"]) for c in tested]
    summary = {
        "runs": [
            {k: c[k] for k in ("run", "start_step", "end_step", "test_mae_uha")} for c in curves
        ]
    }
    if len(ends) >= 2:
        used = ends[-fit_last:]
        a, alpha = fit_power_law(*zip(*used, strict=True))
        summary["power_law"] = {
            "fitted_runs": [c["run"] for c in tested][-fit_last:],
            "a_uha": a,
            "alpha": alpha,
            "steps_to_reach": {
                name: (a / value) ** (1.0 / alpha) if alpha > 0 else None
                for name, value in published.items()
            },
        }
    return summary


def plot(all_curves: list[list[dict]], summary: dict, published: dict, title: str, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(8, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, curves in enumerate(all_curves):
        for i, c in enumerate(curves):
            style = dict(color=colours[i % len(colours)], lw=1.0, alpha=1.0 if k == 0 else 0.5)
            ax.plot(c["steps"], c["validation_uha"], label=c["run"], **style)
            ax_lr.plot(c["steps"], c["learning_rate"], **style)
            if c["test_mae_uha"] is not None:
                ax.plot(c["end_step"], c["test_mae_uha"], "o", color=style["color"], ms=5)
    law = summary.get("power_law")
    top = max(c["end_step"] for curves in all_curves for c in curves)
    if law:
        x = np.geomspace(1e3, top * 30, 50)
        ax.plot(
            x,
            law["a_uha"] * x ** -law["alpha"],
            "k:",
            lw=1.2,
            label=f"power law through the last test points (alpha {law['alpha']:.2f})",
        )
    for name, value in published.items():
        ax.axhline(value, color="grey", ls="--", lw=0.8)
        ax.text(top * 25, value * 1.08, f"{name} {value}", color="grey", fontsize=8, ha="right")
    ax.set(xscale="log", yscale="log", ylabel="H MAE (uEh)", title=title)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    ax.grid(True, which="both", alpha=0.2)
    ax_lr.set(yscale="log", xlabel="optimiser steps (cumulative)", ylabel="learning rate")
    ax_lr.grid(True, which="both", alpha=0.2)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="results folder")
    parser.add_argument("--prefix", required=True, help="file prefix of the runs, e.g. water")
    parser.add_argument("--out", type=Path, required=True, help="PNG to write (JSON beside it)")
    parser.add_argument(
        "--json", type=Path, default=None, help="summary JSON (default: beside the PNG)"
    )
    parser.add_argument("--fit-last", type=int, default=5, help="test points in the fit")
    args = parser.parse_args(argv)
    runs = load_runs(args.folder, args.prefix)
    found = chains(runs)
    all_curves = [curve(runs, chain) for chain in found]
    published = next(iter(runs.values()))["config"].get("published", {})
    summary = summarise(all_curves[0], published, args.fit_last)
    summary["other_chains"] = found[1:]
    plot(
        all_curves, summary, published, f"{args.prefix}: validation (lines), test (dots)", args.out
    )
    (args.json or args.out.with_suffix(".json")).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
