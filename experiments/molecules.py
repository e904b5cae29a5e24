"""MD17-style molecular Hamiltonian benchmark: sample -> label -> train -> evaluate -> table.

Usage (every step is resumable; rerun to continue)::

    python experiments/molecules.py sample   experiments/molecules_water.json
    python experiments/molecules.py label    experiments/molecules_water.json [--split train]
    python experiments/molecules.py label    experiments/molecules_water.json --reverse  # 2nd
    python experiments/molecules.py train    experiments/molecules_water.json
    python experiments/molecules.py evaluate experiments/molecules_water.json
    python experiments/molecules.py all      experiments/molecules_water.json

Config keys (JSON object):

- ``molecule``: "water", "ethanol" or an ``ase.build.molecule`` name.
- ``data_dir``: folder of the data (outside the repository), relative to the config file or
  absolute. It receives ``frames.extxyz`` (all sampled geometries, Angstrom),
  ``splits.json`` (frame indices per split) and ``<split>/frame_<index>.npz`` dataset files.
- ``n_frames``: number of MD frames; ``splits``: ``{"train": n, "val": n, "test": null}``
  (``null`` = the rest); ``split_seed``: permutation seed; ``label_order``: which splits to
  label first (the test split need not be labelled in full: ``max_label`` caps each split).
- ``sampling``: fields of :class:`hamjax.molecules.SamplingSettings` (500 K Langevin on
  GFN2-xTB by default).
- ``reference``: ``{"engine": "pyscf", "xc": "PBE", "basis": "def2-SVP", ...}``.
- ``train``: fields of :class:`hamjax.train.TrainConfig` (``data`` and
  ``validation_data`` are filled in from the splits); ``run_dir``: output folder of the run.
- ``published``: numbers to print next to ours (micro-Hartree MAE over all H entries).

The evaluate step writes ``results.json`` and ``results.md`` in the run folder: MAE over all
H entries of the test split (micro-Hartree), node/edge split, orbital-energy MAE, training
cost, and the published numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from hamjax import molecules

SPLIT_FILE = "splits.json"
FRAME_FILE = "frames.extxyz"


def load_experiment(path: Path) -> dict:
    """Read the experiment config and resolve its folders against the config's location."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such experiment config")
    config = json.loads(path.read_text())
    for key in ("molecule", "data_dir", "n_frames", "splits"):
        if key not in config:
            raise ValueError(f"{path}: missing key {key!r}")
    base = path.parent
    for key in ("data_dir", "run_dir"):
        if key in config:
            config[key] = str((base / config[key]).resolve())
    config.setdefault("run_dir", str(Path(config["data_dir"]) / "run"))
    config.setdefault("split_seed", 0)
    config.setdefault("sampling", {})
    config.setdefault("reference", {"engine": "pyscf"})
    config.setdefault("label_order", list(config["splits"]))
    config.setdefault("max_label", {})
    return config


def frame_path(data_dir: Path, split: str, index: int) -> Path:
    return Path(data_dir) / split / f"frame_{index:05d}.npz"


def cmd_sample(config: dict, progress: bool = True) -> dict:
    """MD frames and splits; skipped when ``frames.extxyz`` already holds enough frames."""
    data_dir = Path(config["data_dir"])
    target = data_dir / FRAME_FILE
    settings = molecules.SamplingSettings(**config["sampling"])
    n = int(config["n_frames"])
    info = {"frames": str(target), "n_frames": n, "sampling": settings.as_dict()}
    if target.exists() and len(molecules.read_frames(target)) >= n:
        info["skipped"] = True
    else:
        atoms = molecules.make_molecule(config["molecule"])
        start = time.perf_counter()
        frames = molecules.thermal_frames(atoms, n, settings, progress=progress)
        wall = time.perf_counter() - start
        molecules.write_frames(frames, target)
        info.update(wall_time_s=wall, seconds_per_frame=wall / n)
        (data_dir / "sampling.json").write_text(json.dumps(info, indent=2))
    splits = molecules.split_indices(n, config["splits"], config["split_seed"])
    (data_dir / SPLIT_FILE).write_text(
        json.dumps({k: v.tolist() for k, v in splits.items()}, indent=1)
    )
    info["splits"] = {k: len(v) for k, v in splits.items()}
    return info


def _splits(config: dict) -> dict:
    path = Path(config["data_dir"]) / SPLIT_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: run the sample step first")
    return json.loads(path.read_text())


def cmd_label(
    config: dict, only: str | None = None, progress: bool = True, reverse: bool = False
) -> dict:
    """Reference H and S for the frames of each split, in ``label_order`` (resumable).

    With ``reverse`` each split is labelled from its end, so that a second process started
    on the same split meets the first one in the middle instead of repeating its frames.
    """
    data_dir = Path(config["data_dir"])
    frames = molecules.read_frames(data_dir / FRAME_FILE)
    splits = _splits(config)
    reference = dict(config["reference"])
    engine = reference.pop("engine", "pyscf")
    report = {}
    for split in config["label_order"]:
        if only is not None and split != only:
            continue
        indices = splits[split][: config["max_label"].get(split)]
        if reverse:
            indices = indices[::-1]
        report[split] = molecules.label_frames(
            [frames[i] for i in indices],
            [frame_path(data_dir, split, i) for i in indices],
            engine=engine,
            settings=reference,
            progress=progress,
            metadata={
                "molecule": config["molecule"],
                "split": split,
                "sampling": config["sampling"],
            },
        )
        print(json.dumps({"split": split, **report[split]}), flush=True)
    return report


def labelled(config: dict, split: str) -> list[str]:
    """The existing dataset files of a split, sorted."""
    return sorted(str(p) for p in (Path(config["data_dir"]) / split).glob("frame_*.npz"))


def cmd_train(config: dict, progress: bool = True) -> dict:
    """Train with hamjax.train on the labelled train split, validating on the val split."""
    from hamjax import train

    train_files = labelled(config, "train")
    val_files = labelled(config, "val")
    if not train_files:
        raise FileNotFoundError(f"{config['data_dir']}/train: no labelled frames")
    settings = dict(config.get("train", {}))
    settings["data"] = train_files
    settings["validation_data"] = val_files
    settings.setdefault("progress", progress)
    train_config = train.config_from_dict(settings)
    start = time.perf_counter()
    record = train.train(train_config, Path(config["run_dir"]))
    wall = time.perf_counter() - start
    cost = {
        "wall_time_s": wall,
        "n_train": len(train_files),
        "n_val": len(val_files),
        "machine": _machine(),
    }
    run_dir = Path(config["run_dir"])
    previous = run_dir / "train_cost.json"
    if previous.exists():  # a resumed run adds to the time already spent
        cost["wall_time_s"] += json.loads(previous.read_text()).get("wall_time_s", 0.0)
    previous.write_text(json.dumps(cost, indent=2))
    return {"train": record, "cost": cost}


def _machine() -> str:
    import os
    import platform

    import jax

    cpu = platform.processor() or platform.machine()
    device = jax.devices()[0].platform
    return f"{cpu}, {os.cpu_count()} CPU cores, jax {jax.__version__} on {device}"


def cmd_evaluate(config: dict, split: str = "test", progress: bool = True) -> dict:
    """Metrics of the trained model on a split; writes results.json and results.md."""
    from hamjax import evaluate

    files = labelled(config, split)
    if not files:
        raise FileNotFoundError(f"{config['data_dir']}/{split}: no labelled frames")
    run_dir = Path(config["run_dir"])
    metrics = evaluate.evaluate_model(run_dir, files, progress=progress)
    cost_file = run_dir / "train_cost.json"
    cost = json.loads(cost_file.read_text()) if cost_file.exists() else {}
    result = {
        "molecule": config["molecule"],
        "split": split,
        "n_frames": len(files),
        "metrics": metrics,
        "train_cost": cost,
        "published_uha": config.get("published", {}),
        "reference": config["reference"],
        "sampling": config["sampling"],
    }
    (run_dir / "results.json").write_text(json.dumps(result, indent=2))
    (run_dir / "results.md").write_text(results_table([result]))
    return result


def results_table(results: list[dict]) -> str:
    """Markdown table: our MAE (micro-Hartree) next to the published numbers."""
    lines = [
        "| molecule | test frames | H MAE (uEh) | node (uEh) | edge (uEh)"
        " | orbital-energy MAE (uEh) | training | published (uEh) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        m = r["metrics"]
        cost = r.get("train_cost") or {}
        train = (
            f"{cost.get('wall_time_s', float('nan')) / 3600:.2f} h, {cost.get('n_train', '?')}"
            f" train frames, {cost.get('machine', '?')}"
        )
        published = ", ".join(f"{k} {v}" for k, v in r.get("published_uha", {}).items())
        lines.append(
            f"| {r['molecule']} | {r['n_frames']} | {m['mae_uha']:.2f} | {m['node_mae_uha']:.2f}"
            f" | {m['edge_mae_uha']:.2f} | {m['orbital_energy_mae_uha']:.2f} | {train}"
            f" | {published} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["sample", "label", "train", "evaluate", "all"])
    parser.add_argument("config", type=Path)
    parser.add_argument("--split", default=None, help="label/evaluate only this split")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument(
        "--reverse", action="store_true", help="label each split from its end (second worker)"
    )
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    config = load_experiment(args.config)
    progress = not args.quiet
    out = {}
    if args.step in ("sample", "all"):
        out["sample"] = cmd_sample(config, progress)
    if args.step in ("label", "all"):
        out["label"] = cmd_label(config, args.split, progress, args.reverse)
    if args.step in ("train", "all"):
        out["train"] = cmd_train(config, progress)
    if args.step in ("evaluate", "all"):
        out["evaluate"] = cmd_evaluate(config, args.split or "test", progress)
        print(results_table([out["evaluate"]]))
    print(json.dumps(out, default=str, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
