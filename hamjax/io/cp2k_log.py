"""Parse a CP2K output log: what hamjax needs to read the run's CSR matrices.

From the log come the per-kind shells (``Atomic kind`` sections of a ``PRINT_LEVEL MEDIUM``
log), the coordinates, the cell and its periodicity, the Fermi energy, the CP2K version and,
for ``REAL_SPACE T`` runs, which lattice vector every image file holds: a table after the line
``KS CSR write|  N periodic images`` (columns ``Number X Y Z``; likewise ``S CSR write|``).
Image ``(X, Y, Z)`` holds ``<mu(0)|H|nu(X, Y, Z)>``: the row orbital in the home cell, the
column orbital in the cell shifted by ``X a + Y b + Z c``, which is hamjax's block convention
``(i, j, shift)``. The CSR files themselves are read by :mod:`hamjax.io.cp2k`.

Errors name the file and the line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from ase.data import atomic_numbers

from hamjax.basis import Basis

__all__ = ["Cp2kLog", "parse_cp2k_log"]

_L_OF = {"s": 0, "p": 1, "d": 2, "f": 3, "g": 4, "h": 5, "i": 6}


@dataclass
class Cp2kLog:
    """What hamjax takes from a CP2K output log.

    Attributes:
        path: the log file.
        project: ``GLOBAL| Project name``.
        version: CP2K version string, e.g. "CP2K version 2023.1".
        kinds: kind name -> element symbol.
        kind_shells: kind name -> shells (list of l) in CP2K order.
        kind_orbitals: kind name -> number of spherical basis functions.
        kind_basis: kind name -> orbital basis set name.
        symbols, kind_of_atom: per atom (input order).
        positions: ``[n_atoms, 3]`` Angstrom (6 decimals in the log).
        cell: ``[3, 3]`` Angstrom, rows are lattice vectors.
        pbc: ``[3]`` bool from ``CELL| Periodicity``.
        fermi_level: last ``Fermi energy:`` in Hartree, or None.
        images: ``{"KS": {n: (X, Y, Z)}, "S": {...}}`` for REAL_SPACE runs.
        kind_atoms: kind name -> number of atoms the kind's section states.
        ended: whether the log holds CP2K's closing ``PROGRAM ENDED AT`` banner (a log cut
            short, or of a run that did not finish, does not).
    """

    path: Path
    project: str | None = None
    version: str | None = None
    kinds: dict[str, str] = field(default_factory=dict)
    kind_shells: dict[str, tuple[int, ...]] = field(default_factory=dict)
    kind_orbitals: dict[str, int] = field(default_factory=dict)
    kind_basis: dict[str, str] = field(default_factory=dict)
    symbols: list[str] = field(default_factory=list)
    kind_of_atom: list[str] = field(default_factory=list)
    positions: np.ndarray | None = None
    cell: np.ndarray | None = None
    pbc: np.ndarray | None = None
    fermi_level: float | None = None
    images: dict[str, dict[int, tuple[int, int, int]]] = field(default_factory=dict)
    kind_atoms: dict[str, int] = field(default_factory=dict)
    ended: bool = False

    @property
    def numbers(self) -> np.ndarray:
        return np.array([atomic_numbers[s] for s in self.symbols], dtype=int)

    def basis(self) -> Basis:
        """hamjax basis of the run (one shell list per element; raises if kinds disagree)."""
        if not self.kind_shells:
            raise ValueError(
                f"{self.path}: no per-kind basis listing found (run CP2K with PRINT_LEVEL "
                "MEDIUM, or pass basis= to read_cp2k)"
            )
        shells: dict[int, tuple[int, ...]] = {}
        names = set()
        for kind, ls in self.kind_shells.items():
            z = atomic_numbers[self.kinds[kind]]
            if z in shells and shells[z] != ls:
                raise ValueError(
                    f"{self.path}: two kinds of element {self.kinds[kind]} have different "
                    f"basis shells ({shells[z]} and {ls}); hamjax keys the basis by element"
                )
            shells[z] = ls
            names.add(self.kind_basis.get(kind, "unknown"))
        return Basis.from_dict("cp2k:" + "+".join(sorted(names)), shells)

    def check_complete(self) -> None:
        """Raise ValueError naming the log if it is not the whole log of a finished run: no
        closing banner, no coordinates, or fewer coordinates than its kinds state."""
        if not self.ended:
            raise ValueError(
                f"{self.path}: no 'PROGRAM ENDED AT' banner: not the log of a finished CP2K "
                "run (cut short, or the run stopped early); to read matrices that a stopped "
                "run did write, pass log=None with basis= and structure="
            )
        if not self.symbols:
            raise ValueError(f"{self.path}: no atomic coordinates in the CP2K log")
        stated = sum(self.kind_atoms.values())
        if self.kind_atoms and stated != len(self.symbols):
            raise ValueError(
                f"{self.path}: the coordinate table lists {len(self.symbols)} atoms but the "
                f"atomic kinds state {stated} (a damaged log?)"
            )

    def orbital_counts(self) -> np.ndarray:
        """Orbitals per atom from the log, ``[n_atoms]``."""
        return np.array([self.kind_orbitals[k] for k in self.kind_of_atom], dtype=int)


_KIND_RE = re.compile(r"^\s*\d+\.\s+Atomic kind:\s+(\S+)\s+Number of atoms:\s+(\d+)")
_SHELL_RE = re.compile(r"^\s+(\d+)\s+(\d+)\s+\d+([a-z])\S*\s+[-+0-9.Ee]+\s+[-+0-9.Ee]+\s*$")
_IMAGES_RE = re.compile(r"^\s*(KS|S)\s+CSR write\|\s*(\d+)\s+periodic images")


def parse_cp2k_log(path: str | os.PathLike) -> Cp2kLog:
    """Parse a CP2K output log (kinds, shells, atoms, cell, Fermi level, image tables)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"CP2K log {path} not found")
    lines = path.read_text(errors="replace").splitlines()
    log = Cp2kLog(path=path)
    kind = None
    in_orbitals = False
    seen_shells: dict[str, list[tuple[int, int]]] = {}
    kind_order: list[str] = []
    index = 0
    while index < len(lines):
        line = lines[index]
        number = index + 1
        index += 1
        if "GLOBAL| Project name" in line:
            log.project = line.split()[-1]
        elif "CP2K| version string:" in line:
            log.version = line.split(":", 1)[1].strip()
        elif match := _KIND_RE.match(line):
            kind = match.group(1)
            kind_order.append(kind)
            log.kind_atoms[kind] = int(match.group(2))
            log.kinds[kind] = re.sub(r"[^A-Za-z].*$", "", kind) or kind
            seen_shells[kind] = []
            in_orbitals = False
        elif kind is not None and "Orbital Basis Set" in line:
            log.kind_basis[kind] = line.split()[-1]
        elif kind is not None and "Number of spherical basis functions:" in line:
            log.kind_orbitals[kind] = _int_field(line.split()[-1], path, number)
        elif kind is not None and "Normalised Cartesian orbitals" in line:
            in_orbitals = True
        elif kind is not None and in_orbitals and (match := _SHELL_RE.match(line)):
            key = (int(match.group(1)), int(match.group(2)))
            letter = match.group(3)
            if letter not in _L_OF:
                raise ValueError(f"{path}:{number}: unknown shell letter {letter!r}")
            if not seen_shells[kind] or seen_shells[kind][-1][0] != key:
                seen_shells[kind].append((key, _L_OF[letter]))
        elif in_orbitals and (
            "Atomic covalent radius" in line or "GTH Potential" in line or "Atomic kind" in line
        ):
            in_orbitals = False
        elif "MODULE QUICKSTEP: ATOMIC COORDINATES IN ANGSTROM" in line:
            index = _parse_coordinates(lines, index, log, kind_order)
        elif line.strip().startswith("CELL| Vector a [angstrom]"):
            log.cell = np.array(
                [_vector(lines[index - 1 + k], path, number + k) for k in range(3)], dtype=float
            )
        elif line.strip().startswith("CELL| Periodicity"):
            word = line.split()[-1].upper()
            log.pbc = (
                np.array([axis in word for axis in "XYZ"]) if word != "NONE" else np.zeros(3, bool)
            )
        elif "Fermi energy:" in line:
            log.fermi_level = float(line.split()[-1])
        elif "PROGRAM ENDED AT" in line:
            log.ended = True
        elif match := _IMAGES_RE.match(line):
            label, count = match.group(1), int(match.group(2))
            index = _parse_images(lines, index, count, label, log)
    for kind, shells in seen_shells.items():
        if shells:
            log.kind_shells[kind] = tuple(l for _, l in shells)
            n = sum(2 * l + 1 for l in log.kind_shells[kind])
            if kind in log.kind_orbitals and log.kind_orbitals[kind] != n:
                raise ValueError(
                    f"{path}: kind {kind}: the shell listing gives {n} spherical functions but "
                    f"the log states {log.kind_orbitals[kind]}"
                )
    return log


def _int_field(text, path, number) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{path}:{number}: expected an integer, got {text!r}") from None


def _vector(line, path, number) -> list[float]:
    words = line.split(":", 1)[-1].split()
    try:
        return [float(w) for w in words[:3]]
    except ValueError:
        raise ValueError(
            f"{path}:{number}: cannot read a cell vector from {line.strip()!r}"
        ) from None


def _parse_coordinates(lines, index, log, kind_order) -> int:
    symbols, kinds, positions = [], [], []
    while index < len(lines) and not lines[index].strip().startswith("Atom"):
        index += 1
    index += 1
    while index < len(lines) and lines[index].strip():
        words = lines[index].split()
        try:
            kind_index = int(words[1]) - 1
            symbols.append(words[2])
            positions.append([float(w) for w in words[4:7]])
            kinds.append(kind_order[kind_index] if kind_index < len(kind_order) else words[2])
        except (ValueError, IndexError):
            raise ValueError(
                f"{log.path}:{index + 1}: malformed coordinate line {lines[index].strip()!r}"
            ) from None
        index += 1
    log.symbols, log.kind_of_atom = symbols, kinds
    log.positions = np.asarray(positions, dtype=float).reshape(-1, 3)
    for kind, symbol in zip(kinds, symbols, strict=True):
        log.kinds[kind] = symbol  # the Element column decides the kind's element
    return index


def _parse_images(lines, index, count, label, log) -> int:
    table: dict[int, tuple[int, int, int]] = {}
    while index < len(lines) and len(table) < count:
        words = lines[index].split()
        index += 1
        if not words or words[0].lower() == "number":
            continue
        try:
            n, x, y, z = (int(w) for w in words[:4])
        except ValueError:
            raise ValueError(
                f"{log.path}:{index}: malformed {label} CSR image line {lines[index - 1].strip()!r}"
            ) from None
        if len(words) != 4:
            raise ValueError(f"{log.path}:{index}: image line needs 4 integers (Number X Y Z)")
        table[n] = (x, y, z)
    if len(table) != count:
        raise ValueError(
            f"{log.path}: {label} CSR image table lists {len(table)} of {count} images"
        )
    log.images[label] = table
    return index
