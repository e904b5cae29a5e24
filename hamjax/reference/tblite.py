"""GFN-xTB reference Hamiltonians with tblite (PyPI ``tblite``).

tblite returns the *core* Hamiltonian H0 under ``"hamiltonian-matrix"``; the converged
self-consistent Hamiltonian F (the matrix whose generalised eigenvalues are the orbital
energies) is rebuilt here from the converged orbitals, ``F = S C diag(e) C^T S``, which is
exact because ``C^T S C = 1`` for the full square set of orbitals. That F is what the record
stores by default (``hamiltonian="scf"``); ``hamiltonian="core"`` stores H0 instead.

Periodic structures are computed at the Gamma point: tblite gives one matrix per structure,
the sum over all lattice images. For GFN1-xTB the images are then separated exactly
(:mod:`hamjax.reference.images`, ``image_resolved=True``, the default): the record holds one
block per ``(i, j, R)`` up to tblite's integral cutoff, ``metadata["gamma_folded"] = False``,
and every record is checked as it is made: ``sum_R H(R)`` and ``sum_R S(R)`` equal the Gamma
matrices of the same SCF to ``FOLDING_TOLERANCE_HARTREE``, ``H_ji(-R) = H_ij(R)^T``, and the
electron count of the k-sampled ``H(k)``, ``S(k)`` on the SCF's own k-grid (Gamma of the cell)
at the record's Fermi level and smearing is the SCF's to 1e-4 e. With
``image_resolved=False`` (or another method) a record has every block at shift (0, 0, 0) and
``metadata["gamma_folded"] = True``: one block per atom pair stands for the sum of its images.

Units: tblite takes Bohr and works in Hartree; the electronic temperature is kT in Hartree
(tblite's default 9.5e-4 Ha is about 300 K). The record stores Angstrom and Hartree.

Metallic cells (TiN electrodes) need a smeared occupation and a damped Broyden mixer to
converge: periodic structures default to ``PERIODIC_TEMPERATURE_HARTREE`` and
``PERIODIC_MIXER_DAMPING``. When the SCF still fails, one retry is made (``retry=True``) and
recorded in ``metadata["attempts"]``; if that fails too, :class:`SCFConvergenceError` names
the structure, the cycles and every setting tried. The retry keeps the requested electronic
temperature (``retry_mode="anneal"``): it starts at a higher one, anneals down to the target,
with stronger damping and twice the cycles. A retry that converged at the higher temperature
(``retry_mode="raise"``) gives a different electronic state: a dataset mixing the two is
inconsistent (a demo device converged that way had its electrode Fermi level 3 eV off).
The periodic defaults kT = 0.03 Ha and mixing 0.05 are a large smearing (0.8 eV), recorded
in the metadata, that trades some fidelity of the electrodes' occupations for an SCF that
converged on every device tried; lower it (with ``annealing``) when the cycles can be
afforded. Molecules and gapped clusters keep tblite's defaults (9.5e-4 Ha, mixing 0.4). The
measurements behind these choices are in ``docs/reference-data.md``.

The record's ``fermi_level`` is the SCF's chemical potential at that smearing. For a metal
whose density of states is lopsided around E_F it is not the Fermi level at room
temperature: in TiN (far more Ti d states above E_F than N p below) it sits about 1 eV low,
in the p-d pseudogap. Transport needs the latter (:func:`hamjax.vcm.electrode_fermi_level`,
:func:`hamjax.vcm.fermi_level_by_count`).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass

import numpy as np

from hamjax.blocks import BlockHamiltonian
from hamjax.constants import BOHR_ANGSTROM
from hamjax.occupations import fermi_level_from_orbitals
from hamjax.reference._common import (
    SCFConvergenceError,
    dense_to_record,
    describe_structure,
)
from hamjax.reference._conventions import tblite_conversion
from hamjax.reference.blas import active_openblas
from hamjax.reference.checks import check_supercell_levels
from hamjax.reference.image_record import image_record
from hamjax.reference.images import tblite_integrals

__all__ = [
    "TBLiteSettings",
    "TBLiteResult",
    "MOLECULE_TEMPERATURE_HARTREE",
    "PERIODIC_TEMPERATURE_HARTREE",
    "PERIODIC_MIXER_DAMPING",
    "run_tblite",
    "tblite_reference",
    "tblite_version",
]

#: tblite's own default electronic temperature (kT, Hartree), about 300 K.
MOLECULE_TEMPERATURE_HARTREE = 9.5e-4
#: Default kT (Hartree) for periodic structures: smears the metallic TiN electrodes.
PERIODIC_TEMPERATURE_HARTREE = 0.03
#: Default Broyden mixing parameter for periodic structures (tblite's default is 0.4).
PERIODIC_MIXER_DAMPING = 0.05
_METHODS = ("GFN1-xTB", "GFN2-xTB", "IPEA1-xTB")
_GUESSES = {"sad": 0, "eeq": 1, "eeqbc": 2}
_CYCLE_LINE = re.compile(r"^\s*(\d+)\s+-?\d")


@dataclass(frozen=True)
class TBLiteSettings:
    """Settings of one tblite calculation (all JSON-serialisable).

    Attributes:
        method: "GFN1-xTB" (default), "GFN2-xTB" or "IPEA1-xTB".
        electronic_temperature_hartree: kT of the Fermi smearing in Hartree; None picks
            ``MOLECULE_TEMPERATURE_HARTREE`` for finite and ``PERIODIC_TEMPERATURE_HARTREE``
            for periodic structures.
        mixer_damping: Broyden mixing parameter (smaller = more damped); None picks 0.4 for
            finite and ``PERIODIC_MIXER_DAMPING`` for periodic structures.
        mixer_memory: Broyden history length (None: tblite's default, ``max_iterations``).
        guess: initial charges: "sad" (superposition of atomic densities, tblite's default),
            "eeq" or "eeqbc" (electronegativity equilibration).
        annealing: None, or ``(start_hartree, hold_cycles, anneal_cycles)``: start the SCF at
            a higher electronic temperature, hold it, then lower it linearly to the target.
        max_iterations: SCF cycle limit.
        accuracy: tblite's numerical accuracy factor (smaller = tighter).
        charge: total charge (elementary charges).
        retry: after a failed SCF, retry once with ``retry_damping_factor`` times the mixing
            parameter, as ``retry_mode`` says.
        retry_mode: "anneal" (default): the retry starts at ``retry_temperature_factor`` times
            the temperature, holds it for a tenth of ``max_iterations`` cycles, anneals to the
            requested temperature over a quarter, and may take twice ``max_iterations``: the
            result is at the requested temperature. "raise": the retry runs at
            ``retry_temperature_factor`` times the temperature and its result stays there.
        hamiltonian: "scf" (converged self-consistent H, default) or "core" (tblite's H0).
        threshold: atom pairs whose S and H0 blocks are all below this magnitude are left
            out (0: keep every pair that tblite couples).
        image_resolved: for periodic structures with GFN1-xTB, store one block per lattice
            image ``(i, j, R)`` (:mod:`hamjax.reference.images`) instead of Gamma sums.
        scf_supercell: run the SCF on this supercell of a periodic cell, so that its density
            samples the Gamma-centred k-grid of the same size (tblite has no k-points), and
            store the cell's image blocks with that SCF potential (``image_resolved`` only).
            The record's own k-grid is then this grid: its electron count and its levels
            at every k-point of it are checked against the supercell's SCF.
        kgrid_electron_count: besides the SCF's own k-grid, count the electrons of the
            image-resolved ``H(k)``, ``S(k)`` on this Gamma-centred grid at the record's
            Fermi level (recorded, not checked: the SCF samples only Gamma of the cell, so a
            finer grid shows how far that sampling is from k-converged). None: skip.
    """

    method: str = "GFN1-xTB"
    electronic_temperature_hartree: float | None = None
    mixer_damping: float | None = None
    mixer_memory: int | None = None
    guess: str = "sad"
    annealing: tuple[float, int, int] | None = None
    max_iterations: int = 250
    accuracy: float = 1.0
    charge: float = 0.0
    retry: bool = True
    retry_mode: str = "anneal"
    retry_temperature_factor: float = 2.0
    retry_damping_factor: float = 0.5
    hamiltonian: str = "scf"
    threshold: float = 0.0
    image_resolved: bool = True
    scf_supercell: tuple[int, int, int] = (1, 1, 1)
    kgrid_electron_count: tuple[int, int, int] | None = None

    def __post_init__(self):
        if self.method not in _METHODS:
            raise ValueError(f"tblite method {self.method!r} unknown; choose from {_METHODS}")
        if self.hamiltonian not in ("scf", "core"):
            raise ValueError(f"hamiltonian must be 'scf' or 'core', not {self.hamiltonian!r}")
        if self.retry_mode not in ("anneal", "raise"):
            raise ValueError(f"retry_mode must be 'anneal' or 'raise', not {self.retry_mode!r}")
        if self.guess not in _GUESSES:
            raise ValueError(f"guess must be one of {tuple(_GUESSES)}, not {self.guess!r}")
        if self.annealing is not None:
            if len(self.annealing) != 3:
                raise ValueError("annealing must be (start_hartree, hold_cycles, anneal_cycles)")
            object.__setattr__(
                self,
                "annealing",
                (float(self.annealing[0]), int(self.annealing[1]), int(self.annealing[2])),
            )
        grid = tuple(int(n) for n in self.scf_supercell)
        if len(grid) != 3 or min(grid) < 1:
            raise ValueError(f"scf_supercell must be 3 positive integers, got {grid}")
        object.__setattr__(self, "scf_supercell", grid)
        if self.kgrid_electron_count is not None:
            grid = tuple(int(n) for n in self.kgrid_electron_count)
            if len(grid) != 3 or min(grid) < 1:
                raise ValueError(f"kgrid_electron_count must be 3 positive integers, got {grid}")
            object.__setattr__(self, "kgrid_electron_count", grid)
        if self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")
        t = self.electronic_temperature_hartree
        if t is not None and not t >= 0:
            raise ValueError(f"electronic_temperature_hartree must be >= 0, got {t}")
        d = self.mixer_damping
        if d is not None and not 0 < d <= 1:
            raise ValueError(f"mixer_damping must be in (0, 1], got {d}")

    def resolved(self, periodic: bool) -> TBLiteSettings:
        """These settings with the structure-dependent defaults filled in."""
        temperature = self.electronic_temperature_hartree
        if temperature is None:
            temperature = PERIODIC_TEMPERATURE_HARTREE if periodic else MOLECULE_TEMPERATURE_HARTREE
        damping = self.mixer_damping
        if damping is None:
            damping = PERIODIC_MIXER_DAMPING if periodic else 0.4
        return dataclasses.replace(
            self, electronic_temperature_hartree=temperature, mixer_damping=damping
        )

    @property
    def unfolds_images(self) -> bool:
        """Whether a periodic structure gets an image-resolved record with these settings
        (``image_resolved`` and a method of GFN1 form; others stay Gamma-folded)."""
        return self.image_resolved and self.method == "GFN1-xTB"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class TBLiteResult:
    """Raw output of one converged tblite run, matrices in tblite's orbital order.

    Attributes:
        hamiltonian: ``[n_orb, n_orb]`` converged self-consistent H (Hartree).
        core_hamiltonian: ``[n_orb, n_orb]`` tblite's H0 (Hartree).
        overlap: ``[n_orb, n_orb]``.
        orbital_energies: ``[n_orb]`` Hartree.
        occupations: ``[n_orb]`` electrons (spin summed).
        shell_angular_momenta: ``[n_shell]``; ``shell_atoms``: ``[n_shell]`` owning atom.
        energy: total energy (Hartree).
        scf_cycles: SCF cycles of the successful attempt.
        settings: the settings that converged.
        attempts: every attempt, ``{"settings": ..., "scf_cycles": ..., "converged": ...}``.
        wall_time_s: seconds for all attempts.
    """

    hamiltonian: np.ndarray
    core_hamiltonian: np.ndarray
    overlap: np.ndarray
    orbital_energies: np.ndarray
    occupations: np.ndarray
    shell_angular_momenta: np.ndarray
    shell_atoms: np.ndarray
    energy: float
    scf_cycles: int
    settings: TBLiteSettings
    attempts: list
    wall_time_s: float


def tblite_version() -> str:
    """Version of the tblite library, e.g. "0.8.0"."""
    from tblite import library

    return ".".join(str(v) for v in library.get_version())


def _scf_timing(log: list[tuple[float, str]], start: float, end: float) -> dict:
    """Cycles and the time split of one run from tblite's time-stamped log lines.

    tblite reports every SCF cycle as it finishes, so the stamps separate the setup
    (integrals, lattice sums), the SCF cycles and the work after them (gradient, virial).
    """
    stamps = [t for t, msg in log for line in msg.splitlines() if _CYCLE_LINE.match(line)]
    if not stamps:
        return {"scf_cycles": 0, "setup_s": end - start, "scf_s": 0.0, "post_scf_s": 0.0}
    first_cycle = stamps[1] - stamps[0] if len(stamps) > 1 else 0.0
    setup = max(stamps[0] - start - first_cycle, 0.0)
    return {
        "scf_cycles": len(stamps),
        "setup_s": setup,
        "scf_s": stamps[-1] - start - setup,
        "post_scf_s": end - stamps[-1],
    }


def _single_run(atoms, settings: TBLiteSettings, periodic: bool):
    from tblite.interface import Calculator

    log: list[tuple[float, str]] = []
    kwargs = {}
    if periodic:
        kwargs = dict(
            lattice=np.asarray(atoms.cell.array, float) / BOHR_ANGSTROM,
            periodic=np.asarray(atoms.pbc, dtype=bool),
        )
    calc = Calculator(
        settings.method,
        np.asarray(atoms.numbers, dtype=int),
        np.asarray(atoms.positions, float) / BOHR_ANGSTROM,
        charge=float(settings.charge),
        color=False,
        logger=lambda message: log.append((time.perf_counter(), message)),
        **kwargs,
    )
    calc.set("verbosity", 1)  # the cycle table goes to ``log``, not to stdout
    calc.set("save-integrals", 1)
    calc.set("max-iter", int(settings.max_iterations))
    calc.set("accuracy", float(settings.accuracy))
    calc.set("temperature", float(settings.electronic_temperature_hartree))
    calc.set("mixer-damping", float(settings.mixer_damping))
    if settings.mixer_memory is not None:
        calc.set("mixer-memory", int(settings.mixer_memory))
    calc.set("guess", _GUESSES[settings.guess])
    if settings.annealing is not None:
        calc.set("annealing", tuple(settings.annealing))
    try:
        res = calc.singlepoint()
        error = None
    except Exception as err:  # tblite raises TBLiteRuntimeError("SCF not converged ...")
        res, error = None, err
    return calc, res, error, log


def _retry_settings(first: TBLiteSettings) -> TBLiteSettings:
    """The settings of the retry after ``first`` (resolved) failed; see ``retry_mode``."""
    temperature = first.electronic_temperature_hartree
    hot = max(temperature * first.retry_temperature_factor, MOLECULE_TEMPERATURE_HARTREE)
    damping = first.mixer_damping * first.retry_damping_factor
    if first.retry_mode == "raise":
        return dataclasses.replace(first, electronic_temperature_hartree=hot, mixer_damping=damping)
    annealing = first.annealing
    if hot > temperature:
        start = max(hot, annealing[0]) if annealing else hot
        annealing = (start, first.max_iterations // 10, first.max_iterations // 4)
    return dataclasses.replace(
        first,
        mixer_damping=damping,
        annealing=annealing,
        max_iterations=2 * first.max_iterations,
    )


def run_tblite(atoms, settings: TBLiteSettings | None = None, *, name: str | None = None):
    """Run tblite on ``atoms`` (retrying once if allowed) and return a :class:`TBLiteResult`.

    Args:
        atoms: ``ase.Atoms`` (Angstrom). Periodic along the directions in ``atoms.pbc``.
        settings: calculation settings (defaults: :class:`TBLiteSettings`).
        name: label used in error messages.

    Raises:
        SCFConvergenceError: no attempt converged; the message names the structure, the
            cycles and the settings of every attempt.
        ValueError: a structure tblite rejects (the message names it).
    """
    settings = settings or TBLiteSettings()
    periodic = bool(np.any(atoms.pbc))
    if periodic and abs(np.linalg.det(atoms.cell.array)) < 1e-6:
        raise ValueError(f"{describe_structure(atoms, name)} is periodic but has no cell")
    current = settings.resolved(periodic)
    plan = [current]
    if settings.retry:
        plan.append(_retry_settings(current))
    attempts = []
    start = time.perf_counter()
    for attempt in plan:
        t0 = time.perf_counter()
        calc, res, error, log = _single_run(atoms, attempt, periodic)
        t1 = time.perf_counter()
        record = {
            "settings": attempt.as_dict(),
            **_scf_timing(log, t0, t1),
            "converged": error is None,
            "wall_time_s": t1 - t0,
        }
        if error is not None:
            record["error"] = str(error)
        attempts.append(record)
        if error is None:
            break
        if "not converged" not in str(error).lower():
            raise ValueError(f"tblite failed on {describe_structure(atoms, name)}: {error}")
    else:
        tried = "; ".join(
            f"attempt {k + 1}: {a['scf_cycles']} cycles, kT="
            f"{a['settings']['electronic_temperature_hartree']:g} Ha, mixer damping="
            f"{a['settings']['mixer_damping']:g}, max_iterations="
            f"{a['settings']['max_iterations']} ({a.get('error', '')})"
            for k, a in enumerate(attempts)
        )
        raise SCFConvergenceError(
            f"tblite {settings.method} SCF did not converge for "
            f"{describe_structure(atoms, name)}: {tried}. Try a higher "
            f"electronic_temperature_hartree, a smaller mixer_damping or more max_iterations.",
            structure=describe_structure(atoms, name),
            attempts=attempts,
        )

    overlap = np.asarray(res.get("overlap-matrix"))
    core = np.asarray(res.get("hamiltonian-matrix"))
    coefficients = np.asarray(res.get("orbital-coefficients"))
    energies = np.asarray(res.get("orbital-energies"))
    occupations = np.asarray(res.get("orbital-occupations"))
    if coefficients.ndim != 2 or energies.ndim != 1:
        raise ValueError(
            f"spin-polarised tblite output for {describe_structure(atoms, name)} is not supported"
        )
    sc = overlap @ coefficients
    hamiltonian = (sc * energies) @ sc.T
    hamiltonian = 0.5 * (hamiltonian + hamiltonian.T)
    return TBLiteResult(
        hamiltonian=hamiltonian,
        core_hamiltonian=core,
        overlap=overlap,
        orbital_energies=energies,
        occupations=occupations,
        shell_angular_momenta=np.asarray(calc.get("angular-momenta")),
        shell_atoms=np.asarray(calc.get("shell-map")),
        energy=float(res.get("energy")),
        scf_cycles=attempts[-1]["scf_cycles"],
        settings=plan[len(attempts) - 1],
        attempts=attempts,
        wall_time_s=time.perf_counter() - start,
    )


def _conversion(numbers: np.ndarray, result: TBLiteResult):
    """(hamjax Basis, permutation, signs) so that ``M_hj = sign sign^T * M_tb[p][:, p]``."""
    return tblite_conversion(
        numbers, result.shell_angular_momenta, result.shell_atoms, result.settings.method
    )


def tblite_reference(
    atoms,
    settings: TBLiteSettings | None = None,
    *,
    name: str | None = None,
    **overrides,
) -> BlockHamiltonian:
    """H and S of ``atoms`` from tblite as a block record in hamjax orbital order.

    Args:
        atoms: ``ase.Atoms`` (Angstrom); periodic directions from ``atoms.pbc``.
        settings: :class:`TBLiteSettings`; keyword ``overrides`` replace single fields,
            e.g. ``tblite_reference(atoms, electronic_temperature_hartree=0.02)``.
        name: label for error messages and metadata.

    Returns:
        :class:`~hamjax.blocks.BlockHamiltonian` in Hartree with the Fermi level (Hartree)
        and metadata: source, method, basis, units, tblite version, settings, SCF cycles,
        attempts, wall time, energy, HOMO/LUMO, ``gamma_folded``, the preloaded OpenBLAS (or None).

    Raises:
        SCFConvergenceError: see :func:`run_tblite`.
    """
    settings = settings or TBLiteSettings()
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(TBLiteSettings)}
        if unknown:
            raise ValueError(f"unknown tblite setting(s) {sorted(unknown)}")
        settings = dataclasses.replace(settings, **overrides)
    periodic = bool(np.any(atoms.pbc))
    images = periodic and settings.unfolds_images
    supercell = settings.scf_supercell != (1, 1, 1)
    if supercell and not images:
        raise ValueError("scf_supercell needs a periodic structure, GFN1-xTB and image_resolved")
    if supercell:
        result, supercell_checks = _supercell_scf(atoms, settings, name)
    else:
        result, supercell_checks = run_tblite(atoms, settings, name=name), None
    numbers = np.asarray(atoms.numbers, dtype=int)
    basis, perm, signs = _conversion(numbers, result)
    flip = signs[:, None] * signs[None, :]

    def convert(m):
        return flip * m[np.ix_(perm, perm)]

    hamiltonian = convert(
        result.core_hamiltonian if settings.hamiltonian == "core" else result.hamiltonian
    )
    overlap = convert(result.overlap)
    core = convert(result.core_hamiltonian)
    used = result.settings
    fermi = fermi_level_from_orbitals(
        result.orbital_energies, result.occupations, used.electronic_temperature_hartree
    )
    metadata = {
        "source": "tblite",
        "name": name,
        "method": settings.method,
        "basis": basis.name,
        "hamiltonian_kind": (
            "converged self-consistent Hamiltonian S C diag(e) C^T S"
            if settings.hamiltonian == "scf"
            else "core Hamiltonian H0"
        ),
        "units": {
            "hamiltonian": "Hartree",
            "overlap": "1",
            "positions": "Angstrom",
            "cell": "Angstrom",
            "energy": "Hartree",
            "fermi_level": "Hartree",
        },
        "code": "tblite",
        "code_version": tblite_version(),
        "settings": used.as_dict(),
        "requested_settings": settings.as_dict(),
        "electronic_temperature_hartree": used.electronic_temperature_hartree,
        "scf_cycles": result.scf_cycles,
        "setup_s": result.attempts[-1]["setup_s"],
        "scf_s": result.attempts[-1]["scf_s"],
        "post_scf_s": result.attempts[-1]["post_scf_s"],
        "attempts": result.attempts,
        "retried": len(result.attempts) > 1,
        "wall_time_s": result.wall_time_s,
        "total_energy_hartree": result.energy,
        "n_electrons": float(fermi["n_electrons"] / np.prod(settings.scf_supercell)),
        "homo_hartree": fermi["homo"],
        "lumo_hartree": fermi["lumo"],
        "gap_hartree": fermi["gap"],
        "fermi_level_method": fermi["method"],
        "gamma_folded": periodic and not images,
        "k_point": "gamma" if periodic else None,
        "openblas_preload": active_openblas(),
    }
    if images:
        if supercell_checks is not None:
            metadata["scf_supercell"] = list(settings.scf_supercell)
            metadata["total_energy_hartree"] = result.energy
        record = image_record(atoms, result, basis, perm, signs, fermi, used, settings, metadata)
        if supercell_checks is not None:
            record.metadata["image_checks"].update(supercell_checks)
            check_supercell_levels(record, result, settings.scf_supercell)
        return record
    return dense_to_record(
        atoms,
        basis,
        hamiltonian,
        overlap,
        pattern_from=(core,),
        threshold=settings.threshold,
        fermi_level=fermi["fermi_level"],
        metadata=metadata,
    )


def _supercell_scf(atoms, settings: TBLiteSettings, name):
    """The cell's Gamma matrices with the SCF potential of its ``scf_supercell``.

    The supercell's atoms are the cell's, copy after copy (``ase.Atoms.repeat``), and its
    orbitals follow them, so the potential of copy ``c`` is ``v[c * n:(c + 1) * n]``. The
    copies are equivalent by translation: their potentials agree to the SCF's convergence
    (the spread is recorded) and their mean is used. Returns a :class:`TBLiteResult` whose
    ``hamiltonian`` is ``H0 + S o (v_m + v_n) / 2`` of the cell at Gamma and whose levels and
    occupations are the supercell's, and the supercell checks.
    """
    reps = settings.scf_supercell
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if any(r > 1 and not p for r, p in zip(reps, pbc, strict=True)):
        raise ValueError(f"scf_supercell {reps} repeats a non-periodic axis (pbc {pbc.tolist()})")
    label = f"{name or atoms.get_chemical_formula()} x{reps[0]}x{reps[1]}x{reps[2]}"
    big = run_tblite(atoms.repeat(reps), settings, name=label)
    overlap, core, _, shell_l, shell_atoms = tblite_integrals(
        atoms.numbers,
        atoms.positions,
        settings.method,
        big.settings.accuracy,
        cell=atoms.cell.array,
        pbc=atoms.pbc,
    )
    n, copies = core.shape[0], int(np.prod(reps))
    v = np.diag(big.hamiltonian - big.core_hamiltonian) / np.diag(big.overlap)
    v = v.reshape(copies, n)
    spread = float(np.abs(v - v.mean(axis=0)).max())
    v = v.mean(axis=0)
    result = dataclasses.replace(
        big,
        hamiltonian=core + 0.5 * overlap * (v[:, None] + v[None, :]),
        core_hamiltonian=core,
        overlap=overlap,
        shell_angular_momenta=shell_l,
        shell_atoms=shell_atoms,
        energy=big.energy / copies,
    )
    return result, {"supercell_potential_spread_hartree": spread}
