"""The stages of the VCM experiment and the whole run.

:data:`STAGES`: "references" (:func:`reference_stage`: the devices and their tblite
references, aligned on their electrodes' Fermi level), "train" (:func:`train_stage`) and
"evaluate" (:func:`evaluate_stage`: predictions, errors, transport, table, figures,
sensitivity), one after another (:func:`run_experiment`) or separately, each reusing what the
earlier ones left in the run folder.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

from hamjax.constants import BOLTZMANN_EV_K, HARTREE_EV
from hamjax.inference import Predictor
from hamjax.occupations import count_fermi_level
from hamjax.pretrained import resolve
from hamjax.structures import plot_device
from hamjax.train import train
from hamjax.vcm.analysis import (
    entry_errors,
    error_profile,
    fold_prediction,
    mae_row,
    prediction_for_transport,
)
from hamjax.vcm.config import VCMConfig, training_config
from hamjax.vcm.devices import build_devices, file_name, reference_file
from hamjax.vcm.electrodes import (
    aligned,
    electrode_fermi_level,
    electrode_levels,
    electrode_side,
)
from hamjax.vcm.figures import plot_error_profile, plot_errors, plot_transmission
from hamjax.vcm.references import compute_references
from hamjax.vcm.report import markdown_table, write_json
from hamjax.vcm.sensitivity import sensitivity_maps
from hamjax.vcm.transport import device_transport, transmission_data, transport_device

__all__ = ["STAGES", "evaluate_stage", "reference_stage", "run_experiment", "train_stage"]


STAGES = ("references", "train", "evaluate")


def _roles(devices: Mapping) -> dict[str, list[str]]:
    """Role ("train", "validation", "test") -> the names of the devices in it."""
    return {
        role: [n for n, d in devices.items() if d["role"] == role]
        for role in ("train", "validation", "test")
    }


def reference_stage(config: VCMConfig, out: Path, *, progress: bool = True, echo=print) -> dict:
    """Build the devices, draw the test devices, and compute (or reuse) their references.

    Returns:
        ``{"devices": name -> device, "records": name -> BlockHamiltonian, "timings": ...}``.
    """
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "config.json", config.to_dict())
    timings: dict = {}
    t0 = time.perf_counter()
    devices = build_devices(config)
    if config.pretrained_model:  # nothing to train: the test devices only
        devices = {n: d for n, d in devices.items() if d["role"] == "test"}
    timings["build_devices_s"] = time.perf_counter() - t0
    for name, device in devices.items():
        if device["role"] == "test":
            plot_device(device["atoms"], out / f"device_{file_name(name)}.png", title=name)
    sizes = ", ".join(f"{n}: {len(d['atoms'])} atoms" for n, d in devices.items())
    echo(f"built {len(devices)} devices ({sizes})")
    t0 = time.perf_counter()
    refs = compute_references(devices, out / "data", config.tblite, progress)
    timings["reference_per_device_s"] = refs["timings"]
    records = refs["records"]
    records = aligned(records, config)
    timings["references_s"] = time.perf_counter() - t0
    return {"devices": devices, "records": records, "timings": timings}


def train_stage(
    config: VCMConfig,
    out: Path,
    records: Mapping,
    devices: Mapping,
    *,
    progress=True,
    echo=print,
    until_epoch: int | None = None,
) -> dict:
    """Train (or resume) the model on the training devices into ``out/model`` (to epoch
    ``until_epoch`` when given: a sitting of a longer training)."""
    names = _roles(devices)
    train_config = training_config(
        config,
        data=[str(reference_file(out / "data", n)) for n in names["train"]],
        validation_data=[str(reference_file(out / "data", n)) for n in names["validation"]],
        progress=progress,
    )
    return train(
        train_config,
        out / "model",
        records=([records[n] for n in names["train"]], [records[n] for n in names["validation"]]),
        echo=echo if progress else None,
        until_epoch=until_epoch,
    )


def run_experiment(
    config: VCMConfig,
    out: str | os.PathLike,
    *,
    progress: bool = True,
    echo=print,
    stages: tuple[str, ...] = STAGES,
    until_epoch: int | None = None,
) -> dict | None:
    """Run the experiment into folder ``out`` (resumable: references and training).

    ``stages`` picks among "references", "train" and "evaluate" (predictions, errors,
    transport, figures, sensitivity); a later stage reuses what the earlier ones left in
    ``out`` (the evaluation needs a trained model there). ``until_epoch`` stops the training
    after that epoch (the next run resumes there). Returns the summary of the evaluation
    (None without that stage).
    """
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stages {unknown}; choose among {list(STAGES)}")
    out = Path(out)
    prepared = reference_stage(config, out, progress=progress, echo=echo)
    devices, records, timings = prepared["devices"], prepared["records"], prepared["timings"]
    if "train" in stages and config.pretrained_model:
        echo(f"no training: the test devices are predicted by {config.pretrained_model}")
    elif "train" in stages:
        t0 = time.perf_counter()
        train_stage(
            config, out, records, devices, progress=progress, echo=echo, until_epoch=until_epoch
        )
        timings["training_s"] = time.perf_counter() - t0
    if "evaluate" not in stages:
        return None
    return evaluate_stage(config, out, records, devices, timings, echo=echo)


def evaluate_stage(
    config: VCMConfig, out: Path, records: Mapping, devices: Mapping, timings: dict, *, echo=print
) -> dict:
    """Predict the test devices with ``out/model`` (or ``config.pretrained_model``); errors,
    transport, figures, sensitivity."""
    if config.pretrained_model:
        model_dir = resolve(config.pretrained_model)
    else:
        model_dir = out / "model"
        if not (model_dir / "checkpoints").exists():
            raise FileNotFoundError(f"{model_dir}: no trained model (run the train stage first)")
    log = model_dir / "log.jsonl"
    lines = log.read_text().splitlines() if log.exists() else []
    history = [json.loads(line) for line in lines]
    last = history[-1] if history else {}
    if not config.pretrained_model:
        timings.setdefault("training_s", sum(r.get("epoch_time_s", 0.0) for r in history))
    tests = _roles(devices)["test"]

    t0 = time.perf_counter()
    predictor = Predictor.load(config.pretrained_model or model_dir)
    predictions = predictor.predict([records[n] for n in tests], with_overlap=False)
    timings["prediction_s"] = time.perf_counter() - t0

    rows, errors, profiles, transport, for_transport = [], {}, {}, {}, {}
    t0 = time.perf_counter()
    for name, predicted in zip(tests, predictions, strict=True):
        reference = records[name]
        folded = fold_prediction(predicted, reference)
        errors[name] = entry_errors(*folded)
        profiles[name] = error_profile(*folded)
        # both Fermi levels from the electrodes' population at the electrodes' temperature
        # (see electrode_fermi_level)
        device = transport_device(reference, config)
        side = electrode_side(reference, device, config)
        kt_hartree = side["kt_hartree"]
        fermi_count = count_fermi_level(
            side["levels"], reference.metadata["n_electrons"], kt_hartree
        )
        ref_t = device_transport(reference, config, side["fermi_level"] * HARTREE_EV, device=device)
        for_transport[name] = prediction_for_transport(predicted, reference)
        fermi_pred = electrode_fermi_level(
            *electrode_levels(for_transport[name], side["atoms"]), side["population"], kt_hartree
        )
        own_leads = transport_device(for_transport[name], config)
        curves = {}
        if config.prediction_leads in ("predicted", "both"):
            curves["predicted"] = device_transport(
                for_transport[name],
                config,
                fermi_pred * HARTREE_EV,
                channels=False,
                device=own_leads,
            )
        if config.prediction_leads in ("reference", "both") and config.transport_kgrid == (1, 1, 1):
            # the reference's electrodes set the chemical potentials: their Fermi level
            curves["reference"] = device_transport(
                for_transport[name],
                config,
                ref_t["fermi_level"],
                channels=False,
                device=own_leads.with_leads_of(device),
            )
        leads = next(iter(curves))  # those of I_pred: "predicted" unless only "reference"
        pred_t = curves[leads]
        transport[name] = {"reference": ref_t, "prediction": pred_t, "prediction_leads": leads}
        extra = {}
        if len(curves) == 2:
            transport[name]["prediction_reference_leads"] = curves["reference"]
            extra = {
                "current_pred_reference_leads_A": curves["reference"]["current"],
                "current_pred_reference_leads_coarse_grid_A": curves["reference"]["current_coarse"],
            }
        rows.append(
            {
                "device": name,
                "atoms": len(devices[name]["atoms"]),
                **mae_row(errors[name]),
                "current_ref_A": ref_t["current"],
                "current_pred_A": pred_t["current"],
                "current_ref_coarse_grid_A": ref_t["current_coarse"],
                "current_pred_coarse_grid_A": pred_t["current_coarse"],
                **extra,
                "prediction_leads": leads,
                "n_energies_ref": len(ref_t["energies"]),
                "n_energies_pred": len(pred_t["energies"]),
                "fermi_level_ref_eV": ref_t["fermi_level"],
                "fermi_level_pred_eV": pred_t["fermi_level"],
                "fermi_level_by_count_ref_eV": fermi_count * HARTREE_EV,
                "scf_chemical_potential_ref_eV": reference.fermi_level * HARTREE_EV,
                "energy_zero_eV": HARTREE_EV
                * reference.metadata.get("electrode_fermi_level_hartree", 0.0),
                "reference_dropped_beyond_transport_cutoff_max_eV": (
                    ref_t["device"].dropped_max_ev
                ),
                "lead_channels_at_fermi_ref": ref_t["lead_channels_at_fermi"],
                "max_dyson_residual": max(r["max_residual"] for r in (ref_t, *curves.values())),
            }
        )
        for which, result in (
            ("reference", ref_t),
            *((f"prediction, {k} leads", v) for k, v in curves.items()),
        ):
            ratio = result["current_coarse"] / result["current"]
            if not 0.8 < ratio < 1.25:
                echo(
                    f"{name} ({which}): the current on a coarser grid is {ratio:.2f} times "
                    f"the current on all {len(result['energies'])} energies: T(E) has "
                    "resonances narrower than the grid, so the current is not converged "
                    "(raise n_energies or refine_energies)"
                )
        if ref_t["lead_channels_at_fermi"] < 0.5:
            echo(
                f"{name}: the reference's electrodes have no open channel at E_F (a gap of "
                "their Gamma-point bands), so I_ref is tunnelling through that gap, not "
                "conduction through the device"
            )
    timings["transport_s"] = time.perf_counter() - t0

    plot_errors(errors, out / "errors.png")
    plot_error_profile(profiles, out / "error_profile.png")
    write_json(out / "error_profile.json", profiles)
    plot_transmission(transport, config.bias_volt, out / "transmission.png")
    write_json(out / "transmission.json", transmission_data(transport))
    (out / "table.md").write_text(markdown_table(rows))
    write_json(out / "table.json", rows)

    sensitivity = None
    if config.sensitivity_device:
        t0 = time.perf_counter()
        name = config.sensitivity_device
        record = for_transport[name]
        sensitivity = sensitivity_maps(
            predictor,
            record,
            devices[name]["atoms"],
            transport[name]["prediction"],
            config,
            transport[name]["prediction"]["fermi_level"],
            out,
        )
        timings["sensitivity_s"] = time.perf_counter() - t0

    summary = {
        "devices": {
            r["device"]: {
                k: r[k]
                for k in (
                    "node_mae_meV",
                    "edge_mae_meV",
                    "total_mae_meV",
                    "current_ref_A",
                    "current_pred_A",
                    "current_ref_coarse_grid_A",
                    "current_pred_coarse_grid_A",
                    "current_pred_reference_leads_A",
                    "prediction_leads",
                    "lead_channels_at_fermi_ref",
                )
                if k in r
            }
            for r in rows
        },
        "model": config.pretrained_model or str(model_dir),
        "validation_total_mae_meV": last.get("validation_total_mae_meV") if last else None,
        "bias_volt": config.bias_volt,
        "temperature_k": config.temperature_k,
        "kT_eV": BOLTZMANN_EV_K * config.temperature_k,
        "sensitivity": sensitivity,
        "timings": timings,
    }
    write_json(out / "timings.json", timings)
    write_json(out / "summary.json", summary)
    return summary
