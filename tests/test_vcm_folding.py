"""The image-count split of experiments/vcm_folding.py against a hand-folded two-atom chain."""

import numpy as np
import pytest

from hamjax.basis import Basis
from hamjax.blocks import BlockHamiltonian
from hamjax.constants import HARTREE_EV
from hamjax.vcm import fold_prediction

BASIS = Basis.from_dict("one-s", {"H": (0,)})


def _chain(pairs, shifts, h):
    """Two one-orbital atoms 1 A apart in a cell 2 A long, periodic along x (H in Hartree)."""
    return BlockHamiltonian(
        numbers=np.array([1, 1]),
        positions=np.array([[0.5, 0.0, 0.0], [1.5, 0.0, 0.0]]),
        cell=np.diag([2.0, 10.0, 10.0]),
        pbc=np.array([True, False, False]),
        basis=BASIS,
        pairs=np.array(pairs),
        shifts=np.array(shifts),
        hamiltonian=np.array(h, float),
        overlap=np.array(
            [
                1.0 if i == j and s == (0, 0, 0) else 0.0
                for (i, j), s in zip(pairs, shifts, strict=True)
            ]
        ),
        fermi_level=0.0,
    )


def test_images_are_counted_and_errors_split_by_their_number(experiment):
    folding = experiment("vcm_folding")
    # prediction: atom 0 with two self-images, atom 1 alone, the bond with one image each way
    predicted = _chain(
        [(0, 0), (0, 0), (0, 0), (1, 1), (0, 1), (0, 1), (1, 0), (1, 0)],
        [(0, 0, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 0), (0, 0, 0), (-1, 0, 0), (0, 0, 0), (1, 0, 0)],
        [0.10, 0.01, 0.01, 0.20, 0.30, 0.30, 0.30, 0.30],
    )
    # the Gamma reference: one block per pair
    reference = _chain(
        [(0, 0), (1, 1), (0, 1), (1, 0)],
        [(0, 0, 0)] * 4,
        [0.10, 0.25, 0.50, 0.50],
    )
    folded, on_pairs = fold_prediction(predicted, reference)
    images = folding.images_per_block(predicted, folded)
    expected_images = {(0, 0): 3, (1, 1): 1, (0, 1): 2, (1, 0): 2}
    assert [expected_images[tuple(p)] for p in folded.pairs] == images.tolist()

    rows = {(r["part"], r["images"]): r for r in folding.by_image_count(folded, on_pairs, images)}
    assert set(rows) == {("node", 1), ("node", 3), ("edge", 2)}
    mev = HARTREE_EV * 1e3
    # folded prediction 0.12, 0.20, 0.60, 0.60 against 0.10, 0.25, 0.50, 0.50
    assert rows["node", 3]["mae_meV"] == pytest.approx(0.02 * mev)
    assert rows["node", 1]["mae_meV"] == pytest.approx(0.05 * mev)
    assert rows["edge", 2]["mae_meV"] == pytest.approx(0.10 * mev)
    assert rows["edge", 2]["blocks"] == 2 and rows["edge", 2]["entries"] == 2
    assert rows["node", 1]["mean_abs_ref_meV"] == pytest.approx(0.25 * mev)


def test_lead_overlap_and_channels_per_k_of_a_cubic_lattice(experiment):
    # A cubic lattice, one site across, periodic in y and z: at transverse k its lead is a
    # chain with on-site eps(k) = 2 t (cos 2 pi k_y + cos 2 pi k_z) (t = -1 eV hopping) and
    # overlap s to the next site along x, so its Bloch overlap 1 + 2 s cos(theta) has the
    # smallest eigenvalue 1 - 2|s|, and at E = 0 the chain conducts where |eps(k)| < 2.
    from types import SimpleNamespace

    kpoints = experiment("vcm_kpoints")
    n, s = 4, 0.1
    shifts = [(0, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
    hamiltonians = np.zeros((5, n, n))
    overlaps = np.zeros((5, n, n))
    chain = np.eye(n, k=1) + np.eye(n, k=-1)
    hamiltonians[0] = -chain
    overlaps[0] = np.eye(n) + s * chain
    for r in range(1, 5):
        hamiltonians[r] = -np.eye(n)
    images = SimpleNamespace(
        hamiltonians=hamiltonians, overlaps=overlaps, shifts=np.array(shifts), layers=(1,) * n
    )
    rows = kpoints.lead_channels_per_k(images, (1, 4, 4), 0.0)
    assert sum(r["weight"] for r in rows) == pytest.approx(1.0)
    for row in rows:
        assert row["lead_overlap_min_eigenvalue"] == pytest.approx(1 - 2 * s, abs=1e-3)
        eps = -2 * (np.cos(2 * np.pi * row["k"][1]) + np.cos(2 * np.pi * row["k"][2]))
        # E - eps(k) S(theta) = -2 cos(theta) (1 hopping) on a chain with overlap: the band
        # E(theta) = (eps - 2 cos theta) / (1 + 2 s cos theta) reaches E = 0 where |eps| < 2
        expected = 1.0 if abs(eps) < 2 else 0.0
        assert row["left"] == expected and row["right"] == expected
