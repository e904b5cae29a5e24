"""Molecular DFT reference Hamiltonians with PySCF (optional extra ``hamjax[dft]``).

The record holds the converged Kohn-Sham (or Fock) matrix ``F[D]`` built from the final
density matrix, and the overlap S, in hamjax orbital order; its generalised eigenvalues
equal PySCF's ``mo_energy`` to SCF precision. Only finite (non-periodic) structures are
supported: a periodic Gamma-point calculation with PySCF's ``pbc`` module needs
pseudopotentials and plane-wave density fitting and is far slower than tblite for the cells
hamjax targets, so periodic input raises a clear error.

PySCF is imported only when a calculation runs; without it the error names the extra to
install (``pip install 'hamjax[dft]'``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import numpy as np

from hamjax.blocks import BlockHamiltonian
from hamjax.occupations import fermi_level_from_orbitals
from hamjax.reference._common import (
    MissingEngineError,
    SCFConvergenceError,
    dense_to_record,
    describe_structure,
)
from hamjax.reference._conventions import pyscf_conversion

__all__ = ["PySCFSettings", "pyscf_reference", "run_pyscf"]


@dataclass(frozen=True)
class PySCFSettings:
    """Settings of one PySCF calculation (JSON-serialisable).

    Attributes:
        xc: exchange-correlation functional ("PBE", "B3LYP", ...), or "HF" for Hartree-Fock.
        basis: Gaussian basis set name understood by PySCF ("def2-SVP").
        charge: total charge (elementary charges).
        spin: number of unpaired electrons (2S); only closed shells (0) are supported.
        grid_level: DFT integration grid level (PySCF 0-9).
        conv_tol: SCF energy convergence threshold (Hartree).
        max_iterations: SCF cycle limit.
        threshold: atom pairs whose S blocks are all below this magnitude are left out.
    """

    xc: str = "PBE"
    basis: str = "def2-SVP"
    charge: int = 0
    spin: int = 0
    grid_level: int = 3
    conv_tol: float = 1e-10
    max_iterations: int = 100
    threshold: float = 0.0

    def __post_init__(self):
        if self.spin != 0:
            raise ValueError(f"only closed-shell (spin=0) PySCF references, got spin={self.spin}")
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _import_pyscf():
    try:
        import pyscf  # noqa: F401
        from pyscf import dft, gto, scf
    except ImportError as err:
        raise MissingEngineError(
            "the PySCF reference engine needs PySCF: pip install 'hamjax[dft]'"
        ) from err
    return pyscf, gto, scf, dft


def run_pyscf(atoms, settings: PySCFSettings | None = None, *, name: str | None = None):
    """Run a closed-shell PySCF SCF on the finite structure ``atoms``.

    Returns:
        ``(mol, mf, fock, overlap, wall_time_s)``; matrices in PySCF's orbital order.

    Raises:
        ValueError: periodic structure, or an odd electron count.
        SCFConvergenceError: the SCF did not converge.
        MissingEngineError: PySCF is not installed.
    """
    settings = settings or PySCFSettings()
    if np.any(atoms.pbc):
        raise ValueError(
            f"PySCF references support finite structures only; {describe_structure(atoms, name)}"
            " is periodic (use engine='tblite')"
        )
    pyscf, gto, scf, dft = _import_pyscf()
    start = time.perf_counter()
    try:
        mol = gto.M(
            atom=[
                (int(z), tuple(map(float, p)))
                for z, p in zip(atoms.numbers, atoms.positions, strict=True)
            ],
            basis=settings.basis,
            charge=settings.charge,
            spin=settings.spin,
            unit="Angstrom",
            verbose=0,
        )
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"PySCF cannot build {describe_structure(atoms, name)}: {err}") from None
    if settings.xc.upper() == "HF":
        mf = scf.RHF(mol)
    else:
        mf = dft.RKS(mol)
        mf.xc = settings.xc
        mf.grids.level = settings.grid_level
    mf.conv_tol = settings.conv_tol
    mf.max_cycle = settings.max_iterations
    mf.verbose = 0
    mf.kernel()
    if not mf.converged:
        raise SCFConvergenceError(
            f"PySCF {settings.xc}/{settings.basis} SCF did not converge for "
            f"{describe_structure(atoms, name)} in {settings.max_iterations} cycles "
            f"(conv_tol={settings.conv_tol:g} Ha); raise max_iterations or loosen conv_tol",
            structure=describe_structure(atoms, name),
            attempts=[{"settings": settings.as_dict(), "converged": False}],
        )
    dm = mf.make_rdm1()
    fock = np.asarray(mf.get_fock(dm=dm))
    overlap = np.asarray(mf.get_ovlp())
    return mol, mf, 0.5 * (fock + fock.T), overlap, time.perf_counter() - start


def _conversion(mol, numbers):
    return pyscf_conversion(mol, numbers)


def pyscf_reference(
    atoms,
    settings: PySCFSettings | None = None,
    *,
    name: str | None = None,
    **overrides,
) -> BlockHamiltonian:
    """DFT H (Kohn-Sham matrix) and S of a molecule as a block record in hamjax order.

    Args:
        atoms: finite ``ase.Atoms`` (Angstrom).
        settings: :class:`PySCFSettings`; keyword ``overrides`` replace single fields.
        name: label for error messages and metadata.

    Returns:
        :class:`~hamjax.blocks.BlockHamiltonian` (Hartree) with the mid-gap as Fermi level
        and HOMO/LUMO, method, basis, units, PySCF version, settings, cycles and wall time
        in the metadata.
    """
    settings = settings or PySCFSettings()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(PySCFSettings)}
        if unknown:
            raise ValueError(f"unknown PySCF setting(s) {sorted(unknown)}")
        settings = dataclasses.replace(settings, **overrides)
    mol, mf, fock, overlap, wall = run_pyscf(atoms, settings, name=name)
    import pyscf

    numbers = np.asarray(atoms.numbers, dtype=int)
    basis, perm, signs = _conversion(mol, numbers)
    flip = signs[:, None] * signs[None, :]
    fock = flip * fock[np.ix_(perm, perm)]
    overlap = flip * overlap[np.ix_(perm, perm)]
    fermi = fermi_level_from_orbitals(mf.mo_energy, mf.mo_occ, 0.0)
    metadata = {
        "source": "pyscf",
        "name": name,
        "method": "HF" if settings.xc.upper() == "HF" else f"RKS/{settings.xc}",
        "basis": basis.name,
        "hamiltonian_kind": "converged Kohn-Sham/Fock matrix F[D] of the final density",
        "units": {
            "hamiltonian": "Hartree",
            "overlap": "1",
            "positions": "Angstrom",
            "energy": "Hartree",
            "fermi_level": "Hartree",
        },
        "code": "pyscf",
        "code_version": pyscf.__version__,
        "settings": settings.as_dict(),
        "scf_cycles": int(getattr(mf, "cycles", -1)),
        "wall_time_s": wall,
        "total_energy_hartree": float(mf.e_tot),
        "n_electrons": fermi["n_electrons"],
        "homo_hartree": fermi["homo"],
        "lumo_hartree": fermi["lumo"],
        "gap_hartree": fermi["gap"],
        "fermi_level_method": fermi["method"],
        "gamma_folded": False,
        "k_point": None,
    }
    return dense_to_record(
        atoms,
        basis,
        fock,
        overlap,
        threshold=settings.threshold,
        fermi_level=fermi["fermi_level"],
        metadata=metadata,
    )
