"""The hamjax basis of a reference calculation and the map from the code's orbital order.

The shells come from the code itself (tblite's ``angular-momenta``/``shell-map``, PySCF's
``mol.bas_*``) and are checked against hamjax's basis tables; the in-shell order and signs
come from :func:`hamjax.basis.orbital_permutation` (proven by rotation tests).
"""

from __future__ import annotations

import numpy as np
from ase.data import chemical_symbols

from hamjax.basis import Basis, gfn1_xtb_basis, orbital_permutation

__all__ = ["tblite_conversion", "pyscf_conversion"]


def _shells_per_element(numbers, shell_l, shell_atoms, code: str) -> dict[int, tuple[int, ...]]:
    shell_l = np.asarray(shell_l, dtype=int)
    shell_atoms = np.asarray(shell_atoms, dtype=int)
    shells: dict[int, tuple[int, ...]] = {}
    for atom, z in enumerate(np.asarray(numbers, dtype=int)):
        these = tuple(int(l) for l in shell_l[shell_atoms == atom])
        if shells.setdefault(int(z), these) != these:
            raise ValueError(
                f"{code} gives atom {atom} ({chemical_symbols[z]}) shells {these}, other "
                f"{chemical_symbols[z]} atoms {shells[int(z)]}"
            )
    return shells


def tblite_conversion(numbers, shell_l, shell_atoms, method: str = "GFN1-xTB"):
    """``(basis, perm, signs)`` with ``M_hamjax = signs signs^T * M_tblite[perm][:, perm]``.

    Args:
        numbers: ``[n_atoms]`` atomic numbers.
        shell_l, shell_atoms: tblite's ``angular-momenta`` and ``shell-map`` (0-based atom).
        method: tblite method; GFN1-xTB uses :func:`hamjax.basis.gfn1_xtb_basis`.
    """
    numbers = np.asarray(numbers, dtype=int)
    shells = _shells_per_element(numbers, shell_l, shell_atoms, "tblite")
    if method == "GFN1-xTB":
        basis = gfn1_xtb_basis(sorted(shells))
        if basis.as_dict() != shells:
            raise ValueError(
                f"tblite GFN1-xTB shells {shells} differ from hamjax's table {basis.as_dict()}"
            )
    else:
        basis = Basis.from_dict(f"tblite:{method.lower()}", shells)
    perm, signs = orbital_permutation(basis, numbers, "tblite")
    return basis, perm, signs


def pyscf_conversion(mol, numbers):
    """``(basis, perm, signs)`` for PySCF AO matrices of ``mol`` (spherical GTOs)."""
    numbers = np.asarray(numbers, dtype=int)
    shell_l, shell_atoms = [], []
    for b in range(mol.nbas):
        for _ in range(mol.bas_nctr(b)):
            shell_l.append(mol.bas_angular(b))
            shell_atoms.append(mol.bas_atom(b))
    shells = _shells_per_element(numbers, shell_l, shell_atoms, "PySCF")
    name = mol.basis if isinstance(mol.basis, str) else "custom"
    basis = Basis.from_dict(f"pyscf:{name.lower()}", shells)
    perm, signs = orbital_permutation(basis, numbers, "pyscf")
    return basis, perm, signs
