"""The npz dataset file: round trip, atomic writes, plain-numpy readability, clear errors."""

import json
import os

import numpy as np
import pytest

from hamjax.io import dataset, read_cp2k


@pytest.fixture()
def record(data_dir):
    d = data_dir / "cp2k"
    r = read_cp2k(d / "hfo2_vac.out", structure=d / "hfo2_vac.xyz")
    meta = dict(r.metadata, method="PBE", code_versions={"cp2k": "2023.1"}, n=np.int64(3))
    return r.replace(metadata=meta)


def _assert_same(a, b):
    for name in ("numbers", "positions", "cell", "pbc", "pairs", "shifts", "hamiltonian"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    if a.overlap is None:
        assert b.overlap is None
    else:
        np.testing.assert_array_equal(a.overlap, b.overlap)
    assert a.basis == b.basis
    assert a.fermi_level == b.fermi_level


@pytest.mark.parametrize("compress", [False, True])
def test_round_trip_is_exact(record, tmp_path, compress):
    path = dataset.save(record, tmp_path / "s.npz", compress=compress)
    again = dataset.load(path)
    _assert_same(record, again)
    assert again.metadata["code_versions"] == {"cp2k": "2023.1"}
    assert again.metadata["n"] == 3
    np.testing.assert_array_equal(again.to_dense(), record.to_dense())
    # no overlap and no Fermi level survive as such
    bare = record.replace(overlap=None, fermi_level=None, metadata={})
    _assert_same(bare, dataset.load(dataset.save(bare, tmp_path / "bare.npz")))


def test_readable_with_plain_numpy_as_documented(record, tmp_path):
    path = dataset.save(record, tmp_path / "s.npz")
    f = np.load(path, allow_pickle=False)  # no pickle, no hamjax
    n_orb = np.diff(f["orbital_offsets"])
    o = f["orbital_offsets"]
    dense = np.zeros((o[-1], o[-1]))
    for b, (i, j) in enumerate(f["pairs"]):
        start, stop = f["block_offsets"][b], f["block_offsets"][b + 1]
        block = f["hamiltonian"][start:stop].reshape(n_orb[i], n_orb[j])
        dense[o[i] : o[i + 1], o[j] : o[j + 1]] += block
    np.testing.assert_array_equal(dense, record.to_dense())
    assert json.loads(str(f["basis"]))["shells"]["72"] == [0, 0, 1, 2]
    assert json.loads(str(f["metadata"]))["source"] == "cp2k"
    assert float(f["fermi_level"]) == record.fermi_level
    assert str(f["format"]) == "hamjax-blocks" and int(f["version"]) == 1


def test_failed_save_leaves_the_old_file_and_no_temporary(record, tmp_path, monkeypatch):
    path = dataset.save(record, tmp_path / "s.npz")
    before = path.read_bytes()
    calls = {"n": 0}
    original = np.lib.format.write_array

    def failing(*args, **kwargs):  # dies after some members were written (a kill mid-write)
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(np.lib.format, "write_array", failing)
    changed = record.replace(hamiltonian=record.hamiltonian * 2)
    with pytest.raises(KeyboardInterrupt):
        dataset.save(changed, path)
    assert calls["n"] == 5
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["s.npz"]
    with pytest.raises(KeyboardInterrupt):  # a new target is not created at all
        calls["n"] = 0
        dataset.save(changed, tmp_path / "new.npz")
    assert os.listdir(tmp_path) == ["s.npz"]


def test_errors_name_the_file(record, tmp_path):
    path = dataset.save(record, tmp_path / "s.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    broken = tmp_path / "missing_key.npz"
    np.savez(broken, **{k: v for k, v in arrays.items() if k != "pairs"})
    with pytest.raises(ValueError, match=r"missing_key.npz: missing key\(s\) \['pairs'\]"):
        dataset.load(broken)
    newer = tmp_path / "newer.npz"
    np.savez(newer, **dict(arrays, version=np.array(2)))
    with pytest.raises(ValueError, match=r"newer.npz: dataset layout version 2; this hamjax reads"):
        dataset.load(newer)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, x=np.zeros(3))
    with pytest.raises(ValueError, match=r"foreign.npz: not a hamjax dataset file"):
        dataset.load(foreign)
    short = tmp_path / "short.npz"
    np.savez(short, **dict(arrays, hamiltonian=arrays["hamiltonian"][:-1]))
    with pytest.raises(ValueError, match=r"short.npz: inconsistent arrays"):
        dataset.load(short)
    text = tmp_path / "text.npz"
    text.write_text("not a zip")
    with pytest.raises(ValueError, match=r"text.npz: not a readable npz file"):
        dataset.load(text)
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        dataset.load(tmp_path / "absent.npz")
    with pytest.raises(ValueError, match=r"bad.npz: metadata cannot be stored as JSON"):
        dataset.save(record.replace(metadata={"f": object()}), tmp_path / "bad.npz")
    assert not (tmp_path / "bad.npz").exists()
