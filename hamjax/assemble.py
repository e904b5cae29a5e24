"""Padded model blocks -> Hamiltonian matrices, and the current of a device Hamiltonian.

The model predicts padded blocks (``node_blocks [n_node, M, M]``, ``edge_blocks
[n_edge, M, M]``, Hartree) on a graph in hamjax's layout (see :mod:`hamjax.graph`). This module
puts them into matrices in hamjax orbital order (atoms in node order, shells in basis order,
``m = -l..l``):

- :func:`orbital_index` (host, numpy): the static map from padded block rows to global orbital
  indices, computed once per structure.
- :func:`dense_hamiltonian` (pure JAX, jit/grad): the dense ``[n_orb, n_orb]`` matrix at Gamma
  (real) or at a fractional Bloch vector ``k`` (complex, shift ``R`` weighted by
  ``exp(2 pi i k . R)``, the convention of :meth:`hamjax.blocks.BlockHamiltonian.to_dense`).
- :func:`sparse_hamiltonian` (host, ``scipy.sparse.csr_matrix``) and :func:`bcoo_hamiltonian`
  (JAX ``BCOO``, jit-compatible) for structures whose dense matrix does not fit.
- :func:`current_from_hamiltonian` (pure JAX, jit/grad in H): the Landauer current of a device
  Hamiltonian in eV, whose gradient is ``dI/dH``. The whole chain ``positions -> model -> H ->
  current`` of a trained model is :func:`hamjax.sensitivity.position_chain`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse
from jax.experimental import sparse as jax_sparse

from hamjax import transport
from hamjax.basis import Basis

__all__ = [
    "OrbitalIndex",
    "orbital_index",
    "dense_hamiltonian",
    "sparse_hamiltonian",
    "bcoo_hamiltonian",
    "current_from_hamiltonian",
]


@dataclass(frozen=True, eq=False)
class OrbitalIndex:
    """Static map from padded block entries to global orbitals (host side).

    Attributes:
        index: ``[n_node, M]`` int, global orbital index of row ``p`` of node ``i``'s blocks,
            or ``n_orbitals`` (a discarded dummy orbital) for absent orbitals and padding.
        n_orbitals: number of real orbitals.
    """

    index: np.ndarray
    n_orbitals: int


def orbital_index(basis: Basis, species, node_mask=None) -> OrbitalIndex:
    """Global orbital index of every padded block row (numpy, outside jit).

    Args:
        basis: shells per element.
        species: ``[n_node]`` atomic numbers (0 on padding).
        node_mask: ``[n_node]`` bool (default: ``species > 0``).

    Returns:
        :class:`OrbitalIndex`; the real nodes' orbitals are numbered in node order.
    """
    species = np.asarray(species, dtype=int)
    mask = species > 0 if node_mask is None else np.asarray(node_mask, dtype=bool)
    real = np.nonzero(mask)[0]
    counts = np.zeros(len(species), dtype=int)
    counts[real] = basis.orbital_counts(species[real])
    m = max(basis.n_orbitals(z) for z in basis.elements)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    n_orbitals = int(offsets[-1])
    columns = np.arange(m)[None, :]
    index = np.where(columns < counts[:, None], offsets[:-1, None] + columns, n_orbitals)
    return OrbitalIndex(index=index.astype(np.int32), n_orbitals=n_orbitals)


def _phases(shifts, k, dtype):
    k = jnp.asarray(k, dtype=jnp.float64 if dtype == jnp.float64 else jnp.float32)
    return jnp.exp(2j * jnp.pi * (jnp.asarray(shifts, k.dtype) @ k))  # [n_edge]


def dense_hamiltonian(
    node_blocks: jax.Array,
    edge_blocks: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    shifts: jax.Array,
    edge_mask: jax.Array,
    index: OrbitalIndex,
    k=None,
) -> jax.Array:
    """Dense Hamiltonian from padded blocks (pure JAX; jit with ``index`` static/closed over).

    Args:
        node_blocks: ``[n_node, M, M]`` on-site blocks.
        edge_blocks: ``[n_edge, M, M]`` blocks ``(i = senders, j = receivers, shifts)``.
        senders, receivers: ``[n_edge]`` int.
        shifts: ``[n_edge, 3]`` int cell shifts.
        edge_mask: ``[n_edge]`` bool, False on padding.
        index: :func:`orbital_index` of the same nodes.
        k: None for Gamma (sum over shifts, real), or a fractional Bloch vector ``[3]``
            (complex; shift ``R`` weighted by ``exp(2 pi i k . R)``).

    Returns:
        ``[n_orb, n_orb]``, same units as the blocks.
    """
    rows = jnp.asarray(index.index)  # [n_node, M]
    n = index.n_orbitals
    values = jnp.where(edge_mask[:, None, None], edge_blocks, 0.0)
    dtype = values.dtype
    if k is not None:
        values = values * _phases(shifts, k, dtype)[:, None, None]
        node_blocks = node_blocks.astype(values.dtype)
    matrix = jnp.zeros((n + 1, n + 1), values.dtype)
    matrix = matrix.at[rows[:, :, None], rows[:, None, :]].add(node_blocks)
    matrix = matrix.at[rows[senders][:, :, None], rows[receivers][:, None, :]].add(values)
    return matrix[:n, :n]


def _triplets(node_blocks, edge_blocks, senders, receivers, shifts, edge_mask, index, k):
    """Host/JAX-agnostic ``(rows, cols, values)`` of every stored entry (absent ones dropped)."""
    idx = np.asarray(index.index)
    senders, receivers = np.asarray(senders), np.asarray(receivers)
    edge_mask = np.asarray(edge_mask, dtype=bool)
    edges = np.nonzero(edge_mask)[0]
    n_node, m = idx.shape
    node_rows = np.broadcast_to(idx[:, :, None], (n_node, m, m))
    node_cols = np.broadcast_to(idx[:, None, :], (n_node, m, m))
    edge_rows = np.broadcast_to(idx[senders[edges]][:, :, None], (len(edges), m, m))
    edge_cols = np.broadcast_to(idx[receivers[edges]][:, None, :], (len(edges), m, m))
    rows = np.concatenate([node_rows.reshape(-1), edge_rows.reshape(-1)])
    cols = np.concatenate([node_cols.reshape(-1), edge_cols.reshape(-1)])
    keep = (rows < index.n_orbitals) & (cols < index.n_orbitals)
    return rows, cols, keep, edges


def sparse_hamiltonian(
    node_blocks,
    edge_blocks,
    senders,
    receivers,
    shifts,
    edge_mask,
    index: OrbitalIndex,
    k=None,
):
    """``scipy.sparse.csr_matrix`` ``[n_orb, n_orb]`` from padded blocks (host, numpy).

    Same arguments and conventions as :func:`dense_hamiltonian`; duplicate entries (several
    images of one atom pair) are summed.
    """
    rows, cols, keep, edges = _triplets(
        node_blocks, edge_blocks, senders, receivers, shifts, edge_mask, index, k
    )
    edge_values = np.asarray(edge_blocks)[edges]
    if k is not None:
        phases = np.exp(2j * np.pi * (np.asarray(shifts)[edges] @ np.asarray(k, dtype=float)))
        edge_values = edge_values * phases[:, None, None]
    values = np.concatenate([np.asarray(node_blocks).reshape(-1), edge_values.reshape(-1)])
    n = index.n_orbitals
    matrix = scipy.sparse.coo_matrix((values[keep], (rows[keep], cols[keep])), shape=(n, n))
    return matrix.tocsr()


def bcoo_hamiltonian(
    node_blocks: jax.Array,
    edge_blocks: jax.Array,
    senders,
    receivers,
    shifts,
    edge_mask,
    index: OrbitalIndex,
    k=None,
):
    """JAX ``BCOO`` ``[n_orb, n_orb]`` from padded blocks (differentiable in the block values).

    The sparsity pattern is built on the host from the (concrete) graph; the values stay JAX
    arrays, so this composes with ``jax.grad`` over the model parameters or positions.
    Duplicate entries are kept (BCOO sums them in every product); call ``.sum_duplicates()``
    outside jit if a canonical form is needed.
    """
    rows, cols, keep, edges = _triplets(
        node_blocks, edge_blocks, senders, receivers, shifts, edge_mask, index, k
    )
    edge_values = jnp.asarray(edge_blocks)[edges]
    if k is not None:
        edge_values = (
            edge_values * _phases(np.asarray(shifts)[edges], k, edge_values.dtype)[:, None, None]
        )
        node_values = jnp.asarray(node_blocks).astype(edge_values.dtype)
    else:
        node_values = jnp.asarray(node_blocks)
    values = jnp.concatenate([node_values.reshape(-1), edge_values.reshape(-1)])
    keep_index = np.nonzero(keep)[0]
    indices = np.stack([rows[keep_index], cols[keep_index]], axis=1)
    n = index.n_orbitals
    return jax_sparse.BCOO((values[keep_index], jnp.asarray(indices)), shape=(n, n))


def current_from_hamiltonian(
    hamiltonian_ev: jax.Array,
    overlap,
    layers: Sequence[int],
    energies,
    bias: float,
    *,
    fermi_level: float,
    temperature: float = 300.0,
    eta: float | None = None,
    **transmission_options,
) -> tuple[jax.Array, jax.Array]:
    """``(current [A], transmission [n_E])`` of a device Hamiltonian in eV (jit/grad in H).

    Thin wrapper over :func:`hamjax.transport.transmission` and :func:`hamjax.transport.current`
    (with ``check=False`` so that it traces); ``jax.grad`` of the current with respect to
    ``hamiltonian_ev`` is ``dI/dH`` in A/eV.
    """
    options = dict(transmission_options)
    options.setdefault("check", False)
    if eta is not None:
        options["eta"] = eta
    result = transport.transmission(hamiltonian_ev, overlap, tuple(layers), energies, **options)
    t = result.transmission
    i = transport.current(energies, t, bias, fermi_level=fermi_level, temperature=temperature)
    return i, t
