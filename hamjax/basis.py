"""Atomic orbital basis sets, orbital-order conventions of each source, and orbital rotations.

Orbital order inside hamjax
    Per atom (in input order), per shell in basis order, and inside a shell of angular
    momentum ``l`` by ``m = -l..l`` in the real spherical-harmonic order of e3nn-jax evaluated
    on the vector ``(y, z, x)``. That is the standard real (tesseral) table with positive signs:
    ``p = (y, z, x)``; ``d = (xy, yz, 3z^2 - r^2, xz, x^2 - y^2)``; and so on.

Source conventions (:data:`ORBITAL_CONVENTIONS`)
    Each source code stores the orbitals of one shell in its own order. For every source and
    every ``l`` a table gives, for each hamjax position ``m``, the index inside the source's
    shell and a sign, so that ``hamjax[m] = sign[m] * source[order[m]]``. Each table was
    established and is proven by rotation tests on that code's real output
    (``tests/test_basis.py``):

    ========  ===========================  ==========================================
    source    in-shell order in the code   table (hamjax <- source)
    ========  ===========================  ==========================================
    tblite    p: y,z,x; d: m=-2..2          identity for l = 0, 1, 2 (GFN has l <= 2)
    pyscf     p: x,y,z; l >= 2: m=-l..l     p: order (1, 2, 0); identity otherwise
    cp2k      p: y,z,x; d: m=-2..2          identity for l = 0, 1, 2
    ========  ===========================  ==========================================

    A rotation test pins the order and the *relative* signs inside a shell; it cannot see a
    sign flip of a whole shell (``-D = D`` acting on both sides of ``D H D^T``), which is a
    gauge choice without physical effect. The PySCF tables for ``l <= 4`` are in addition
    checked against the values of PySCF's basis functions on a grid, which fixes every sign.
    Shells with ``l`` outside a table raise an error instead of being guessed.

Rotations
    A rigid rotation ``R`` (3x3, proper or improper) applied to a structure as
    ``positions @ R.T`` maps the Hamiltonian and overlap in hamjax order to ``D H D^T`` with
    ``D = orbital_rotation(basis, numbers, R)``: block diagonal, one Wigner matrix per shell,
    ``D_l(R) = D_l^{e3nn}(P R P^T)`` with ``P`` the permutation ``(x, y, z) -> (y, z, x)``, times
    the parity ``(-1)^l`` when ``det R < 0``. The matrices are computed in float64 numpy
    (from e3nn-jax's SO(3) generators), whatever the JAX precision setting.

Basis tables
    :func:`gfn1_xtb_basis` (tblite GFN1-xTB, shells from tblite's parameter tables),
    :func:`cp2k_basis` (CP2K basis-set files, e.g. ``SZV-MOLOPT-SR-GTH``),
    :func:`pyscf_basis` (any basis PySCF knows by name; needs the optional extra ``dft``),
    :data:`DEF2_SVP` and :data:`SZV_MOLOPT_SR_GTH` (static tables for common elements).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse
from ase.data import atomic_numbers, chemical_symbols
from scipy.spatial.transform import Rotation

__all__ = [
    "Basis",
    "DEF2_SVP",
    "GFN1_XTB",
    "ORBITAL_CONVENTIONS",
    "SZV_MOLOPT_SR_GTH",
    "basis_rotation_blocks",
    "cp2k_basis",
    "element_number",
    "element_symbol",
    "from_hamjax_order",
    "gfn1_xtb_basis",
    "orbital_permutation",
    "orbital_rotation",
    "pyscf_basis",
    "shell_convention",
    "tblite_basis",
    "to_hamjax_order",
    "wigner_matrix",
]


def element_number(element: int | str) -> int:
    """Atomic number of ``element`` given as a number or a symbol ("Hf")."""
    if isinstance(element, str):
        if element not in atomic_numbers:
            raise ValueError(f"unknown element symbol {element!r}")
        return atomic_numbers[element]
    return int(element)


def element_symbol(number: int) -> str:
    """Chemical symbol of atomic number ``number`` ("Hf"), or ``"Z=<number>"`` for a number
    that names no element (for messages about input that may hold any integer)."""
    z = int(number)
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else f"Z={z}"


@dataclass(frozen=True)
class Basis:
    """Shells (angular momenta) of every element of a basis set; hashable, so jit-static.

    Attributes:
        name: label of the basis ("tblite:gfn1-xtb", "cp2k:SZV-MOLOPT-SR-GTH",
            "pyscf:def2-svp").
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
        numbers = np.asarray(list(numbers) if not isinstance(numbers, np.ndarray) else numbers)
        numbers = numbers.astype(int).reshape(-1)
        table = {z: sum(2 * l + 1 for l in ls) for z, ls in self.shells}
        lookup = np.zeros(max(max(table, default=0), int(numbers.max(initial=0))) + 1, int)
        for z, n in table.items():
            lookup[z] = n
        counts = lookup[numbers] if len(numbers) else np.zeros(0, int)
        missing = np.nonzero(counts == 0)[0]
        if len(missing):
            index = int(missing[0])
            try:
                self.n_orbitals(numbers[index])
            except ValueError as err:
                raise ValueError(f"atom {index}: {err}") from None
        return counts

    def orbital_offsets(self, numbers: Iterable[int]) -> np.ndarray:
        """First orbital of every atom, shape ``[n_atoms + 1]`` (last entry = total)."""
        return np.concatenate([[0], np.cumsum(self.orbital_counts(numbers))])

    def irreps(self, number: int) -> str:
        """The e3nn irreps string of one atom's orbitals, e.g. ``"1x0e+1x0e+1x1o+1x2e"``."""
        return "+".join(f"1x{l}{'e' if l % 2 == 0 else 'o'}" for l in self.shells_of(number))

    def restrict(self, elements: Iterable[int | str]) -> Basis:
        """The same basis limited to ``elements`` (raises naming an element it lacks)."""
        return Basis.from_dict(
            self.name, {element_number(z): self.shells_of(element_number(z)) for z in elements}
        )


# --------------------------------------------------------------------------- conventions
def _identity(l: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    return tuple(range(2 * l + 1)), (1,) * (2 * l + 1)


#: ``ORBITAL_CONVENTIONS[source][l] = (order, signs)``: hamjax orbital ``m`` (0-based position
#: in ``-l..l``) equals ``signs[m] * source_orbital[order[m]]`` within one shell. Proven by
#: rotation of real output in ``tests/test_basis.py``; keys not listed are not supported.
ORBITAL_CONVENTIONS: dict[str, dict[int, tuple[tuple[int, ...], tuple[int, ...]]]] = {
    "hamjax": {l: _identity(l) for l in range(7)},
    # tblite (GFN1/GFN2-xTB): p as (y, z, x), d as m = -2..2 in the standard real table.
    "tblite": {0: _identity(0), 1: _identity(1), 2: _identity(2)},
    # PySCF spherical GTOs: p as (x, y, z) (its one exception), l >= 2 as m = -l..l.
    "pyscf": {
        0: _identity(0),
        1: ((1, 2, 0), (1, 1, 1)),
        2: _identity(2),
        3: _identity(3),
        4: _identity(4),
    },
    # CP2K (KS/S CSR files): p as (y, z, x), d as m = -2..2.
    "cp2k": {0: _identity(0), 1: _identity(1), 2: _identity(2)},
}


def _source_name(source: str) -> str:
    key = source.split(":", 1)[0].lower()
    if key not in ORBITAL_CONVENTIONS:
        raise ValueError(
            f"unknown orbital-order source {source!r}; known: {sorted(ORBITAL_CONVENTIONS)}"
        )
    return key


def shell_convention(source: str, l: int) -> tuple[np.ndarray, np.ndarray]:
    """In-shell ``(order, signs)`` of ``source`` for angular momentum ``l``.

    ``hamjax[m] = signs[m] * source[order[m]]`` for ``m`` in ``0..2l``. ``source`` is
    "tblite", "pyscf", "cp2k" or "hamjax" (a prefix like "pyscf:def2-svp" is accepted).
    """
    key = _source_name(source)
    table = ORBITAL_CONVENTIONS[key]
    if int(l) not in table:
        raise ValueError(
            f"no proven orbital order for l={int(l)} shells from {key}; covered: l in "
            f"{sorted(table)}"
        )
    order, signs = table[int(l)]
    return np.asarray(order, dtype=np.int64), np.asarray(signs, dtype=float)


def orbital_permutation(
    basis: Basis, numbers: Iterable[int], source: str
) -> tuple[np.ndarray, np.ndarray]:
    """Permutation and signs taking a source-ordered orbital vector to hamjax order.

    Both orders put atoms in input order and shells in basis order; only the order and signs
    inside each shell differ.

    Args:
        basis: the basis (shells per element) of the structure.
        numbers: atomic numbers ``[n_atoms]``.
        source: "tblite", "pyscf", "cp2k" or "hamjax".

    Returns:
        ``(perm, signs)``, each ``[n_orb]``: ``v_hamjax = signs * v_source[perm]`` and
        ``M_hamjax = signs[:, None] * signs[None, :] * M_source[perm][:, perm]``.
    """
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    per_element: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for z in np.unique(numbers):
        orders, signs, start = [], [], 0
        for l in basis.shells_of(int(z)):
            order, sign = shell_convention(source, l)
            orders.append(order + start)
            signs.append(sign)
            start += 2 * l + 1
        per_element[int(z)] = (np.concatenate(orders), np.concatenate(signs))
    offsets = basis.orbital_offsets(numbers)
    perm = np.empty(int(offsets[-1]), dtype=np.int64)
    signs = np.empty(int(offsets[-1]), dtype=float)
    for z, (order, sign) in per_element.items():
        atoms = np.nonzero(numbers == z)[0]
        where = offsets[atoms][:, None] + np.arange(len(order))  # [n_z, n_orb(z)]
        perm[where] = offsets[atoms][:, None] + order
        signs[where] = sign
    return perm, signs


def to_hamjax_order(matrix, basis: Basis, numbers: Iterable[int], source: str):
    """Reorder a matrix (or stack of matrices) in ``source`` orbital order into hamjax order.

    Args:
        matrix: ``[..., n_orb, n_orb]`` numpy array, or a ``scipy.sparse`` matrix.
        basis: the basis of the structure; numbers: atomic numbers ``[n_atoms]``.
        source: "tblite", "pyscf", "cp2k" or "hamjax".

    Returns:
        The matrix in hamjax order, same type and shape.
    """
    perm, signs = orbital_permutation(basis, numbers, source)
    return _apply(matrix, perm, signs)


def from_hamjax_order(matrix, basis: Basis, numbers: Iterable[int], source: str):
    """Inverse of :func:`to_hamjax_order`: a hamjax-ordered matrix in ``source`` order."""
    perm, signs = orbital_permutation(basis, numbers, source)
    inverse = np.empty_like(perm)
    inverse[perm] = np.arange(len(perm))
    return _apply(matrix, inverse, signs[inverse])


def _apply(matrix, perm, signs):
    n = len(perm)
    if scipy.sparse.issparse(matrix):
        if matrix.shape != (n, n):
            raise ValueError(f"matrix is {matrix.shape}; the basis gives {n} orbitals")
        # index mapping on the stored entries (keeps explicit zeros, unlike a product)
        coo = scipy.sparse.coo_matrix(matrix)
        inverse = np.empty_like(perm)
        inverse[perm] = np.arange(n)
        rows, cols = inverse[coo.row], inverse[coo.col]
        values = coo.data * (signs[rows] * signs[cols]).astype(coo.dtype, copy=False)
        out = scipy.sparse.coo_matrix((values, (rows, cols)), shape=(n, n))
        return out.asformat(matrix.format)
    matrix = np.asarray(matrix)
    if matrix.shape[-2:] != (n, n):
        raise ValueError(f"matrix is {matrix.shape}; the basis gives {n} orbitals")
    out = matrix[..., perm, :][..., :, perm]
    return out * (signs[:, None] * signs[None, :]).astype(out.dtype, copy=False)


# --------------------------------------------------------------------------- rotations
_YZX = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # (x,y,z) -> (y,z,x)


@functools.lru_cache(maxsize=16)
def _generators(l: int) -> np.ndarray:
    import e3nn_jax as e3nn  # imports jax, which the rest of this module does not need

    return np.asarray(e3nn.generators(l), dtype=float)  # [3, 2l+1, 2l+1], numpy


def _check_rotation(R) -> tuple[np.ndarray, float]:
    R = np.asarray(R, dtype=float)
    if R.shape != (3, 3):
        raise ValueError(f"rotation must be 3x3, got {R.shape}")
    if np.abs(R @ R.T - np.eye(3)).max() > 1e-6:
        raise ValueError("rotation matrix is not orthogonal (R R^T != 1 within 1e-6)")
    return R, float(np.sign(np.linalg.det(R)))


def wigner_matrix(l: int, R) -> np.ndarray:
    """Real Wigner matrix of one shell in hamjax order, ``[2l+1, 2l+1]`` float64.

    ``Y_l(R r) = D_l(R) Y_l(r)`` for the real spherical harmonics of hamjax's order, with
    parity ``(-1)^l`` for an improper ``R`` (``det R = -1``).

    >>> import numpy as np
    >>> R = np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # 90 deg about z
    >>> np.round(wigner_matrix(1, R), 12) + 0.0  # p = (y, z, x): y -> x, x -> -y
    array([[ 0.,  0.,  1.],
           [ 0.,  1.,  0.],
           [-1.,  0.,  0.]])
    """
    R, det = _check_rotation(R)
    if l == 0:
        return np.ones((1, 1))
    proper = det * R
    # the e3nn generators act on (x, y, z); hamjax's harmonics are e3nn's of (y, z, x)
    rotvec = Rotation.from_matrix(_YZX @ proper @ _YZX.T).as_rotvec()
    D = scipy.linalg.expm(np.einsum("i,ijk->jk", rotvec, _generators(l)))
    return D * (det**l)


def basis_rotation_blocks(basis: Basis, R) -> dict[int, np.ndarray]:
    """Per element, the block-diagonal rotation of one atom's orbitals, ``{Z: [n, n]}``."""
    cache: dict[int, np.ndarray] = {}
    blocks = {}
    for z, shells in basis.shells:
        n = sum(2 * l + 1 for l in shells)
        D = np.zeros((n, n))
        start = 0
        for l in shells:
            if l not in cache:
                cache[l] = wigner_matrix(l, R)
            D[start : start + 2 * l + 1, start : start + 2 * l + 1] = cache[l]
            start += 2 * l + 1
        blocks[z] = D
    return blocks


def orbital_rotation(basis: Basis, numbers: Iterable[int], R) -> np.ndarray:
    """Orbital-space matrix ``D`` of a rigid rotation of a whole structure.

    Rotating the atoms as ``positions @ R.T`` (``R`` proper or improper) maps the Hamiltonian
    and overlap in hamjax order as ``H -> D H D^T``, ``S -> D S D^T``. The same ``D`` applies to
    every cell-shift block of a periodic structure whose cell rotates with it.

    Args:
        basis: shells per element; numbers: atomic numbers ``[n_atoms]``.
        R: ``[3, 3]`` orthogonal matrix.

    Returns:
        ``[n_orb, n_orb]`` block-diagonal orthogonal matrix (float64).
    """
    numbers = np.asarray(numbers, dtype=int).reshape(-1)
    blocks = basis_rotation_blocks(basis.restrict(np.unique(numbers)), R)
    offsets = basis.orbital_offsets(numbers)
    D = np.zeros((int(offsets[-1]),) * 2)
    for atom, z in enumerate(numbers):
        a, b = offsets[atom], offsets[atom + 1]
        D[a:b, a:b] = blocks[int(z)]
    return D


# --------------------------------------------------------------------------- basis tables
# Shells of GFN1-xTB for Z = 1..86, from tblite's parameter tables (``nshell`` and
# ``ang_shell`` of its GFN1-xTB module), in the order tblite stores them.
_GFN1_SHELLS = (
    "ss s sp sp sp sp sp sp sp spd sp sp spd spd spd spd spd spd sp spd dsp dsp dsp dsp dsp "
    "dsp dsp dsp dsp sp spd spd spd spd spd spd sp spd dsp dsp dsp dsp dsp dsp dsp dsp dsp "
    "sp spd spd spd spd spd spd sp spd dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp "
    "dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp sp sp sp sp spd spd spd"
).split()
_L = {"s": 0, "p": 1, "d": 2, "f": 3, "g": 4}
# Shells of GFN2-xTB for Z = 1..86, as tblite 0.8 reports them (``angular-momenta``).
_GFN2_SHELLS = (
    "s sp sp sp sp sp sp sp sp spd sp spd spd spd spd spd spd spd sp spd dsp dsp dsp dsp dsp "
    "dsp dsp dsp dsp sp spd spd spd spd spd spd sp spd dsp dsp dsp dsp dsp dsp dsp dsp dsp "
    "sp spd spd spd spd spd spd sp spd dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp "
    "dsp dsp dsp dsp dsp dsp dsp dsp dsp dsp sp sp sp sp sp spd spd"
).split()


def tblite_basis(method: str = "GFN1-xTB", elements: Iterable[int | str] | None = None) -> Basis:
    """Shells of a tblite method ("GFN1-xTB" or "GFN2-xTB") for ``elements`` (all 86 if None).

    GFN1-xTB: H s,s; C/N/O s,p; Ti/Hf d,s,p. GFN2-xTB: H s; C/N/O s,p; Ti/Hf d,s,p.
    """
    key = method.lower().replace("_", "-")
    tables = {"gfn1-xtb": _GFN1_SHELLS, "gfn2-xtb": _GFN2_SHELLS}
    if key not in tables:
        raise ValueError(f"unknown tblite method {method!r}; known: GFN1-xTB, GFN2-xTB")
    table = {z: tuple(_L[c] for c in s) for z, s in enumerate(tables[key], start=1)}
    name = f"tblite:{key}"
    if elements is None:
        return Basis.from_dict(name, table)
    numbers = sorted({element_number(e) for e in elements})
    for z in numbers:
        if z not in table:
            raise ValueError(f"{method} has no parameters for element Z={z}")
    return Basis.from_dict(name, {z: table[z] for z in numbers})


def gfn1_xtb_basis(elements: Iterable[int | str] | None = None) -> Basis:
    """tblite GFN1-xTB shells (H: s,s; C/N/O: s,p; Ti/Hf: d,s,p) for ``elements``."""
    return tblite_basis("GFN1-xTB", elements)


#: GFN1-xTB for every element it parametrises (Z = 1..86).
GFN1_XTB = gfn1_xtb_basis()

#: CP2K SZV-MOLOPT-SR-GTH (from CP2K's ``BASIS_MOLOPT``) for common elements.
SZV_MOLOPT_SR_GTH = Basis.from_dict(
    "cp2k:SZV-MOLOPT-SR-GTH",
    {"H": (0,), "C": (0, 1), "N": (0, 1), "O": (0, 1), "Ti": (0, 0, 1, 2), "Hf": (0, 0, 1, 2)},
)

#: def2-SVP as PySCF orders its shells (grouped by l) for the water/ethanol benchmark elements.
DEF2_SVP = Basis.from_dict(
    "pyscf:def2-svp",
    {"H": (0, 0, 1), "C": (0, 0, 0, 1, 1, 2), "N": (0, 0, 0, 1, 1, 2), "O": (0, 0, 0, 1, 1, 2)},
)


def pyscf_basis(name: str, elements: Iterable[int | str]) -> Basis:
    """Shells of basis ``name`` as PySCF orders them in its AO matrices (``mol.cart=False``).

    Uses PySCF's own basis tables (optional extra ``dft``); raises ImportError with the
    install hint when PySCF is missing and ValueError for an element the basis lacks.
    """
    try:
        from pyscf import gto  # optional (extra ``dft``) and slow to import
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("pyscf_basis needs PySCF: pip install 'hamjax[dft]'") from err
    shells = {}
    for z in sorted({element_number(e) for e in elements}):
        symbol = chemical_symbols[z]
        try:
            mol = gto.M(atom=[(symbol, (0.0, 0.0, 0.0))], basis=name, spin=z % 2, verbose=0)
        except Exception as err:  # PySCF raises several types for an unknown basis/element
            raise ValueError(f"PySCF basis {name!r} has no entry for {symbol}: {err}") from None
        ls = [mol.bas_angular(b) for b in range(mol.nbas) for _ in range(mol.bas_nctr(b))]
        if not ls:
            raise ValueError(f"PySCF basis {name!r} has no functions for {symbol}")
        shells[z] = tuple(int(l) for l in ls)
    return Basis.from_dict(f"pyscf:{name.lower()}", shells)


def _default_cp2k_basis_file() -> str | None:
    try:
        import pyscf  # optional: only its copy of the basis file is wanted
    except ImportError:
        return None
    path = os.path.join(os.path.dirname(pyscf.__file__), "pbc", "gto", "basis", "BASIS_MOLOPT")
    return path if os.path.exists(path) else None


def cp2k_basis(
    name: str, elements: Iterable[int | str], path: str | os.PathLike | None = None
) -> Basis:
    """Shells of a CP2K basis set read from a CP2K basis file (format of ``BASIS_MOLOPT``).

    CP2K orders one atom's functions by set, then by ``l`` from ``lmin`` to ``lmax``, then by
    shell; this is the order of its CSR matrices.

    Args:
        name: basis name as in the file, e.g. "SZV-MOLOPT-SR-GTH".
        elements: symbols or numbers.
        path: basis file; default the ``BASIS_MOLOPT`` copy that PySCF ships.
    """
    if path is None:
        path = _default_cp2k_basis_file()
        if path is None:
            raise FileNotFoundError("no CP2K basis file given and none found (pass path=)")
    wanted = {element_number(e) for e in elements}
    found: dict[int, tuple[int, ...]] = {}
    with open(path, errors="replace") as handle:  # bytes that are no text match nothing
        lines = handle.readlines()
    index = 0
    while index < len(lines):
        words = lines[index].split()
        index += 1
        if len(words) < 2 or words[0].startswith("#") or words[0] not in atomic_numbers:
            continue
        z = atomic_numbers[words[0]]
        if z not in wanted or z in found or name not in words[1:]:
            continue
        try:
            n_set = int(lines[index].split()[0])
            index += 1
            ls: list[int] = []
            for _ in range(n_set):
                head = [int(w) for w in lines[index].split()]
                _, lmin, lmax, n_exp = head[:4]
                counts = head[4 : 4 + lmax - lmin + 1]
                for l, count in zip(range(lmin, lmax + 1), counts, strict=True):
                    ls += [l] * count
                index += 1 + n_exp
        except (ValueError, IndexError) as err:
            raise ValueError(
                f"{path}:{index + 1}: malformed basis entry for {words[0]}: {err}"
            ) from None
        found[z] = tuple(ls)
    missing = sorted(wanted - set(found))
    if missing:
        raise ValueError(
            f"{path}: basis {name!r} not found for {[chemical_symbols[z] for z in missing]}"
        )
    return Basis.from_dict(f"cp2k:{name}", found)
