"""Truncated, damaged and foreign input files fail with a ValueError that names the file.

Every reader gets a file written by hamjax's own writer (or a real CP2K output file), cut to
half its size, cut after a whole line or record, or replaced by random bytes.
"""

import re
import shutil

import numpy as np
import pytest
from ase import Atoms

from hamjax.io import dataset, read_cp2k, read_csr, write_csr
from hamjax.io.files import UnreadableFileError, read_npz, read_structures
from hamjax.structures import read_device_extxyz, write_device_extxyz

N_ORB = 23  # the cluster fixture: Hf, 2 O, N, H in SZV-MOLOPT-SR-GTH


def _half(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(np.random.default_rng(0).bytes(4096))


DAMAGE = {"half": _half, "garbage": _garbage}


def _names(path):
    """``pytest.raises`` pattern: the message names the file."""
    return re.escape(str(path))


@pytest.fixture()
def cluster(data_dir, tmp_path):
    """A copy of the real CP2K cluster run (log, KS and S files, structure)."""
    for name in ("cluster.out", "cluster-KS_SPIN_1-1_0.csr", "cluster-S_SPIN_1-1_0.csr"):
        shutil.copy(data_dir / "cp2k" / name, tmp_path / name)
    return tmp_path


@pytest.mark.parametrize("damage", DAMAGE)
def test_dataset_file(cluster, damage):
    path = dataset.save(read_cp2k(cluster / "cluster.out"), cluster / "cluster.npz")
    DAMAGE[damage](path)
    with pytest.raises(UnreadableFileError, match=_names(path)):
        dataset.load(path)


def test_npz_reader_refuses_a_plain_npy_array(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.arange(3))
    with pytest.raises(UnreadableFileError, match=_names(path) + ".*not an npz archive"):
        read_npz(path)


def _whole_lines(path, binary):
    """Cut after the last whole line (record) of the first half: every entry read parses."""
    data = path.read_bytes()
    size = 24 if binary else data.index(b"\n") + 1
    path.write_bytes(data[: (len(data) // 2) // size * size])


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary"])
@pytest.mark.parametrize("damage", [*DAMAGE, "whole_lines"])
def test_csr_file(cluster, binary, damage):
    """A damaged KS file is named, read through the run's log or on its own."""
    ks = cluster / "cluster-KS_SPIN_1-1_0.csr"
    write_csr(ks, read_csr(ks, N_ORB), binary=binary)  # hamjax's writer, same matrix
    if damage == "whole_lines":
        _whole_lines(ks, binary)
    else:
        DAMAGE[damage](ks)
    with pytest.raises(ValueError, match=_names(ks)):
        read_cp2k(cluster / "cluster.out", ks=ks)
    with pytest.raises(ValueError, match=_names(ks)):
        read_csr(ks, N_ORB, require_diagonal=True)


@pytest.mark.parametrize("damage", DAMAGE)
def test_cp2k_log(cluster, damage):
    log = cluster / "cluster.out"
    read_cp2k(log)  # the intact copy reads
    DAMAGE[damage](log)
    with pytest.raises(ValueError, match=_names(log)):
        read_cp2k(log)


def test_cp2k_log_with_fewer_coordinates_than_atoms(cluster):
    log = cluster / "cluster.out"
    lines = log.read_text().splitlines(keepends=True)
    table = next(k for k, line in enumerate(lines) if "ATOMIC COORDINATES IN ANGSTROM" in line)
    last_atom = next(k for k in range(table + 4, len(lines)) if not lines[k].strip()) - 1
    log.write_text("".join(lines[:last_atom] + lines[last_atom + 1 :]))
    with pytest.raises(ValueError, match=_names(log) + ": the coordinate table lists 4 atoms"):
        read_cp2k(log)


def _device_atoms():
    rng = np.random.default_rng(1)
    atoms = Atoms("Hf8O16", positions=rng.uniform(0, 9, (24, 3)), cell=np.eye(3) * 9.0, pbc=True)
    atoms.arrays["region"] = np.array(["HfO2"] * 24)
    atoms.info["strain"] = {"x": 0.01}
    return atoms


@pytest.mark.parametrize("damage", DAMAGE)
def test_structure_file(tmp_path, damage):
    path = write_device_extxyz(_device_atoms(), tmp_path / "device.extxyz")
    assert len(read_device_extxyz(path)) == 24
    DAMAGE[damage](path)
    with pytest.raises(UnreadableFileError, match=_names(path)):
        read_device_extxyz(path)
    with pytest.raises(UnreadableFileError, match=_names(path)):
        read_structures(path)


@pytest.mark.parametrize("damage", DAMAGE)
def test_structure_file_given_to_the_cp2k_reader(cluster, damage):
    structure = cluster / "cluster.xyz"
    record = read_cp2k(cluster / "cluster.out")
    Atoms(record.numbers, positions=record.positions).write(structure)
    DAMAGE[damage](structure)
    with pytest.raises(UnreadableFileError, match=_names(structure)):
        read_cp2k(cluster / "cluster.out", structure=structure)
