"""CP2K CSR reader and writer: real CP2K 2023.1 runs, a synthetic REAL_SPACE run, bad input."""

import re
import shutil

import numpy as np
import pytest

from hamjax.basis import SZV_MOLOPT_SR_GTH, Basis, orbital_rotation
from hamjax.blocks import BlockHamiltonian
from hamjax.io import parse_cp2k_log, read_cp2k, read_csr, write_cp2k, write_csr


@pytest.fixture()
def cp2k(data_dir):
    return data_dir / "cp2k"


def _log_number(path, pattern):
    """A number taken from the log with a plain regular expression (independent of the parser)."""
    return [float(m) for m in re.findall(pattern, path.read_text())]


@pytest.mark.parametrize("name, n_orb, periodic", [("cluster", 23, False), ("hfo2_vac", 68, True)])
def test_fixture_dimensions_hermiticity_and_positive_overlap(cp2k, name, n_orb, periodic):
    record = read_cp2k(cp2k / f"{name}.out", structure=cp2k / f"{name}.xyz")
    assert record.n_orbitals == n_orb
    assert bool(record.pbc.all()) is periodic
    h, s = record.to_dense(), record.to_dense("overlap")
    # KS of the periodic run is symmetric to ~2e-9 Ha (CP2K's image fold), S to round-off
    np.testing.assert_allclose(h, h.T, atol=1e-8)
    np.testing.assert_allclose(s, s.T, atol=1e-13)
    assert np.linalg.eigvalsh(s).min() > 0.1
    if not periodic:  # normalised functions; the periodic Gamma S also holds self-images
        np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-10)
    fermi = _log_number(cp2k / f"{name}.out", r"Fermi energy:\s+(\S+)")[-1]
    assert record.fermi_level == fermi
    assert record.metadata["code_version"] == "CP2K version 2023.1"
    assert record.basis == SZV_MOLOPT_SR_GTH.restrict(set(record.numbers.tolist()))


def test_log_parser_reads_kinds_atoms_and_cell(cp2k):
    log = parse_cp2k_log(cp2k / "hfo2_vac.out")
    assert log.project == "hfo2_vac"
    assert log.kind_shells == {"Hf": (0, 0, 1, 2), "O": (0, 1)}
    assert log.kind_orbitals == {"Hf": 10, "O": 4}
    assert log.symbols.count("Hf") == 4 and log.symbols.count("O") == 7
    np.testing.assert_allclose(log.cell, 5.08 * np.eye(3))
    import ase.io

    atoms = ase.io.read(cp2k / "hfo2_vac.xyz")
    np.testing.assert_allclose(log.positions, atoms.positions, atol=1e-6)
    assert log.orbital_counts().sum() == 68


def test_rotation_convention_through_the_reader(cp2k):
    a = read_cp2k(cp2k / "cluster.out", structure=cp2k / "cluster.xyz")
    b = read_cp2k(cp2k / "cluster_rotA.out", structure=cp2k / "cluster_rotA.xyz")
    R = np.loadtxt(cp2k / "cluster_rotA.rotation.txt")
    D = orbital_rotation(a.basis, a.numbers, R)
    assert np.abs(D @ a.to_dense() @ D.T - b.to_dense()).max() < 2e-4
    assert np.abs(D @ a.to_dense("overlap") @ D.T - b.to_dense("overlap")).max() < 1e-7
    # the structures are related by the same rotation (about the centroid)
    pa = a.positions - a.positions.mean(0)
    pb = b.positions - b.positions.mean(0)
    np.testing.assert_allclose(pa @ R.T, pb, atol=1e-6)


@pytest.mark.parametrize("name", ["cluster", "hfo2_vac"])
def test_written_files_equal_cp2k_files_byte_for_byte(cp2k, tmp_path, name):
    record = read_cp2k(cp2k / f"{name}.out")
    paths = write_cp2k(record, tmp_path / name)
    for path in paths:
        original = cp2k / path.name
        assert path.read_bytes() == original.read_bytes()


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("upper", [False, True])
def test_read_write_read_round_trip(cp2k, tmp_path, binary, upper):
    record = read_cp2k(cp2k / "hfo2_vac.out", structure=cp2k / "hfo2_vac.xyz")
    shutil.copy(cp2k / "hfo2_vac.out", tmp_path / "hfo2_vac.out")
    write_cp2k(record, tmp_path / "hfo2_vac", binary=binary, upper_triangular=upper)
    again = read_cp2k(tmp_path / "hfo2_vac.out", structure=cp2k / "hfo2_vac.xyz")
    tol = 0.0 if binary else 1e-13
    h0, h1 = record.to_dense(), again.to_dense()
    if upper:  # the lower triangle is mirrored from the upper one: CP2K's 2e-9 asymmetry goes
        h0 = np.triu(h0) + np.triu(h0, 1).T
    np.testing.assert_allclose(h1, h0, rtol=tol, atol=0)
    np.testing.assert_allclose(
        again.to_dense("overlap"),
        np.triu(record.to_dense("overlap")) + np.triu(record.to_dense("overlap"), 1).T
        if upper
        else record.to_dense("overlap"),
        rtol=tol,
        atol=0,
    )
    assert again.fermi_level == record.fermi_level
    name = tmp_path / "hfo2_vac-KS_SPIN_1-1_0.csr"
    raw = name.read_bytes()
    if binary:
        assert len(raw) % 24 == 0 and np.frombuffer(raw[:4], "<i4")[0] == 16
        rows = np.frombuffer(
            raw,
            dtype=np.dtype([("h", "<i4"), ("r", "<i4"), ("c", "<i4"), ("v", "<f8"), ("t", "<i4")]),
        )
        assert (rows["r"] <= rows["c"]).all() == upper
        assert len(rows) == (68 * 69 // 2 if upper else 68 * 68)
    else:
        table = np.loadtxt(name)
        assert (table[:, 0] <= table[:, 1]).all() == upper


# ------------------------------------------------------------------------- REAL_SPACE
_SYNTHETIC_LOG = """\
 CP2K| version string:                                       CP2K version 2023.1
 GLOBAL| Project name                                                     chain
 CELL| Vector a [angstrom]:       3.000     0.000     0.000   |a| =     3.000000
 CELL| Vector b [angstrom]:       0.000    12.000     0.000   |b| =    12.000000
 CELL| Vector c [angstrom]:       0.000     0.000    12.000   |c| =    12.000000
 CELL| Periodicity                                                             X

  1. Atomic kind: O                                     Number of atoms:       1

     Orbital Basis Set                                         SZV-MOLOPT-SR-GTH

       Number of spherical basis functions:                                    4

       Normalised Cartesian orbitals:

                        Set   Shell   Orbital            Exponent    Coefficient

                          1       1    2s                5.000000       0.500000
                          1       2    3px               5.000000       0.400000
                          1       2    3py               5.000000       0.400000
                          1       2    3pz               5.000000       0.400000

       Atomic covalent radius [Angstrom]:                                  0.730

  2. Atomic kind: H                                     Number of atoms:       1

     Orbital Basis Set                                         SZV-MOLOPT-SR-GTH

       Number of spherical basis functions:                                    1

       Normalised Cartesian orbitals:

                        Set   Shell   Orbital            Exponent    Coefficient

                          1       1    1s                2.000000       0.300000

       Atomic covalent radius [Angstrom]:                                  0.320

 MODULE QUICKSTEP: ATOMIC COORDINATES IN ANGSTROM

   Atom Kind Element         X             Y             Z       Z(eff)     Mass
      1    1 O     8      0.100000      0.000000      0.000000   6.0000  15.9994
      2    2 H     1      1.050000      0.300000      0.100000   1.0000   1.0079

  Fermi energy:                                                -0.25000000000000
 KS CSR write|     3 periodic images
      Number    X      Y      Z
         1      0      0      0
         2      1      0      0
         3     -1      0      0
 S CSR write|     3 periodic images
      Number    X      Y      Z
         1      0      0      0
         2      1      0      0
         3     -1      0      0

  **** **** ******  **  PROGRAM ENDED AT                 2026-11-26 21:39:58.675
"""


def _synthetic_matrices(seed=0):
    """H(R), S(R) for R in {0, +a, -a} with H(-R) = H(R)^T, 5 orbitals (O s,p + H s)."""
    rng = np.random.default_rng(seed)
    h0 = rng.normal(size=(5, 5))
    h0 = h0 + h0.T
    hp = rng.normal(size=(5, 5))
    s0 = np.eye(5) + 0.05 * (lambda a: a + a.T)(rng.normal(size=(5, 5)))
    sp = 0.05 * rng.normal(size=(5, 5))
    return {(0, 0, 0): h0, (1, 0, 0): hp, (-1, 0, 0): hp.T}, {
        (0, 0, 0): s0,
        (1, 0, 0): sp,
        (-1, 0, 0): sp.T,
    }


def _write_plain(path, m):
    rows, cols = np.nonzero(np.ones_like(m))
    np.savetxt(path, np.column_stack([rows + 1, cols + 1, m[rows, cols]]), fmt="%d %d %.17e")


def test_real_space_images_from_a_synthetic_log(tmp_path):
    (tmp_path / "chain.out").write_text(_SYNTHETIC_LOG)
    h, s = _synthetic_matrices()
    image = {1: (0, 0, 0), 2: (1, 0, 0), 3: (-1, 0, 0)}
    for n, shift in image.items():
        _write_plain(tmp_path / f"chain-KS_SPIN_1_R_{n}-1_0.csr", h[shift])
        _write_plain(tmp_path / f"chain-S_SPIN_1_R_{n}-1_0.csr", s[shift])
    record = read_cp2k(tmp_path / "chain.out")
    assert record.metadata["real_space"]
    assert record.fermi_level == -0.25
    np.testing.assert_array_equal(record.pbc, [True, False, False])
    # CP2K's p (y, z, x) is hamjax's: blocks equal the files' slices
    for k in ([0, 0, 0], [0.3, 0, 0]):
        explicit = sum(m * np.exp(2j * np.pi * np.dot(k, t)) for t, m in h.items())
        np.testing.assert_allclose(record.to_dense(k=k), explicit, atol=1e-15)
    for b, ((i, j), t) in enumerate(zip(record.pairs, record.shifts, strict=True)):
        off = record.orbital_offsets
        np.testing.assert_array_equal(
            record.block(b, "overlap"), s[tuple(t)][off[i] : off[i + 1], off[j] : off[j + 1]]
        )
    # write as REAL_SPACE (text and binary, upper triangular) and read back with the table
    for binary in (False, True):
        folder = tmp_path / f"out{int(binary)}"
        folder.mkdir()
        paths = write_cp2k(record, folder / "chain", binary=binary, upper_triangular=True)
        table = parse_cp2k_log(folder / "chain-csr_images.txt").images
        assert sorted(table["KS"].values()) == sorted(h)
        again = read_cp2k(
            None,
            ks=[p for p in paths if "-KS_" in p.name],
            overlap=[p for p in paths if "-S_" in p.name],
            basis=record.basis,
            structure=_xyz(tmp_path, record),
            images=table["KS"],
        )
        for k in ([0, 0, 0], [0.21, 0, 0]):
            np.testing.assert_allclose(again.to_dense(k=k), record.to_dense(k=k), atol=1e-13)
            np.testing.assert_allclose(
                again.to_dense("overlap", k=k), record.to_dense("overlap", k=k), atol=1e-13
            )


def _xyz(folder, record):
    import ase
    import ase.io

    path = folder / "structure.xyz"
    ase.io.write(
        path, ase.Atoms(record.numbers, record.positions, cell=record.cell, pbc=record.pbc)
    )
    return path


# ----------------------------------------------------------------------------- bad input
def _copy_run(cp2k, tmp_path, name="cluster"):
    for path in cp2k.glob(f"{name}[-.]*"):
        shutil.copy(path, tmp_path / path.name)
    return tmp_path / f"{name}.out", tmp_path / f"{name}-KS_SPIN_1-1_0.csr"


def _edit_line(path, number, text):
    lines = path.read_text().splitlines()
    lines[number - 1] = text
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize(
    "line, message",
    [
        ("       1       4", r"KS_SPIN_1-1_0.csr:7: expected 3 columns"),
        ("       1       4  0.1 0.2", r"KS_SPIN_1-1_0.csr:7: expected 3 columns"),
        ("       1       4  abc", r"KS_SPIN_1-1_0.csr:7: non-numeric entry 'abc'"),
        ("       1      24  0.1", r"KS_SPIN_1-1_0.csr:7: column index 24 outside 1..23"),
        ("       0       4  0.1", r"KS_SPIN_1-1_0.csr:7: row index 0 outside 1..23"),
        ("     1.5       4  0.1", r"KS_SPIN_1-1_0.csr:7: row index 1.5 is not an integer"),
    ],
)
def test_malformed_text_file_names_file_and_line(cp2k, tmp_path, line, message):
    log, ks = _copy_run(cp2k, tmp_path)
    _edit_line(ks, 7, line)
    with pytest.raises(ValueError, match=message):
        read_cp2k(log)


def test_malformed_binary_file_names_the_record(cp2k, tmp_path):
    log, ks = _copy_run(cp2k, tmp_path)
    record = read_cp2k(log)
    write_cp2k(record, tmp_path / "cluster", binary=True)
    raw = bytearray(ks.read_bytes())
    raw[24 * 4 + 20 : 24 * 4 + 24] = np.int32(12).tobytes()  # tail marker of record 5
    ks.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"cluster-KS_SPIN_1-1_0.csr: record 5 .*expected 16/16"):
        read_csr(ks, 23, binary=True)
    ks.write_bytes(bytes(raw[:-3]))
    with pytest.raises(ValueError, match="not a whole number of 24-byte"):
        read_csr(ks, 23, binary=True)
    records = np.frombuffer(bytes(raw), dtype=np.uint8).copy()
    records[24 * 4 + 20 : 24 * 4 + 24] = np.frombuffer(np.int32(16).tobytes(), np.uint8)
    records[24 * 2 + 4 : 24 * 2 + 8] = np.frombuffer(np.int32(99).tobytes(), np.uint8)
    ks.write_bytes(records.tobytes())
    with pytest.raises(ValueError, match=r"record 3: row index 99 outside 1..23"):
        read_cp2k(log)


def test_dimension_mismatch_with_the_log(cp2k, tmp_path):
    log, ks = _copy_run(cp2k, tmp_path)
    # the files of the 68-orbital periodic run against the 23-orbital cluster log
    shutil.copy(cp2k / "hfo2_vac-KS_SPIN_1-1_0.csr", ks)
    with pytest.raises(
        ValueError, match=r"KS_SPIN_1-1_0.csr:\d+: (row|column) index \d+ outside 1..23"
    ):
        read_cp2k(log)
    # a basis whose counts differ from the log's
    wrong = Basis.from_dict("x", {"Hf": (0, 1, 2), "O": (0, 1), "N": (0, 1), "H": (0,)})
    _copy_run(cp2k, tmp_path)
    with pytest.raises(ValueError, match=r"cluster.out: atom 0 has 10 orbitals in the log but 9"):
        read_cp2k(log, basis=wrong)


def test_log_errors(cp2k, tmp_path):
    log, _ = _copy_run(cp2k, tmp_path)
    text = log.read_text()
    log.write_text(
        text.replace(
            "Number of spherical basis functions:                                   10",
            "Number of spherical basis functions:                                   11",
        )
    )
    with pytest.raises(ValueError, match=r"cluster.out: kind Hf: the shell listing gives 10"):
        read_cp2k(log)
    (tmp_path / "chain.out").write_text(
        _SYNTHETIC_LOG.replace("         3     -1      0      0\n", "", 1)
    )
    with pytest.raises(
        ValueError,
        match=r"chain.out:\d+: image line needs 4|lists 2 of 3 images|malformed KS CSR image",
    ):
        parse_cp2k_log(tmp_path / "chain.out")
    with pytest.raises(FileNotFoundError, match="nothere.out"):
        read_cp2k(tmp_path / "nothere.out")
    with pytest.raises(FileNotFoundError, match="missing.csr"):
        read_csr(tmp_path / "missing.csr", 5)


def test_real_space_file_without_table_is_an_error(tmp_path):
    h, _ = _synthetic_matrices()
    _write_plain(tmp_path / "chain-KS_SPIN_1_R_2-1_0.csr", h[(1, 0, 0)])
    basis = Basis.from_dict("x", {"O": (0, 1), "H": (0,)})
    record = BlockHamiltonian.from_dense(
        [8, 1], np.zeros((2, 3)), np.eye(3), [1, 0, 0], basis, h[(0, 0, 0)]
    )
    xyz = _xyz(tmp_path, record)
    with pytest.raises(ValueError, match=r"R_2-1_0.csr: a REAL_SPACE image file, but no"):
        read_cp2k(None, ks=tmp_path / "chain-KS_SPIN_1_R_2-1_0.csr", basis=basis, structure=xyz)
    with pytest.raises(ValueError, match=r"image 2 is not in the log's image table"):
        read_cp2k(
            None,
            ks=tmp_path / "chain-KS_SPIN_1_R_2-1_0.csr",
            basis=basis,
            structure=xyz,
            images={1: (0, 0, 0)},
        )


def test_write_csr_threshold_and_order(tmp_path):
    m = np.array([[1.0, 1e-9, 0.0], [1e-9, 2.0, -3.5e-120], [0.0, -3.5e-120, 3.0]])
    path = write_csr(tmp_path / "m.csr", m, threshold=1e-6)
    table = np.loadtxt(path, ndmin=2)
    np.testing.assert_array_equal(table[:, :2], [[1, 1], [2, 2], [3, 3]])
    path = write_csr(tmp_path / "m.csr", m)
    # a 3-digit exponent, as CP2K's E23.14E3
    assert "-0.35000000000000E-119" in path.read_text()
    np.testing.assert_array_equal(read_csr(path, 3).toarray(), m)
