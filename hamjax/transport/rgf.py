"""Transmission T(E) by the recursive Green's function (RGF) method on principal layers.

For energy E the device Green's function is ``G = (E S - H - Sigma_L - Sigma_R)^-1`` with
``A = E S - H`` block-tridiagonal over the principal layers. Note that
``A_{k+1,k} = E S_{k,k+1}^H - H_{k,k+1}^H``. The broadening eta enters only the leads'
surface Green's functions (``z = E + i eta``, :mod:`hamjax.transport.surface`); the device
itself is taken at real E, so no artificial absorption is added inside it.

This module checks and pads the input and runs the compiled kernels of
:mod:`hamjax.transport.sweep` (the forward sweep under :func:`jax.lax.scan`, one LU solve and
two products per layer) over the energies. Memory is O(b^2) per energy for T alone;
reverse-mode differentiation stores the per-block intermediates, so energies are processed in
chunks (a Python or :func:`jax.lax.map` loop outside, the chunk rematerialised under ``grad``
when there are several).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp
from jax import lax
from tqdm.auto import tqdm

from hamjax.transport.bands import lead_arrays, lead_bands
from hamjax.transport.layers import check_device, layer_offsets
from hamjax.transport.surface import DEFAULT_MAX_ITERATIONS, resolve_lead_method
from hamjax.transport.sweep import (
    DeviceBlocks,
    LeadBlocks,
    chunk_function,
    compiled_chunk,
    end_leads,
)

__all__ = [
    "Lead",
    "TransmissionResult",
    "transmission",
    "open_channels",
    "DEFAULT_ETA",
    "RESIDUAL_TOLERANCE",
    "is_traced",
]

DEFAULT_ETA = 1e-5
"""Lead broadening eta in eV. With eta in the leads only, T(E) errors are O(eta) with a small
prefactor (below 1e-6 at 1e-5 eV for a chain with an impurity, O(eta^2) for perfect leads)."""

RESIDUAL_TOLERANCE = 1e-6
"""Dyson residuals of the surface Green's function above this trigger a warning."""


class Lead(NamedTuple):
    """A semi-infinite periodic lead, all blocks [b, b] with b the adjacent layer's size.

    Attributes:
        onsite: ``h00`` in eV.
        hopping: ``h01`` in eV: coupling from a lead cell to the next cell along +x (the
            direction of increasing layer index), for the left and the right lead alike. It
            also couples the lead to the device: ``H[last left cell, layer 0] = h01`` and
            ``H[layer N-1, first right cell] = h01``.
        overlap_onsite: ``s00``; identity if None.
        overlap_hopping: ``s01``; zero if None.
    """

    onsite: jax.typing.ArrayLike
    hopping: jax.typing.ArrayLike
    overlap_onsite: jax.typing.ArrayLike | None = None
    overlap_hopping: jax.typing.ArrayLike | None = None


class TransmissionResult(NamedTuple):
    """What :func:`transmission` returns (a pytree; the first item is T).

    Attributes:
        transmission: T(E), ``[n_E]`` float64 (dimensionless, channels).
        residual_left: Dyson residual of the left surface Green's function, ``[n_E]``
            (:func:`hamjax.transport.surface.dyson_residual`).
        residual_right: same for the right lead, ``[n_E]``.
    """

    transmission: jax.Array
    residual_left: jax.Array
    residual_right: jax.Array


# ----------------------------------------------------------------------------- input
def is_traced(*xs) -> bool:
    """Whether any of ``xs`` is a JAX tracer (inside ``jit``, ``grad`` or ``vmap``), where
    value checks cannot run."""
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _gather(matrix, rows, cols, valid):
    """Blocks ``matrix[rows[k]][:, cols[k]]`` with invalid (padding) entries zeroed."""
    xp = jnp if isinstance(matrix, jax.Array) else np
    out = matrix[rows[:, :, None], cols[:, None, :]]
    return xp.where(valid, out, 0)


def _device_blocks(hamiltonian, overlap, layers: tuple[int, ...]) -> DeviceBlocks:
    n_layers = len(layers)
    b = max(layers)
    offsets = layer_offsets(layers)
    sizes = np.asarray(layers)
    local = np.arange(b)
    in_layer = local[None, :] < sizes[:, None]  # [N, b]
    rows = np.where(in_layer, offsets[:-1, None] + local[None, :], 0)
    pad = (~in_layer).astype(np.float64)
    if sp.issparse(hamiltonian):
        hamiltonian = hamiltonian.tocsr()
        overlap = None if overlap is None else overlap.tocsr()

        def blocks_of(m, rows_k, cols_k, valid):
            out = np.zeros((len(rows_k), b, b), dtype=m.dtype)
            for k, (r, c) in enumerate(zip(rows_k, cols_k, strict=True)):
                vr, vc = valid[k]
                out[k, : vr.sum(), : vc.sum()] = m[r[vr]][:, c[vc]].toarray()
            return out

        valid_d = [(in_layer[k], in_layer[k]) for k in range(n_layers)]
        valid_u = [(in_layer[k], in_layer[k + 1]) for k in range(n_layers - 1)]
        valid_l = [(in_layer[k + 1], in_layer[k]) for k in range(n_layers - 1)]

        def gather(m, part):
            if part == "upper":
                return blocks_of(m, rows[:-1], rows[1:], valid_u)
            if part == "lower":
                return blocks_of(m, rows[1:], rows[:-1], valid_l)
            return blocks_of(m, rows, rows, valid_d)

    else:
        valid_d = in_layer[:, :, None] & in_layer[:, None, :]
        valid_u = in_layer[:-1, :, None] & in_layer[1:, None, :]
        valid_l = in_layer[1:, :, None] & in_layer[:-1, None, :]

        def gather(m, part):
            if part == "upper":
                return _gather(m, rows[:-1], rows[1:], valid_u)
            if part == "lower":
                return _gather(m, rows[1:], rows[:-1], valid_l)
            return _gather(m, rows, rows, valid_d)

    parts = ("diag", "upper", "lower")
    h = [gather(hamiltonian, part) for part in parts]
    if overlap is None:
        zero = np.zeros((n_layers - 1, b, b))
        s = [np.stack([np.diag(1.0 - p) for p in pad]), zero, zero]  # identity, 0 on padding
    else:
        s = [gather(overlap, part) for part in parts]
    c = jnp.complex128
    return DeviceBlocks(
        jnp.asarray(h[0], c),
        jnp.asarray(s[0], c),
        jnp.asarray(h[1], c),
        jnp.asarray(s[1], c),
        jnp.asarray(h[2], c),
        jnp.asarray(s[2], c),
        jnp.asarray(pad),
    )


def _pad_lead(lead: Lead, size: int, b: int, side: str) -> LeadBlocks:
    def square(x, what, default):
        x = default if x is None else x
        shape = tuple(x.shape)
        if shape != (size, size):
            raise ValueError(
                f"{side} lead {what} has shape {shape}; it must be ({size}, {size}), the size of "
                f"the {'first' if side == 'left' else 'last'} layer"
            )
        if not is_traced(x) and not np.all(np.isfinite(np.asarray(x))):
            raise ValueError(f"{side} lead {what} has NaN or inf entries")
        x = jnp.asarray(x, jnp.complex128)
        return jnp.zeros((b, b), jnp.complex128).at[:size, :size].set(x)

    pad = jnp.asarray(np.arange(b) >= size, jnp.float64)
    h01 = square(lead.hopping, "hopping", None)
    s01 = square(lead.overlap_hopping, "overlap_hopping", np.zeros((size, size)))
    return LeadBlocks(
        square(lead.onsite, "onsite", None),
        square(lead.overlap_onsite, "overlap_onsite", np.eye(size)),
        h01,
        s01,
        h01.conj().T,
        s01.conj().T,
        pad,
    )


def _auto_chunk(b: int, n_devices: int) -> int:
    per_energy = 24 * 16 * b * b  # bytes of live complex128 [b, b] work arrays, roughly
    chunk = max(1, min(64, (1 << 28) // per_energy))
    return max(n_devices, (chunk // n_devices) * n_devices)


def _warn_residuals(energies, res_l, res_r, tolerance: float) -> None:
    for side, res in (("left", res_l), ("right", res_r)):
        bad = np.flatnonzero(~(res <= tolerance))
        if len(bad):
            shown = ", ".join(f"{energies[i]:.6g}" for i in bad[:10])
            more = f" (and {len(bad) - 10} more)" if len(bad) > 10 else ""
            warnings.warn(
                f"{side} lead surface Green's function inaccurate at {len(bad)} energies "
                f"(Dyson residual up to {np.nanmax(res[bad]):.3g} > {tolerance:g}): "
                f"E = {shown}{more} eV; T there is unreliable (shift E or raise eta)",
                RuntimeWarning,
                stacklevel=3,
            )


# ----------------------------------------------------------------------------- public
def transmission(
    hamiltonian,
    overlap,
    layers: Sequence[int],
    energies,
    *,
    eta: float = DEFAULT_ETA,
    leads: tuple[Lead, Lead] | None = None,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    residual_tolerance: float = RESIDUAL_TOLERANCE,
    check: bool = True,
    progress: bool = False,
    share_leads: bool = True,
    lead_method: str = "decimation",
) -> TransmissionResult:
    """Landauer transmission T(E) of a two-terminal device (NEGF, RGF on principal layers).

    Works on NumPy arrays, scipy.sparse matrices and JAX arrays. With JAX arrays it is a pure
    JAX function: ``jax.jit`` and ``jax.grad``/``jax.jvp`` with respect to H, S and explicit
    lead blocks go through it, provided ``layers`` (and the keyword options) are static.
    Gradients include the dependence of the lead self-energies on their blocks (implicit
    differentiation of the surface Green's function; with default leads the first and last
    layers are lead blocks too). Input checks and residual warnings need concrete values, so
    they are skipped while tracing.

    Args:
        hamiltonian: H [n, n] in eV, Hermitian (real or complex).
        overlap: S [n, n], Hermitian positive definite, or None for an orthogonal basis.
        layers: principal-layer sizes in orbitals along the transport axis (sum n); H and S
            must couple only neighbouring layers (:func:`principal_layers` finds them).
        energies: [n_E] energies in eV.
        eta: lead broadening in eV (only the leads; the device is taken at real E).
        leads: ``(left, right)`` explicit :class:`Lead` blocks. By default the left lead is the
            semi-infinite repetition of layer 0 (onsite ``H_00``, cell-to-cell coupling
            ``H_01``) and the right lead that of layer N-1 (``H_{N-1,N-1}``, ``H_{N-2,N-1}``);
            the device then starts and ends with one lead cell.
        chunk_size: energies per compiled chunk (default: from the block size, bounded memory).
        devices: JAX devices to shard energy chunks over (default: all local devices).
        max_iterations: cap on Lopez-Sancho decimation steps.
        share_leads: when both leads are the same bulk (equal blocks, checked on the values
            per call), take both self-energies from one decimation run per energy (half the
            lead cost; derivatives stay per lead). False: always one run per lead.
        lead_method: how the leads' surface Green's functions are found:
            ``"decimation"`` (Lopez-Sancho; its cost grows with ``log2(1/eta)``), ``"eigen"``
            (the lead's Bloch modes from one 2b x 2b eigen-decomposition per energy, cost
            independent of eta; needs ``jnp.linalg.eig`` on the devices' platform, else
            ``ValueError``) or ``"auto"`` (:func:`hamjax.transport.surface.resolve_lead_method`:
            eigenmodes on the CPU when eta is small enough that decimation needs more steps
            than an eigen-decomposition costs, decimation elsewhere). Same T(E) to round-off
            (``docs/benchmarks.md`` compares their cost); gradients are implicit either way.
        residual_tolerance: warn (RuntimeWarning, naming energies) above this Dyson residual.
        check: validate input (Hermitian, positive definite S, neighbour-only couplings,
            finite entries, shapes); raises ``ValueError`` naming layers or entries.
        progress: show a progress bar over energy chunks.

    Returns:
        :class:`TransmissionResult` ``(transmission [n_E], residual_left [n_E],
        residual_right [n_E])``.

    Example: a perfect chain (onsite 0, hopping -1 eV) transmits one channel in its band.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> import numpy as np
    >>> h = -(np.eye(6, k=1) + np.eye(6, k=-1))
    >>> t = transmission(h, None, [1] * 6, [0.5, 2.5]).transmission
    >>> np.round(np.asarray(t), 6).tolist()
    [1.0, 0.0]
    """
    if not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "hamjax.transport works in complex128: enable float64 first with "
            "jax.config.update('jax_enable_x64', True)"
        )
    if not eta > 0:
        raise ValueError(f"eta must be positive (eV), got {eta}")
    traced = is_traced(hamiltonian, overlap, energies) or (
        leads is not None and is_traced(*jax.tree.leaves(leads))
    )
    if sp.issparse(hamiltonian) or sp.issparse(overlap):
        if not (sp.issparse(hamiltonian) and (overlap is None or sp.issparse(overlap))):
            raise ValueError("H and S must both be scipy.sparse or both dense")
    elif not traced:
        if not isinstance(hamiltonian, jax.Array):
            hamiltonian = np.asarray(hamiltonian)
        if overlap is not None and not isinstance(overlap, jax.Array):
            overlap = np.asarray(overlap)
    if hamiltonian.ndim != 2 or hamiltonian.shape[0] != hamiltonian.shape[1]:
        raise ValueError(f"H must be a square [n, n] matrix, got shape {hamiltonian.shape}")
    if overlap is not None and overlap.shape != hamiltonian.shape:
        raise ValueError(f"S has shape {overlap.shape} but H has shape {hamiltonian.shape}")
    layers = tuple(int(b) for b in layers)
    if traced or not check:
        if sum(layers) != hamiltonian.shape[0] or min(layers) <= 0:
            raise ValueError(
                f"layers {list(layers)} must be positive and sum to n = {hamiltonian.shape[0]}"
            )
    else:
        as_host = (lambda m: m) if sp.issparse(hamiltonian) else np.asarray
        check_device(as_host(hamiltonian), None if overlap is None else as_host(overlap), layers)
    if np.ndim(energies) != 1:
        raise ValueError(f"energies must be a 1-D array, got shape {np.shape(energies)}")
    if not traced:
        energies = np.asarray(energies, dtype=np.float64)
        if not np.all(np.isfinite(energies)):
            raise ValueError("energies contain NaN or inf")

    blocks = _device_blocks(hamiltonian, overlap, layers)
    b = max(layers)
    if leads is None:
        left, right = end_leads(blocks, layers)
    else:
        if len(leads) != 2:
            raise ValueError("leads must be a pair (left, right) of Lead")
        left = _pad_lead(Lead(*leads[0]), layers[0], b, "left")
        right = _pad_lead(Lead(*leads[1]), layers[-1], b, "right")

    devices = tuple(jax.local_devices() if devices is None else devices)
    n_devices = len(devices)
    scale = None
    if not (traced or is_traced(left.h01, right.h01)):
        scale = max(float(jnp.max(jnp.abs(lead.h01))) for lead in (left, right))
    lead_method = resolve_lead_method(lead_method, devices[0].platform, float(eta), scale)
    chunk = _auto_chunk(b, n_devices) if chunk_size is None else int(chunk_size)
    if chunk % n_devices:
        chunk = max(n_devices, math.ceil(chunk / n_devices) * n_devices)
    n_energies = energies.shape[0]
    # few distinct chunk shapes (powers of two) keep recompilation rare for short grids
    short = n_devices * 2 ** math.ceil(math.log2(max(8, math.ceil(n_energies / n_devices))))
    chunk = min(chunk, short)
    n_chunks = max(1, math.ceil(n_energies / chunk))
    n_padded = n_chunks * chunk
    eta = jnp.asarray(eta, jnp.float64)

    if traced:
        energies = jnp.asarray(energies, jnp.float64)
        padded = jnp.concatenate([energies, jnp.full(n_padded - n_energies, energies[-1])])
        fn = chunk_function(max_iterations, devices, share_leads, lead_method)
        if n_chunks == 1:
            out = fn(blocks, left, right, padded, eta)
        else:
            remat = jax.checkpoint(fn)
            out = lax.map(
                lambda e: remat(blocks, left, right, e, eta), padded.reshape(n_chunks, chunk)
            )
            out = tuple(x.reshape(n_padded) for x in out)
        return TransmissionResult(*(x[:n_energies] for x in out))

    padded = np.concatenate([energies, np.full(n_padded - n_energies, energies[-1])])
    fn = compiled_chunk(max_iterations, devices, share_leads, lead_method)
    parts = []
    chunks = range(n_chunks)
    if progress and n_chunks > 1:
        chunks = tqdm(chunks, desc="T(E)", unit="chunk")
    for c in chunks:
        part = fn(blocks, left, right, padded[c * chunk : (c + 1) * chunk], eta)
        parts.append(jax.device_get(part))
    t, res_l, res_r = (np.concatenate(p)[:n_energies] for p in zip(*parts, strict=True))
    _warn_residuals(energies, res_l, res_r, residual_tolerance)
    return TransmissionResult(jnp.asarray(t), jnp.asarray(res_l), jnp.asarray(res_r))


def open_channels(
    lead: Lead,
    energies,
    *,
    method: str = "transmission",
    eta: float = DEFAULT_ETA,
    n_k: int = 96,
    **options,
) -> np.ndarray:
    """Number of open channels of a periodic lead at each energy (eV).

    A lead with no open channel at the Fermi level carries no current however good the
    device is; for a Gamma-point reference of a narrow metallic electrode this happens when
    too few transverse k-points fold onto Gamma. Two independent ways to count:

    - ``"transmission"``: the transmission of the perfect lead (a device of two lead cells
      between two copies of the lead), exact up to O(eta): an integer where the lead
      conducts, 0 in the gaps of its band structure. Costs about one T(E).
    - ``"bands"``: half the number of crossings of E by the bands of
      ``H(k) = h00 + h01 e^{ik} + h01^H e^{-ik}`` (with ``S(k)`` alike) on ``n_k`` points of
      the Brillouin zone: every band crossing of E is a Bloch state, half of them moving
      right. Almost free (``n_k`` small eigenproblems for all energies at once); it misses
      crossings between two k-points, so it is exact only away from band extrema. Needs a
      positive definite ``S(k)`` (a truncated overlap may not have one: ValueError).

    Args:
        lead: the lead's blocks (:class:`Lead`).
        energies: ``[n_E]`` energies in eV.
        method: "transmission" or "bands".
        eta: lead broadening in eV ("transmission").
        n_k: Brillouin-zone points ("bands").
        **options: passed on to :func:`transmission` (``check``, ``chunk_size``, ...).

    Returns:
        ``[n_E]`` float64 array: the perfect lead's T(E), or the band count.
    """
    h00, h01, s00, s01 = lead_arrays(lead)
    b = h00.shape[0]
    energies = np.asarray(energies, dtype=np.float64)
    if method == "bands":
        try:
            bands = lead_bands(lead, n_k)  # [n_k, b], each column a continuous periodic band
        except ValueError as err:
            raise ValueError(f"{err}; count with method='transmission'") from None
        above = bands[None, :, :] > energies[:, None, None]
        crossings = np.sum(above != np.roll(above, -1, axis=1), axis=(1, 2))
        return crossings / 2.0
    if method != "transmission":
        raise ValueError(f"method must be 'transmission' or 'bands', got {method!r}")
    lead = Lead(h00, h01, s00, s01)
    hamiltonian = np.block([[h00, h01], [h01.conj().T, h00]])
    overlap = np.block([[s00, s01], [s01.conj().T, s00]])
    result = transmission(
        hamiltonian, overlap, [b, b], energies, eta=eta, leads=(lead, lead), **options
    )
    return np.asarray(result.transmission)
