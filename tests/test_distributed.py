"""Streamed and distributed inference: tiles, part files, the streamed writers, two processes.

References are independent of the code under test: the exact partition of the full graph
(:func:`hamjax.partition.partition`), single-process ``Predictor.predict`` (exact slices and
full graph), the in-memory writers ``dataset.save`` and ``write_cp2k``. The model is a tiny
one with fresh parameters (float32), as in ``test_inference.py``.
"""

from __future__ import annotations

import filecmp
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest
from test_inference import BASIS, _model_config, water_chain

from hamjax import batching, distributed
from hamjax.graph import build_graph
from hamjax.io import dataset, write_cp2k
from hamjax.io.parts import Parts, load_record, write_record
from hamjax.io.parts_cp2k import write_cp2k_parts
from hamjax.partition import partition
from hamjax.tiles import Tiling, build_tile

ROOT = Path(__file__).resolve().parents[1]


def _box(seed: int = 1):
    """48 atoms (16 water molecules) in a periodic 23.2 x 14 x 7 A cell: two chains."""
    return water_chain(8, seed).repeat((1, 2, 1))


@pytest.fixture(scope="module")
def predictor():
    from hamjax.inference import Predictor
    from hamjax.models import HamiltonianModel

    config = _model_config()
    graph = build_graph(water_chain(2, 0), config.cutoff, basis=BASIS)
    graphs_tuple, _ = batching.batch_graphs([graph], dtype=np.float32)
    params = jax.jit(HamiltonianModel(config).init)(jax.random.key(3), graphs_tuple)
    return Predictor(config, params, name="tiny")


# ----------------------------------------------------------------------------- tiles
@pytest.mark.parametrize("axis", [0, 1])
def test_one_axis_tiles_are_the_exact_partition_slices(axis):
    atoms = _box()
    graph = build_graph(atoms, 3.0)
    slices = partition(graph, axis, width=4.0, mode="exact", n_layers=2)
    tiling = Tiling(atoms, {axis: 4.0}, cutoff=3.0, n_layers=2)
    assert len(tiling.plans()) == len(slices) > 2
    for plan, piece in zip(tiling.plans(), slices, strict=True):
        tile = build_tile(tiling, plan)
        np.testing.assert_array_equal(tile.node_index, piece.node_index)
        for name in ("numbers", "positions", "senders", "receivers", "shifts", "reverse"):
            np.testing.assert_array_equal(getattr(tile.graph, name), getattr(piece.graph, name))
        np.testing.assert_array_equal(tile.node_label, piece.node_label)
        np.testing.assert_array_equal(tile.edge_label, piece.edge_label)
        assert tile.region_atoms < len(atoms) or axis == 1


def test_three_axis_tiles_label_every_node_and_edge_once():
    atoms = _box()
    graph = build_graph(atoms, 3.0)
    tiling = Tiling(atoms, (5.0, 5.0, 3.5), cutoff=3.0, n_layers=1)
    nodes, edges = [], []
    for plan in tiling.plans():
        tile = build_tile(tiling, plan)
        g, index = tile.graph, tile.node_index
        e = np.flatnonzero(tile.edge_label)
        nodes.append(index[tile.node_label])
        edges.append(np.column_stack([index[g.senders[e]], index[g.receivers[e]], g.shifts[e]]))
        assert tile.region_atoms < len(atoms)  # the region is a real cut, not the whole
    nodes, edges = np.concatenate(nodes), np.concatenate(edges)
    np.testing.assert_array_equal(np.sort(nodes), np.arange(len(atoms)))
    full = np.column_stack([graph.senders, graph.receivers, graph.shifts])
    assert len(edges) == len(full)
    np.testing.assert_array_equal(np.unique(edges, axis=0), np.unique(full, axis=0))


def test_tile_width_errors_name_the_axis():
    with pytest.raises(ValueError, match="axis 2"):
        Tiling(_box(), (4.0, 0.0, -1.0), cutoff=3.0, n_layers=1)
    with pytest.raises(ValueError, match="one width per lattice vector"):
        Tiling(_box(), (4.0,), cutoff=3.0, n_layers=1)


# ------------------------------------------------------------------ processes and deal
def test_process_env_from_flags_environment_and_slurm():
    assert distributed.process_env(environ={}) is None
    env = distributed.process_env(
        num_processes=4, process_id=3, coordinator="10.0.0.1:1234", environ={}
    )
    assert (env.num_processes, env.process_id, env.coordinator, env.source) == (
        4,
        3,
        "10.0.0.1:1234",
        "flags",
    )
    env = distributed.process_env(
        environ={
            "HAMJAX_NUM_PROCESSES": "2",
            "HAMJAX_PROCESS_ID": "1",
            "HAMJAX_COORDINATOR": "h:9",
        }
    )
    assert (env.num_processes, env.process_id, env.coordinator) == (2, 1, "h:9")
    slurm = {
        "SLURM_NTASKS": "8",
        "SLURM_PROCID": "5",
        "SLURM_JOB_NODELIST": "nid[00012-00015,00020],gpu7",
        "SLURM_JOB_ID": "123456",
    }
    assert distributed.process_env(environ=slurm) is None  # SLURM is read only when asked
    env = distributed.process_env(environ=slurm, cluster="slurm")
    assert (env.num_processes, env.process_id, env.coordinator) == (8, 5, "nid00012:23456")
    env = distributed.process_env(environ={**slurm, "HAMJAX_CLUSTER": "slurm"})
    assert env.source == "SLURM"
    with pytest.raises(ValueError, match="HAMJAX_NUM_PROCESSES"):
        distributed.process_env(environ={"HAMJAX_NUM_PROCESSES": "two"})
    with pytest.raises(ValueError, match="coordinator"):
        distributed.process_env(num_processes=2, process_id=0, environ={})
    with pytest.raises(ValueError, match=r"outside 0\.\.1"):
        distributed.process_env(num_processes=2, process_id=2, coordinator="h:1", environ={})
    with pytest.raises(ValueError, match="SLURM_PROCID"):
        distributed.process_env(environ={"SLURM_NTASKS": "2"}, cluster="slurm")


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("node1", "node1"),
        ("node[03-05,9],gpu1", "node03"),
        ("a1,b2", "a1"),
        ("rack[2-3]-n[7,8]", "rack2-n7"),
        ("cn-[100-101].cluster", "cn-100.cluster"),
    ],
)
def test_first_slurm_host(nodelist, host):
    assert distributed.first_slurm_host(nodelist) == host


def test_deal_tiles_balanced_and_round_robin():
    costs = [5, 1, 1, 1, 1, 1, 4]
    assert distributed.deal_tiles(costs, 2, "round-robin") == [[0, 2, 4, 6], [1, 3, 5]]
    balanced = distributed.deal_tiles(costs, 2)
    assert sorted(sum(balanced, [])) == list(range(len(costs)))
    loads = [sum(costs[k] for k in tiles) for tiles in balanced]
    assert loads == [7, 7]
    assert distributed.deal_tiles(costs, 3) == distributed.deal_tiles(costs, 3)
    with pytest.raises(ValueError, match="deal"):
        distributed.deal_tiles(costs, 2, "random")


# -------------------------------------------------------------- one process, on disk
def test_streamed_prediction_equals_the_in_memory_paths(predictor, tmp_path):
    """Parts of one process: the stitched record equals Predictor.predict by exact slices
    bit for bit (the same subgraphs, the same padded shapes) and the full graph to float32
    round-off; the streamed npz and CP2K writers equal the in-memory ones byte for byte."""
    atoms = water_chain(8, 1)
    record_in = predictor.predict([atoms])[0]
    record_in = record_in.replace(overlap=0.25 * record_in.hamiltonian + 0.01)  # S to carry
    sliced = predictor.predict(
        [record_in], slices="exact", slice_width_angstrom=4.0, max_graphs_per_batch=1
    )[0]
    full = predictor.predict([record_in])[0]
    folder = tmp_path / "parts"
    result = distributed.predict_streamed(
        predictor, record_in, folder, widths={0: 4.0}, out=tmp_path / "streamed.npz"
    )
    assert result["ranks"][0]["tiles"] >= 4 and result["atoms"] == len(atoms)
    merged = load_record(folder)
    for name in ("pairs", "shifts", "hamiltonian", "overlap"):
        np.testing.assert_array_equal(getattr(merged, name), getattr(sliced, name))
    scale = np.abs(full.hamiltonian).max()
    assert np.abs(merged.hamiltonian - full.hamiltonian).max() <= 1e-5 * scale

    dataset.save(merged, tmp_path / "in_memory.npz")
    for chunk in (None, 200):  # one chunk, and many (a chunk ends inside the matrix)
        streamed = tmp_path / "streamed.npz"
        if chunk:
            write_record(folder, streamed, max_values=chunk)
        with np.load(streamed) as a, np.load(tmp_path / "in_memory.npz") as b:
            assert sorted(a.files) == sorted(b.files)
            for key in b.files:
                assert a[key].dtype == b[key].dtype, key
                np.testing.assert_array_equal(a[key], b[key])
    assert dataset.load(streamed).metadata["inference"] == "exact slices"

    for binary in (False, True):
        for real_space in (None, False):
            ref = write_cp2k(merged, tmp_path / "ref", binary=binary, real_space=real_space)
            out = write_cp2k_parts(
                folder, tmp_path / "out", binary=binary, real_space=real_space, max_values=300
            )
            assert [p.name for p in out] == [p.name.replace("ref", "out") for p in ref]
            assert len(ref) == (7 if real_space is None else 2)  # KS and S, 3 images + table
            for a, b in zip(ref, out, strict=True):
                assert filecmp.cmp(a, b, shallow=False), (a, b)
    out = write_cp2k_parts(folder, tmp_path / "up", upper_triangular=True, threshold=1e-3)
    ref = write_cp2k(merged, tmp_path / "upref", upper_triangular=True, threshold=1e-3)
    assert all(filecmp.cmp(a, b, shallow=False) for a, b in zip(ref, out, strict=True))


def test_unfinished_or_damaged_parts_are_named(predictor, tmp_path):
    folder = tmp_path / "parts"
    distributed.predict_streamed(predictor, water_chain(4, 2), folder, widths={0: 4.0})
    keys = folder / "rank-00000.keys"
    data = keys.read_bytes()
    keys.write_bytes(data[:-8])
    with pytest.raises(ValueError, match="rank-00000.keys.*truncated"):
        Parts(folder)
    keys.write_bytes(data)
    Parts(folder)
    (folder / "rank-00000.json").unlink()
    with pytest.raises(ValueError, match="rank 0 has not finished"):
        Parts(folder)
    with pytest.raises(FileNotFoundError, match="not a parts folder"):
        Parts(tmp_path)
    partial = distributed.predict_streamed(
        predictor, water_chain(4, 2), tmp_path / "partial", widths={0: 4.0}, max_tiles=1
    )
    assert partial["partial"] and partial["ranks"][0]["tiles"] == 1
    with pytest.raises(ValueError, match="predicted by no rank"):
        Parts(tmp_path / "partial")


# ------------------------------------------------------------------- two processes
_RANK_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import jax
    from hamjax import distributed
    from hamjax.inference import Predictor

    rank, coordinator, work = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    env = distributed.ProcessEnv(2, rank, coordinator, "flags")
    distributed.initialize(env, timeout_s=60)
    jax.config.update("jax_enable_x64", True)  # as in the test process (conftest.py)
    with open(f"{work}/inputs.pkl", "rb") as handle:
        config, params, atoms = pickle.load(handle)
    predictor = Predictor(config, params, name="tiny")
    assert jax.process_count() == 2 and jax.process_index() == rank
    distributed.predict_streamed(
        predictor, atoms, f"{work}/slices", widths={0: 4.0}, env=env, out=f"{work}/slices.npz"
    )
    """
)


def test_two_processes_equal_one_and_the_full_graph(predictor, tmp_path):
    """Two real processes on 127.0.0.1 (jax.distributed with barriers, balanced deal)
    predict by exact slices: the same blocks as single-process exact slices and as the full
    graph, to float32 round-off (bit for bit where the processes run the same executables;
    these may compile apart). Tiles cut along two axes: the CLI test below."""
    atoms = _box()
    with open(tmp_path / "inputs.pkl", "wb") as handle:
        pickle.dump((predictor.config, jax.device_get(predictor.params), atoms), handle)
    (tmp_path / "rank.py").write_text(_RANK_SCRIPT)
    coordinator = f"127.0.0.1:{distributed.free_port()}"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "JAX_PLATFORMS": "cpu",
        # the compilation cache of the test process (conftest.py)
        "JAX_COMPILATION_CACHE_DIR": str(jax.config.jax_compilation_cache_dir),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
    }
    ranks = [
        subprocess.Popen(
            [sys.executable, str(tmp_path / "rank.py"), str(k), coordinator, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(2)
    ]
    logs = []
    for p in ranks:
        try:
            logs.append(p.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for q in ranks:
                q.kill()
            raise
    assert all(p.returncode == 0 for p in ranks), "\n".join(logs)

    sliced = predictor.predict(
        [atoms], slices="exact", slice_width_angstrom=4.0, max_graphs_per_batch=1
    )[0]
    full = predictor.predict([atoms])[0]
    scale = np.abs(full.hamiltonian).max()
    record = dataset.load(tmp_path / "slices.npz")
    summaries = Parts(tmp_path / "slices").summaries()
    assert [s["rank"] for s in summaries] == [0, 1]
    assert all(s["tiles"] >= 2 and s["processes"] == 2 for s in summaries)
    assert sum(s["atoms"] for s in summaries) == len(atoms)
    np.testing.assert_array_equal(record.pairs, full.pairs)
    np.testing.assert_array_equal(record.shifts, full.shifts)
    assert np.abs(record.hamiltonian - full.hamiltonian).max() <= 1e-5 * scale
    # the same subgraphs as the single process's slices: equal up to how XLA compiled them
    assert np.abs(record.hamiltonian - sliced.hamiltonian).max() <= 1e-6 * scale
    assert record.metadata["processes"] == 2 and record.metadata["slice_axis"] == 0


# ------------------------------------------------------------------------------- CLI
@pytest.mark.slow
def test_predict_cli_with_two_local_processes(tmp_path, capsys):
    """``hamjax predict --slices exact --processes 2`` equals the one-process command."""
    from ase.build import molecule

    from hamjax import train
    from hamjax.cli import main
    from hamjax.reference import compute_reference

    data = dataset.save(compute_reference(molecule("H2O"), "tblite"), tmp_path / "water.npz")
    config = train.TrainConfig(
        model=_model_config(),
        data=(str(data),),
        slice_width_angstrom=None,
        epochs=1,
        progress=False,
    )
    train.save_config(config, tmp_path / "cfg.json")
    model = tmp_path / "model"
    assert main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(model)]) == 0
    structure = dataset.save(
        dataset.load(data).replace(
            numbers=_box().numbers,
            positions=_box().positions,
            cell=_box().cell.array,
            pbc=np.ones(3, bool),
            pairs=np.zeros((0, 2), np.int64),
            shifts=np.zeros((0, 3), np.int64),
            hamiltonian=np.zeros(0),
            overlap=None,
        ),
        tmp_path / "box.npz",
    )
    common = ["predict", "--model", str(model), "--structure", str(structure)]
    common += ["--slices", "exact", "--slice-width", "4"]
    assert main([*common, "--out", str(tmp_path / "one.npz"), "--batch", "1"]) == 0
    capsys.readouterr()
    two = [*common, "--out", str(tmp_path / "two.npz"), "--cp2k", str(tmp_path / "two")]
    assert main([*two, "--processes", "2"]) == 0
    one, both = dataset.load(tmp_path / "one.npz"), dataset.load(tmp_path / "two.npz")
    for name in ("pairs", "shifts"):
        np.testing.assert_array_equal(getattr(both, name), getattr(one, name))
    scale = np.abs(one.hamiltonian).max()
    assert np.abs(both.hamiltonian - one.hamiltonian).max() <= 1e-6 * scale
    assert both.metadata["processes"] == 2
    assert not (tmp_path / "two.npz.parts").exists()  # merged, then removed
    assert (tmp_path / "two-KS_SPIN_1_R_1-1_0.csr").is_file()
    # tiles cut along two lattice vectors, two processes: the full graph's blocks
    tiles = [*common, "--out", str(tmp_path / "tiles.npz"), "--tile-widths", "6", "7", "0"]
    assert main([*tiles, "--processes", "2", "--deal", "round-robin"]) == 0
    assert main([*common[:5], "--out", str(tmp_path / "full.npz")]) == 0
    tiled, full = dataset.load(tmp_path / "tiles.npz"), dataset.load(tmp_path / "full.npz")
    np.testing.assert_array_equal(tiled.pairs, full.pairs)
    np.testing.assert_array_equal(tiled.shifts, full.shifts)
    assert np.abs(tiled.hamiltonian - full.hamiltonian).max() <= 1e-5 * scale
    assert tiled.metadata["tile_widths_angstrom"] == [6.0, 7.0, 0.0]
    # bad combinations are one-line errors
    assert main([*common[:-4], "--out", str(tmp_path / "x.npz"), "--processes", "2"]) == 2
    assert "add --slices exact" in capsys.readouterr().err
