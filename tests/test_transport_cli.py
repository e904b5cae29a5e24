"""The ``hamjax transport`` command: embedded example, npz input, clear errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from hamjax.cli import main


def read_csv(path):
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def test_default_example_matches_exact_chain_with_impurity(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["transport", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "exact" in printed and "uA" in printed
    summary = json.loads((out / "transport.json").read_text())
    table = read_csv(out / "transmission.csv")
    e = table["energy_ev"]
    exact = np.where(np.abs(e) < 2, (4 - e**2) / (5 - e**2), 0.0)
    np.testing.assert_allclose(table["transmission"], exact, atol=1e-4)  # O(eta) at edges
    assert summary["current_a"] == pytest.approx(summary["exact_current_a"], rel=1e-5)
    assert 25e-6 < summary["current_a"] < 40e-6  # about 0.8 G0 x 0.5 V
    assert (out / "transmission.png").stat().st_size > 10_000


def test_npz_wire_with_layers_from_positions(tmp_path):
    width, length, t = 4, 6, 1.0
    cross = -t * (np.eye(width, k=1) + np.eye(width, k=-1))
    h = np.kron(np.eye(length), cross) - t * np.kron(
        np.eye(length, k=1) + np.eye(length, k=-1), np.eye(width)
    )
    path = tmp_path / "wire.npz"
    np.savez(
        path,
        hamiltonian=h,
        positions=np.repeat(np.arange(length) * 2.5, width),
        orbital_counts=np.ones(width * length, dtype=int),
    )
    out = tmp_path / "wire_out"
    energies = ["-3.5", "3.5", "8"]  # grid step 1 eV: away from the mode edges
    assert main(["transport", str(path), "--out", str(out), "--energies", *energies]) == 0
    table = read_csv(out / "transmission.csv")
    modes = -2 * t * np.cos(np.arange(1, width + 1) * np.pi / (width + 1))
    n_open = np.sum(np.abs(table["energy_ev"][:, None] - modes) < 2 * t, axis=1)
    np.testing.assert_allclose(table["transmission"], n_open, atol=1e-4)
    summary = json.loads((out / "transport.json").read_text())
    assert summary["layers"] == [width] * length


def test_bad_npz_inputs_give_one_clear_line(tmp_path, capsys):
    h = -(np.eye(4, k=1) + np.eye(4, k=-1))
    h[0, 1] = -0.5  # no longer Hermitian
    bad = tmp_path / "bad.npz"
    np.savez(bad, hamiltonian=h, layers=np.ones(4, dtype=int))
    assert main(["transport", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "bad.npz" in err and "not Hermitian" in err and "layers 0 and 1" in err

    nokey = tmp_path / "nokey.npz"
    np.savez(nokey, overlap=np.eye(4))
    assert main(["transport", str(nokey)]) == 2
    assert "missing array 'hamiltonian'" in capsys.readouterr().err

    wrong_layers = tmp_path / "layers.npz"
    np.savez(wrong_layers, hamiltonian=-(np.eye(4, k=1) + np.eye(4, k=-1)), layers=[1, 1, 1])
    assert main(["transport", str(wrong_layers)]) == 2
    assert "layers sum to 3" in capsys.readouterr().err

    assert main(["transport", str(tmp_path / "missing.npz")]) == 2
    assert "no such file" in capsys.readouterr().err


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_npz_gives_one_line_and_status_2(tmp_path, keep):
    """A device file cut short (as by a full disk or a killed copy): one error line naming
    the file, exit status 2, no traceback; run as from a shell."""
    path = tmp_path / "device.npz"
    assert main(["transport", "--write-example", str(path)]) == 0
    assert main(["transport", str(path), "--out", str(tmp_path / "ok")]) == 0  # valid file
    data = path.read_bytes()
    path.write_bytes(data[: int(keep * len(data))])
    done = subprocess.run(
        [sys.executable, "-m", "hamjax.cli", "transport", str(path), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.startswith(f"hamjax transport: error: {path}: ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert not (tmp_path / "o").exists()
