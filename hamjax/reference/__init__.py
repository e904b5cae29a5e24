"""Reference Hamiltonians computed by other programs: tblite (GFN-xTB) and PySCF (DFT).

:func:`compute_reference` dispatches to an engine and returns a
:class:`~hamjax.blocks.BlockHamiltonian` (Hartree, hamjax orbital order) with the Fermi level
and metadata (source, method, basis, units, code version, settings, SCF cycles, wall time).
"""

from __future__ import annotations

from hamjax.reference._common import (
    MissingEngineError,
    SCFConvergenceError,
    fermi_level_from_orbitals,
)
from hamjax.reference.blas import find_openblas, reference_environment
from hamjax.reference.pyscf import PySCFSettings, pyscf_reference
from hamjax.reference.tblite import TBLiteSettings, tblite_reference
from hamjax.reference.worker import compute_in_subprocess

__all__ = [
    "ENGINES",
    "MissingEngineError",
    "PySCFSettings",
    "SCFConvergenceError",
    "TBLiteSettings",
    "compute_in_subprocess",
    "compute_reference",
    "fermi_level_from_orbitals",
    "find_openblas",
    "pyscf_reference",
    "reference_environment",
    "tblite_reference",
]

#: Engine names accepted by :func:`compute_reference`.
ENGINES = ("tblite", "pyscf")


def compute_reference(atoms, engine: str = "tblite", *, name: str | None = None, **settings):
    """H and S of ``atoms`` from a reference engine, as a block record.

    Args:
        atoms: ``ase.Atoms`` (Angstrom).
        engine: "tblite" (GFN-xTB, default) or "pyscf" (DFT; needs ``hamjax[dft]``).
        name: label for error messages and metadata.
        **settings: engine settings, the fields of
            :class:`~hamjax.reference.tblite.TBLiteSettings` or
            :class:`~hamjax.reference.pyscf.PySCFSettings`.

    Returns:
        :class:`~hamjax.blocks.BlockHamiltonian` in Hartree.

    Raises:
        ValueError: unknown engine or setting (named).
        SCFConvergenceError: the SCF did not converge.
        MissingEngineError: the engine's package is not installed.
    """
    if engine == "tblite":
        return tblite_reference(atoms, name=name, **settings)
    if engine == "pyscf":
        return pyscf_reference(atoms, name=name, **settings)
    raise ValueError(f"unknown reference engine {engine!r}; choose from {ENGINES}")
