"""The figures of the VCM experiment (PNG files), the only matplotlib code of hamjax.vcm.

Drawn on :class:`matplotlib.figure.Figure` objects and saved directly, without pyplot: no
backend is chosen and no global figure state is left behind.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from hamjax.constants import HARTREE_EV

__all__ = [
    "plot_error_profile",
    "plot_errors",
    "plot_sensitivity",
    "plot_transmission",
    "vacancy_positions",
]


def plot_errors(errors: Mapping[str, Mapping[str, np.ndarray]], path: Path) -> None:
    """Violin plots of per-entry errors (meV), node and edge, 5th/95th percentiles marked."""
    names = list(errors)
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=False)
    for ax, part in zip(axes, ("node", "edge"), strict=True):
        data = [errors[n][part] * HARTREE_EV * 1e3 for n in names]
        parts = ax.violinplot(data, showextrema=False, widths=0.8)
        for body in parts["bodies"]:
            body.set_alpha(0.6)
        for k, values in enumerate(data, start=1):
            p5, p95 = np.percentile(values, [5, 95])
            ax.hlines([p5, p95], k - 0.25, k + 0.25, color="k", lw=1)
            ax.plot(k, np.median(values), "o", color="k", ms=3)
        lim = max(np.percentile(np.abs(np.concatenate(data)), 99.5), 1e-3)
        ax.set_ylim(-lim, lim)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.axhline(0, color="0.6", lw=0.6)
        ax.set_title(f"{part} blocks (bars: 5th / 95th percentile)")
        ax.set_ylabel("H error, predicted - reference (meV)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def _material(elements: list[str]) -> str:
    """Layer of the VCM stack that a slab with these elements belongs to."""
    if "Hf" in elements:
        return "HfO2"
    if "N" in elements:
        return "TiN"
    if elements == ["Ti"]:
        return "Ti"
    return "HfO2" if "O" in elements else ""


#: shading of the stack's non-electrode layers in the figures (TiN unshaded)
_LAYER_COLOURS = {"HfO2": "tab:orange", "Ti": "tab:green"}


def plot_error_profile(profiles: Mapping[str, Mapping], path: Path) -> None:
    """MAE along the transport axis per test device, the stack's layers shaded."""
    fig = Figure(figsize=(9, 3.8))
    ax = fig.subplots()
    first_name, first = next(iter(profiles.items()))
    width, start = first["width_angstrom"], first["start_angstrom"]
    for k, elements in enumerate(first["elements"]):
        layer = _material(elements)
        if layer in _LAYER_COLOURS:
            ax.axvspan(
                start + k * width,
                start + (k + 1) * width,
                color=_LAYER_COLOURS[layer],
                alpha=0.12,
                lw=0,
            )
    for name, profile in profiles.items():
        mae = np.array([np.nan if v is None else v for v in profile["mae_meV"]])
        centres = (
            profile["start_angstrom"] + (np.arange(len(mae)) + 0.5) * profile["width_angstrom"]
        )
        ax.plot(centres, mae, "-o", ms=2.5, lw=1.2, label=name)
    handles = [
        Rectangle((0, 0), 1, 1, color=c, alpha=0.25, label=f"{layer} (of {first_name})")
        for layer, c in _LAYER_COLOURS.items()
    ]
    ax.legend(handles=ax.get_legend_handles_labels()[0] + handles, fontsize=8, ncol=2)
    ax.set_xlabel(f"position along the transport axis (A), {width:g} A slabs")
    ax.set_ylabel("MAE of the slab's H entries (meV)")
    ax.set_ylim(bottom=0)
    ax.set_title("Where the prediction errs: TiN | HfO2 | Ti | TiN (TiN unshaded)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def plot_transmission(results: Mapping[str, Mapping], bias: float, path: Path) -> None:
    """T(E) of reference and prediction per test device, log scale, bias window shaded."""
    names = list(results)
    cols = 2
    rows = (len(names) + 1) // cols
    fig = Figure(figsize=(11, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, name in zip(axes.ravel(), names, strict=False):
        ref, pred = results[name]["reference"], results[name]["prediction"]
        # Each curve against its own Fermi level: that is where its bias window sits.
        floor = 1e-12
        ax.semilogy(
            ref["energies"] - ref["fermi_level"],
            np.maximum(ref["transmission"], floor),
            "k-",
            label=f"reference, I = {ref['current'] * 1e6:.3g} uA",
        )
        shift = pred["fermi_level"] - ref["fermi_level"]
        own = results[name]["prediction_leads"] == "predicted"
        leads_label = "" if own else ", reference's leads"
        ax.semilogy(
            pred["energies"] - pred["fermi_level"],
            np.maximum(pred["transmission"], floor),
            "C3--",
            label=f"predicted{leads_label}, I = {pred['current'] * 1e6:.3g} uA "
            f"(E_F {shift:+.2f} eV)",
        )
        if "prediction_reference_leads" in results[name]:
            both = results[name]["prediction_reference_leads"]
            ax.semilogy(
                both["energies"] - both["fermi_level"],
                np.maximum(both["transmission"], floor),
                "C2-.",
                label=f"predicted, reference's leads, I = {both['current'] * 1e6:.3g} uA",
            )
        ax.semilogy(
            ref["lead_channel_energies"] - ref["fermi_level"],
            np.maximum(ref["lead_channels"], floor),
            color="0.6",
            linestyle=":",
            marker=".",
            label="open channels of the reference's leads",
        )
        ax.axvspan(-bias / 2, bias / 2, color="C0", alpha=0.12, label=f"bias window ({bias} V)")
        ax.set_title(name)
        ax.set_xlabel("E - E_F (eV), each curve at its own Fermi level")
        ax.set_ylabel("T(E)")
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


_ELEMENT_COLOURS = {"Ti": "tab:gray", "N": "tab:blue", "Hf": "tab:purple", "O": "tab:red"}


def vacancy_positions(atoms) -> np.ndarray:
    """``[n_vac, 3]`` positions of the removed O atoms of a built device (Angstrom)."""
    return np.asarray(atoms.info.get("vacancies", np.zeros((0, 3)))).reshape(-1, 3)


def plot_sensitivity(atoms, values: Mapping[str, np.ndarray], path: Path, title: str) -> None:
    """Each sensitivity twice: the device seen along z with its atoms coloured by it, and its
    value per atom along the transport axis by element (log scales, the same colour range);
    the stack's layers (``atoms.info["layers"]``) shaded and the O vacancies marked."""
    positions = atoms.positions
    elements = np.array(atoms.get_chemical_symbols())
    vac = vacancy_positions(atoms)
    layers = atoms.info.get("layers", {})
    fig = Figure(figsize=(11, 2.4 * 2 * len(values)), layout="constrained")
    axes = fig.subplots(2 * len(values), 1, sharex=True)
    for k, (label, v) in enumerate(values.items()):
        device_ax, profile_ax = axes[2 * k], axes[2 * k + 1]
        v = np.abs(np.asarray(v))
        positive = v[v > 0]
        # from the 2nd percentile: a few near-zero atoms would flatten the rest of the scale
        vmax = max(v.max(), 1e-300)
        floor = max(np.percentile(positive, 2) if len(positive) else vmax, vmax * 1e-4)
        norm = LogNorm(vmin=floor, vmax=max(vmax, floor * 10))
        order = np.argsort(v)  # the most sensitive atoms drawn last, on top
        sc = device_ax.scatter(
            positions[order, 0],
            positions[order, 1] + 0.15 * positions[order, 2],
            c=np.maximum(v[order], floor),
            cmap="viridis",
            norm=norm,
            s=40,
            edgecolors="k",
            linewidths=0.3,
        )
        device_ax.set_ylabel("y + 0.15 z (A)")
        for symbol in sorted(set(elements)):
            mine = elements == symbol
            profile_ax.semilogy(
                positions[mine, 0],
                np.maximum(v[mine], floor),
                "o",
                ms=4,
                color=_ELEMENT_COLOURS.get(symbol),
                label=symbol,
            )
        profile_ax.set_ylim(floor / 2, norm.vmax * 2)
        profile_ax.set_ylabel(label.split(" per atom")[0])
        for ax in (device_ax, profile_ax):
            for layer, (x0, x1, *_) in layers.items():
                if layer in _LAYER_COLOURS:
                    ax.axvspan(x0, x1, color=_LAYER_COLOURS[layer], alpha=0.1, lw=0)
        if len(vac):
            device_ax.scatter(
                vac[:, 0], vac[:, 1] + 0.15 * vac[:, 2], marker="x", c="r", s=30, label="O vacancy"
            )
            device_ax.legend(loc="upper right", fontsize=8)
            for x in vac[:, 0]:
                profile_ax.axvline(x, color="r", lw=0.5, ls=":")
        profile_ax.legend(loc="upper right", fontsize=8, ncol=len(set(elements)))
        fig.colorbar(sc, ax=[device_ax, profile_ax], label=label)
    axes[-1].set_xlabel("x, transport axis (A); shaded: HfO2 (orange), Ti (green)")
    axes[0].set_title(title)
    fig.savefig(path, dpi=130)
