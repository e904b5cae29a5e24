"""Orbital order conversion from the reference codes to hamjax order (temporary: identity)."""

from __future__ import annotations

import numpy as np

from hamjax.basis import Basis


def tblite_conversion(numbers, shell_l, shell_atoms):
    numbers = np.asarray(numbers, dtype=int)
    shells = {}
    for atom, z in enumerate(numbers):
        if int(z) not in shells:
            shells[int(z)] = tuple(
                int(l) for l in np.asarray(shell_l)[np.asarray(shell_atoms) == atom]
            )
    basis = Basis.from_dict("tblite:gfn1-xtb", shells)
    n = int(basis.orbital_offsets(numbers)[-1])
    return basis, np.arange(n), np.ones(n)


def pyscf_conversion(mol, numbers):
    numbers = np.asarray(numbers, dtype=int)
    shells = {}
    for atom, z in enumerate(numbers):
        if int(z) not in shells:
            ls = [
                mol.bas_angular(b)
                for b in range(mol.nbas)
                if mol.bas_atom(b) == atom
                for _ in range(mol.bas_nctr(b))
            ]
            shells[int(z)] = tuple(ls)
    basis = Basis.from_dict("pyscf:" + str(mol.basis).lower(), shells)
    n = int(basis.orbital_offsets(numbers)[-1])
    return basis, np.arange(n), np.ones(n)
