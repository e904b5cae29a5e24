"""Image-resolved GFN1-xTB blocks ``H_ij(R)``, ``S_ij(R)`` of a periodic cell, exactly.

tblite computes periodic cells at the Gamma point: its matrices are the sums over lattice
images, ``M_ij(Gamma) = sum_R M_ij(R)``. A model that must predict cells of another width
needs the images apart. For GFN1-xTB they can be recovered exactly from the cell's own SCF:

- GFN1-xTB's self-consistent Hamiltonian is ``F = H0 + (1/2) S o (v_m + v_n)`` with one
  potential ``v`` per orbital (shell-resolved charges, third-order on-site terms; GFN1 has no
  multipole terms), so ``v_m = (F - H0)_mm / S_mm`` at Gamma, and the image blocks follow
  once ``H0(R)`` and ``S(R)`` are known. The identity is checked on every cell.
- ``S(R)`` is a two-centre integral: any structure that holds the two atoms gives it.
- ``H0`` couples orbitals ``m`` (atom A) and ``n`` (atom B) as
  ``H0_mn = (1/2) (h_m + h_n) G_mn`` where ``G_mn`` depends only on the elements, the shells
  and the vector between the atoms (the overlap, the distance polynomial, the shell-pair and
  electronegativity factors), and ``h_m`` is the self-energy of orbital ``m``, which depends
  on the coordination number of its atom (the only environment dependence of ``H0``).
  The on-site block of an atom is ``diag(h)``.

So for every lattice image ``R`` a finite (non-periodic) cluster of the cell's atoms and their
copies translated by ``R`` gives ``S(R)`` and ``G(R) = 2 H0' / (h'_m + h'_n)`` with the
cluster's own self-energies ``h'`` (its ``H0`` diagonal); tblite is stopped before the first
SCF cycle, since only the integrals are needed. The periodic self-energies then follow from
the diagonal of the Gamma-point ``H0``, which adds the atom's self-images:
``H0_mm(Gamma) = h_m (1 + sum_{R != 0} G_mm(R))``. Three independent identities prove the
result on every record: ``sum_R S(R) = S(Gamma)``, ``sum_R H0(R) = H0(Gamma)`` off the diagonal
(the diagonal was used) and ``sum_R F(R) = F(Gamma)``, each to round-off.

Images are kept up to tblite's own integral cutoff (about 21 A at the default accuracy,
where the Ti 4s/4p overlaps reach), so no coupling the reference holds is lost; pairs whose
blocks are all zero are not stored.
"""

from __future__ import annotations

import itertools
import re
import time

import numpy as np

from hamjax.constants import BOHR_ANGSTROM

__all__ = [
    "FOLDING_TOLERANCE_HARTREE",
    "image_shifts",
    "integral_cutoff_angstrom",
    "tblite_integrals",
    "unfold_gfn1",
]

#: Largest allowed |sum_R M(R) - M(Gamma)| (Hartree) of an image-resolved record.
FOLDING_TOLERANCE_HARTREE = 1e-8
_CUTOFF_LINE = re.compile(r"integral cutoff\s+([-+0-9.Ee]+)\s*bohr")


def integral_cutoff_angstrom(log_text: str) -> float | None:
    """tblite's integral cutoff (Angstrom) from its verbose output, or None if not printed."""
    found = _CUTOFF_LINE.search(log_text)
    return None if found is None else float(found.group(1)) * BOHR_ANGSTROM


def image_shifts(
    positions: np.ndarray, cell: np.ndarray, pbc, cutoff_angstrom: float
) -> list[tuple[int, int, int]]:
    """Lattice shifts ``R`` (periodic axes only) with some atom pair closer than the cutoff.

    ``R = 0`` comes first; ``R`` and ``-R`` are both listed.
    """
    positions = np.asarray(positions, dtype=float)
    cell = np.asarray(cell, dtype=float)
    pbc = np.asarray(pbc, dtype=bool)
    # reach of the cell's atoms along each axis: the spread of positions plus the cutoff
    reciprocal = np.linalg.inv(cell)  # column k is normal to the lattice planes k
    spread = np.ptp(positions @ reciprocal, axis=0) if len(positions) else np.zeros(3)
    plane = 1.0 / np.linalg.norm(reciprocal, axis=0)  # spacing of lattice planes (A)
    counts = np.where(pbc, np.ceil(spread + cutoff_angstrom / plane).astype(int) + 1, 0)
    found = []
    for shift in itertools.product(*[range(-n, n + 1) for n in counts]):
        vec = np.asarray(shift, dtype=float) @ cell
        d2 = np.sum((positions[:, None, :] - positions[None, :, :] - vec) ** 2, axis=-1)
        if d2.min() < cutoff_angstrom**2:
            found.append(tuple(int(x) for x in shift))
    found.sort(key=lambda s: (s != (0, 0, 0), s))
    return found


def tblite_integrals(numbers, positions, method: str, accuracy: float, *, cell=None, pbc=None):
    """tblite's ``S`` and ``H0`` of a structure, stopped before the first SCF cycle (they are
    set up before it and do not depend on it): finite, or periodic with ``cell`` and ``pbc``
    (then the Gamma-point sums).

    Returns:
        ``(overlap, core_hamiltonian, log, shell_angular_momenta, shell_atoms)``, matrices
        in tblite's orbital order; ``log`` is tblite's verbose output (it names the integral
        cutoff).
    """
    from tblite.interface import Calculator, Result

    log: list[str] = []
    periodic = {}
    if cell is not None:
        periodic = dict(
            lattice=np.asarray(cell, dtype=float) / BOHR_ANGSTROM,
            periodic=np.asarray(pbc, dtype=bool),
        )
    calc = Calculator(
        method,
        np.asarray(numbers, dtype=int),
        np.asarray(positions, dtype=float) / BOHR_ANGSTROM,
        color=False,
        logger=log.append,
        **periodic,
    )
    calc.set("verbosity", 2)
    calc.set("save-integrals", 1)
    calc.set("accuracy", float(accuracy))
    calc.set("max-iter", 0)
    res = Result()
    try:
        calc.singlepoint(res)
    except Exception as err:  # tblite reports the (expected) unconverged SCF as an error
        if "not converged" not in str(err).lower():
            raise
    return (
        np.asarray(res.get("overlap-matrix")),
        np.asarray(res.get("hamiltonian-matrix")),
        "\n".join(log),
        np.asarray(calc.get("angular-momenta")),
        np.asarray(calc.get("shell-map")),
    )


def _pair_factor(core: np.ndarray) -> np.ndarray:
    """``G = 2 H0' / (h'_m + h'_n)`` from a cluster's core Hamiltonian (self-energies on its
    diagonal)."""
    h = np.diag(core)
    return 2.0 * core / (h[:, None] + h[None, :])


#: tblite's cost of one cluster call beyond its pair integrals, in atom pairs (measured:
#: about 0.05 s per call against 20 us per pair within the cutoff).
_CALL_COST_PAIRS = 2500


def _windows(near: np.ndarray, near_home: np.ndarray, along: np.ndarray, max_windows: int = 12):
    """Split one image's cluster into windows of cell atoms with the copies they meet.

    tblite computes every pair of a cluster within its cutoff, but only the pairs between a
    cell atom and a copy are wanted; the pairs among the cell atoms and among the copies are
    the price. Cutting the cell atoms into windows along ``along`` (each window with only
    the copies within reach of it) lowers that price when the reach is short compared with
    the cell, at the cost of more calls; the split with the fewest estimated pairs wins.

    Args:
        near: ``[n, n]`` bool, cell atom ``i`` and copy ``j`` within the cutoff.
        near_home: ``[n, n]`` bool, the same among the cell's own atoms (and so among copies).
        along: ``[n]`` coordinate of the cell atoms along which windows are cut.

    Returns:
        list of ``(cell atoms, copies)`` index arrays; the cell atoms of the windows are
        disjoint, so every wanted pair comes from exactly one window.
    """
    meet = np.flatnonzero(near.any(axis=1))
    order = meet[np.argsort(along[meet], kind="stable")]
    best, best_cost = None, np.inf
    for m in range(1, min(max_windows, max(len(order), 1)) + 1):
        split = [w for w in np.array_split(order, m) if len(w)]
        windows = [(w, np.flatnonzero(near[w].any(axis=0))) for w in split]
        cost = sum(
            near_home[np.ix_(h, h)].sum() / 2
            + near_home[np.ix_(c, c)].sum() / 2
            + near[np.ix_(h, c)].sum()
            + _CALL_COST_PAIRS
            for h, c in windows
        )
        if cost < best_cost:
            best, best_cost = windows, cost
    return best or []


def _nonzero_pairs(matrices, row_offsets, col_offsets) -> tuple[np.ndarray, np.ndarray]:
    """Local ``(row atom, column atom)`` of the atom blocks where any matrix is non-zero."""
    total = sum(np.abs(m) for m in matrices)
    if total.size == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    per_row = np.maximum.reduceat(total, row_offsets[:-1], axis=0)
    per_pair = np.maximum.reduceat(per_row, col_offsets[:-1], axis=1)
    return np.nonzero(per_pair > 0)


def _cut(matrix, row_offsets, col_offsets, rows, cols) -> list[np.ndarray]:
    """The ``[n_i, n_j]`` blocks ``(rows[b], cols[b])`` of a matrix cut by atom offsets."""
    return [
        matrix[row_offsets[i] : row_offsets[i + 1], col_offsets[j] : col_offsets[j + 1]]
        for i, j in zip(rows.tolist(), cols.tolist(), strict=True)
    ]


def unfold_gfn1(
    atoms,
    hamiltonian: np.ndarray,
    core_hamiltonian: np.ndarray,
    overlap: np.ndarray,
    orbital_counts: np.ndarray,
    permutation: np.ndarray,
    signs: np.ndarray,
    *,
    method: str = "GFN1-xTB",
    accuracy: float = 1.0,
    cutoff_angstrom: float | None = None,
    progress=None,
):
    """Split the Gamma-point GFN1-xTB matrices of a periodic cell into lattice images.

    Args:
        atoms: the periodic ``ase.Atoms`` of the SCF (Angstrom).
        hamiltonian: ``[n_orb, n_orb]`` converged self-consistent ``F(Gamma)``, Hartree,
            tblite orbital order.
        core_hamiltonian: ``[n_orb, n_orb]`` tblite's ``H0(Gamma)``, Hartree.
        overlap: ``[n_orb, n_orb]`` ``S(Gamma)``.
        orbital_counts: ``[n_atoms]`` orbitals per atom (tblite groups them by atom).
        permutation, signs: ``[n_orb]`` the map to hamjax order,
            ``M_hamjax = signs signs^T * M[permutation][:, permutation]`` (within atoms).
        method: the tblite method (its Hamiltonian must have the GFN1 form; checked).
        accuracy: tblite's accuracy factor of the SCF (it sets the integral cutoff).
        cutoff_angstrom: images farther than this are not computed (default: tblite's own
            integral cutoff, read from the first cluster).
        progress: optional callable ``progress(done, total)``.

    Returns:
        ``(pairs [n_block, 2], shifts [n_block, 3], h_blocks, core_blocks, s_blocks,
        diagnostics)``: the blocks of ``F``, ``H0`` and ``S`` (lists of ``[n_i, n_j]`` arrays
        in hamjax order, Hartree) sorted by shift, then atoms; ``diagnostics`` has
        ``potential_residual_hartree`` (the form ``F - H0 = S o (v_m + v_n) / 2``),
        ``cutoff_angstrom``, ``n_images``, ``n_clusters``, ``wall_time_s``. The folding
        identities are checked on the
        record by :func:`hamjax.reference.checks.check_image_record`.

    Raises:
        ValueError: the structure is not periodic or the matrices do not have the GFN1 form.
    """
    start = time.perf_counter()
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if not pbc.any():
        raise ValueError("image blocks need a periodic structure")
    numbers = np.asarray(atoms.numbers, dtype=int)
    positions = np.asarray(atoms.positions, dtype=float)
    cell = np.asarray(atoms.cell.array, dtype=float)
    counts = np.asarray(orbital_counts, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)])

    # SCF potential per orbital: F - H0 = (1/2) S o (v_m + v_n)
    difference = hamiltonian - core_hamiltonian
    potential = np.diag(difference) / np.diag(overlap)
    residual = float(
        np.abs(difference - 0.5 * overlap * (potential[:, None] + potential[None, :])).max()
    )
    if residual > FOLDING_TOLERANCE_HARTREE:
        raise ValueError(
            f"{method}: F - H0 is not S o (v_m + v_n) / 2 (off by {residual:.2e} Ha); only "
            "GFN1-type Hamiltonians without multipole terms can be unfolded this way"
        )

    # R = 0: the cell as a finite cluster; it also gives the cutoff
    s0, core0, log, _, _ = tblite_integrals(numbers, positions, method, accuracy)
    orbital_atoms = np.repeat(np.arange(len(numbers)), counts)
    same_atom = orbital_atoms[:, None] == orbital_atoms[None, :]
    if np.abs(np.where(same_atom, core0 - np.diag(np.diag(core0)), 0.0)).max() > 1e-12:
        raise ValueError(f"{method}: the on-site blocks of H0 are not diagonal")
    if cutoff_angstrom is None:
        cutoff_angstrom = integral_cutoff_angstrom(log)
        if cutoff_angstrom is None:
            raise ValueError("tblite did not print its integral cutoff; pass cutoff_angstrom")
    shifts = image_shifts(positions, cell, pbc, cutoff_angstrom)
    index = {s: k for k, s in enumerate(shifts)}

    # per image: (home atoms, copy atoms, blocks of S and G in tblite order)
    found: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray, list, list]] = {}
    rows, cols = _nonzero_pairs((s0, core0), offsets, offsets)
    g0 = _pair_factor(core0)
    found[(0, 0, 0)] = (
        rows,
        cols,
        _cut(s0, offsets, offsets, rows, cols),
        _cut(g0, offsets, offsets, rows, cols),
    )
    clusters = 1
    cut2 = cutoff_angstrom**2
    near_home = np.sum((positions[:, None, :] - positions[None, :, :]) ** 2, axis=-1) < cut2
    # clusters are cut into windows along the longest lattice vector
    longest = int(np.argmax(np.linalg.norm(cell, axis=1)))
    along = (positions @ np.linalg.inv(cell))[:, longest]
    for k, shift in enumerate(shifts[1:], start=1):
        if progress is not None:
            progress(k, len(shifts))
        if index[tuple(-x for x in shift)] < k:
            continue  # M(-R) = M(R)^T, filled in below
        moved = positions + np.asarray(shift, dtype=float) @ cell
        near = np.sum((positions[:, None, :] - moved[None, :, :]) ** 2, axis=-1) < cut2
        parts = []
        for home, copy in _windows(near, near_home, along):
            s, core, *_ = tblite_integrals(
                np.concatenate([numbers[home], numbers[copy]]),
                np.concatenate([positions[home], moved[copy]]),
                method,
                accuracy,
            )
            clusters += 1
            n_home = int(counts[home].sum())
            g = _pair_factor(core)[:n_home, n_home:]
            s = s[:n_home, n_home:]
            row_off = np.concatenate([[0], np.cumsum(counts[home])])
            col_off = np.concatenate([[0], np.cumsum(counts[copy])])
            r, c = _nonzero_pairs((s, g), row_off, col_off)
            parts.append(
                (home[r], copy[c], _cut(s, row_off, col_off, r, c), _cut(g, row_off, col_off, r, c))
            )
        found[shift] = (
            np.concatenate([p[0] for p in parts]).astype(np.int64),
            np.concatenate([p[1] for p in parts]).astype(np.int64),
            [b for p in parts for b in p[2]],
            [b for p in parts for b in p[3]],
        )
        mirror = tuple(-x for x in shift)
        found[mirror] = (
            found[shift][1],
            found[shift][0],
            [b.T for b in found[shift][2]],
            [b.T for b in found[shift][3]],
        )
    if progress is not None:
        progress(len(shifts), len(shifts))

    # hamjax order; periodic self-energies from the Gamma diagonal of H0
    permutation = np.asarray(permutation, dtype=np.int64)
    signs = np.asarray(signs, dtype=float)
    local = [permutation[offsets[a] : offsets[a + 1]] - offsets[a] for a in range(len(numbers))]
    local_signs = [signs[offsets[a] : offsets[a + 1]] for a in range(len(numbers))]

    def convert_block(block, i, j):
        return np.outer(local_signs[i], local_signs[j]) * block[np.ix_(local[i], local[j])]

    potential_hj = potential[permutation]
    core_diag_hj = np.diag(core_hamiltonian)[permutation]
    self_images = np.zeros(int(offsets[-1]))
    pairs, shift_rows, s_blocks, g_blocks = [], [], [], []
    for shift in sorted(found):
        ii, jj, s_list, g_list = found[shift]
        order = np.lexsort((jj, ii))
        for b in order.tolist():
            i, j = int(ii[b]), int(jj[b])
            s_hj = convert_block(s_list[b], i, j)
            g_hj = convert_block(g_list[b], i, j)
            if i == j and shift != (0, 0, 0):
                self_images[offsets[i] : offsets[i + 1]] += np.diag(g_hj)
            pairs.append((i, j))
            shift_rows.append(shift)
            s_blocks.append(s_hj)
            g_blocks.append(g_hj)
    self_energy = core_diag_hj / (1.0 + self_images)
    h_blocks, core_blocks = [], []
    for (i, j), s_hj, g_hj in zip(pairs, s_blocks, g_blocks, strict=True):
        hi, hj = self_energy[offsets[i] : offsets[i + 1]], self_energy[offsets[j] : offsets[j + 1]]
        vi, vj = (
            potential_hj[offsets[i] : offsets[i + 1]],
            potential_hj[offsets[j] : offsets[j + 1]],
        )
        core = 0.5 * (hi[:, None] + hj[None, :]) * g_hj
        core_blocks.append(core)
        h_blocks.append(core + 0.5 * s_hj * (vi[:, None] + vj[None, :]))
    diagnostics = {
        "potential_residual_hartree": residual,
        "cutoff_angstrom": float(cutoff_angstrom),
        "n_images": len(found),
        "n_clusters": clusters,
        "wall_time_s": time.perf_counter() - start,
    }
    return (
        np.asarray(pairs, dtype=np.int64).reshape(-1, 2),
        np.asarray(shift_rows, dtype=np.int64).reshape(-1, 3),
        h_blocks,
        core_blocks,
        s_blocks,
        diagnostics,
    )
