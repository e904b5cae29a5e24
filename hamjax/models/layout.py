"""Static output layout of the Hamiltonian heads: which irreps each block needs, and where.

A block between an atom of element ``A`` (rows) and one of element ``B`` (columns) is made of
sub-blocks, one per shell pair ``(a, b)`` with angular momenta ``(l1, l2)``. A sub-block is a
``(2 l1 + 1) x (2 l2 + 1)`` matrix that transforms as ``D_l1 X D_l2^T``; it is the
Clebsch-Gordan image of the irreps ``L = |l1 - l2| .. l1 + l2`` of parity ``(-1)^(l1 + l2)``.

The heads are shared across elements: for every *shell-pair type* ``(l1, l2)`` they produce
``K`` copies of its irreps, ``K`` being the largest number of shell pairs of that type in any
element pair. A static table then sends copy ``k`` of type ``(l1, l2)`` to the ``k``-th shell
pair of that type of the element pair at hand, and every absent orbital to a zero slot. All of
it is computed once on the host with numpy (the basis is hashable, so this is cached) and the
model only gathers with it, so elements with different shell lists share one compiled program.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import e3nn_jax as e3nn
import numpy as np

from hamjax.basis import Basis

__all__ = ["BlockLayout", "block_layout", "pair_irreps"]


def pair_irreps(l1: int, l2: int) -> list[e3nn.Irrep]:
    """Irreps of an orbital pair ``(l1, l2)``: ``L = |l1 - l2| .. l1 + l2``, parity (-1)^(l1+l2)."""
    parity = (-1) ** (l1 + l2)
    return [e3nn.Irrep(L, parity) for L in range(abs(l1 - l2), l1 + l2 + 1)]


@dataclass(frozen=True, eq=False)
class BlockLayout:
    """Host-side tables that turn head outputs into padded ``M x M`` blocks.

    Attributes:
        elements: atomic numbers covered by the basis, in basis order.
        species_index: ``[119]`` int, position of an atomic number in ``elements`` (0 for
            atomic numbers outside the basis, which only padding nodes carry).
        n_orbitals_max: ``M``, the most orbitals any element has.
        orbital_mask: ``[n_species, M]`` bool, True where the element has that orbital.
        types: the shell-pair types ``(l1, l2)`` present in the basis, sorted.
        copies: ``K_t`` for every type.
        head_irreps: the irreps a head must produce (each irrep once, with multiplicity the
            sum of ``K_t`` over the types needing it).
        chunk_start: for every type and every one of its irreps, the first multiplicity index
            of that type's ``K_t`` copies inside ``head_irreps``'s chunk of that irrep.
        cg: for every type, the ``[sum_L (2L+1), (2 l1 + 1) (2 l2 + 1)]`` orthogonal matrix of
            Clebsch-Gordan coefficients (irreps stacked in order of ``L``).
        flat_offset: for every type, where its ``K_t (2 l1 + 1) (2 l2 + 1)`` values start in
            the flat vector of all sub-blocks; ``flat_size`` is its length.
        gather_index: ``[n_species * n_species, M * M]`` int: for element pair
            ``a * n_species + b`` and block entry ``p * M + q``, the index into the flat vector
            (with a zero appended at ``flat_size``) of its value.
    """

    elements: tuple[int, ...]
    species_index: np.ndarray
    n_orbitals_max: int
    orbital_mask: np.ndarray
    types: tuple[tuple[int, int], ...]
    copies: tuple[int, ...]
    head_irreps: e3nn.Irreps
    chunk_start: tuple[tuple[int, ...], ...]
    cg: tuple[np.ndarray, ...]
    flat_offset: tuple[int, ...]
    flat_size: int
    gather_index: np.ndarray

    @property
    def n_species(self) -> int:
        return len(self.elements)

    @property
    def max_shell_l(self) -> int:
        return max(max(l1, l2) for l1, l2 in self.types)


def _shell_starts(shells: tuple[int, ...]) -> list[int]:
    starts, offset = [], 0
    for l in shells:
        starts.append(offset)
        offset += 2 * l + 1
    return starts


@functools.lru_cache(maxsize=32)
def block_layout(basis: Basis) -> BlockLayout:
    """Build (once per basis) the static tables of the Hamiltonian heads."""
    elements = basis.elements
    if not elements:
        raise ValueError(f"basis {basis.name!r} has no elements")
    table = basis.as_dict()
    for z, shells in table.items():
        if not shells:
            raise ValueError(f"basis {basis.name!r}: element Z={z} has no shells")
    n_species = len(elements)
    m_max = max(basis.n_orbitals(z) for z in elements)

    species_index = np.zeros(119, dtype=np.int32)
    orbital_mask = np.zeros((n_species, m_max), dtype=bool)
    for index, z in enumerate(elements):
        species_index[z] = index
        orbital_mask[index, : basis.n_orbitals(z)] = True

    # Count shell pairs of each type in every ordered element pair.
    copies: dict[tuple[int, int], int] = {}
    for za in elements:
        for zb in elements:
            count: dict[tuple[int, int], int] = {}
            for la in table[za]:
                for lb in table[zb]:
                    count[(la, lb)] = count.get((la, lb), 0) + 1
            for key, value in count.items():
                copies[key] = max(copies.get(key, 0), value)
    types = tuple(sorted(copies))
    copies_t = tuple(copies[t] for t in types)

    # Head irreps: each irrep once, multiplicity = sum of the copies of the types needing it.
    multiplicity: dict[e3nn.Irrep, int] = {}
    chunk_start = []
    for t, k in zip(types, copies_t, strict=True):
        starts = []
        for ir in pair_irreps(*t):
            starts.append(multiplicity.get(ir, 0))
            multiplicity[ir] = multiplicity.get(ir, 0) + k
        chunk_start.append(tuple(starts))
    order = sorted(multiplicity, key=lambda ir: (ir.l, ir.p))
    head_irreps = e3nn.Irreps([(multiplicity[ir], ir) for ir in order])

    cg = []
    for l1, l2 in types:
        columns = []
        for ir in pair_irreps(l1, l2):
            c = np.asarray(e3nn.clebsch_gordan(l1, l2, ir.l), dtype=np.float64)
            c = c * np.sqrt(2 * ir.l + 1)  # rows of the stacked matrix become orthonormal
            columns.append(c.reshape((2 * l1 + 1) * (2 * l2 + 1), 2 * ir.l + 1).T)
        cg.append(np.concatenate(columns, axis=0))

    flat_offset, offset = [], 0
    for (l1, l2), k in zip(types, copies_t, strict=True):
        flat_offset.append(offset)
        offset += k * (2 * l1 + 1) * (2 * l2 + 1)
    flat_size = offset
    type_position = {t: i for i, t in enumerate(types)}

    gather_index = np.full((n_species * n_species, m_max * m_max), flat_size, dtype=np.int32)
    for a, za in enumerate(elements):
        for b, zb in enumerate(elements):
            seen: dict[tuple[int, int], int] = {}
            starts_a, starts_b = _shell_starts(table[za]), _shell_starts(table[zb])
            for la, sa in zip(table[za], starts_a, strict=True):
                for lb, sb in zip(table[zb], starts_b, strict=True):
                    t = (la, lb)
                    k = seen.get(t, 0)
                    seen[t] = k + 1
                    base = flat_offset[type_position[t]] + k * (2 * la + 1) * (2 * lb + 1)
                    for m1 in range(2 * la + 1):
                        for m2 in range(2 * lb + 1):
                            entry = (sa + m1) * m_max + (sb + m2)
                            gather_index[a * n_species + b, entry] = base + m1 * (2 * lb + 1) + m2

    return BlockLayout(
        elements=elements,
        species_index=species_index,
        n_orbitals_max=m_max,
        orbital_mask=orbital_mask,
        types=types,
        copies=copies_t,
        head_irreps=head_irreps,
        chunk_start=tuple(chunk_start),
        cg=tuple(cg),
        flat_offset=tuple(flat_offset),
        flat_size=flat_size,
        gather_index=gather_index,
    )
