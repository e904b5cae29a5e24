"""The experiment's table (Markdown) and its JSON files.

:func:`markdown_table` is ``table.md``, the paper's Table I: per test device the node, edge
and total MAE, the currents of reference and prediction and the leads' open channels, with
the grid check below it; :func:`write_json` writes every JSON output of a run.
"""

from __future__ import annotations

import json
from pathlib import Path

from hamjax.io.atomic import write_text

__all__ = ["markdown_table", "write_json"]


def markdown_table(rows: list[dict]) -> str:
    """The rows of ``table.json`` (one per test device, :func:`hamjax.vcm.evaluate_stage`) as
    a Markdown table, with the currents on a coarser grid over the currents below it."""
    both = all("current_pred_reference_leads_A" in r for r in rows)
    leads = "" if both else f" ({rows[0]['prediction_leads']} leads)" if rows else ""
    head = (
        "| device | node MAE (meV / mEh) | edge MAE (meV / mEh) | total MAE (meV / mEh) "
        f"| I_ref (A) | I_pred{leads} (A) | I_pred / I_ref "
        + ("| I_pred, reference leads (A) | ratio " if both else "")
        + "| open lead channels at E_F (ref) |"
    )
    lines = [head, "|---" * (10 if both else 8) + "|"]
    for r in rows:
        extra = ""
        if both:
            i_both = r["current_pred_reference_leads_A"]
            extra = f"| {i_both:.3e} | {i_both / r['current_ref_A']:.3g} "
        lines.append(
            f"| {r['device']} | {r['node_mae_meV']:.2f} / {r['node_mae_mEh']:.3f} "
            f"| {r['edge_mae_meV']:.2f} / {r['edge_mae_mEh']:.3f} "
            f"| {r['total_mae_meV']:.2f} / {r['total_mae_mEh']:.3f} "
            f"| {r['current_ref_A']:.3e} | {r['current_pred_A']:.3e} "
            f"| {r['current_pred_A'] / r['current_ref_A']:.3g} "
            f"{extra}| {r['lead_channels_at_fermi_ref']:g} |"
        )
    checks = ", ".join(
        f"{r['device']} {r['current_ref_coarse_grid_A'] / r['current_ref_A']:.2f} / "
        f"{r['current_pred_coarse_grid_A'] / r['current_pred_A']:.2f}"
        for r in rows
    )
    lines.append("")
    lines.append(f"Grid check, I on a coarser grid / I (reference / predicted): {checks}.")
    return "\n".join(lines) + "\n"


def write_json(path: Path, data) -> None:
    """``data`` as indented JSON in ``path`` (NumPy scalars as floats), written atomically."""
    write_text(path, json.dumps(data, indent=2, default=float) + "\n")
