"""How much of the VCM error is the folding of periodic images into Gamma blocks?

The references are Gamma-point calculations of cells one TiN cell (4.24 A) across, so every
block the model is compared on, ``H_ij(Gamma) = sum_R H_ij(R)``, sums all images of the
pair within the cutoff (up to a dozen at 8 A), and its error sums theirs. The paper's
5,268-atom devices are 26 A across: one image per pair. This script, for a trained run:

1. splits each test device's errors by the number of images folded into each block
   (node and edge blocks apart): block count, entries, MAE and mean |H_ref| per image count;
2. with ``--cells NX NY``, builds the config's test devices that many TiN cells across
   (``device.transverse_cells``), computes their tblite references in ``RUN/data_NXxNY``
   (resumable) and evaluates the same model on them: the same environments with fewer
   images per block, and a test of transfer to wider devices than the model saw.

    python experiments/vcm_folding.py RUN CONFIG [--cells 2 2] [--devices "Filament 1"]
        --json OUT.json

RUN is the run folder of ``experiments/vcm.py`` (its ``model/`` and ``data/``), CONFIG the
config it ran.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

from hamjax.constants import HARTREE_EV


def images_per_block(predicted, folded) -> np.ndarray:
    """For every block of ``folded`` (pairs, shift 0), the number of the prediction's image
    blocks ``(i, j, R)`` summed into it."""
    pairs, counts = np.unique(predicted.pairs, axis=0, return_counts=True)
    n = len(predicted.numbers)
    lookup = dict(zip((pairs[:, 0] * n + pairs[:, 1]).tolist(), counts.tolist(), strict=True))
    keys = (folded.pairs[:, 0] * n + folded.pairs[:, 1]).tolist()
    return np.array([lookup[k] for k in keys])


def by_image_count(folded, on_pairs, images: np.ndarray) -> list[dict]:
    """MAE and mean |H_ref| (meV) of node and edge blocks grouped by their image count."""
    from hamjax.vcm import block_sums

    sizes = np.diff(folded.block_offsets)
    error = block_sums(folded, np.abs(folded.hamiltonian - on_pairs.hamiltonian))
    size = block_sums(on_pairs, np.abs(on_pairs.hamiltonian))
    is_node = (folded.pairs[:, 0] == folded.pairs[:, 1]) & ~folded.shifts.any(axis=1)
    rows = []
    for part, mask in (("node", is_node), ("edge", ~is_node)):
        for count in np.unique(images[mask]):
            chosen = mask & (images == count)
            entries = int(sizes[chosen].sum())
            rows.append(
                {
                    "part": part,
                    "images": int(count),
                    "blocks": int(chosen.sum()),
                    "entries": entries,
                    "mae_meV": float(error[chosen].sum() / entries * HARTREE_EV * 1e3),
                    "mean_abs_ref_meV": float(size[chosen].sum() / entries * HARTREE_EV * 1e3),
                }
            )
    return rows


def evaluate(predictor, records: dict) -> dict:
    """MAE row and image-count split of every record, predicted with ``predictor``."""
    from hamjax.vcm import entry_errors, fold_prediction, mae_row

    names = list(records)
    predictions = predictor.predict([records[n] for n in names], with_overlap=False)
    out = {}
    for name, predicted in zip(names, predictions, strict=True):
        folded, on_pairs = fold_prediction(predicted, records[name])
        if records[name].image_resolved:  # compared per image: one image per block
            images = np.ones(len(folded.pairs), dtype=int)
        else:
            images = images_per_block(predicted, folded)
        out[name] = {
            "atoms": len(records[name].numbers),
            **mae_row(entry_errors(folded, on_pairs)),
            "mean_images_per_block": float(np.mean(images)),
            "by_image_count": by_image_count(folded, on_pairs, images),
        }
    return out


def device_references(config, folder: Path, names: list[str], cells=None) -> dict:
    """The config's test devices ``names`` (``cells`` TiN cells across, if given) with their
    tblite references in ``folder`` (reused when they match, computed otherwise), aligned
    as the experiment aligns its own."""
    from hamjax import vcm

    chosen = dataclasses.replace(
        config,
        test_devices={n: config.test_devices[n] for n in names},
        train_devices={},
        sensitivity_device="",
    )
    if cells is not None:
        chosen = dataclasses.replace(
            chosen, device={**config.device, "transverse_cells": tuple(cells)}
        )
    devices = {n: d for n, d in vcm.build_devices(chosen).items() if d["role"] == "test"}
    records = vcm.compute_references(devices, folder, chosen.tblite, progress=True)["records"]
    return vcm.aligned(records, chosen)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="run folder of experiments/vcm.py")
    parser.add_argument("config", type=Path, help="the config that run used")
    parser.add_argument("--cells", type=int, nargs=2, metavar=("NX", "NY"), default=None)
    parser.add_argument("--devices", nargs="+", default=None, help="test devices (default: all)")
    parser.add_argument("--json", type=Path, required=True, help="output JSON")
    args = parser.parse_args(argv)

    import jax

    jax.config.update("jax_enable_x64", True)
    from hamjax import vcm
    from hamjax.inference import Predictor

    config = vcm.load_config(args.config)
    names = args.devices or list(config.test_devices)
    unknown = sorted(set(names) - set(config.test_devices))
    if unknown:
        parser.error(f"not test devices of {args.config}: {unknown}")
    missing = [n for n in names if not vcm.reference_file(args.run / "data", n).exists()]
    if missing:
        parser.error(f"{args.run / 'data'}: no reference of {missing} (run that stage first)")
    predictor = Predictor.load(args.run / "model")
    records = device_references(config, args.run / "data", names)
    result = {"run": str(args.run), "model_cutoff_angstrom": predictor.config.cutoff}
    result["as_trained"] = evaluate(predictor, records)
    if args.cells:
        t0 = time.perf_counter()
        folder = args.run / f"data_{args.cells[0]}x{args.cells[1]}"
        wide = device_references(config, folder, names, args.cells)
        result["references_s"] = time.perf_counter() - t0
        result[f"cells_{args.cells[0]}x{args.cells[1]}"] = evaluate(predictor, wide)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    for key, block in result.items():
        if not isinstance(block, dict):
            continue
        for name, row in block.items():
            print(
                f"{key:>10} {name:>12}: {row['atoms']} atoms, total {row['total_mae_meV']:.2f} "
                f"meV (node {row['node_mae_meV']:.2f}, edge {row['edge_mae_meV']:.2f}), "
                f"{row['mean_images_per_block']:.2f} images per block"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
