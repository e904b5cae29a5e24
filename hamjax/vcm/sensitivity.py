"""How the current of a predicted VCM device depends on its Hamiltonian and its atoms.

:func:`sensitivity_maps` differentiates the current through the predicted device: dI/dH per
atom (the NEGF solver's gradient) and dI/dR per atom (through the model, via
:mod:`hamjax.sensitivity`), checks dI/dR against central differences, and draws and saves
both; :func:`region_shares` splits a per-atom quantity over the layers of the stack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from hamjax.constants import BOLTZMANN_EV_K
from hamjax.graph import build_graph
from hamjax.sensitivity import device_current, model_gradients, per_atom, position_hamiltonian
from hamjax.vcm.figures import plot_sensitivity, vacancy_positions
from hamjax.vcm.report import write_json

if TYPE_CHECKING:  # for annotations only
    from hamjax.vcm.config import VCMConfig

__all__ = ["region_shares", "sensitivity_maps"]


def region_shares(atoms, values) -> dict[str, float]:
    """Each region's share of ``sum(|values|)`` over the atoms (``atoms.arrays["region"]``:
    TiN_left, HfO2, Ti, TiN_right for the built devices), with its atom count beside it."""
    values = np.abs(np.asarray(values, float))
    regions = np.asarray(atoms.arrays.get("region", np.full(len(atoms), "all")))
    total = values.sum()
    return {
        str(r): {
            "share": float(values[regions == r].sum() / total) if total > 0 else 0.0,
            "atoms": int(np.sum(regions == r)),
        }
        for r in dict.fromkeys(regions.tolist())
    }


def sensitivity_maps(
    predictor,
    record,
    atoms,
    transport: Mapping,
    config: VCMConfig,
    fermi_level_ev: float,
    out: Path,
) -> dict:
    """dI/dH per atom (solver), dI/dR per atom (model), and a finite-difference check."""
    device = transport["device"]
    # Only the energies that carry current: the bias window and 10 kT on each side (the
    # Fermi factors' difference is below e^-10 beyond), which saves a quarter of the work.
    energies = transport["energies"]
    reach = config.bias_volt / 2 + 10 * BOLTZMANN_EV_K * config.temperature_k
    energies = energies[np.abs(energies - fermi_level_ev) <= reach]
    kwargs = dict(fermi_level=fermi_level_ev, temperature=config.temperature_k)
    current = device_current(device, energies, config.bias_volt, **kwargs)
    current_fn = jax.jit(current)
    # the predicted H as transported (pairs to the transport cutoff), against which the
    # model chain's own H (pairs to the model cutoff) is checked
    current_h = float(current_fn(jnp.asarray(device.hamiltonian.toarray())))

    # dI/dH and dI/dR at the model chain's H: one solver gradient, then the model's VJP
    model_config = dataclasses.replace(predictor.config, dtype="float64")
    params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), predictor.params)
    graph = build_graph(atoms, model_config.cutoff)
    hamiltonian = position_hamiltonian(model_config, graph, device)
    positions = jnp.asarray(atoms.positions)
    current_r, grad_h, grad_r = model_gradients(hamiltonian, current, params, positions)
    per_atom_h = per_atom(grad_h, device, record.orbital_counts)
    norms = np.linalg.norm(grad_r, axis=1)

    # Finite differences: move the most sensitive atoms along their gradient.
    step = config.finite_difference_step_angstrom
    checks = []
    chain_jit = jax.jit(lambda p, r: current(hamiltonian(p, r)))
    for atom in np.argsort(norms)[::-1][: config.finite_difference_atoms]:
        direction = grad_r[atom] / max(norms[atom], 1e-300)
        shift = np.zeros_like(atoms.positions)
        shift[atom] = step * direction
        plus = float(chain_jit(params, positions + shift))
        minus = float(chain_jit(params, positions - shift))
        checks.append(
            {
                "atom": int(atom),
                "element": atoms.get_chemical_symbols()[atom],
                "analytic_A_per_angstrom": float(norms[atom]),
                "finite_difference_A_per_angstrom": (plus - minus) / (2 * step),
            }
        )
    name = record.metadata.get("name", "the device")
    plot_sensitivity(
        atoms,
        {"|dI/dH| per atom (A/eV)": per_atom_h, "|dI/dR| per atom (A/A)": norms},
        out / "sensitivity.png",
        title=f"Current sensitivity of {name}",
    )
    summary = {
        "current_from_predicted_H_A": float(current_h),
        "current_through_model_A": float(current_r),
        "most_sensitive_atoms_dI_dH": [int(a) for a in np.argsort(per_atom_h)[::-1][:5]],
        "most_sensitive_atoms_dI_dR": [int(a) for a in np.argsort(norms)[::-1][:5]],
        "share_by_region": {
            "sum_abs_dI_dH": region_shares(atoms, per_atom_h),
            "abs_dI_dR": region_shares(atoms, norms),
        },
        "finite_difference_check": checks,
    }
    # the per-atom values behind the figure, in the device's atom order
    write_json(
        out / "sensitivity.json",
        {
            "device": name,
            **summary,
            "elements": atoms.get_chemical_symbols(),
            "positions_angstrom": np.asarray(atoms.positions).tolist(),
            "vacancies_angstrom": vacancy_positions(atoms).tolist(),
            "sum_abs_dI_dH_per_atom_A_per_eV": np.asarray(per_atom_h).tolist(),
            "dI_dR_A_per_angstrom": np.asarray(grad_r).tolist(),
        },
    )
    return summary
