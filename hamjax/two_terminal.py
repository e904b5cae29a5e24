"""From the block record of a periodic device to the open two-terminal problem of NEGF.

A device cell (e.g. TiN | HfO2 | Ti | TiN) is periodic along the transport axis in its
reference calculation: the right electrode continues into the left one through the cell
boundary, so both ends are bulk-like. For transport the cell is opened there: couplings that
cross the boundary along the transport axis are dropped, the transverse directions are taken
at k = 0 (their images are summed, as in a Gamma-point calculation), and the atoms are ordered
along the transport axis. The ends then serve as the leads of
:func:`hamjax.transport.transmission` (its default leads repeat the first and the last
principal layer), so each electrode must hold at least two whole lead cells.

Principal layers are slabs of a fixed width along the transport axis: two lead cells at each
end, counted from that end, and the rest split evenly into slabs at least ``layer_width`` wide.
Every kept coupling reaches less than ``cutoff`` <= ``layer_width`` along the axis (a
Gamma-folded pair: its minimum-image distance; an image-resolved block: its projection on the
axis, with every transverse image kept), so slabs couple only to their neighbours, which
is what the block-tridiagonal solver needs. The same cut applies to a reference and to a
prediction, so their transmissions are comparable.

Image-resolved records (blocks per lattice image ``(i, j, R)``) can keep their transverse
images apart instead (:func:`open_device_images`): one matrix per transverse shift ``R``, for
transverse k-point sampling with :func:`hamjax.transport.transmission_kpoints`.

Gamma-folded records (periodic, every block at shift (0, 0, 0): one block stands for the sum
of all images of a pair) are placed by the minimum-image convention, which is exact when every
pair has at most one image within reach along the transport axis (a cell at least twice the
interaction range long).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp
from scipy.optimize import linear_sum_assignment

from hamjax.blocks import BlockHamiltonian
from hamjax.constants import HARTREE_EV
from hamjax.transport import Lead

__all__ = [
    "TwoTerminal",
    "TwoTerminalImages",
    "axis_coordinates",
    "default_leads",
    "inside_cell",
    "match_translated",
    "minimum_image",
    "open_device",
    "open_device_images",
    "slab_layers",
]


@dataclass(frozen=True)
class TwoTerminal:
    """An open device ready for :func:`hamjax.transport.transmission`.

    Attributes:
        hamiltonian: ``[n_orb, n_orb]`` in eV (scipy.sparse CSR), atoms ordered along the axis.
        overlap: ``[n_orb, n_orb]`` (CSR), same order.
        layers: principal-layer sizes in orbitals, summing to ``n_orb``.
        order: ``[n_atoms]`` record atom of every position in the transport order.
        orbital_order: ``[n_orb]`` record orbital of every row of ``hamiltonian``.
        atom_layer: ``[n_atoms]`` layer of every record atom.
        fermi_level_ev: the record's Fermi level in eV, or None (for a tblite record the
            chemical potential of its SCF's Fermi smearing; for transport through metallic
            electrodes see :func:`hamjax.vcm.electrode_fermi_level`).
        dropped_max_ev: largest |H| entry (eV) of the blocks dropped for lying beyond the
            cutoff (the price of the truncation; boundary-crossing blocks not counted).
        lead_blocks: ``(left, right)`` :class:`hamjax.transport.Lead` blocks that replace the
            device's own ends as leads (see :meth:`with_leads_of`), or None.
    """

    hamiltonian: sp.csr_matrix
    overlap: sp.csr_matrix
    layers: tuple[int, ...]
    order: np.ndarray
    orbital_order: np.ndarray
    atom_layer: np.ndarray
    fermi_level_ev: float | None
    dropped_max_ev: float
    lead_blocks: tuple | None = None

    def leads(self):
        """``(left, right)`` :class:`hamjax.transport.Lead` blocks (eV): ``lead_blocks`` when
        set, else as the default leads of :func:`hamjax.transport.transmission` take them:
        the first layer and its coupling to the second, the last layer and the coupling into
        it from the one before."""
        if self.lead_blocks is not None:
            return self.lead_blocks
        return default_leads(self.hamiltonian, self.overlap, self.layers)

    def with_leads_of(self, other: TwoTerminal) -> TwoTerminal:
        """This device between the leads of ``other`` (the same structure's open device from
        another Hamiltonian): the standard NEGF setup in which the electrodes come from their
        own calculation and only the device region, here including one electrode cell at each
        end, from this Hamiltonian. Both must be in the same energy frame (eV).

        Raises:
            ValueError: the two devices' end layers differ in size or atoms.
        """
        n = len(self.layers) - 1
        for end, a, b in (("first", 0, 0), ("last", n, len(other.layers) - 1)):
            same_size = self.layers[a] == other.layers[b]
            same_atoms = np.array_equal(
                self.order[self.atom_layer[self.order] == a],
                other.order[other.atom_layer[other.order] == b],
            )
            if not (same_size and same_atoms):
                raise ValueError(
                    f"the {end} layer of the device ({self.layers[a]} orbitals) and of the "
                    f"device giving the leads ({other.layers[b]} orbitals) hold different atoms"
                )
        return replace(self, lead_blocks=other.leads())


def default_leads(hamiltonian, overlap, layers):
    """``(left, right)`` :class:`hamjax.transport.Lead` blocks of a block-tridiagonal device
    as :func:`hamjax.transport.transmission` takes its default leads: the first layer and its
    coupling to the second, the last layer and the coupling into it from the one before.

    Args:
        hamiltonian, overlap: ``[n, n]`` dense or ``scipy.sparse`` (eV), e.g. ``H(k)``.
        layers: principal-layer sizes in orbitals.
    """
    edges = np.concatenate([[0], np.cumsum(layers)])

    def block(matrix, a, b):
        part = matrix[edges[a] : edges[a + 1], edges[b] : edges[b + 1]]
        return part.toarray() if sp.issparse(part) else np.asarray(part)

    n = len(layers)
    h, s = hamiltonian, overlap
    left = Lead(block(h, 0, 0), block(h, 0, 1), block(s, 0, 0), block(s, 0, 1))
    right = Lead(
        block(h, n - 1, n - 1),
        block(h, n - 2, n - 1),
        block(s, n - 1, n - 1),
        block(s, n - 2, n - 1),
    )
    return left, right


def axis_coordinates(
    positions: np.ndarray, cell: np.ndarray, axis: int = 0, origin_offset: float = 0.5
) -> tuple[np.ndarray, float]:
    """Coordinates along the transport axis, wrapped into the cell, and the cell length.

    The origin lies ``origin_offset`` before the first atom.

    Returns:
        ``(x [n_atoms] in [0, length), length)``, Angstrom.
    """
    cell = np.asarray(cell, dtype=float)
    length = float(np.linalg.norm(cell[axis]))
    if length <= 0:
        raise ValueError(f"the cell has no lattice vector along axis {axis}")
    unit = cell[axis] / length
    others = np.delete(cell[:, axis], axis)
    if abs(abs(unit[axis]) - 1.0) > 1e-8 or np.abs(others).max() > 1e-8:
        raise ValueError(
            f"the transport axis {axis} must be a lattice vector orthogonal to the other two"
        )
    x = np.mod(positions[:, axis] - positions[:, axis].min() + origin_offset, length)
    return x, length


def inside_cell(x_from: np.ndarray, step: np.ndarray, length: float) -> np.ndarray:
    """True where a coupling from ``x_from`` over ``step`` (along the axis) stays in the cell."""
    end = x_from + step
    return (end >= -1e-6) & (end < length - 1e-6)


def slab_layers(
    x: np.ndarray, length: float, *, lead_width: float, layer_width: float
) -> np.ndarray:
    """Principal layer of every atom from its coordinate along the transport axis.

    Two slabs of ``lead_width`` at each end (counted from that end), the middle split evenly
    into as many slabs as fit with width >= ``layer_width``.

    Args:
        x: ``[n_atoms]`` coordinates in ``[0, length)``, Angstrom.
        length: cell length along the axis, Angstrom.
        lead_width: width of one lead cell (a whole number of electrode periods), Angstrom.
        layer_width: smallest width of a middle slab, Angstrom.

    Returns:
        ``[n_atoms]`` layer index, 0 .. n_layers - 1.
    """
    middle = length - 4 * lead_width
    if middle < 0:
        raise ValueError(
            f"the device ({length:.2f} A) is shorter than four lead cells of {lead_width:.2f} A"
        )
    n_middle = max(1, int(np.floor(middle / layer_width + 1e-9)))
    edges = np.concatenate(
        [
            [0.0, lead_width, 2 * lead_width],
            2 * lead_width + middle * np.arange(1, n_middle) / n_middle,
            [length - 2 * lead_width, length - lead_width],
        ]
    )
    return np.searchsorted(edges, x, side="right") - 1


def minimum_image(vectors: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> np.ndarray:
    """``[..., 3]`` vectors (Angstrom) wrapped to their shortest image along periodic axes."""
    frac = vectors @ np.linalg.pinv(cell)
    frac[..., pbc] -= np.round(frac[..., pbc])
    return frac @ cell


def match_translated(
    reference: np.ndarray,
    candidates: np.ndarray,
    shift: np.ndarray,
    cell: np.ndarray,
    pbc: np.ndarray,
    *,
    tolerance: float = 0.5,
) -> np.ndarray:
    """Order ``candidates`` so that candidate ``k`` is ``reference[k] + shift``.

    The default leads of :func:`hamjax.transport.transmission` repeat the first layer with
    its coupling to the second, so the second lead cell must list its atoms (and orbitals)
    exactly as the first does, each translated by one lead cell. Sorting atoms by their
    coordinate along the axis does not give that: thermal displacements of a few 0.01 A
    reorder the atoms within each atomic plane.

    Args:
        reference: ``[n, 3]`` positions of the cell whose order is kept, Angstrom.
        candidates: ``[n, 3]`` positions of the cell to order.
        shift: ``[3]`` translation from the reference cell to the other, Angstrom.
        cell, pbc: the structure's cell and periodicity (minimum image where periodic).
        tolerance: largest distance (Angstrom) accepted between a translated atom and its
            partner.

    Returns:
        ``[n]`` indices into ``candidates``.

    Raises:
        ValueError: different atom counts, or an atom without a partner within
            ``tolerance`` (the electrode is not periodic over this lead cell).
    """
    if len(reference) != len(candidates):
        raise ValueError(
            f"the two lead cells hold {len(reference)} and {len(candidates)} atoms: the "
            "electrode is not periodic over the lead width"
        )
    delta = candidates[None, :, :] - (reference[:, None, :] + shift)
    distance = np.linalg.norm(minimum_image(delta, cell, pbc), axis=-1)
    rows, cols = linear_sum_assignment(distance)
    worst = int(np.argmax(distance[rows, cols]))
    if distance[rows[worst], cols[worst]] > tolerance:
        raise ValueError(
            f"atom {rows[worst]} of the first lead cell has no partner within {tolerance} A "
            f"one lead cell further (nearest {distance[rows[worst], cols[worst]]:.2f} A): the "
            "electrode is not periodic over the lead width"
        )
    return cols[np.argsort(rows)]


@dataclass(frozen=True)
class _Cut:
    """The parts of opening a record that the Gamma-summed and the image-resolved forms share."""

    keep: np.ndarray  # [n_block] bool: blocks kept (inside the cell along the axis, near)
    order: np.ndarray
    perm: np.ndarray
    atom_layer: np.ndarray
    layers: tuple[int, ...]
    fermi_level_ev: float | None
    dropped_max_ev: float


def _cut(
    record: BlockHamiltonian,
    *,
    cutoff: float,
    lead_width: float,
    layer_width: float | None,
    axis: int,
    origin_offset: float,
) -> _Cut:
    """Blocks to keep, the transport order of atoms and orbitals, and the principal layers."""
    layer_width = lead_width if layer_width is None else layer_width
    if min(lead_width, layer_width) < cutoff:
        raise ValueError(
            f"layer widths ({lead_width}, {layer_width} A) must be at least the cutoff "
            f"({cutoff} A), or slabs beyond the next would couple"
        )
    if record.overlap is None:
        raise ValueError("the record has no overlap matrix")
    x, length = axis_coordinates(record.positions, record.cell, axis, origin_offset)
    atom_layer = slab_layers(x, length, lead_width=lead_width, layer_width=layer_width)

    i, j = record.pairs[:, 0], record.pairs[:, 1]
    vectors = record.positions[j] - record.positions[i] + record.shifts @ record.cell
    if record.image_resolved:
        # Only the reach along the axis makes the problem block-tridiagonal; every transverse
        # image is kept, so that S(k) is the reference's (cut transversally at 10 A, the
        # GFN1-xTB overlap of a 4.24 A wide VCM cell is not positive definite).
        near = np.abs(vectors[:, axis]) <= cutoff
    else:  # Gamma-folded pairs: placed by the minimum image, as the sum of their images
        vectors = minimum_image(vectors, record.cell, record.pbc)
        near = np.linalg.norm(vectors, axis=1) <= cutoff
    inside = inside_cell(x[i], vectors[:, axis], length)
    keep = inside & near

    sizes = np.diff(record.block_offsets)
    dropped = np.repeat(inside & ~near, sizes)
    dropped_max = float(np.abs(record.hamiltonian[dropped]).max(initial=0.0)) * HARTREE_EV

    order = np.lexsort((np.arange(len(x)), x))
    # Second lead cells as translated copies of the outer ones (atom for atom).
    n_layers = atom_layer.max() + 1
    unit = np.asarray(record.cell[axis], dtype=float)
    unit = unit / np.linalg.norm(unit)
    for outer, inner, direction in ((0, 1, 1.0), (n_layers - 1, n_layers - 2, -1.0)):
        slots = np.flatnonzero(atom_layer[order] == inner)
        outer_atoms = order[atom_layer[order] == outer]
        inner_atoms = order[slots]
        match = match_translated(
            record.positions[outer_atoms],
            record.positions[inner_atoms],
            direction * lead_width * unit,
            record.cell,
            record.pbc,
        )
        order[slots] = inner_atoms[match]
        if np.any(record.numbers[order[slots]] != record.numbers[outer_atoms]):
            raise ValueError("the two lead cells differ in their species: not one electrode")
    # Orbital permutation into the transport order.
    off = record.orbital_offsets
    perm = np.concatenate([np.arange(off[a], off[a + 1]) for a in order])
    counts = record.orbital_counts[order]
    layers = np.bincount(atom_layer[order], weights=counts, minlength=atom_layer.max() + 1)
    if np.any(layers == 0):
        raise ValueError(f"principal layers {np.flatnonzero(layers == 0).tolist()} hold no atom")
    fermi = None if record.fermi_level is None else record.fermi_level * HARTREE_EV
    return _Cut(
        keep=keep,
        order=order,
        perm=perm,
        atom_layer=atom_layer,
        layers=tuple(int(n) for n in layers),
        fermi_level_ev=fermi,
        dropped_max_ev=dropped_max,
    )


def _kept_blocks(record: BlockHamiltonian, select: np.ndarray) -> BlockHamiltonian:
    """The record on the blocks ``select`` (bool ``[n_block]``), all at shift 0 (summed)."""
    sizes = np.diff(record.block_offsets)
    return record.replace(
        pairs=record.pairs[select],
        shifts=np.zeros((int(select.sum()), 3), dtype=np.int64),
        hamiltonian=record.hamiltonian[np.repeat(select, sizes)],
        overlap=record.overlap[np.repeat(select, sizes)],
    )


def open_device(
    record: BlockHamiltonian,
    *,
    cutoff: float,
    lead_width: float,
    layer_width: float | None = None,
    axis: int = 0,
    origin_offset: float = 0.5,
) -> TwoTerminal:
    """Open a periodic device cell along ``axis`` into a two-terminal NEGF problem.

    Transverse images are summed (the device at transverse k = 0); to keep them apart for
    transverse k-point sampling use :func:`open_device_images`.

    Args:
        record: H and S blocks (Hartree), periodic along ``axis``.
        cutoff: couplings between atoms farther apart than this (Angstrom) are dropped.
        lead_width: one lead cell along the axis (a whole number of electrode periods, at
            least ``cutoff``), Angstrom; both electrodes must hold two of them.
        layer_width: smallest principal-layer width in the middle (default ``lead_width``);
            must be at least ``cutoff``.
        axis: transport axis (0 = x).
        origin_offset: the slabs start this far (Angstrom) before the first atom along the
            axis, so that atomic planes (and their small thermal displacements) sit inside a
            slab rather than on its edge; keep it below the electrode's plane spacing.

    Returns:
        :class:`TwoTerminal` with H in eV.
    """
    cut = _cut(
        record,
        cutoff=cutoff,
        lead_width=lead_width,
        layer_width=layer_width,
        axis=axis,
        origin_offset=origin_offset,
    )
    kept = _kept_blocks(record, cut.keep)
    perm = cut.perm
    h = kept.to_sparse("hamiltonian")[perm][:, perm] * HARTREE_EV
    s = kept.to_sparse("overlap")[perm][:, perm]
    return TwoTerminal(
        hamiltonian=sp.csr_matrix(h),
        overlap=sp.csr_matrix(s),
        layers=cut.layers,
        order=cut.order,
        orbital_order=perm,
        atom_layer=cut.atom_layer,
        fermi_level_ev=cut.fermi_level_ev,
        dropped_max_ev=cut.dropped_max_ev,
    )


@dataclass(frozen=True)
class TwoTerminalImages:
    """An open device periodic across the transport axis, its transverse images kept apart:
    the input of :func:`hamjax.transport.transmission_kpoints`.

    ``hamiltonians.sum(0)`` and ``overlaps.sum(0)`` are the matrices of :class:`TwoTerminal`
    (:func:`open_device` of the same record).

    Attributes:
        hamiltonians: ``[n_R, n_orb, n_orb]`` dense image matrices ``H(R)`` in eV, atoms
            ordered along the axis: ``H(R)`` couples the home cell's orbitals to those of the
            cell shifted by ``R``.
        overlaps: ``[n_R, n_orb, n_orb]`` images ``S(R)``.
        shifts: ``[n_R, 3]`` integer transverse shifts, the transport axis first: the
            record's lattice components in the order ``(axis, axis + 1, axis + 2)`` modulo 3
            (the record's own order for ``axis = 0``), so component 0 is always 0 and the
            k-grid of :func:`~hamjax.transport.transmission_kpoints` is ``(1, n_b, n_c)``
            over the same order. Sorted, each shift once, closed under ``R -> -R``.
        layers, order, orbital_order, atom_layer, fermi_level_ev, dropped_max_ev: as in
            :class:`TwoTerminal`.
        axis: the record's transport axis.
    """

    hamiltonians: np.ndarray
    overlaps: np.ndarray
    shifts: np.ndarray
    layers: tuple[int, ...]
    order: np.ndarray
    orbital_order: np.ndarray
    atom_layer: np.ndarray
    fermi_level_ev: float | None
    dropped_max_ev: float
    axis: int = 0


def open_device_images(
    record: BlockHamiltonian,
    *,
    cutoff: float,
    lead_width: float,
    layer_width: float | None = None,
    axis: int = 0,
    origin_offset: float = 0.5,
) -> TwoTerminalImages:
    """Open a periodic device cell along ``axis``, keeping its transverse images apart.

    The cut is that of :func:`open_device` (the same kept couplings, atom order and
    principal layers; couplings across the cell boundary along the axis dropped); each
    kept block goes to the image of its shift's transverse components (its component along
    the axis only says on which side of the boundary the partner atom is stored). Then
    ``transmission_kpoints(d.hamiltonians, d.overlaps, d.shifts, d.layers, energies,
    (1, n_b, n_c))`` samples transverse k-points, and its ``kgrid`` of ``(1, 1, 1)`` gives
    the transmission of :func:`open_device`.

    Args:
        record: an image-resolved record (blocks at non-zero transverse shifts,
            ``metadata["gamma_folded"]`` not True), H and S in Hartree, periodic along
            ``axis``.
        cutoff, lead_width, layer_width, axis, origin_offset: as in :func:`open_device`.

    Returns:
        :class:`TwoTerminalImages` with H in eV (dense, ``n_R`` matrices of ``n_orb^2``).

    Raises:
        ValueError: a Gamma-folded record (every block at shift 0 in a periodic cell), or
            what :func:`open_device` raises.
    """
    if not record.image_resolved or record.metadata.get("gamma_folded") is True:
        raise ValueError(
            "the record has no image blocks: it is Gamma-folded (every block at shift "
            "(0, 0, 0) stands for the sum of a pair's images), so its transverse images "
            "cannot be separated; use open_device for the Gamma-point device, or an "
            "image-resolved reference for k-points"
        )
    cut = _cut(
        record,
        cutoff=cutoff,
        lead_width=lead_width,
        layer_width=layer_width,
        axis=axis,
        origin_offset=origin_offset,
    )
    transverse = np.roll(np.asarray(record.shifts, dtype=np.int64), -axis, axis=1)
    transverse[:, 0] = 0
    # One image per transverse shift, closed under R -> -R (a kept block's Hermitian partner
    # is kept too; an empty partner image is added should a record list one side only).
    present = {tuple(r) for r in transverse[cut.keep].tolist()}
    present |= {tuple(-x for x in r) for r in present}
    shifts = np.array(sorted(present), dtype=np.int64).reshape(-1, 3)
    where = {r: index for index, r in enumerate(map(tuple, shifts.tolist()))}
    slot = np.array([where[tuple(r)] for r in transverse.tolist()], dtype=np.int64)

    n = record.n_orbitals
    perm = cut.perm
    hamiltonians = np.zeros((len(shifts), n, n), dtype=record.hamiltonian.dtype)
    overlaps = np.zeros((len(shifts), n, n), dtype=record.overlap.dtype)
    for r in range(len(shifts)):
        image = _kept_blocks(record, cut.keep & (slot == r))
        hamiltonians[r] = image.to_dense("hamiltonian")[np.ix_(perm, perm)] * HARTREE_EV
        overlaps[r] = image.to_dense("overlap")[np.ix_(perm, perm)]
    return TwoTerminalImages(
        hamiltonians=hamiltonians,
        overlaps=overlaps,
        shifts=shifts,
        layers=cut.layers,
        order=cut.order,
        orbital_order=perm,
        atom_layer=cut.atom_layer,
        fermi_level_ev=cut.fermi_level_ev,
        dropped_max_ev=cut.dropped_max_ev,
        axis=axis,
    )
