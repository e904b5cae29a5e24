"""Atomic orbital basis sets: shells per element and the orbital layout of a structure.

hamjax orders orbitals per atom (in input order), then per shell in basis order, and inside
a shell of angular momentum ``l`` by ``m = -l..l`` in the real spherical-harmonic order of
e3nn-jax (for ``l = 1``: y, z, x). See ``DESIGN.md`` §3 of the project notes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

__all__ = ["Basis", "element_number"]


def element_number(element: int | str) -> int:
    """Atomic number of ``element`` given as a number or a symbol ("Hf")."""
    if isinstance(element, str):
        if element not in atomic_numbers:
            raise ValueError(f"unknown element symbol {element!r}")
        return atomic_numbers[element]
    return int(element)


@dataclass(frozen=True)
class Basis:
    """Shells (angular momenta) of every element of a basis set; hashable, so jit-static.

    Attributes:
        name: label of the basis ("gfn1-xtb", "cp2k:SZV-MOLOPT-SR-GTH", "pyscf:def2-svp").
        shells: ``((Z, (l0, l1, ...)), ...)`` sorted by atomic number.
    """

    name: str
    shells: tuple[tuple[int, tuple[int, ...]], ...]

    @classmethod
    def from_dict(cls, name: str, shells: Mapping[int | str, Iterable[int]]) -> Basis:
        """Build from ``{"Hf": (0, 0, 1, 2), 8: (0, 1), ...}``."""
        items = sorted((element_number(z), tuple(int(l) for l in ls)) for z, ls in shells.items())
        return cls(name=name, shells=tuple(items))

    def as_dict(self) -> dict[int, tuple[int, ...]]:
        return dict(self.shells)

    @property
    def elements(self) -> tuple[int, ...]:
        return tuple(z for z, _ in self.shells)

    def shells_of(self, number: int) -> tuple[int, ...]:
        """Angular momenta of the shells of element ``number``, in basis order."""
        table = self.as_dict()
        if int(number) not in table:
            raise ValueError(
                f"element {chemical_symbols[int(number)]} (Z={int(number)}) has no shells in "
                f"basis {self.name!r}; it covers {[chemical_symbols[z] for z in table]}"
            )
        return table[int(number)]

    def n_orbitals(self, number: int) -> int:
        """Number of orbitals of one atom of element ``number``."""
        return sum(2 * l + 1 for l in self.shells_of(number))

    def orbital_counts(self, numbers: Iterable[int]) -> np.ndarray:
        """Orbitals per atom, shape ``[n_atoms]``; raises naming the first unknown atom."""
        numbers = np.asarray(list(numbers), dtype=int)
        counts = np.empty(len(numbers), dtype=int)
        for index, z in enumerate(numbers):
            try:
                counts[index] = self.n_orbitals(z)
            except ValueError as err:
                raise ValueError(f"atom {index}: {err}") from None
        return counts

    def orbital_offsets(self, numbers: Iterable[int]) -> np.ndarray:
        """First orbital of every atom, shape ``[n_atoms + 1]`` (last entry = total)."""
        return np.concatenate([[0], np.cumsum(self.orbital_counts(numbers))])

    def irreps(self, number: int) -> str:
        """The e3nn irreps string of one atom's orbitals, e.g. ``"1x0e+1x0e+1x1o+1x2e"``."""
        return "+".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in self.shells_of(number))
