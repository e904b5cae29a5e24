"""Amorphous HfO2 slabs: random packing, then a short melt-quench with a rigid-ion pair potential.

Why a classical pair potential: no potential covering Hf and O ships with ase (EMT knows
neither), tblite offers GFN1/GFN2-xTB but no GFN-FF, and a tight-binding melt-quench of
thousands of atoms is hours on a laptop CPU. A rigid-ion Born-Mayer-Huggins (Buckingham)
model with formal charges is the classic description of fluorite-structured oxides and is
enough to turn a random packing into a chemically ordered glass (each Hf surrounded by O
at ~2.1 Angstrom, O-O >= ~2.5 Angstrom, 6-8-fold Hf coordination as in a-HfO2).

Potential (energies in eV, distances in Angstrom), summed over pairs::

    V(r) = A exp(-r / rho) - C / r^6 + q_i q_j k_e V_DSF(r)

* Short range: Lewis and Catlow, J. Phys. C 18, 1149 (1985), fitted for cubic ZrO2:
  O-O A = 22764.0 eV, rho = 0.149 A, C = 27.88 eV A^6; Zr-O A = 985.869 eV, rho = 0.376 A,
  C = 0. Hf4+ and Zr4+ have almost the same ionic radius (0.83 vs 0.84 A, lanthanide
  contraction) and HfO2/ZrO2 share their polymorphs and lattice constants within 1%, so the
  Zr-O term is used for Hf-O, a common transfer for hafnia. Hf-Hf: Coulomb only.
* Charges: formal, Hf +4 e, O -2 e.
* Hard core (added here, not part of the published model): k (r0 - r)^2 for r < r0 with
  k = 20 eV/A^2, r0 = 1.85 A (Hf-O) and 2.25 A (O-O). With formal charges, an O bound to a
  single Hf (common at the slab faces) is pulled to ~1.6 A, shorter than any Hf-O bond in
  hafnia (2.0-2.3 A in the crystals, ~1.75 A for a terminal Hf=O); the core stops that and
  the O-O contacts below ~2.2 A that a picosecond quench leaves. Crystalline distances
  (Hf-O >= 2.0 A, O-O >= 2.5 A) are beyond r0, so bulk fluorite is unchanged.
* Coulomb: damped shifted force (DSF) of Fennell and Gezelter, J. Chem. Phys. 124, 234104
  (2006), damping alpha = 0.4 / A, cutoff 6 A: pairwise, linear in N, smooth at the cutoff,
  and it works in slabs (periodic in y, z only) where Ewald sums would need corrections.
  With these settings the model's cubic HfO2 has its energy minimum at a = 5.08 A, the same
  as with a long cutoff (12 A, alpha = 0.2) and as the experimental fluorite lattice constant
  (tested); shorter-ranged settings such as 6 A with alpha = 0.25 shrink it to 4.88 A.
* The slab is confined to 0 <= x <= width by harmonic walls (the electrodes that sandwich it
  in the device are not part of this model) and is periodic along y and z. Hf sees walls
  0.5 A further in, so both faces are O-terminated.

Protocol (NVT, velocity Verlet, 1 fs, Berendsen thermostat): a random packing at the target
density (uniform positions, overlaps pushed apart by soft spheres), FIRE relaxation,
``melt_steps`` at ``melt_temperature_k``, a linear quench to 300 K over ``quench_steps``, and
a final FIRE relaxation. A real melt-quench takes nanoseconds; this one takes about a
picosecond, so it yields a locally relaxed, chemically ordered random network, not an
equilibrated glass. That is what a training structure needs: sensible bond lengths and
coordination, no overlaps, disorder. Measured on 9.7 g/cm^3 slabs: Hf-O bonds peak at
2.02 A and each Hf has ~5.9 O within 2.6 A in the slab interior (longer or cooler anneals
and an 8 A cutoff change this by < 0.1); ab initio a-HfO2 has 2.05-2.1 A and 6-7. Over 45
seeds of 60-600-atom devices no Hf-O pair was closer than 1.72 A and no O-O pair than
2.15 A.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import vesin
from ase.data import atomic_masses
from scipy.special import erfc

from hamjax.constants import ACCELERATION_ANGSTROM_FS2, BOLTZMANN_EV_K, COULOMB_EV_ANGSTROM

__all__ = ["HFO2_PAIR_POTENTIAL", "AmorphousSettings", "amorphous_hfo2_slab", "pair_forces"]

# Species index: 0 = Hf, 1 = O.
_MASS_AMU = atomic_masses[[72, 8]]  # standard atomic weights
_CHARGE_E = np.array([4.0, -2.0])

HFO2_PAIR_POTENTIAL = {
    # (A eV, rho Angstrom, C eV Angstrom^6), Lewis & Catlow (1985); Zr-O transferred to Hf-O.
    ("Hf", "Hf"): (0.0, 1.0, 0.0),
    ("Hf", "O"): (985.869, 0.376, 0.0),
    ("O", "O"): (22764.0, 0.149, 27.88),
}
"""Buckingham parameters (A in eV, rho in Angstrom, C in eV Angstrom^6) per species pair."""

_A = np.array([[0.0, 985.869], [985.869, 22764.0]])
_RHO = np.array([[1.0, 0.376], [0.376, 0.149]])
_C6 = np.array([[0.0, 0.0], [0.0, 27.88]])
# Hard-core correction k (r0 - r)^2 for r < r0 (added to the published model, see docstring).
_CORE_R0 = np.array([[0.0, 1.85], [1.85, 2.25]])  # Angstrom
_CORE_K = 20.0  # eV / Angstrom^2


class AmorphousSettings:
    """Melt-quench settings (plain values; the device spec carries them).

    Args:
        melt_steps: MD steps (1 fs) at ``melt_temperature_k``.
        quench_steps: MD steps (1 fs) of the linear quench to 300 K.
        relax_steps: FIRE steps before and after the MD.
        melt_temperature_k: melt temperature in kelvin.
        cutoff_angstrom: pair cutoff (Buckingham and DSF Coulomb).
        dsf_alpha: DSF damping in 1 / Angstrom.
        cation_margin_angstrom: Hf is kept this much further from the walls than O, so both
            faces of the slab are O-terminated (as assumed for TiN/HfO2 and Ti/HfO2 contacts)
            and Hf stays >= gap + margin from the electrode planes.
    """

    def __init__(
        self,
        melt_steps: int = 250,
        quench_steps: int = 250,
        relax_steps: int = 100,
        melt_temperature_k: float = 4000.0,
        cutoff_angstrom: float = 6.0,
        dsf_alpha: float = 0.4,
        cation_margin_angstrom: float = 0.5,
    ):
        self.melt_steps = int(melt_steps)
        self.quench_steps = int(quench_steps)
        self.relax_steps = int(relax_steps)
        self.melt_temperature_k = float(melt_temperature_k)
        self.cutoff_angstrom = float(cutoff_angstrom)
        self.dsf_alpha = float(dsf_alpha)
        self.cation_margin_angstrom = float(cation_margin_angstrom)


def _pair_terms(r, si, sj, cutoff_angstrom, dsf_alpha):
    """Pair energy V(r) (eV) and dV/dr (eV / Angstrom) for species pairs (si, sj)."""
    a, rho, c6 = _A[si, sj], _RHO[si, sj], _C6[si, sj]
    qq = COULOMB_EV_ANGSTROM * _CHARGE_E[si] * _CHARGE_E[sj]
    rep = a * np.exp(-r / rho)
    energy = rep - c6 / r**6
    slope = -rep / rho + 6.0 * c6 / r**7
    core = np.maximum(_CORE_R0[si, sj] - r, 0.0)
    energy = energy + _CORE_K * core**2
    slope = slope - 2.0 * _CORE_K * core
    rc, al = cutoff_angstrom, dsf_alpha
    erfc_rc = erfc(al * rc)
    shift_f = erfc_rc / rc**2 + 2.0 * al / np.sqrt(np.pi) * np.exp(-((al * rc) ** 2)) / rc
    erfc_r = erfc(al * r)
    energy = energy + qq * (erfc_r / r - erfc_rc / rc + shift_f * (r - rc))
    slope = slope - qq * (
        erfc_r / r**2 + 2.0 * al / np.sqrt(np.pi) * np.exp(-((al * r) ** 2)) / r - shift_f
    )
    return energy, slope


def pair_forces(
    positions: np.ndarray,
    species: np.ndarray,
    box: np.ndarray,
    *,
    cutoff_angstrom: float = 6.0,
    dsf_alpha: float = 0.4,
    periodic=(False, True, True),
) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV / Angstrom) of the rigid-ion HfO2 model, evaluated exactly.

    This is the reference the tabulated MD kernel is tested against.

    Args:
        positions: [n, 3] Angstrom.
        species: [n] int, 0 = Hf, 1 = O.
        box: [3, 3] cell (rows are vectors), Angstrom. Non-periodic axes need any length.
        cutoff_angstrom: pair cutoff.
        dsf_alpha: DSF damping parameter in 1 / Angstrom.
        periodic: periodicity per axis.

    Returns:
        (energy, forces [n, 3]).
    """
    n = len(positions)
    nl = vesin.NeighborList(cutoff=cutoff_angstrom, full_list=False)
    i, j, vec = nl.compute(points=positions, box=box, periodic=list(periodic), quantities="ijD")
    r = np.sqrt(np.einsum("pk,pk->p", vec, vec))  # [n_pair]
    energy, slope = _pair_terms(r, species[i], species[j], cutoff_angstrom, dsf_alpha)
    return float(np.sum(energy)), _scatter(i, j, (slope / r)[:, None] * vec, n)


def _incidence(i, j, n):
    """Sparse [n, n_pair] matrix with +1 at (i_p, p) and -1 at (j_p, p)."""
    n_pair = len(i)
    cols = np.concatenate([np.arange(n_pair), np.arange(n_pair)])
    data = np.concatenate([np.ones(n_pair), -np.ones(n_pair)])
    return scipy.sparse.csr_matrix((data, (np.concatenate([i, j]), cols)), shape=(n, n_pair))


def _scatter(i, j, fvec, n):
    """Per-atom sums of pair vectors: +fvec on i, -fvec on j."""
    return _incidence(i, j, n) @ fvec


class _ForceField:
    """Tabulated pair forces on a Verlet list (rebuilt when an atom moved by half the skin)."""

    def __init__(self, species, box, settings, periodic=(False, True, True), skin=1.0):
        self.species = species
        self.box = box
        self.periodic = list(periodic)
        self.rc = settings.cutoff_angstrom
        self.skin = skin
        self.dr = 0.002
        grid = np.arange(0.0, self.rc + 4 * self.dr, self.dr)
        grid[0] = self.dr  # avoid r = 0; nothing is ever that close
        table = np.zeros((2, 2, len(grid)))
        for a in range(2):
            for b in range(2):
                _, slope = _pair_terms(grid, a, b, self.rc, settings.dsf_alpha)
                table[a, b] = np.where(grid <= self.rc, slope / grid, 0.0)
        self.table = table.reshape(4, -1)
        self.nl = vesin.NeighborList(cutoff=self.rc + skin, full_list=False)
        self.ref = None

    def _rebuild(self, positions):
        i, j, shifts = self.nl.compute(
            points=positions, box=self.box, periodic=self.periodic, quantities="ijS"
        )
        self.i, self.j = i, j
        self.offset = shifts @ self.box  # [n_pair, 3]
        self.kind = 2 * self.species[i] + self.species[j]
        self.incidence = _incidence(i, j, len(positions))
        self.ref = positions.copy()

    def __call__(self, positions):
        if self.ref is None or np.max(np.abs(positions - self.ref)) > 0.5 * self.skin / np.sqrt(3):
            self._rebuild(positions)
        vec = positions[self.j] - positions[self.i] + self.offset  # [n_pair, 3]
        r = np.sqrt(np.einsum("pk,pk->p", vec, vec))
        x = np.minimum(r, self.rc + self.dr) / self.dr
        idx = x.astype(np.int64)
        w = x - idx
        flat = self.kind * self.table.shape[1] + idx
        t = self.table.ravel()
        coef = t[flat] * (1.0 - w) + t[flat + 1] * w  # dV/dr / r
        return self.incidence @ (coef[:, None] * vec)


def _wall(positions: np.ndarray, bounds, k: float = 100.0) -> tuple[float, np.ndarray]:
    """Harmonic walls: per-atom allowed range bounds = (lo [n], hi [n]) along x, Angstrom."""
    lo, hi = bounds
    x = positions[:, 0]
    low = np.minimum(x - lo, 0.0)
    high = np.maximum(x - hi, 0.0)
    forces = np.zeros_like(positions)
    forces[:, 0] = -k * low - k * high
    return 0.5 * k * float(np.sum(low**2 + high**2)), forces


def _random_packing(
    n_hf: int, width: float, ly: float, lz: float, rng: np.random.Generator, iterations: int = 300
) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random Hf and O (1:2), then overlaps pushed apart with soft spheres.

    The push-off minimises sum over pairs closer than d0 of (d0 - r)^2, with d0 = 2.9 (Hf-Hf),
    1.8 (Hf-O) and 2.3 (O-O) Angstrom, by clipped steepest descent; it removes the close
    contacts that would make the ionic model explode, at linear cost. The result is a random
    packing at the target density, not yet chemically ordered.
    """
    n_o = 2 * n_hf
    species = np.concatenate([np.zeros(n_hf, np.int64), np.ones(n_o, np.int64)])
    contact = np.array([[2.9, 1.8], [1.8, 2.3]])  # Angstrom
    lengths = np.array([width, ly, lz])
    positions = rng.random((len(species), 3)) * lengths
    box = np.diag([width + 10.0, ly, lz])
    nl = vesin.NeighborList(cutoff=float(contact.max()), full_list=False)
    n = len(species)
    for _ in range(iterations):
        i, j, vec = nl.compute(
            points=positions, box=box, periodic=[False, True, True], quantities="ijD"
        )
        r = np.sqrt(np.einsum("pk,pk->p", vec, vec))
        overlap = contact[species[i], species[j]] - r
        close = overlap > 0.02
        if not np.any(close):
            break
        i, j, vec, r, overlap = i[close], j[close], vec[close], r[close], overlap[close]
        push = (0.5 * overlap / np.maximum(r, 1e-6))[:, None] * vec  # moves j away from i
        step = _scatter(i, j, -push, n)
        positions = positions + np.clip(step, -0.3, 0.3)
        positions[:, 0] = np.clip(positions[:, 0], 0.0, width)
    return positions, species


def _fire(positions, species, force_field, bounds, steps, max_step=0.2):
    """FIRE minimisation (Bitzek et al., PRL 97, 170201 (2006)) in fs / amu units."""
    dt, dt_max, alpha, n_pos = 0.5, 2.0, 0.1, 0
    vel = np.zeros_like(positions)
    masses = _MASS_AMU[species][:, None]
    for _ in range(steps):
        f = force_field(positions) + _wall(positions, bounds)[1]
        power = float(np.sum(f * vel))
        if power > 0:
            fnorm = np.linalg.norm(f) + 1e-30
            vel = (1 - alpha) * vel + alpha * f / fnorm * np.linalg.norm(vel)
            n_pos += 1
            if n_pos > 5:
                dt = min(dt * 1.1, dt_max)
                alpha *= 0.99
        else:
            vel[:] = 0.0
            dt *= 0.5
            alpha, n_pos = 0.1, 0
        vel = vel + dt * ACCELERATION_ANGSTROM_FS2 * f / masses
        step = dt * vel
        norms = np.linalg.norm(step, axis=1, keepdims=True)
        step = np.where(norms > max_step, step * max_step / np.maximum(norms, 1e-30), step)
        positions = positions + step
    return positions


def _md(positions, species, force_field, bounds, settings, rng):
    """Velocity Verlet (1 fs) with a Berendsen thermostat (tau 20 fs): melt, then quench."""
    n = len(positions)
    masses = _MASS_AMU[species][:, None]
    t_melt = settings.melt_temperature_k
    schedule = np.concatenate(
        [np.full(settings.melt_steps, t_melt), np.linspace(t_melt, 300.0, settings.quench_steps)]
    )
    if len(schedule) == 0:
        return positions
    dt, tau = 1.0, 20.0
    vel = rng.normal(size=(n, 3)) * np.sqrt(
        BOLTZMANN_EV_K * t_melt / masses * ACCELERATION_ANGSTROM_FS2
    )

    def forces(p):
        return force_field(p) + _wall(p, bounds)[1]

    f = forces(positions)
    for target in schedule:
        vel = vel + 0.5 * dt * ACCELERATION_ANGSTROM_FS2 * f / masses
        positions = positions + dt * vel
        f = forces(positions)
        vel = vel + 0.5 * dt * ACCELERATION_ANGSTROM_FS2 * f / masses
        kinetic = 0.5 * float(np.sum(masses * vel**2)) / ACCELERATION_ANGSTROM_FS2  # eV
        temp = 2.0 * kinetic / (3.0 * n * BOLTZMANN_EV_K)
        vel *= np.sqrt(max(1.0 + dt / tau * (target / max(temp, 1e-6) - 1.0), 0.0))
    return positions


def amorphous_hfo2_slab(
    n_hf: int,
    width_angstrom: float,
    ly_angstrom: float,
    lz_angstrom: float,
    rng: np.random.Generator,
    settings: AmorphousSettings | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Amorphous HfO2 slab of ``n_hf`` formula units, periodic along y and z.

    Args:
        n_hf: number of Hf atoms (O atoms: 2 n_hf).
        width_angstrom: the atoms end up with 0 <= x <= width, up to the small overshoot
            that the stiff harmonic walls (100 eV/A^2) allow (Hf at least
            ``settings.cation_margin_angstrom`` further inside).
        ly_angstrom, lz_angstrom: transverse periodic lengths.
        rng: random generator (the only source of randomness).
        settings: melt-quench settings; None gives the defaults of ``AmorphousSettings``.

    Returns:
        (positions [3 n_hf, 3] Angstrom, symbols) with the Hf atoms first, then O.
    """
    settings = settings or AmorphousSettings()
    positions, species = _random_packing(n_hf, width_angstrom, ly_angstrom, lz_angstrom, rng)
    box = np.diag([width_angstrom + settings.cutoff_angstrom + 10.0, ly_angstrom, lz_angstrom])
    force_field = _ForceField(species, box, settings)
    margin = min(settings.cation_margin_angstrom, width_angstrom / 4.0)
    lo = np.where(species == 0, margin, 0.0)
    bounds = (lo, width_angstrom - lo)
    positions = _fire(positions, species, force_field, bounds, settings.relax_steps)
    positions = _md(positions, species, force_field, bounds, settings, rng)
    positions = _fire(positions, species, force_field, bounds, settings.relax_steps)
    positions[:, 1] %= ly_angstrom
    positions[:, 2] %= lz_angstrom
    return positions, ["Hf"] * n_hf + ["O"] * (2 * n_hf)
