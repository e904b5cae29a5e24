"""Molecular Hamiltonian datasets: thermal geometries by Langevin MD, DFT labels per frame.

The MD17-style protocol for Hamiltonian models (water, ethanol, ...): geometries sampled from
a thermal ensemble, each labelled with the converged Kohn-Sham matrix and overlap of
PBE/def2-SVP. Here the ensemble comes from Langevin molecular dynamics at 500 K on a cheap
potential-energy surface (GFN2-xTB through tblite's ASE calculator), and the labels from
PySCF through :func:`hamjax.reference.compute_reference` (engine ``"pyscf"``), one dataset
file (:mod:`hamjax.io.dataset`) per frame.

Sampling: random Maxwell-Boltzmann velocities, an equilibration run, then one frame every
``interval_fs`` (several O-H vibration periods, so that frames decorrelate). Everything is
reproducible from ``seed``: velocities and Langevin noise come from one numpy generator and
the xTB forces are deterministic up to the round-off of threaded sums. The thermostat runs
without ASE's ``fixcm`` option: its centre-of-mass correction of the noise is not
mass-consistent and heats molecules with unequal masses (water at a 500 K bath: ~1,300 K
kinetic, 2.5x too wide O-H distribution); instead each saved frame is shifted so its centre
of mass is at the origin.

Cost: tblite's OpenMP threads spin while they wait, so on a shared, oversubscribed machine
run with ``OMP_NUM_THREADS=1`` (a 3-atom water force call then takes ~10 ms instead of
seconds).

Labelling is resumable: a frame whose file already exists, loads, holds an overlap and has
the frame's atoms and positions is skipped; files are written atomically, so a killed run
leaves only complete files.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MOLECULES",
    "SamplingSettings",
    "frame_file_is_valid",
    "label_frames",
    "make_molecule",
    "read_frames",
    "split_indices",
    "thermal_frames",
    "write_frames",
]

#: Short names accepted by :func:`make_molecule`, mapped to ``ase.build.molecule`` names.
MOLECULES = {
    "water": "H2O",
    "ethanol": "CH3CH2OH",
    "malondialdehyde": None,
    "uracil": None,
}


def make_molecule(name: str):
    """An equilibrium-like starting geometry (``ase.Atoms``, Angstrom) for ``name``.

    Args:
        name: "water", "ethanol", or any name of ``ase.build.molecule`` (e.g. "H2O").

    Raises:
        ValueError: unknown molecule name.
    """
    from ase.build import molecule
    from ase.collections import g2

    key = MOLECULES.get(name.lower(), name) if name.lower() in MOLECULES else name
    if key is None or key not in g2.names:
        known = sorted(k for k, v in MOLECULES.items() if v is not None)
        raise ValueError(
            f"unknown molecule {name!r}; use one of {known} or a name of ase.build.molecule"
        )
    atoms = molecule(key)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    return atoms


@dataclass(frozen=True)
class SamplingSettings:
    """Langevin molecular dynamics on an xTB surface (JSON-serialisable).

    Attributes:
        temperature_k: bath temperature (kelvin); MD17 practice is 500 K.
        timestep_fs: integration step (femtoseconds).
        friction_per_fs: Langevin friction coefficient (1/femtosecond).
        equilibration_fs: discarded run before the first frame (femtoseconds).
        interval_fs: time between saved frames (femtoseconds).
        method: tblite method for the forces ("GFN2-xTB" or "GFN1-xTB").
        seed: seed of the velocity and noise generator.
    """

    temperature_k: float = 500.0
    timestep_fs: float = 0.5
    friction_per_fs: float = 0.01
    equilibration_fs: float = 1000.0
    interval_fs: float = 20.0
    method: str = "GFN2-xTB"
    seed: int = 0

    def __post_init__(self):
        for name in ("temperature_k", "timestep_fs", "friction_per_fs", "interval_fs"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.equilibration_fs < 0:
            raise ValueError(f"equilibration_fs must be >= 0, got {self.equilibration_fs}")
        if self.method not in ("GFN2-xTB", "GFN1-xTB"):
            raise ValueError(f"method must be 'GFN2-xTB' or 'GFN1-xTB', got {self.method!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc)


def thermal_frames(
    atoms,
    n_frames: int,
    settings: SamplingSettings | None = None,
    *,
    progress: bool = False,
) -> list:
    """Thermal geometries of a molecule from Langevin MD on an xTB surface.

    Args:
        atoms: starting ``ase.Atoms`` (finite, Angstrom); not modified.
        n_frames: number of frames to return.
        settings: :class:`SamplingSettings`.
        progress: show a tqdm bar.

    Returns:
        ``n_frames`` copies of ``atoms`` (no calculator) with positions in Angstrom; each
        holds ``info["time_fs"]`` (time since the end of equilibration, femtoseconds),
        ``info["potential_energy_ev"]`` (xTB, eV) and ``info["temperature_k"]``
        (instantaneous kinetic temperature, kelvin).
    """
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary

    try:  # ASE >= 3.29; MaxwellBoltzmannDistribution calls it and is deprecated there
        from ase.md.velocitydistribution import thermalize_momenta
    except ImportError:
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as _mb

        def thermalize_momenta(atoms, temperature_K, *, rng):
            _mb(atoms, temperature_K=temperature_K, rng=rng)

    from tblite.ase import TBLite

    settings = settings or SamplingSettings()
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    if np.any(atoms.pbc):
        raise ValueError("thermal_frames samples finite molecules; got a periodic structure")
    work = atoms.copy()
    work.calc = TBLite(method=settings.method, verbosity=0)
    rng = np.random.default_rng(settings.seed)
    thermalize_momenta(work, settings.temperature_k, rng=rng)
    Stationary(work)
    dyn = Langevin(
        work,
        timestep=settings.timestep_fs * units.fs,
        temperature_K=settings.temperature_k,
        friction=settings.friction_per_fs / units.fs,
        fixcm=False,
        rng=rng,
    )
    n_equil = int(round(settings.equilibration_fs / settings.timestep_fs))
    n_every = max(1, int(round(settings.interval_fs / settings.timestep_fs)))
    if n_equil:
        dyn.run(n_equil)
    frames = []
    for k in _progress(range(n_frames), n_frames, "MD frames", progress):
        dyn.run(n_every)
        frame = work.copy()
        frame.calc = None
        frame.positions -= frame.get_center_of_mass()
        frame.info = {
            "frame": k,
            "time_fs": (k + 1) * n_every * settings.timestep_fs,
            "potential_energy_ev": float(work.get_potential_energy()),
            "temperature_k": float(work.get_temperature()),
        }
        frames.append(frame)
    return frames


def write_frames(frames, path: str | os.PathLike) -> Path:
    """Write frames to an extended-XYZ file (atomically: temporary file, then rename)."""
    from ase.io import write

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp, frames, format="extxyz")
    os.replace(tmp, path)
    return path


def read_frames(path: str | os.PathLike) -> list:
    """Read all frames of an extended-XYZ file written by :func:`write_frames`."""
    from ase.io import read

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such frame file")
    frames = read(path, index=":", format="extxyz")
    for frame in frames:
        frame.calc = None
    return frames


def split_indices(n_frames: int, sizes: dict[str, int | None], seed: int = 0) -> dict:
    """Random disjoint splits of ``range(n_frames)``, MD17 style.

    Args:
        n_frames: number of frames.
        sizes: split name -> size, in order; one size may be ``None`` ("the rest").
        seed: permutation seed.

    Returns:
        split name -> sorted int array of frame indices.

    Raises:
        ValueError: the sizes exceed ``n_frames`` or more than one size is ``None``.
    """
    rest = [k for k, v in sizes.items() if v is None]
    if len(rest) > 1:
        raise ValueError(f"only one split may take the rest, got {rest}")
    fixed = sum(v for v in sizes.values() if v is not None)
    if fixed > n_frames or any(v is not None and v < 0 for v in sizes.values()):
        raise ValueError(f"split sizes {sizes} do not fit {n_frames} frames")
    order = np.random.default_rng(seed).permutation(n_frames)
    out, start = {}, 0
    for name, size in sizes.items():
        stop = n_frames if size is None else start + size
        out[name] = np.sort(order[start:stop])
        start = stop
    return out


def frame_file_is_valid(path: str | os.PathLike, atoms=None, atol: float = 1e-8) -> bool:
    """Whether ``path`` is a complete dataset file with H and S (of ``atoms``, if given)."""
    from hamjax.io.dataset import load

    path = Path(path)
    if not path.exists():
        return False
    try:
        record = load(path)
    except (OSError, ValueError, KeyError):
        return False
    if record.overlap is None or not np.all(np.isfinite(record.hamiltonian)):
        return False
    if atoms is None:
        return True
    return bool(
        np.array_equal(record.numbers, atoms.numbers)
        and np.allclose(record.positions, atoms.positions, rtol=0.0, atol=atol)
    )


def label_frames(
    frames,
    paths,
    *,
    engine: str = "pyscf",
    settings: dict | None = None,
    progress: bool = True,
    metadata: dict | None = None,
) -> dict:
    """Label frames with reference H and S and save one dataset file per frame (resumable).

    Args:
        frames: ``ase.Atoms`` frames (Angstrom).
        paths: one target ``.npz`` per frame.
        engine: reference engine of :func:`hamjax.reference.compute_reference`.
        settings: engine settings (for PySCF: xc, basis, grid_level, conv_tol, ...).
        progress: show a tqdm bar.
        metadata: extra metadata merged into each record (e.g. MD settings, split).

    Returns:
        ``{"written": n, "skipped": n, "wall_time_s": total, "seconds_per_frame": mean over
        written frames (NaN if none)}``.
    """
    from hamjax.io.dataset import save
    from hamjax.reference import compute_reference

    paths = [Path(p) for p in paths]
    if len(paths) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(paths)} target paths")
    settings = dict(settings or {})
    written, skipped, spent = 0, 0, 0.0
    for frame, path in _progress(zip(frames, paths, strict=True), len(paths), "labels", progress):
        if frame_file_is_valid(path, frame):
            skipped += 1
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        record = compute_reference(frame, engine=engine, name=path.stem, **settings)
        spent += time.perf_counter() - start
        extra = {k: v for k, v in frame.info.items() if isinstance(v, (int, float, str))}
        record = record.replace(metadata={**record.metadata, **(metadata or {}), "frame": extra})
        save(record, path)
        written += 1
    return {
        "written": written,
        "skipped": skipped,
        "wall_time_s": spent,
        "seconds_per_frame": spent / written if written else float("nan"),
    }
