"""Orbital conventions of tblite, PySCF and CP2K proven by rotating real output."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from hamjax.basis import (
    DEF2_SVP,
    GFN1_XTB,
    SZV_MOLOPT_SR_GTH,
    Basis,
    basis_rotation_blocks,
    cp2k_basis,
    from_hamjax_order,
    gfn1_xtb_basis,
    orbital_permutation,
    orbital_rotation,
    pyscf_basis,
    tblite_basis,
    to_hamjax_order,
    wigner_matrix,
)
from hamjax.constants import BOHR_ANGSTROM

REFLECT_X = np.diag([-1.0, 1.0, 1.0])


def _real_harmonics(l, r):
    """Standard real (tesseral) harmonics up to a common factor, hamjax order, written out."""
    x, y, z = r[:, 0], r[:, 1], r[:, 2]
    if l == 1:
        return np.stack([y, z, x], axis=1)
    if l == 2:
        s3 = np.sqrt(3.0)
        return np.stack(
            [s3 * x * y, s3 * y * z, z**2 - (x**2 + y**2) / 2, s3 * x * z, s3 / 2 * (x**2 - y**2)],
            axis=1,
        )
    raise NotImplementedError


@pytest.mark.parametrize("l", [1, 2])
@pytest.mark.parametrize("improper", [False, True])
def test_wigner_matrix_rotates_the_written_out_harmonics(l, improper):
    rng = np.random.default_rng(l)
    R = Rotation.random(random_state=7).as_matrix() @ (REFLECT_X if improper else np.eye(3))
    r = rng.normal(size=(20, 3))
    D = wigner_matrix(l, R)
    np.testing.assert_allclose(_real_harmonics(l, r @ R.T), _real_harmonics(l, r) @ D.T, atol=1e-12)


@pytest.mark.parametrize("l", [0, 1, 2, 3, 4])
def test_wigner_matrix_is_an_orthogonal_representation_of_o3(l):
    r1 = Rotation.random(random_state=1).as_matrix()
    r2 = Rotation.random(random_state=2).as_matrix() @ REFLECT_X
    d1, d2 = wigner_matrix(l, r1), wigner_matrix(l, r2)
    np.testing.assert_allclose(wigner_matrix(l, r1 @ r2), d1 @ d2, atol=1e-12)
    np.testing.assert_allclose(d2 @ d2.T, np.eye(2 * l + 1), atol=1e-12)
    np.testing.assert_allclose(wigner_matrix(l, -np.eye(3)), (-1) ** l * np.eye(2 * l + 1))


def test_orbital_rotation_is_block_diagonal_per_atom_and_shell():
    basis = SZV_MOLOPT_SR_GTH
    numbers = [72, 8, 1]
    R = Rotation.random(random_state=3).as_matrix()
    D = orbital_rotation(basis, numbers, R)
    blocks = basis_rotation_blocks(basis, R)
    assert D.shape == (15, 15)
    np.testing.assert_allclose(D[:10, :10], blocks[72])
    np.testing.assert_allclose(D[10:14, 10:14], blocks[8])
    np.testing.assert_allclose(D[14, 14], 1.0)
    np.testing.assert_allclose(blocks[72][5:, 5:], wigner_matrix(2, R))
    assert np.abs(D[:10, 10:]).max() == 0.0
    with pytest.raises(ValueError, match="not orthogonal"):
        orbital_rotation(basis, numbers, 2 * R)


def test_permutation_round_trip_dense_and_sparse():
    import scipy.sparse

    basis = DEF2_SVP
    numbers = [8, 1, 1]
    n = int(basis.orbital_offsets(numbers)[-1])
    m = np.random.default_rng(0).normal(size=(n, n))
    h = to_hamjax_order(m, basis, numbers, "pyscf")
    np.testing.assert_array_equal(from_hamjax_order(h, basis, numbers, "pyscf"), m)
    perm, signs = orbital_permutation(basis, numbers, "pyscf")
    # oxygen p shell (orbitals 3..5 and 6..8 of the atom) is (x, y, z) in PySCF
    np.testing.assert_array_equal(perm[3:9], [4, 5, 3, 7, 8, 6])
    sp = to_hamjax_order(scipy.sparse.csr_matrix(m), basis, numbers, "pyscf")
    np.testing.assert_array_equal(sp.toarray(), h)
    stacked = to_hamjax_order(np.stack([m, 2 * m]), basis, numbers, "pyscf")
    np.testing.assert_array_equal(stacked[1], 2 * h)
    with pytest.raises(ValueError, match="no proven orbital order for l=3"):
        to_hamjax_order(m[:1, :1], Basis.from_dict("x", {1: (3,)}), [1], "cp2k")
    with pytest.raises(ValueError, match="unknown orbital-order source"):
        orbital_permutation(basis, numbers, "orca")


# ------------------------------------------------------------------------------------ CP2K
def _read_csr_plain(path):
    """Independent minimal CSR reader (numpy only) for the fixtures."""
    data = np.loadtxt(path)
    n = int(data[:, 0].max())
    m = np.zeros((n, n))
    m[data[:, 0].astype(int) - 1, data[:, 1].astype(int) - 1] = data[:, 2]
    return m


def _cp2k_pair(data_dir, which):
    d = data_dir / "cp2k"
    return (
        _read_csr_plain(d / f"cluster-{which}_SPIN_1-1_0.csr"),
        _read_csr_plain(d / f"cluster_rotA-{which}_SPIN_1-1_0.csr"),
        np.loadtxt(d / "cluster_rotA.rotation.txt"),
    )


@pytest.mark.parametrize("which, tol", [("S", 1e-7), ("KS", 2e-4)])
def test_cp2k_convention_by_rotation(data_dir, which, tol):
    numbers = [72, 8, 8, 7, 1]  # cluster.xyz
    m0, m1, R = _cp2k_pair(data_dir, which)
    h0 = to_hamjax_order(m0, SZV_MOLOPT_SR_GTH, numbers, "cp2k")
    h1 = to_hamjax_order(m1, SZV_MOLOPT_SR_GTH, numbers, "cp2k")
    D = orbital_rotation(SZV_MOLOPT_SR_GTH, numbers, R)
    err = np.abs(D @ h0 @ D.T - h1).max()
    assert err < tol, err
    # the rotation is far from the identity: without D the matrices differ at O(0.1)
    assert np.abs(h0 - h1).max() > 1e3 * tol
    # a wrong table (PySCF's p order) breaks the covariance
    wrong0 = to_hamjax_order(m0, SZV_MOLOPT_SR_GTH, numbers, "pyscf")
    wrong1 = to_hamjax_order(m1, SZV_MOLOPT_SR_GTH, numbers, "pyscf")
    assert np.abs(D @ wrong0 @ D.T - wrong1).max() > 1e3 * tol


def test_cp2k_basis_file_matches_table_and_fixture(data_dir):
    elements = ["H", "C", "N", "O", "Ti", "Hf"]
    assert cp2k_basis("SZV-MOLOPT-SR-GTH", elements) == SZV_MOLOPT_SR_GTH
    m0, _, _ = _cp2k_pair(data_dir, "S")
    assert m0.shape[0] == SZV_MOLOPT_SR_GTH.orbital_offsets([72, 8, 8, 7, 1])[-1] == 23


# ---------------------------------------------------------------------------------- tblite
def _tblite(numbers, positions):
    from tblite.interface import Calculator

    calc = Calculator("GFN1-xTB", np.asarray(numbers), np.asarray(positions) / BOHR_ANGSTROM)
    calc.set("verbosity", 0)
    calc.set("save-integrals", 1)
    res = calc.singlepoint()
    s = res.get("overlap-matrix")
    c = res.get("orbital-coefficients")
    e = res.get("orbital-energies")
    fock = s @ (c * e) @ c.T @ s  # self-consistent H from the converged orbitals
    return res.get("hamiltonian-matrix"), fock, s, calc


@pytest.mark.parametrize("improper", [False, True])
def test_tblite_convention_by_rotation(improper):
    # a distorted Ti complex: Ti and Cl carry d shells (Ti: d,s,p; Cl: s,p,d), O and H too
    numbers = np.array([22, 17, 17, 17, 8, 1])
    positions = np.array(
        [
            [0.0, 0.0, 0.0],
            [2.2, 0.1, 0.0],
            [-0.8, 2.0, 0.3],
            [-0.7, -1.0, 1.9],
            [-0.6, -1.2, -1.4],
            [-0.2, -2.0, -1.8],
        ]
    )
    R = Rotation.random(random_state=11).as_matrix() @ (REFLECT_X if improper else np.eye(3))
    core0, fock0, s0, calc = _tblite(numbers, positions)
    core1, fock1, s1, _ = _tblite(numbers, positions @ R.T)

    basis = gfn1_xtb_basis(numbers)
    # the shell table equals what tblite reports for this structure
    shell_l = np.asarray(calc.get("angular-momenta"))
    assert shell_l.tolist() == [l for z in numbers for l in basis.shells_of(z)]
    D = orbital_rotation(basis, numbers, R)
    for m0, m1, tol in ((s0, s1, 1e-10), (core0, core1, 1e-8), (fock0, fock1, 1e-5)):
        h0 = to_hamjax_order(m0, basis, numbers, "tblite")
        h1 = to_hamjax_order(m1, basis, numbers, "tblite")
        assert np.abs(D @ h0 @ D.T - h1).max() < tol
        assert np.abs(h0 - h1).max() > 1e-2
    # PySCF's p order is wrong for tblite
    w0, w1 = (to_hamjax_order(m, basis, numbers, "pyscf") for m in (core0, core1))
    assert np.abs(D @ w0 @ D.T - w1).max() > 1e-2


@pytest.mark.parametrize("method", ["GFN1-xTB", "GFN2-xTB"])
def test_tblite_tables_match_tblite_for_every_element(method):
    from tblite.interface import Calculator

    # every element GFN1-xTB covers, one atom each, far apart (only the setup runs)
    elements = list(range(1, 87))
    numbers = np.array(elements)
    positions = np.stack(
        [np.arange(len(numbers)) * 6.0, np.zeros(len(numbers)), np.zeros(len(numbers))], 1
    )
    calc = Calculator(method, numbers, positions / BOHR_ANGSTROM)
    shell_l = np.asarray(calc.get("angular-momenta"))
    table = GFN1_XTB if method == "GFN1-xTB" else tblite_basis(method)
    assert shell_l.tolist() == [l for z in numbers for l in table.shells_of(z)]


# ----------------------------------------------------------------------------------- PySCF
def _pyscf_fock(symbols, positions, basis="def2-svp"):
    from pyscf import dft, gto

    mol = gto.M(
        atom=list(zip(symbols, positions, strict=True)), basis=basis, unit="Angstrom", verbose=0
    )
    mol.cart = False
    mf = dft.RKS(mol)
    mf.xc = "pbe"
    mf.conv_tol = 1e-10
    mf.grids.level = 3
    mf.kernel()
    assert mf.converged
    return mf.get_fock(), mol.intor("int1e_ovlp")


def test_pyscf_convention_by_improper_rotation():
    symbols = ["O", "H", "H"]
    positions = np.array([[0.0, 0.0, 0.0], [0.96, 0.1, 0.05], [-0.3, 0.9, 0.2]])
    R = Rotation.random(random_state=5).as_matrix() @ REFLECT_X
    f0, s0 = _pyscf_fock(symbols, positions)
    f1, s1 = _pyscf_fock(symbols, positions @ R.T)
    numbers = [8, 1, 1]
    basis = pyscf_basis("def2-svp", symbols)
    assert basis == DEF2_SVP.restrict(symbols)
    D = orbital_rotation(basis, numbers, R)
    for m0, m1, tol in ((s0, s1, 1e-10), (f0, f1, 1e-5)):  # Fock: DFT grid not rotated
        h0 = to_hamjax_order(m0, basis, numbers, "pyscf")
        h1 = to_hamjax_order(m1, basis, numbers, "pyscf")
        assert np.abs(D @ h0 @ D.T - h1).max() < tol
        assert np.abs(h0 - h1).max() > 1e-2
    w0, w1 = (to_hamjax_order(m, basis, numbers, "cp2k") for m in (f0, f1))
    assert np.abs(D @ w0 @ D.T - w1).max() > 1e-2


def test_pyscf_order_and_signs_from_basis_function_values():
    """PySCF's spherical functions on a grid are radial(r) x hamjax harmonics, l = 1..4."""
    import e3nn_jax as e3nn
    from pyscf import gto

    mol = gto.M(atom="Ne 0 0 0", basis="cc-pvqz", unit="Bohr", verbose=0)
    basis = pyscf_basis("cc-pvqz", ["Ne"])
    assert set(basis.shells_of(10)) == {0, 1, 2, 3, 4}
    points = np.random.default_rng(0).normal(size=(300, 3))
    perm, signs = orbital_permutation(basis, [10], "pyscf")
    values = mol.eval_gto("GTOval_sph", points)[:, perm] * signs  # hamjax order
    start = 0
    for l in basis.shells_of(10):
        block = values[:, start : start + 2 * l + 1]
        start += 2 * l + 1
        ylm = np.asarray(
            e3nn.spherical_harmonics(
                [l], e3nn.IrrepsArray("1o", points[:, [1, 2, 0]]), normalize=True
            ).array
        )
        ratio = block / ylm  # radial part, the same for every m when order and signs agree
        np.testing.assert_allclose(ratio, np.broadcast_to(ratio[:, :1], ratio.shape), rtol=1e-7)
        if l == 1:  # the raw PySCF order (x, y, z) fails the same check
            raw = mol.eval_gto("GTOval_sph", points)[:, start - 3 : start] / ylm
            assert not np.allclose(raw, raw[:, :1], rtol=1e-3)
