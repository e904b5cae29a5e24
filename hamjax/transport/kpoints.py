"""Transmission through a device periodic across the transport axis: transverse k-points.

A device cell periodic in the two transverse directions is described by its real-space image
matrices ``H(R)`` and ``S(R)``: ``H(R)`` couples the orbitals of the home cell to those of the
cell translated by the integer transverse lattice vector ``R``. Couplings along the transport
axis (axis 0) live inside every matrix, block-tridiagonal over the principal layers exactly as
for :func:`hamjax.transport.transmission`; ``R`` has no component along that axis. At the
fractional transverse wave vector ``k`` the Bloch matrices

    H(k) = sum_R H(R) exp(2 pi i k . R),    S(k) likewise,

are an ordinary two-terminal problem, and the transmission per transverse cell is the
Brillouin-zone average ``T(E) = sum_k w_k T(E, k)`` over a Monkhorst-Pack grid (the
construction of TBtrans and OMEN). Hermiticity of ``H(k)`` needs ``H(-R) = H(R)^H``.

Where every ``H(R)`` and ``S(R)`` is real, ``H(-k) = conj(H(k))`` and time reversal gives
``T(E, -k) = T(E, k)``: only one k-point of each pair ``(k, -k)`` is computed, with twice the
weight.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from tqdm.auto import tqdm

from hamjax.kgrid import grid_sizes, monkhorst_pack, time_reversal_reduce
from hamjax.transport.layers import HERMITIAN_TOLERANCE
from hamjax.transport.rgf import (
    DEFAULT_ETA,
    RESIDUAL_TOLERANCE,
    is_traced,
    transmission,
)
from hamjax.transport.surface import DEFAULT_MAX_ITERATIONS

__all__ = [
    "KPointTransmission",
    "monkhorst_pack",
    "time_reversal_reduce",
    "bloch_matrix",
    "transmission_kpoints",
]


@dataclasses.dataclass(frozen=True)
class KPointTransmission:
    """What :func:`transmission_kpoints` returns (a JAX pytree, so jit can return it).

    Attributes:
        transmission: ``[n_E]`` k-averaged T(E) per transverse cell (channels),
            ``sum_k weights[k] * transmission_k[k]``.
        transmission_k: ``[n_k, n_E]`` T(E, k) at each computed k-point.
        kpoints: ``[n_k, 3]`` fractional k-points (reciprocal lattice units) actually
            computed: the whole grid, or its time-reversal-irreducible half.
        weights: ``[n_k]`` weights summing to 1.
        residual_left: ``[n_k, n_E]`` Dyson residual of the left lead's surface Green's
            function (as in :class:`hamjax.transport.TransmissionResult`).
        residual_right: ``[n_k, n_E]`` same for the right lead.
        overlap_min_eigenvalue: ``[n_k]`` smallest eigenvalue of S(k) (1 without overlaps).
    """

    transmission: jax.Array
    transmission_k: jax.Array
    kpoints: np.ndarray
    weights: np.ndarray
    residual_left: jax.Array
    residual_right: jax.Array
    overlap_min_eigenvalue: jax.Array


jax.tree_util.register_dataclass(
    KPointTransmission,
    data_fields=[f.name for f in dataclasses.fields(KPointTransmission)],
    meta_fields=[],
)


# ----------------------------------------------------------------------------- k grids
def _check_images(hamiltonians, overlaps, shifts) -> np.ndarray:
    """Shapes and shifts; returns for every image the index of its partner at -R."""
    h_shape = tuple(np.shape(hamiltonians))
    if len(h_shape) != 3 or h_shape[1] != h_shape[2]:
        raise ValueError(
            f"hamiltonians must be [n_R, n, n] image matrices (one per shift), got shape {h_shape}"
        )
    if overlaps is not None and tuple(np.shape(overlaps)) != h_shape:
        raise ValueError(
            f"overlaps has shape {tuple(np.shape(overlaps))} but hamiltonians has {h_shape}; "
            "give one overlap image per Hamiltonian image (or None)"
        )
    shifts = np.asarray(shifts)
    if shifts.shape != (h_shape[0], 3):
        raise ValueError(
            f"shifts must be [n_R, 3] = [{h_shape[0]}, 3] (one integer lattice shift per "
            f"image), got shape {shifts.shape}"
        )
    if not np.issubdtype(shifts.dtype, np.number) or not np.all(shifts == np.round(shifts)):
        raise ValueError(f"shifts must be integer lattice vectors, got {shifts.tolist()}")
    shifts = np.round(shifts).astype(np.int64)
    along = np.flatnonzero(shifts[:, 0] != 0)
    if len(along):
        raise ValueError(
            f"shift {tuple(shifts[along[0]].tolist())} (image {along[0]}) has a component "
            "along the transport axis (axis 0): couplings along the transport axis belong "
            "inside each image matrix, block-tridiagonal over the layers; images are "
            "transverse only"
        )
    index = {}
    for r, shift in enumerate(map(tuple, shifts.tolist())):
        if shift in index:
            raise ValueError(
                f"shift {shift} appears twice (images {index[shift]} and {r}); sum them first"
            )
        index[shift] = r
    partner = np.empty(len(shifts), dtype=np.int64)
    for r, shift in enumerate(map(tuple, shifts.tolist())):
        minus = tuple(-x for x in shift)
        if minus not in index:
            raise ValueError(
                f"shift {shift} has no partner {minus}: the images must be closed under "
                "R -> -R (with H(-R) = H(R)^H) for H(k) to be Hermitian"
            )
        partner[r] = index[minus]
    return shifts, partner


def _check_hermitian_images(matrices, shifts, partner, label: str) -> None:
    """``M(-R) = M(R)^H`` for every image, to the tolerance of :func:`check_device`."""
    m = np.asarray(matrices)
    if not np.all(np.isfinite(m)):
        r, i, j = np.argwhere(~np.isfinite(m))[0]
        raise ValueError(
            f"{label}[{r}] (shift {tuple(shifts[r].tolist())}) has NaN or inf at ({i}, {j})"
        )
    scale = max(1.0, float(np.max(np.abs(m), initial=0.0)))
    for r in range(len(m)):
        p = partner[r]
        if p < r:
            continue
        diff = np.abs(m[p] - m[r].conj().T)
        if diff.size and diff.max() > HERMITIAN_TOLERANCE * scale:
            i, j = np.unravel_index(np.argmax(diff), diff.shape)
            raise ValueError(
                f"{label}[{p}] (shift {tuple(shifts[p].tolist())}) is not the conjugate "
                f"transpose of {label}[{r}] (shift {tuple(shifts[r].tolist())}): largest "
                f"difference {diff[i, j]:.3g} at ({i}, {j}); H(k) would not be Hermitian"
            )


def _is_real(*matrices) -> bool:
    """No imaginary part anywhere (dtype alone when traced)."""
    for m in matrices:
        if m is None:
            continue
        if not jnp.iscomplexobj(m):
            continue
        if is_traced(m) or np.any(np.imag(np.asarray(m)) != 0):
            return False
    return True


def bloch_matrix(images, shifts, k):
    """``M(k) = sum_R M(R) exp(2 pi i k . R)``, ``[n, n]`` complex (NumPy or JAX in, alike out).

    Args:
        images: ``[n_R, n, n]`` image matrices (eV for H).
        shifts: ``[n_R, 3]`` integer lattice shifts.
        k: ``[3]`` fractional wave vector.
    """
    phases = np.exp(2j * np.pi * (np.asarray(shifts) @ np.asarray(k, dtype=np.float64)))
    if isinstance(images, jax.Array):
        return jnp.einsum("r,rij->ij", jnp.asarray(phases), images)
    return np.einsum("r,rij->ij", phases, np.asarray(images))


def _format_k(k) -> str:
    return "(" + ", ".join(f"{x:.6g}" for x in np.asarray(k)) + ")"


# ----------------------------------------------------------------------------- public
def transmission_kpoints(
    hamiltonians,
    overlaps,
    shifts,
    layers: Sequence[int],
    energies,
    kgrid: Sequence[int],
    *,
    eta: float = DEFAULT_ETA,
    gamma_centred: bool = False,
    time_reversal: bool | None = None,
    chunk_size: int | None = None,
    devices: Sequence[jax.Device] | None = None,
    max_iterations: int = DEFAULT_MAX_ITERATIONS,
    residual_tolerance: float = RESIDUAL_TOLERANCE,
    check: bool = True,
    progress: bool = False,
    share_leads: bool = True,
    lead_method: str = "decimation",
) -> KPointTransmission:
    """Landauer transmission per transverse cell, averaged over transverse k-points.

    Every k-point is one call of :func:`hamjax.transport.transmission` on the Bloch
    matrices ``H(k)``, ``S(k)`` (:func:`bloch_matrix`) with its default leads (the
    semi-infinite repetition of the first and of the last layer of ``H(k)``, so both ends
    must hold two lead cells); its energies are chunked and sharded over ``devices`` as
    there, one k-point after another.

    With NumPy input the images are checked (shapes, shifts, ``M(-R) = M(R)^H``, a positive
    definite ``S(k)`` at every k-point) and each k-point runs through the compiled, sharded
    path of :func:`~hamjax.transport.transmission`. With JAX arrays under ``jax.jit`` or
    ``jax.grad`` (``layers``, ``kgrid`` and the keyword options static) the k-points run
    under :func:`jax.lax.map`, each rematerialised under differentiation; value checks and
    residual warnings then are skipped (the smallest eigenvalue of S(k) is still reported).
    Gradients include the leads, which are layers of ``H(k)``.

    The current per transverse cell is
    ``hamjax.transport.current(energies, result.transmission, bias, ...)`` (amperes): the
    k-average of the currents, because the Landauer integral is linear in T.

    Args:
        hamiltonians: ``[n_R, n, n]`` image matrices ``H(R)`` in eV, real or complex, the
            images closed under ``R -> -R`` with ``H(-R) = H(R)^H`` (``H(R)^T`` when real).
        overlaps: ``[n_R, n, n]`` images ``S(R)`` on the same shifts, or None (orthogonal
            basis: ``S(k) = 1``).
        shifts: ``[n_R, 3]`` integer transverse lattice shifts ``R``; component 0 (the
            transport axis) must be 0, each shift listed once.
        layers: principal-layer sizes in orbitals along the transport axis (sum ``n``); every
            image must couple only neighbouring layers.
        energies: ``[n_E]`` energies in eV.
        kgrid: ``(1, n2, n3)`` k-point grid (one point along the transport axis).
        eta: lead broadening in eV.
        gamma_centred: Gamma-centred grid instead of the standard Monkhorst-Pack grid
            (:func:`monkhorst_pack`; the same for odd sizes, both contain Gamma then).
        time_reversal: compute only one of each pair ``(k, -k)`` with twice the weight
            (:func:`time_reversal_reduce`). Default: when every ``H(R)`` and ``S(R)`` is
            real (by value for concrete input, by dtype when traced). True with complex
            images raises ``ValueError``.
        chunk_size, devices, max_iterations, check, progress, share_leads, lead_method: as
            in :func:`~hamjax.transport.transmission` (``progress`` shows a bar over
            k-points).
        residual_tolerance: warn (RuntimeWarning naming the k-point and energies) above
            this Dyson residual.

    Returns:
        :class:`KPointTransmission`: ``transmission [n_E]``, ``transmission_k [n_k, n_E]``,
        ``kpoints [n_k, 3]``, ``weights [n_k]``, ``residual_left``/``residual_right``
        ``[n_k, n_E]`` and ``overlap_min_eigenvalue [n_k]``.

    Raises:
        ValueError: shapes that do not fit ``[n_R, n, n]`` / ``[n_R, 3]``, a shift along the
            transport axis, a shift without its negative, non-Hermitian image pairs, a k-grid
            with more than one point along the transport axis or a non-positive size, or an
            ``S(k)`` that is not positive definite (naming the k-point and eigenvalue).

    Example: a square lattice strip one site wide, periodic across (hopping -1 eV): at
    ``k_y`` the chain's band is shifted by ``-2 cos(2 pi k_y)``.

    >>> import jax; jax.config.update("jax_enable_x64", True)
    >>> import numpy as np
    >>> chain = -(np.eye(6, k=1) + np.eye(6, k=-1))
    >>> images = np.stack([chain, -np.eye(6), -np.eye(6)])
    >>> shifts = [(0, 0, 0), (0, 1, 0), (0, -1, 0)]
    >>> r = transmission_kpoints(images, None, shifts, [1] * 6, [0.0, 3.0], (1, 4, 1))
    >>> r.kpoints[:, 1].tolist(), r.weights.tolist()
    ([-0.375, -0.125], [0.5, 0.5])
    >>> np.round(np.asarray(r.transmission), 6).tolist()
    [1.0, 0.5]
    """
    if not jax.config.read("jax_enable_x64"):
        raise ValueError(
            "hamjax.transport works in complex128: enable float64 first with "
            "jax.config.update('jax_enable_x64', True)"
        )
    sizes = grid_sizes(kgrid)
    if sizes[0] != 1:
        raise ValueError(
            f"kgrid {sizes} has {sizes[0]} points along the transport axis (axis 0); it must "
            "be (1, n2, n3): the device is open along that axis"
        )
    shifts, partner = _check_images(hamiltonians, overlaps, shifts)
    traced = is_traced(hamiltonians, overlaps, energies)
    if not traced:
        if not isinstance(hamiltonians, jax.Array):
            hamiltonians = np.asarray(hamiltonians)
        if overlaps is not None and not isinstance(overlaps, jax.Array):
            overlaps = np.asarray(overlaps)
        if check:
            _check_hermitian_images(hamiltonians, shifts, partner, "hamiltonians")
            if overlaps is not None:
                _check_hermitian_images(overlaps, shifts, partner, "overlaps")
    real = _is_real(hamiltonians, overlaps)
    if time_reversal is None:
        time_reversal = real
    elif time_reversal and not real:
        raise ValueError(
            "time_reversal=True needs real H(R) and S(R); with complex images T(E, k) and "
            "T(E, -k) differ in general"
        )
    if time_reversal:
        kpoints, weights = time_reversal_reduce(sizes, gamma_centred=gamma_centred)
    else:
        kpoints = monkhorst_pack(sizes, gamma_centred=gamma_centred)
        weights = np.full(len(kpoints), 1.0 / len(kpoints))
    options = dict(
        eta=eta,
        chunk_size=chunk_size,
        devices=devices,
        max_iterations=max_iterations,
        check=check,
        share_leads=share_leads,
        lead_method=lead_method,
    )
    if traced:
        return _traced(hamiltonians, overlaps, shifts, layers, energies, kpoints, weights, options)
    return _concrete(
        hamiltonians,
        overlaps,
        shifts,
        layers,
        energies,
        kpoints,
        weights,
        options,
        residual_tolerance,
        progress,
    )


def _concrete(
    hamiltonians,
    overlaps,
    shifts,
    layers,
    energies,
    kpoints,
    weights,
    options,
    residual_tolerance,
    progress,
) -> KPointTransmission:
    """One sharded :func:`transmission` per k-point, on host-built Bloch matrices."""
    hamiltonians = np.asarray(hamiltonians)
    overlaps = None if overlaps is None else np.asarray(overlaps)
    n = hamiltonians.shape[1]
    rows = []
    points = range(len(kpoints))
    if progress and len(kpoints) > 1:
        points = tqdm(points, desc="k-points", unit="k")
    for index in points:
        k = kpoints[index]
        h_k = bloch_matrix(hamiltonians, shifts, k)
        if overlaps is None:
            s_k, smallest = None, 1.0
        else:
            s_k = bloch_matrix(overlaps, shifts, k)
            smallest = float(np.linalg.eigvalsh(0.5 * (s_k + s_k.conj().T))[0]) if n else 1.0
            if not smallest > 0:
                raise ValueError(
                    f"S(k) is not positive definite at k = {_format_k(k)} (smallest eigenvalue "
                    f"{smallest:.3g}): the overlap images do not describe a valid basis there "
                    "(truncated lattice sums?); use a k-grid that avoids this point or complete "
                    "the overlap images"
                )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = transmission(
                    h_k,
                    s_k,
                    layers,
                    energies,
                    residual_tolerance=residual_tolerance,
                    **options,
                )
            except ValueError as err:
                raise ValueError(f"at k = {_format_k(k)}: {err}") from err
        for warning in caught:
            warnings.warn(
                f"at k = {_format_k(k)}: {warning.message}", warning.category, stacklevel=3
            )
        rows.append((*(np.asarray(x) for x in result), smallest))
    t_k, res_l, res_r, smallest = (np.stack(x) for x in zip(*rows, strict=True))
    return KPointTransmission(
        transmission=jnp.asarray(weights @ t_k),
        transmission_k=jnp.asarray(t_k),
        kpoints=kpoints,
        weights=weights,
        residual_left=jnp.asarray(res_l),
        residual_right=jnp.asarray(res_r),
        overlap_min_eigenvalue=jnp.asarray(smallest),
    )


def _traced(
    hamiltonians, overlaps, shifts, layers, energies, kpoints, weights, options
) -> KPointTransmission:
    """All k-points under :func:`jax.lax.map` (jit/grad-able), each k rematerialised."""
    hamiltonians = jnp.asarray(hamiltonians)
    overlaps = None if overlaps is None else jnp.asarray(overlaps)
    layers = tuple(int(b) for b in layers)
    phases = jnp.asarray(np.exp(2j * np.pi * (kpoints @ shifts.T)))  # [n_k, n_R]
    options = dict(options, check=False)

    def one_k(phase):
        h_k = jnp.einsum("r,rij->ij", phase, hamiltonians)
        if overlaps is None:
            s_k = None
            smallest = jnp.ones((), jnp.float64)
        else:
            s_k = jnp.einsum("r,rij->ij", phase, overlaps)
            frozen = lax.stop_gradient(s_k)
            smallest = jnp.linalg.eigvalsh(0.5 * (frozen + frozen.conj().T))[0]
        result = transmission(h_k, s_k, layers, energies, **options)
        return (*result, smallest)

    if len(kpoints) > 1:
        one_k = jax.checkpoint(one_k)
    t_k, res_l, res_r, smallest = lax.map(one_k, phases)
    return KPointTransmission(
        transmission=jnp.asarray(weights) @ t_k,
        transmission_k=t_k,
        kpoints=kpoints,
        weights=weights,
        residual_left=res_l,
        residual_right=res_r,
        overlap_min_eigenvalue=smallest,
    )
