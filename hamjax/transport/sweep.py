"""The compiled kernels of the RGF transmission: padded blocks, the sweep, energy chunks.

:func:`hamjax.transport.transmission` pads the device's principal layers to a uniform size
``b`` (:class:`DeviceBlocks`) and its leads alike (:class:`LeadBlocks`), then evaluates T(E)
chunk by chunk with :func:`compiled_chunk`. Per energy E the forward sweep runs under
:func:`jax.lax.scan` with ``A = E S - H`` block-tridiagonal:

    D_0 = A_00 - Sigma_L,    Y_k = D_k^-1 A_{k,k+1}  (one LU solve),
    D_{k+1} = A_{k+1,k+1} - A_{k+1,k} Y_k,    P_k = Y_0 Y_1 ... Y_k,
    D_{N-1} -= Sigma_R,      G_{0,N-1} = (-1)^(N-1) P_{N-2} D_{N-1}^-1,
    T(E) = Tr[Gamma_L G_{0,N-1} Gamma_R G_{0,N-1}^H],  Gamma = i (Sigma - Sigma^H),

with ``A_{k+1,k} = E S_{k,k+1}^H - H_{k,k+1}^H``. Per block that is one LU with b right-hand
sides and two products, about 27 b^3 real flops (the textbook sweep with explicit inverses
costs 40 b^3). Inside a chunk the energies are vmapped on accelerators (batched LU and GEMM
keep a GPU busy) and run one after another on CPU, where batched LAPACK calls can deadlock
XLA's thread pool (:func:`_self_energies`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.sharding import Mesh, PartitionSpec

from hamjax.transport.linalg import matmul
from hamjax.transport.surface import fixed_point_residual, surface_green, surface_green_pair

__all__ = [
    "DeviceBlocks",
    "LeadBlocks",
    "batched_energies",
    "chunk_function",
    "compiled_chunk",
    "end_leads",
    "identical_leads",
    "map_energies",
    "sweep",
]


class DeviceBlocks(NamedTuple):
    """The device's principal-layer blocks of H and S (eV), complex128, padded to ``b``.

    ``*_diag`` are the ``[N, b, b]`` diagonal blocks, ``*_upper`` the ``[N-1, b, b]`` blocks
    ``(k, k+1)`` and ``*_lower`` the blocks ``(k+1, k)``; ``pad`` is ``[N, b]``, 1 on
    padding orbitals (their rows and columns are zero, and the sweep puts 1 on their
    diagonal so that every block stays invertible).
    """

    h_diag: jax.Array
    s_diag: jax.Array
    h_upper: jax.Array
    s_upper: jax.Array
    h_lower: jax.Array
    s_lower: jax.Array
    pad: jax.Array


class LeadBlocks(NamedTuple):
    """A lead cell's blocks (eV), complex128, padded to ``b``: ``*00`` the cell, ``*01`` the
    coupling of cell n to cell n+1 (+x), ``*10`` the reverse; ``pad`` ``[b]`` as in
    :class:`DeviceBlocks`."""

    h00: jax.Array
    s00: jax.Array
    h01: jax.Array
    s01: jax.Array
    h10: jax.Array
    s10: jax.Array
    pad: jax.Array


# ----------------------------------------------------------------------------- per energy
def _lead_matrices(lead: LeadBlocks, z, side: str):
    a00 = z * lead.s00 - lead.h00 + jnp.diag(lead.pad)
    a01 = z * lead.s01 - lead.h01
    a10 = z * lead.s10 - lead.h10
    return (a00, a01, a10) if side == "right" else (a00, a10, a01)


def identical_leads(left: LeadBlocks, right: LeadBlocks) -> jax.Array:
    """Whether both leads are the same bulk material (every block and the padding equal), as
    a traced boolean: then one decimation serves both (:func:`_self_energies`)."""
    same = [jnp.array_equal(x, y) for x, y in zip(left, right, strict=True)]
    return jnp.all(jnp.stack(same))


def _separate_green(left: LeadBlocks, right: LeadBlocks, z, max_iterations, method):
    out = []
    for lead, side in ((left, "left"), (right, "right")):
        out.append(surface_green(*_lead_matrices(lead, z, side), max_iterations, method))
    return tuple(out)


def _shared_green(left: LeadBlocks, right: LeadBlocks, z, max_iterations, method):
    blocks = (*_lead_matrices(left, z, "left"), *_lead_matrices(right, z, "right"))
    return surface_green_pair(*blocks, max_iterations, method)


def _self_energies(
    left: LeadBlocks, right: LeadBlocks, energy, eta, max_iterations, shared, method="decimation"
):
    """Both leads' self-energies and Dyson residuals.

    ``shared``: None for one solution per lead, else a boolean (traced or not) that the
    leads are the same bulk (:func:`identical_leads`), in which case one decimation run or
    one eigen-decomposition gives both surface Green's functions
    (:func:`hamjax.transport.surface.surface_green_pair`); the choice is a
    :func:`jax.lax.cond`, so only the branch taken runs. ``method``: "decimation" or "eigen"
    (:mod:`hamjax.transport.surface`).

    Every LAPACK call here and in the sweep works on one matrix, never on a batch: XLA:CPU
    hands a batched LU or triangular solve to jaxlib's ``ParallelBatchMap``, which parks a
    worker of the intra-op pool until its sub-tasks finish; two such kernels running at
    once on a 2-core machine parked both workers and deadlocked the process (all threads
    idle). Hence two separate decimations here (or one covering both leads) and, on CPU,
    ``lax.map`` over the energies of a chunk (:func:`map_energies`).
    """
    z = energy + 1j * eta
    if shared is None:
        greens = _separate_green(left, right, z, max_iterations, method)
    else:
        greens = lax.cond(
            shared,
            lambda: _shared_green(left, right, z, max_iterations, method),
            lambda: _separate_green(left, right, z, max_iterations, method),
        )
    out = []
    for lead, side, g in ((left, "left", greens[0]), (right, "right", greens[1])):
        a00, a_out, a_in = _lead_matrices(lead, z, side)
        sigma = matmul(matmul(a_out, g), a_in)
        out.append((sigma, fixed_point_residual(g, a00, sigma)))
    (sigma_l, res_l), (sigma_r, res_r) = out
    return sigma_l, sigma_r, res_l, res_r


def _transmission_one(
    blocks: DeviceBlocks, left, right, energy, eta, max_iterations, shared, method="decimation"
):
    """T(E) and the two Dyson residuals at one energy (eV)."""
    sigma_l, sigma_r, res_l, res_r = _self_energies(
        left, right, energy, eta, max_iterations, shared, method
    )
    return sweep(blocks, sigma_l, sigma_r, energy), res_l, res_r


def sweep(blocks: DeviceBlocks, sigma_l, sigma_r, energy) -> jax.Array:
    """T(E) by the RGF forward sweep (module note) for given lead self-energies.

    Args:
        blocks: the padded device.
        sigma_l, sigma_r: ``[b, b]`` self-energies of the left and right lead (eV), added to
            the first and the last layer.
        energy: a scalar energy (eV); the device is taken at real E.

    Returns:
        T(E), a real scalar.
    """
    e = energy.astype(jnp.complex128)

    def diag(k):
        return e * blocks.s_diag[k] - blocks.h_diag[k] + jnp.diag(blocks.pad[k])

    n_layers = blocks.h_diag.shape[0]
    d = diag(0) - sigma_l
    if n_layers == 1:
        g_first_last = jnp.linalg.inv(d - sigma_r)
    else:
        y = jnp.linalg.solve(d, e * blocks.s_upper[0] - blocks.h_upper[0])
        d = diag(1) - matmul(e * blocks.s_lower[0] - blocks.h_lower[0], y)
        chain = y

        def step(carry, k):
            # Blocks are indexed inside the step, not sliced for the scan: slices of the
            # stacked blocks would be copied again for every energy.
            d, chain = carry
            y = jnp.linalg.solve(d, e * blocks.s_upper[k] - blocks.h_upper[k])
            d_next = diag(k + 1) - matmul(e * blocks.s_lower[k] - blocks.h_lower[k], y)
            return (d_next, matmul(chain, y)), None

        (d, chain), _ = lax.scan(step, (d, chain), jnp.arange(1, n_layers - 1))
        d = d - sigma_r
        # chain @ d^-1 as a solve with the transposed system.
        g_first_last = jnp.linalg.solve(d.T, chain.T).T
    gamma_l = 1j * (sigma_l - sigma_l.conj().T)
    gamma_r = 1j * (sigma_r - sigma_r.conj().T)
    lhs = matmul(gamma_l, g_first_last)
    rhs = matmul(g_first_last, gamma_r)
    return jnp.real(jnp.sum(lhs * rhs.conj()))


# ----------------------------------------------------------------------------- energies
def batched_energies(devices: tuple) -> bool:
    """Whether to vectorise over energies (vmap): on accelerators yes, on CPU no (one energy
    at a time, see :func:`map_energies`); decided by the first of ``devices`` (default
    backend when empty)."""
    platform = devices[0].platform if devices else jax.default_backend()
    return platform != "cpu"


def map_energies(fn, energies, batched: bool):
    """``fn`` at every energy: :func:`jax.vmap` if ``batched``, else :func:`jax.lax.map`.

    On CPU the unbatched form is required, not a tuning choice (see :func:`_self_energies`).
    """
    return jax.vmap(fn)(energies) if batched else lax.map(fn, energies)


def chunk_function(
    max_iterations: int,
    devices: tuple,
    share_leads: bool = True,
    lead_method: str = "decimation",
):
    """``chunk(blocks, left, right, energies, eta) -> (T, residual_left, residual_right)``,
    each ``[n_E]``, over one chunk of energies (eV): both leads' self-energies by
    decimation (at most ``max_iterations`` steps) or by their eigenmodes (``lead_method``
    "decimation" or "eigen", resolved beforehand, see
    :func:`hamjax.transport.surface.resolve_lead_method`), then :func:`sweep`. With
    ``share_leads`` one decimation or eigen-decomposition per energy serves both leads when
    they are the same bulk (:func:`identical_leads`, checked on the values at run time),
    else each lead has its own. Over several ``devices`` the energies are sharded across
    them (``jax.shard_map``; the chunk length must then be a multiple of their number).
    Traceable: :func:`jax.grad` goes through it."""
    if lead_method not in ("decimation", "eigen"):
        raise ValueError(f"lead_method must be 'decimation' or 'eigen', got {lead_method!r}")
    batched = batched_energies(devices)

    def chunk(blocks, left, right, energies, eta):
        shared = identical_leads(left, right) if share_leads else None
        return map_energies(
            lambda energy: _transmission_one(
                blocks, left, right, energy, eta, max_iterations, shared, lead_method
            ),
            energies,
            batched,
        )

    if len(devices) <= 1:
        return chunk
    mesh = Mesh(np.asarray(devices), ("energy",))
    spec = PartitionSpec("energy")
    return jax.shard_map(
        chunk,
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), spec, PartitionSpec()),
        out_specs=(spec, spec, spec),
    )


@functools.lru_cache(maxsize=32)
def compiled_chunk(
    max_iterations: int,
    devices: tuple,
    share_leads: bool = True,
    lead_method: str = "decimation",
):
    """:func:`chunk_function` under :func:`jax.jit`, cached per its arguments so that
    repeated calls of :func:`hamjax.transport.transmission` reuse the compilation."""
    return jax.jit(chunk_function(max_iterations, devices, share_leads, lead_method))


# ----------------------------------------------------------------------------- leads
def end_leads(blocks: DeviceBlocks, layers: tuple[int, ...]) -> tuple[LeadBlocks, LeadBlocks]:
    """The default leads of :func:`hamjax.transport.transmission`: the first layer repeated
    (its coupling to the second as the cell-to-cell coupling) on the left, the last layer
    (coupled from the one before) on the right.

    Raises:
        ValueError: fewer than two layers, or end layers of unequal size.
    """
    if len(layers) < 2:
        raise ValueError("default leads need at least 2 layers (or pass leads=(left, right))")
    if layers[0] != layers[1] or layers[-1] != layers[-2]:
        raise ValueError(
            f"default leads repeat the first and last layers, so layers 0 and 1 and layers "
            f"{len(layers) - 2} and {len(layers) - 1} must have equal sizes; got "
            f"{layers[0]}, {layers[1]} and {layers[-2]}, {layers[-1]}"
        )
    left = LeadBlocks(
        blocks.h_diag[0],
        blocks.s_diag[0],
        blocks.h_upper[0],
        blocks.s_upper[0],
        blocks.h_lower[0],
        blocks.s_lower[0],
        blocks.pad[0],
    )
    right = LeadBlocks(
        blocks.h_diag[-1],
        blocks.s_diag[-1],
        blocks.h_upper[-1],
        blocks.s_upper[-1],
        blocks.h_lower[-1],
        blocks.s_lower[-1],
        blocks.pad[-1],
    )
    return left, right
