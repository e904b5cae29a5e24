"""Principal layers: splitting H and S into block-tridiagonal form, and checking input.

A device matrix of n orbitals is cut along the transport axis into contiguous principal layers
of sizes ``layers = (b_0, ..., b_{N-1})`` (orbitals, summing to n) such that H and S couple
only neighbouring layers. The solver works on the diagonal blocks ``[N, b, b]`` and the upper
blocks ``[N - 1, b, b]`` padded to the largest layer ``b``; padding orbitals are decoupled and
never change the transmission.

:func:`principal_layers` derives the layers from the sparsity pattern of H and S for atoms
ordered along the transport axis; :func:`check_device` reports bad input (non-Hermitian H, S
not positive definite, couplings beyond neighbouring layers, NaN or inf, mismatched shapes)
naming the layers or entries involved.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

__all__ = ["principal_layers", "check_device", "layer_offsets", "COUPLING_TOLERANCE"]

COUPLING_TOLERANCE = 1e-12
"""Entries of H (eV) or S with magnitude at or below this count as zero in sparsity checks."""

HERMITIAN_TOLERANCE = 1e-8
"""Allowed ``max |M - M^H|`` relative to ``max(1, max |M|)``."""


def layer_offsets(layers: Sequence[int]) -> np.ndarray:
    """Orbital index where each layer starts, plus n at the end: ``[N + 1]``."""
    return np.concatenate([[0], np.cumsum(np.asarray(layers, dtype=np.int64))])


def _layer_of(layers: Sequence[int]) -> np.ndarray:
    return np.repeat(np.arange(len(layers)), np.asarray(layers, dtype=np.int64))


def _coo(matrix, tolerance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows, columns and |values| of entries with magnitude above ``tolerance``."""
    if sp.issparse(matrix):
        coo = matrix.tocoo()
        keep = np.abs(coo.data) > tolerance
        return coo.row[keep], coo.col[keep], np.abs(coo.data[keep])
    rows, cols = np.nonzero(np.abs(matrix) > tolerance)
    return rows, cols, np.abs(matrix[rows, cols])


def _validate_layers(layers, n: int) -> tuple[int, ...]:
    try:
        sizes = tuple(int(b) for b in layers)
    except TypeError as err:
        raise ValueError(f"layers must be a sequence of layer sizes, got {layers!r}") from err
    if len(sizes) == 0:
        raise ValueError("layers is empty: give at least one layer size")
    bad = [k for k, b in enumerate(sizes) if b <= 0]
    if bad:
        raise ValueError(f"layer {bad[0]} has size {sizes[bad[0]]}; layer sizes must be positive")
    if sum(sizes) != n:
        raise ValueError(
            f"layers sum to {sum(sizes)} orbitals but the matrices have n = {n} "
            f"(layers = {list(sizes)})"
        )
    return sizes


def check_device(hamiltonian, overlap, layers, *, name: str = "H") -> tuple[int, ...]:
    """Check a device before transport; raise ``ValueError`` naming what is wrong.

    Args:
        hamiltonian: [n, n] in eV, NumPy array or scipy.sparse matrix (host data).
        overlap: [n, n] or None (orthogonal basis).
        layers: principal-layer sizes in orbitals.
        name: how H is called in messages (e.g. a file name).

    Returns:
        The layer sizes as a tuple of ints.
    """
    matrices = {"H": hamiltonian} if overlap is None else {"H": hamiltonian, "S": overlap}
    for key, m in matrices.items():
        label = name if key == "H" else ("S" if name == "H" else f"{name} overlap")
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{label} must be a square [n, n] matrix, got shape {m.shape}")
        values = m.data if sp.issparse(m) else m
        if not np.all(np.isfinite(values)):
            bad = ~np.isfinite(m.toarray() if sp.issparse(m) else m)
            i, j = np.argwhere(bad)[0]
            raise ValueError(
                f"{label} has {int(bad.sum())} NaN or inf entries, first at ({i}, {j})"
            )
    n = hamiltonian.shape[0]
    if overlap is not None and overlap.shape != hamiltonian.shape:
        raise ValueError(f"S has shape {overlap.shape} but H has shape {hamiltonian.shape}")
    sizes = _validate_layers(layers, n)
    layer_of = _layer_of(sizes)

    for key, m in matrices.items():
        label = name if key == "H" else "S"
        diff = m - m.conj().T
        rows, cols, vals = _coo(diff, 0.0)
        if len(vals):
            scale = max(1.0, float(np.max(np.abs(m.data if sp.issparse(m) else m))))
            worst = int(np.argmax(vals))
            if vals[worst] > HERMITIAN_TOLERANCE * scale:
                i, j = int(rows[worst]), int(cols[worst])
                raise ValueError(
                    f"{label} is not Hermitian: |{label}[{i},{j}] - conj({label}[{j},{i}])| = "
                    f"{vals[worst]:.3g} (orbitals in layers {layer_of[i]} and {layer_of[j]})"
                )
        rows, cols, vals = _coo(m, COUPLING_TOLERANCE)
        far = np.abs(layer_of[rows] - layer_of[cols]) > 1
        if np.any(far):
            k = np.flatnonzero(far)
            worst = k[np.argmax(vals[k])]
            pairs = sorted(
                {
                    (int(min(a, b)), int(max(a, b)))
                    for a, b in zip(layer_of[rows[k]], layer_of[cols[k]], strict=True)
                }
            )
            shown = ", ".join(f"{a}-{b}" for a, b in pairs[:8])
            more = f" and {len(pairs) - 8} more" if len(pairs) > 8 else ""
            raise ValueError(
                f"{label} couples layers that are not neighbours: layers {shown}{more} "
                f"(largest |{label}[{rows[worst]},{cols[worst]}]| = {vals[worst]:.3g}); "
                f"use fewer, larger principal layers"
            )
    if overlap is not None:
        _check_positive_definite(overlap, sizes)
    return sizes


def _check_positive_definite(overlap, sizes: tuple[int, ...]) -> None:
    """Block Cholesky along the layers (exact for block-tridiagonal S)."""
    offsets = layer_offsets(sizes)
    schur = None
    for k in range(len(sizes)):
        sl = slice(offsets[k], offsets[k + 1])
        block = overlap[sl, sl]
        block = np.asarray(block.toarray() if sp.issparse(block) else block, dtype=complex)
        if k > 0:
            prev = slice(offsets[k - 1], offsets[k])
            up = overlap[prev, sl]
            up = np.asarray(up.toarray() if sp.issparse(up) else up, dtype=complex)
            x = np.linalg.solve(schur, up)  # previous Schur complement^-1 S_{k-1,k}
            block = block - up.conj().T @ x
        try:
            np.linalg.cholesky(block)
        except np.linalg.LinAlgError:
            eig = np.linalg.eigvalsh(0.5 * (block + block.conj().T))
            raise ValueError(
                f"S is not positive definite: the Schur complement at layer {k} has "
                f"eigenvalue {eig[0]:.3g}"
            ) from None
        schur = block


def principal_layers(
    positions,
    orbital_counts,
    hamiltonian,
    overlap=None,
    *,
    tolerance: float = COUPLING_TOLERANCE,
) -> tuple[int, ...]:
    """Principal layers (sizes in orbitals) from atom order and the sparsity of H and S.

    Atoms must be ordered along the transport axis (their orbitals contiguous in H in that
    order). Layers are contiguous groups of atoms such that H and S couple only neighbouring
    layers. For every possible first layer the rest is built greedily (each next layer holds
    exactly the atoms the previous layers reach). Partitions whose first two and last two
    layers have equal sizes come first (the default leads of
    :func:`hamjax.transport.transmission` repeat them; put two whole lead cells at each end of
    the device), then the smallest padded RGF cost ``N_layers * max_b^3``, then more layers.

    Args:
        positions: [n_atoms] coordinates along the transport axis in Angstrom (non-decreasing),
            or [n_atoms, 3] together with nothing else (x is used).
        orbital_counts: [n_atoms] orbitals per atom.
        hamiltonian: [n, n] in eV (NumPy or scipy.sparse); only its sparsity is used.
        overlap: [n, n] or None.
        tolerance: entries with magnitude at or below it count as zero.

    Returns:
        Layer sizes in orbitals, summing to n.

    Example: a chain of 6 one-orbital atoms with nearest-neighbour hopping splits into 6 layers.

    >>> import numpy as np
    >>> h = -(np.eye(6, k=1) + np.eye(6, k=-1))
    >>> principal_layers(np.arange(6.0), np.ones(6, int), h)
    (1, 1, 1, 1, 1, 1)
    """
    x = np.asarray(positions, dtype=float)
    if x.ndim == 2:
        x = x[:, 0]
    counts = np.asarray(orbital_counts, dtype=np.int64)
    n_atoms = len(counts)
    if x.shape != (n_atoms,):
        raise ValueError(f"positions {x.shape} and orbital_counts ({n_atoms},) do not match")
    if np.any(counts <= 0):
        a = int(np.flatnonzero(counts <= 0)[0])
        raise ValueError(f"atom {a} has {counts[a]} orbitals")
    step = np.diff(x)
    if np.any(step < -1e-8):
        a = int(np.flatnonzero(step < -1e-8)[0]) + 1
        raise ValueError(
            f"atoms must be ordered along the transport axis: atom {a} at {x[a]:.4f} A "
            f"comes after atom {a - 1} at {x[a - 1]:.4f} A"
        )
    n = int(counts.sum())
    if hamiltonian.shape != (n, n):
        raise ValueError(f"H has shape {hamiltonian.shape}, orbital_counts give n = {n}")
    atom_of = np.repeat(np.arange(n_atoms), counts)
    reach = np.arange(n_atoms)  # furthest atom index each atom couples to
    for m in (hamiltonian, overlap):
        if m is None:
            continue
        rows, cols, _ = _coo(m, tolerance)
        np.maximum.at(reach, atom_of[rows], atom_of[cols])
    # prefix[c] = furthest atom reached by atoms 0..c-1
    prefix = np.maximum.accumulate(reach)

    best = None
    for first in range(1, n_atoms + 1):
        cuts = [0, first]
        while cuts[-1] < n_atoms:
            nxt = max(cuts[-1] + 1, int(prefix[cuts[-1] - 1]) + 1)
            cuts.append(min(nxt, n_atoms))
        # the last layer may be shorter than what reaches it; that is allowed.
        atom_cuts = np.asarray(cuts)
        orb_cuts = np.concatenate([[0], np.cumsum(counts)])[atom_cuts]
        sizes = np.diff(orb_cuts)
        lead_ready = len(sizes) >= 2 and sizes[0] == sizes[1] and sizes[-1] == sizes[-2]
        cost = (not lead_ready, len(sizes) * int(sizes.max()) ** 3, -len(sizes))
        if best is None or cost < best[0]:
            best = (cost, tuple(int(s) for s in sizes))
        if not best[0][0] and int(sizes[0]) ** 3 > best[0][1]:
            break  # a larger first layer alone already costs more than the best partition
    return best[1]
