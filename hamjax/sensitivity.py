"""Sensitivity of the current: dI/dH through the NEGF solver and dI/dR through the model.

Both are exact derivatives computed by JAX:

- :func:`current_and_hamiltonian_gradient` differentiates the Landauer current of an open
  device (:class:`hamjax.two_terminal.TwoTerminal`) with respect to every entry of H (A/eV);
  :func:`per_atom` sums ``|dI/dH_ab|`` over the rows of each atom's orbitals, a map of where
  the Hamiltonian controls the current.
- :func:`position_chain` builds ``positions -> model -> H -> T(E) -> I`` for a trained model,
  so ``jax.grad`` gives dI/dR (A/Angstrom) for every atom; :func:`model_gradients` gets dI/dH
  and dI/dR of that chain together (one solver gradient, then the model's VJP). The overlap
  S is held fixed at the reference (the model predicts H only), and the graph's connectivity
  is fixed, so the derivative is exact as long as no pair crosses the cutoff (where the
  model is smooth).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hamjax.assemble import current_from_hamiltonian, dense_hamiltonian, orbital_index
from hamjax.constants import HARTREE_EV
from hamjax.models import HamiltonianModel
from hamjax.two_terminal import TwoTerminal, axis_coordinates, inside_cell

__all__ = [
    "current_and_hamiltonian_gradient",
    "per_atom",
    "position_hamiltonian",
    "device_current",
    "position_chain",
    "model_gradients",
]


def _current_fn(overlap, layers, energies, bias, fermi_level, temperature, eta, leads=None):
    def current(h):
        value, _ = current_from_hamiltonian(
            h,
            overlap,
            layers,
            energies,
            bias,
            fermi_level=fermi_level,
            temperature=temperature,
            eta=eta,
            leads=leads,
        )
        return value

    return current


def current_and_hamiltonian_gradient(
    device: TwoTerminal,
    energies,
    bias: float,
    *,
    fermi_level: float,
    temperature: float = 300.0,
    eta: float | None = None,
) -> tuple[float, np.ndarray]:
    """Current (A) and ``dI/dH`` (A/eV, ``[n_orb, n_orb]`` in the device's transport order)."""
    fn = device_current(
        device, energies, bias, fermi_level=fermi_level, temperature=temperature, eta=eta
    )
    value, grad = jax.jit(jax.value_and_grad(fn))(jnp.asarray(device.hamiltonian.toarray()))
    return float(value), np.asarray(grad)


def per_atom(matrix: np.ndarray, device: TwoTerminal, orbital_counts: Sequence[int]) -> np.ndarray:
    """``sum_{a in atom, b} |matrix_ab|`` for every atom, in the record's atom order.

    Args:
        matrix: ``[n_orb, n_orb]`` in the device's transport order (e.g. dI/dH).
        device: the open device the matrix belongs to.
        orbital_counts: ``[n_atoms]`` orbitals per atom, record order.

    Returns:
        ``[n_atoms]`` in the record's atom order.
    """
    counts = np.asarray(orbital_counts)[device.order]
    rows = np.abs(matrix).sum(axis=1)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    values = np.add.reduceat(rows, starts)
    out = np.empty_like(values)
    out[device.order] = values
    return out


def position_hamiltonian(
    model_config,
    graph,
    device: TwoTerminal,
    *,
    axis: int = 0,
    origin_offset: float = 0.5,
):
    """``hamiltonian(params, positions) -> H`` (eV, ``[n_orb, n_orb]`` in the device's
    transport order): the model's prediction as the solver sees it.

    Args:
        model_config: :class:`hamjax.models.ModelConfig` of the trained model.
        graph: :class:`hamjax.graph.Graph` of the device (record atom order), built with the
            model's cutoff.
        device: :func:`hamjax.two_terminal.open_device` of the same structure (its orbital
            order defines the rows of H).
        axis, origin_offset: as in :func:`hamjax.two_terminal.open_device`.
    """
    model = HamiltonianModel(model_config)
    x, length = axis_coordinates(graph.positions, graph.cell, axis, origin_offset)
    # Couplings through the cell boundary along the axis are cut, as in open_device.
    keep = jnp.asarray(inside_cell(x[graph.senders], graph.edge_vectors[:, axis], length))
    tuple_graph = jax.tree.map(jnp.asarray, graph.to_graphs_tuple())
    index = orbital_index(model_config.basis, np.asarray(graph.numbers))
    perm = jnp.asarray(device.orbital_order)
    dtype = jnp.dtype(model_config.dtype)
    edges = tuple_graph.edges

    def hamiltonian(params, positions):
        nodes = dict(tuple_graph.nodes)
        nodes["positions"] = positions.astype(dtype)
        node_blocks, edge_blocks = model.apply(params, tuple_graph._replace(nodes=nodes))
        h = dense_hamiltonian(
            node_blocks,
            edge_blocks,
            tuple_graph.senders,
            tuple_graph.receivers,
            edges["shifts"],
            edges["mask"] & keep,
            index,
        )
        return h.astype(jnp.float64)[perm][:, perm] * HARTREE_EV

    return hamiltonian


def device_current(
    device: TwoTerminal,
    energies,
    bias: float,
    *,
    fermi_level: float,
    temperature: float = 300.0,
    eta: float | None = None,
):
    """``current(H) -> I`` (A) of the open device with its S held fixed (H in eV).

    With ``device.lead_blocks`` set (:meth:`~hamjax.two_terminal.TwoTerminal.with_leads_of`)
    those leads are held fixed too, and dI/dH is the response of the device region alone."""
    overlap = jnp.asarray(device.overlap.toarray())
    return _current_fn(
        overlap,
        device.layers,
        jnp.asarray(energies),
        bias,
        fermi_level,
        temperature,
        eta,
        leads=device.lead_blocks,
    )


def position_chain(
    model_config,
    graph,
    device: TwoTerminal,
    energies,
    bias: float,
    *,
    fermi_level: float,
    temperature: float = 300.0,
    eta: float | None = None,
    axis: int = 0,
    origin_offset: float = 0.5,
):
    """``chain(params, positions) -> current`` (A) through the model and the NEGF solver.

    The composition of :func:`position_hamiltonian` and :func:`device_current` (same
    arguments; energies in eV, bias in volts, fermi_level in eV, temperature in kelvin);
    ``jax.grad(chain, argnums=1)`` gives dI/dR in A/Angstrom. :func:`model_gradients` gets
    dI/dH and dI/dR together for the cost of one solver gradient.
    """
    hamiltonian = position_hamiltonian(
        model_config, graph, device, axis=axis, origin_offset=origin_offset
    )
    current = device_current(
        device, energies, bias, fermi_level=fermi_level, temperature=temperature, eta=eta
    )

    def chain(params, positions):
        return current(hamiltonian(params, positions))

    return chain


def model_gradients(hamiltonian, current, params, positions):
    """``(I, dI/dH, dI/dR)`` at the model's H: one solver gradient, then the model's VJP.

    Args:
        hamiltonian: from :func:`position_hamiltonian`.
        current: from :func:`device_current`.
        params, positions: the model's parameters and the atoms' positions (Angstrom).

    Returns:
        current (A), dI/dH (A/eV, ``[n_orb, n_orb]``, transport order) and dI/dR
        (A/Angstrom, ``[n_atoms, 3]``), NumPy.
    """
    h, pullback = jax.vjp(jax.jit(lambda r: hamiltonian(params, r)), positions)
    value, grad_h = jax.jit(jax.value_and_grad(current))(h)
    (grad_r,) = pullback(grad_h)
    return float(value), np.asarray(grad_h), np.asarray(grad_r)
