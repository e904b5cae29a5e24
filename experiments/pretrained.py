"""Ship a trained VCM model inside hamjax (``hamjax/pretrained/NAME``), or take it back out.

Usage::

    # train (resumable; rerun to continue), then ship the run's model with its card
    python experiments/vcm.py all experiments/vcm_pretrained.json --out runs/pretrained
    python experiments/pretrained.py ship runs/pretrained --config experiments/vcm_pretrained.json

    # a later sitting: put the shipped checkpoints back into a run folder and continue there
    # (the training data are rebuilt by the references stage: about a minute per device)
    python experiments/pretrained.py restore runs/pretrained
    python experiments/vcm.py all experiments/vcm_pretrained.json --out runs/pretrained

``ship`` copies the run's model folder (checkpoints, training config, log), computes the
reference check (a device of its own seed, never trained on: its tblite reference, kept
in the model folder on the predicted blocks of its middle atoms only, and the model's MAE
on them, which ``tests/test_pretrained.py`` reproduces) and writes the model card (``card.json`` and
``README.md``) from the run's config, log and test table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
NAME = "vcm-gfn1"

#: The reference-check device: the shipped model's devices with a filament of a seed no
#: training device has. Its record keeps the blocks of the CHECK_ATOMS atoms nearest the
#: middle of the cell along x (oxide and Ti, the filament: a small file).
CHECK_DEVICE = {"vacancy_mode": "filament", "seed": 301}
CHECK_ATOMS = 24
#: How vcm-gfn1 was made: a cosine from 2e-3 stopped after 40 of its 180 epochs, then a
#: second cosine from 1e-3 to 1e-5 over 32 epochs from the first stage's best parameters.
MADE_BY = [
    "python experiments/vcm.py train experiments/vcm_pretrained.json --out runs/pretrained "
    "--until-epoch 40",
    "mv runs/pretrained/model runs/pretrained/stage1",
    "python experiments/vcm.py all experiments/vcm_pretrained_anneal.json --out runs/pretrained",
    "python experiments/pretrained.py ship runs/pretrained "
    "--config experiments/vcm_pretrained_anneal.json",
]
CHECK_FILE = "reference_check.npz"


def model_files(model: Path) -> list[Path]:
    """What a shipped model keeps of a training run's model folder."""
    names = ("config.json", "log.jsonl", "folded_cells.json", "checkpoints")
    return [model / n for n in names if (model / n).exists()]


def copy_model(source: Path, target: Path) -> None:
    """The model folder files of ``source`` into ``target`` (replacing what was there)."""
    target.mkdir(parents=True, exist_ok=True)
    for path in model_files(source):
        destination = target / path.name
        if destination.is_dir():
            shutil.rmtree(destination)
        if path.is_dir():
            shutil.copytree(path, destination)
        else:
            shutil.copy2(path, destination)


def reference_check(config, folder: Path, work: Path) -> dict:
    """Compute the check device's reference, keep it on the model's blocks, measure MAE."""
    import dataclasses

    from hamjax.inference import Predictor
    from hamjax.io import dataset
    from hamjax.structures import DeviceSpec, build_device
    from hamjax.vcm import aligned, compute_references, entry_errors, fold_prediction, mae_row

    fields = {
        **config.device,
        "vacancy_density": config.filament_background_density,
        **CHECK_DEVICE,
    }
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
    device = {"atoms": build_device(DeviceSpec(**fields)), "role": "test"}
    refs = compute_references({"check": device}, work, config.tblite, progress=True)
    reference = aligned(refs["records"], config)["check"]
    predictor = Predictor.load(folder)
    predicted = predictor.predict([reference], with_overlap=False)[0]
    prediction, on_blocks = fold_prediction(predicted, reference)
    middle = reference.cell[0, 0] / 2
    kept = np.argsort(np.abs(reference.positions[:, 0] - middle))[:CHECK_ATOMS]
    rows = np.isin(on_blocks.pairs[:, 0], kept)
    pairs, shifts = on_blocks.pairs[rows], on_blocks.shifts[rows]
    stored = dataclasses.replace(on_blocks.on_blocks(pairs, shifts), overlap=None)
    path = dataset.save(stored, folder / CHECK_FILE, compress=True)
    row = mae_row(entry_errors(prediction.on_blocks(pairs, shifts), stored))
    return {
        "file": CHECK_FILE,
        "device": {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()},
        "atoms": len(device["atoms"]),
        "atoms_kept": CHECK_ATOMS,
        "blocks": len(pairs),
        "bytes": path.stat().st_size,
        **{k: v for k, v in row.items() if k.endswith("_meV")},
    }


def card(config, run: Path, folder: Path, check: dict, config_path: str) -> dict:
    """The model card (JSON) of the model shipped in ``folder`` from run folder ``run``."""
    from hamjax.io.model_folder import read_checkpoint
    from hamjax.vcm import build_devices

    saved = read_checkpoint(folder)
    history = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    best = next(r for r in history if r["step"] == saved.step)
    stage1 = folder / "log_stage1.jsonl"
    earlier = (
        [json.loads(line) for line in stage1.read_text().splitlines()] if stage1.exists() else []
    )
    model = {k: v for k, v in saved.config["model"].items() if k != "basis"}
    n_params = int(sum(np.size(x) for x in _leaves(saved.params)))
    devices = build_devices(config)
    roles = {
        role: {
            name: {"atoms": len(d["atoms"]), **_spec(d["spec"])}
            for name, d in devices.items()
            if d["role"] == role
        }
        for role in ("train", "validation", "test")
    }
    table = json.loads((run / "table.json").read_text()) if (run / "table.json").exists() else []
    test = {
        row["device"]: {
            "atoms": row["atoms"],
            "node_mae_meV": row["node_mae_meV"],
            "edge_mae_meV": row["edge_mae_meV"],
            "total_mae_meV": row["total_mae_meV"],
            "current_ref_A": row["current_ref_A"],
            "current_pred_A": row["current_pred_A"],
            "current_ratio": row["current_pred_A"] / row["current_ref_A"],
        }
        for row in table
    }
    elements = sorted({s for d in devices.values() for s in d["atoms"].get_chemical_symbols()})
    return {
        "name": folder.name,
        "summary": (
            "GFN1-xTB Hamiltonian blocks (per periodic image) of TiN | HfO2 | Ti | TiN "
            f"valence-change-memory devices; {model['cutoff']:g} A cutoff, lmax "
            f"{model['max_ell']}, {model['channels']} channels, {n_params:,} parameters"
        ),
        "licence": "MIT (as hamjax)",
        "made_by": {
            "config": config_path,
            "commands": MADE_BY,
            "stages": "log_stage1.jsonl and config_stage1.json: the first stage's log and "
            "training config; log.jsonl and config.json: the second's (from its best "
            "parameters)",
            "resume": (
                "fine-tune from this model with a new schedule: a training config with "
                f'"init_from": "{folder.name}" (e.g. hamjax demo --fine-tune N); or '
                "python experiments/pretrained.py restore runs/pretrained and the last vcm.py "
                "command again with more epochs"
            ),
        },
        "model": {**model, "parameters": n_params},
        "elements": elements,
        "reference": {
            "method": "GFN1-xTB, tblite",
            "tblite": dict(config.tblite),
            "scf": "at the Gamma point of each one-cell-wide device (no supercell SCF)",
            "blocks": "image-resolved: one block per atom pair and lattice image (i, j, R)",
            "energy_zero": "each device's electrodes' Fermi level: H - E_F S",
            "units": "Hartree",
        },
        "data": {"devices": dict(config.device), **roles},
        "training": {
            "train": dict(config.train),
            "best_epoch": best["epoch"],
            "epochs_run": history[-1]["epoch"] if history else 0,
            "steps_run": history[-1]["step"] if history else 0,
            "best_step": saved.step,
            "training_time_s": _seconds(history),
            "stage1": (
                {
                    "epochs_run": earlier[-1]["epoch"],
                    "steps_run": earlier[-1]["step"],
                    "training_time_s": _seconds(earlier),
                }
                if earlier
                else None
            ),
            "total_training_time_s": _seconds(history) + _seconds(earlier),
        },
        "validation_total_mae_meV": best.get("validation_total_mae_meV"),
        "test": test,
        "test_total_mae_meV": (
            float(np.mean([t["total_mae_meV"] for t in test.values()])) if test else None
        ),
        "reference_check": check,
        "valid_for": (
            "TiN | HfO2 | Ti | TiN stacks built by hamjax.structures.build_device, one TiN cell "
            "(4.24 A) across, GFN1-xTB at kT = 0.06 Ha, Hamiltonians on the electrodes' Fermi "
            "level; elements N, O, Ti, Hf only. Other cells, materials, methods or energy "
            "zeros are outside its training data."
        ),
    }


def _seconds(history) -> float:
    return round(sum(r.get("epoch_time_s", 0.0) for r in history), 1)


def _leaves(tree):
    import jax

    return jax.tree.leaves(tree)


def _spec(spec) -> dict:
    import dataclasses

    return {
        k: list(v) if isinstance(v, tuple) else v
        for k, v in dataclasses.asdict(spec).items()
        if k in ("vacancy_mode", "seed", "vacancy_density", "gap_angstrom", "gap_side")
    }


def markdown_card(info: dict) -> str:
    """The model card for people (``README.md`` of the shipped model)."""
    lines = [
        f"# {info['name']}",
        "",
        info["summary"] + ".",
        "",
        f"Valid for: {info['valid_for']}",
        "",
        "## Errors (per-image blocks within the cutoff)",
        "",
        f"- validation total MAE: {info['validation_total_mae_meV']:.2f} meV",
        f"- reference check ({info['reference_check']['atoms']} atoms, "
        f"{CHECK_FILE}): total MAE {info['reference_check']['total_mae_meV']:.2f} meV",
        "",
        "| test device | atoms | on-site MAE (meV) | edge MAE (meV) | total MAE (meV) "
        "| I_pred / I_ref |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in info["test"].items():
        lines.append(
            f"| {name} | {t['atoms']} | {t['node_mae_meV']:.2f} | {t['edge_mae_meV']:.2f} "
            f"| {t['total_mae_meV']:.2f} | {t['current_ratio']:.2f} |"
        )
    training = info["training"]
    lines += [
        "",
        "## Data and training",
        "",
        f"- reference: {info['reference']['method']}, {info['reference']['tblite']}; "
        f"SCF {info['reference']['scf']}; {info['reference']['blocks']}; energy zero: "
        f"{info['reference']['energy_zero']}.",
        f"- training devices: {', '.join(info['data']['train'])}; validation: "
        f"{', '.join(info['data']['validation'])}; test: {', '.join(info['data']['test'])}.",
        f"- {_stages(training)}, {training['total_training_time_s'] / 3600:.2f} h on two "
        f"CPU cores beside other work; best step {training['best_step']}.",
        f"- made by: `{'`; `'.join(info['made_by']['commands'])}`",
        f"- to train further: {info['made_by']['resume']}.",
        f"- licence: {info['licence']}.",
        "",
    ]
    return "\n".join(lines)


def _stages(training: dict) -> str:
    last = f"{training['steps_run']} steps ({training['epochs_run']} epochs)"
    first = training.get("stage1")
    if not first:
        return last
    return (
        f"{first['steps_run']} steps ({first['epochs_run']} epochs) of a first stage, then "
        f"{last} from its best parameters"
    )


def ship(run: Path, config_path: Path, name: str) -> Path:
    from hamjax.vcm import load_config
    from hamjax.vcm.report import write_json

    config = load_config(config_path)
    folder = ROOT / "hamjax" / "pretrained" / name
    copy_model(run / "model", folder)
    for name in ("log", "config"):  # the earlier stage whose parameters this run started from
        earlier = run / "stage1" / f"{name}.{'jsonl' if name == 'log' else 'json'}"
        if earlier.exists():
            shutil.copy2(earlier, folder / f"{name}_stage1{earlier.suffix}")
    check = reference_check(config, folder, run / "check")
    info = card(config, run, folder, check, str(config_path))
    write_json(folder / "card.json", info)
    (folder / "README.md").write_text(markdown_card(info))
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    mae = check["total_mae_meV"]
    print(f"shipped {folder} ({size / 1e6:.2f} MB); reference check MAE {mae:.3f} meV")
    return folder


def restore(run: Path, name: str) -> None:
    """The shipped model's files into ``run/model``, where the training stage resumes."""
    from hamjax.pretrained import folder

    copy_model(folder(name), run / "model")
    print(f"{folder(name)} -> {run / 'model'}: 'vcm.py train' continues from its latest step")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("ship", "restore"))
    parser.add_argument("run", type=Path, help="run folder of experiments/vcm.py")
    parser.add_argument("--config", type=Path, default=Path("experiments/vcm_pretrained.json"))
    parser.add_argument("--name", default=NAME, help=f"shipped model name (default {NAME})")
    args = parser.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)
    if args.action == "ship":
        ship(args.run, args.config, args.name)
    else:
        restore(args.run, args.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
