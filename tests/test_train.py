"""Training: masked losses, metrics, config files, optimiser, checkpoints, resume, overfitting.

Fast tests check the pure pieces against independent references (loops over the block record,
closed forms). Tests that compile the model are marked slow; they train on a tiny tblite
dataset (two small molecules and one more for validation).
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from ase.data import chemical_symbols

from hamjax import batching, train
from hamjax.basis import gfn1_xtb_basis
from hamjax.constants import HARTREE_EV
from hamjax.graph import build_graph
from hamjax.targets import gather_targets

BASIS = gfn1_xtb_basis(["H", "N", "O"])


def small_model_config(**changes):
    from hamjax.models import ModelConfig

    settings = dict(
        basis=BASIS,
        cutoff=4.0,
        max_ell=1,
        channels=8,
        heads=1,
        radial_hidden=(16,),
        attention_dim=4,
        radial_basis=6,
    )
    settings.update(changes)
    return ModelConfig(**settings)


@pytest.fixture(scope="module")
def tiny_records():
    """tblite GFN1-xTB references of rattled H2O and NH3 (training) and H2O (validation)."""
    from ase.build import molecule

    from hamjax.reference import compute_reference

    rng = np.random.default_rng(7)
    records = []
    for name in ("H2O", "NH3", "H2O"):
        atoms = molecule(name)
        atoms.positions += rng.normal(0.0, 0.05, atoms.positions.shape)
        records.append(compute_reference(atoms, "tblite"))
    return records


def _batch(records, budget=None, dtype=np.float64):
    graphs = [build_graph(r, 4.0, basis=BASIS) for r in records]
    targets = [gather_targets(g, r, basis=BASIS) for g, r in zip(graphs, records, strict=True)]
    graphs_tuple, padded = batching.batch_graphs(graphs, targets, budget, dtype=dtype)
    return train.batch_dict(graphs_tuple, padded)


def _fake_prediction(batch, seed):
    """Blocks that differ from the targets on real entries and are garbage on padding."""
    rng = np.random.default_rng(seed)
    node = np.asarray(batch["node_targets"]).copy()
    edge = np.asarray(batch["edge_targets"]).copy()
    graph = batch["graph"]
    # a deterministic perturbation of real entries that depends only on the geometry
    pos = np.asarray(graph.nodes["positions"])
    node += 0.01 * np.sin(pos[:, :1, None] + np.arange(node.shape[1])[None, :, None])
    r = pos[graph.receivers] - pos[graph.senders]
    edge += 0.02 * np.cos(r[:, :1, None] + np.arange(edge.shape[1])[None, None, :])
    node[~np.asarray(graph.nodes["mask"])] = rng.normal(0, 100.0, node.shape[1:])
    edge[~np.asarray(graph.edges["mask"])] = rng.normal(0, 100.0, edge.shape[1:])
    # entries of absent orbitals are garbage too
    om = np.asarray(batch["orbital_mask"])
    node = np.where(om[:, :, None] & om[:, None, :], node, 1e3)
    return node, edge


def _reference_errors(records, batch, node_pred, edge_pred, weights=None):
    """Squared and absolute errors by walking every block of every record (no masks).

    Also the sums of ``weight * squared error``, ``weight * absolute error`` and ``weight``
    over entries, with ``weights`` a dict atomic number -> weight (1 if absent): an on-site
    entry of atom i weighs w_i, a hopping entry of (i, j) (w_i + w_j) / 2.
    """
    weights = weights or {}
    graph = batch["graph"]
    senders, receivers = np.asarray(graph.senders), np.asarray(graph.receivers)
    shifts = np.asarray(graph.edges["shifts"])
    node_off = edge_off = 0
    sq = node_abs = edge_abs = 0.0
    n_node_entries = n_edge_entries = 0
    wsq = wabs = wsum = 0.0
    for record in records:
        counts = record.orbital_counts
        lookup = {}
        n_edges_here = 0
        for e in range(edge_off, len(senders)):
            if not graph.edges["mask"][e] or senders[e] - node_off >= len(record.numbers):
                break
            lookup[(senders[e] - node_off, receivers[e] - node_off, tuple(shifts[e]))] = e
            n_edges_here += 1
        for b, (i, j) in enumerate(record.pairs):
            block = record.block(b)
            key = (int(i), int(j), tuple(int(x) for x in record.shifts[b]))
            if key[0] == key[1] and key[2] == (0, 0, 0):
                pred = node_pred[node_off + i, : counts[i], : counts[j]]
                diff = pred - block
                node_abs += np.abs(diff).sum()
                n_node_entries += diff.size
            elif key in lookup:
                pred = edge_pred[lookup[key], : counts[i], : counts[j]]
                diff = pred - block
                edge_abs += np.abs(diff).sum()
                n_edge_entries += diff.size
            else:
                continue  # beyond the cutoff: not a graph edge, not counted
            sq += (diff**2).sum()
            w_i = weights.get(int(record.numbers[i]), 1.0)
            w_j = weights.get(int(record.numbers[j]), 1.0)
            w = w_i if key[0] == key[1] and key[2] == (0, 0, 0) else 0.5 * (w_i + w_j)
            wsq += w * (diff**2).sum()
            wabs += w * np.abs(diff).sum()
            wsum += w * diff.size
        node_off += len(record.numbers)
        edge_off += n_edges_here
    return sq, node_abs, edge_abs, n_node_entries, n_edge_entries, wsq, wabs, wsum


def test_masked_loss_equals_block_walk_and_ignores_padding(tiny_records):
    records = tiny_records[:2]
    tight = _batch(records)
    loose = _batch(records, batching.Budget(n_node=64, n_edge=256, n_graph=6))
    assert loose["graph"].senders.shape[0] > tight["graph"].senders.shape[0]
    results = []
    for seed, batch in enumerate((tight, loose)):
        node, edge = _fake_prediction(batch, seed)
        for loss in ("mse", "mae"):
            sums = train.block_errors(jnp.asarray(node), jnp.asarray(edge), batch, loss=loss)
            results.append(sums)
        sq, n_abs, e_abs, n_n, n_e, *_ = _reference_errors(records, batch, node, edge)
        mse_sums = results[-2]
        count = float(mse_sums["node_count"] + mse_sums["edge_count"])
        assert count == n_n + n_e > 0
        np.testing.assert_allclose(
            float(mse_sums["loss_sum"]) / count, sq / (n_n + n_e), rtol=1e-12
        )
        np.testing.assert_allclose(float(mse_sums["node_abs"]), n_abs, rtol=1e-12)
        np.testing.assert_allclose(float(mse_sums["edge_abs"]), e_abs, rtol=1e-12)
    # the two paddings give the same loss (normalised by the mask sum) and the same metrics
    for key in ("loss_sum", "node_abs", "edge_abs", "node_count", "edge_count"):
        np.testing.assert_allclose(float(results[0][key]), float(results[2][key]), rtol=1e-12)
        np.testing.assert_allclose(float(results[1][key]), float(results[3][key]), rtol=1e-12)


def test_element_weighted_loss_equals_weighted_block_walk(tiny_records):
    records = tiny_records[:2]
    batch = _batch(records, batching.Budget(n_node=64, n_edge=256, n_graph=6))
    node, edge = _fake_prediction(batch, 3)
    elements = sorted({int(z) for r in records for z in r.numbers})
    assert len(elements) >= 2  # a weight that differs between elements is tested
    by_symbol = {chemical_symbols[elements[0]]: 4.0}
    table = train.species_weights(by_symbol)
    assert table[elements[0]] == 4.0 and table[elements[1]] == 1.0
    walk = _reference_errors(records, batch, node, edge, {elements[0]: 4.0})
    wsq, wabs, wsum = walk[5:]
    count = walk[3] + walk[4]
    assert wsum > count  # the weight reached some entries
    for loss, expected in (("mse", wsq), ("mae", wabs)):
        sums = train.block_errors(
            jnp.asarray(node), jnp.asarray(edge), batch, loss=loss, weights=table
        )
        np.testing.assert_allclose(float(sums["loss_sum"]), expected, rtol=1e-12)
        np.testing.assert_allclose(float(sums["loss_weight"]), wsum, rtol=1e-12)
        # the metrics stay unweighted
        np.testing.assert_allclose(float(sums["node_abs"] + sums["edge_abs"]), walk[1] + walk[2])
    # one weight on every element scales sum and normaliser alike: the plain loss
    every = train.species_weights({chemical_symbols[z]: 2.5 for z in elements})
    plain = train.block_errors(jnp.asarray(node), jnp.asarray(edge), batch)
    scaled = train.block_errors(jnp.asarray(node), jnp.asarray(edge), batch, weights=every)
    assert float(plain["loss_weight"]) == count
    np.testing.assert_allclose(
        float(scaled["loss_sum"] / scaled["loss_weight"]),
        float(plain["loss_sum"] / plain["loss_weight"]),
        rtol=1e-12,
    )
    for bad, match in (({"Xx": 2.0}, "not an element"), ({"O": 0.0}, "positive")):
        with pytest.raises(ValueError, match=match):
            train.TrainConfig(model=small_model_config(), element_loss_weights=bad)


def test_energy_reference_alignment_removes_a_constant_shift(tiny_records):
    batch = _batch(tiny_records[:2])
    node = np.asarray(batch["node_targets"]).copy()
    edge = np.asarray(batch["edge_targets"]).copy()
    graph = batch["graph"]
    # shift each structure's on-site diagonal by its own constant (Hartree)
    graph_of_node = np.repeat(np.arange(len(graph.n_node)), graph.n_node)
    shift = np.array([0.3, -0.7, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0])[: len(graph.n_node)]
    m = node.shape[1]
    node = node + shift[graph_of_node][:, None, None] * np.eye(m)
    plain = train.block_errors(jnp.asarray(node), jnp.asarray(edge), batch)
    aligned = train.block_errors(
        jnp.asarray(node), jnp.asarray(edge), batch, align_energy_reference=True
    )
    assert float(plain["loss_sum"]) > 0.1
    assert float(aligned["loss_sum"]) < 1e-20
    # a shift that is not constant on a structure is not removed
    node[0, 0, 0] += 0.1
    aligned = train.block_errors(
        jnp.asarray(node), jnp.asarray(edge), batch, align_energy_reference=True
    )
    assert float(aligned["loss_sum"]) > 1e-4


def test_metrics_units():
    sums = {
        "loss_sum": 8.0,
        "node_abs": 0.002,
        "edge_abs": 0.006,
        "node_count": 2.0,
        "edge_count": 2.0,
    }
    m = train.loss_and_mae_from_sums(sums)
    assert m["loss"] == pytest.approx(2.0)
    assert m["node_mae_mEh"] == pytest.approx(1.0)
    assert m["edge_mae_mEh"] == pytest.approx(3.0)
    assert m["total_mae_mEh"] == pytest.approx(2.0)  # over all four entries
    assert m["total_mae_meV"] == pytest.approx(2.0 * HARTREE_EV)


def test_config_json_round_trip_and_bad_keys(tmp_path):
    config = train.TrainConfig(
        model=small_model_config(),
        data=("/data/a.npz", "/data/b.npz"),
        epochs=3,
        loss="mae",
        slice_width_angstrom=None,
        element_loss_weights={"Hf": 3.0, "O": 2.0},
    )
    path = tmp_path / "cfg.json"
    train.save_config(config, path)
    assert train.load_config(path) == config
    # relative data paths are relative to the config file
    (tmp_path / "rel.json").write_text('{"data": ["d/x.npz"], "validation_data": ["/v.npz"]}')
    relative = train.load_config(tmp_path / "rel.json")
    assert relative.data == (str(tmp_path.resolve() / "d" / "x.npz"),)
    assert relative.validation_data == ("/v.npz",)
    # defaults: paper-like settings; the basis is left to the training data
    default = train.default_config()
    assert default.model["max_ell"] == 4 and default.model["channels"] == 16
    assert default.model["cutoff"] == 8.0 and "basis" not in default.model
    # partial model dict merges with the defaults
    partial = train.config_from_dict({"model": {"channels": 8, "heads": 2}, "epochs": 5})
    assert partial.model["channels"] == 8 and partial.model["max_ell"] == 4
    assert partial.epochs == 5
    # ... and with a basis it is a complete model
    basis = {"name": BASIS.name, "shells": {str(z): list(ls) for z, ls in BASIS.shells}}
    full = train.config_from_dict({"model": {"channels": 8, "heads": 2, "basis": basis}})
    assert full.model.basis == BASIS and full.model.channels == 8 and full.model.max_ell == 4
    with pytest.raises(ValueError, match="learning_rat"):
        train.config_from_dict({"learning_rat": 1e-3})
    with pytest.raises(ValueError, match="chanels"):
        train.config_from_dict({"model": {"chanels": 8}})
    with pytest.raises(ValueError, match="loss"):
        train.config_from_dict({"loss": "huber"})
    bad = tmp_path / "bad.json"
    bad.write_text('{"epochs": 3,\n "seed": }')
    with pytest.raises(ValueError, match=r"bad\.json: line 2"):
        train.load_config(bad)
    # errors of a config file name the file and the key
    bad.write_text('{"epochs": "many"}')
    with pytest.raises(ValueError, match=r"bad\.json: key 'epochs' must be an integer"):
        train.load_config(bad)
    bad.write_text('{"model": {"heads": 3}}')
    with pytest.raises(ValueError, match=r"bad\.json: key 'model' .*heads \(3\) must divide"):
        train.load_config(bad)


def test_model_without_basis_takes_the_basis_of_the_training_data(tiny_records):
    """The union of the records' element shells under their common basis name: for tblite
    GFN1-xTB references of H2O and NH3, the GFN1-xTB basis of H, N and O."""
    config = train.config_from_dict({"model": {"max_ell": 1, "channels": 8, "heads": 1}})
    resolved = train.with_data_basis(config, tiny_records)
    assert resolved.model.basis == gfn1_xtb_basis(["H", "N", "O"])
    assert resolved.model.channels == 8 and resolved.model.cutoff == 8.0
    assert train.with_data_basis(resolved, tiny_records[:1]) is resolved  # complete already
    water_only = train.with_data_basis(config, tiny_records[:1]).model.basis
    assert water_only == gfn1_xtb_basis(["H", "O"])
    other = tiny_records[0].replace(basis=dataclasses.replace(BASIS, name="other"))
    with pytest.raises(ValueError, match="different bases.*structure 1"):
        train.with_data_basis(config, [tiny_records[1], other])
    with pytest.raises(ValueError, match="max_ell=1 is below"):
        train.with_data_basis(config, [_hafnium_record()])


def _hafnium_record():
    """A HfO molecule with zero blocks on the GFN1-xTB basis (Hf has a d shell)."""
    from ase import Atoms

    from hamjax.inference import blocks_to_record

    basis = gfn1_xtb_basis(["O", "Hf"])
    graph = build_graph(Atoms("HfO", positions=[[0, 0, 0], [1.8, 0, 0]]), 4.0, basis=basis)
    m = max(basis.n_orbitals(z) for z in basis.elements)
    node, edge = np.zeros((graph.n_node, m, m)), np.zeros((graph.n_edge, m, m))
    return blocks_to_record(graph, node, edge, basis)


def test_print_default_config_parses_back(capsys):
    from hamjax.cli import main

    assert main(["train", "--print-default-config"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert train.config_from_dict(data) == train.default_config()


def test_schedule_warmup_and_decay():
    config = train.TrainConfig(
        model=small_model_config(),
        learning_rate=1e-3,
        final_learning_rate=1e-5,
        warmup_steps=10,
        schedule="cosine",
    )
    _, schedule = train.make_optimizer(config, total_steps=110)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(110)) == pytest.approx(1e-5)
    config = dataclasses.replace(config, schedule="exponential")
    _, schedule = train.make_optimizer(config, total_steps=110)
    assert float(schedule(60)) == pytest.approx(1e-3 * (1e-2) ** 0.5, rel=1e-6)
    # plateau: the step size is cut by plateau_factor once the loss stops improving
    config = dataclasses.replace(
        config,
        schedule="plateau",
        warmup_steps=0,
        plateau_patience=2,
        plateau_factor=0.5,
        gradient_clip_norm=0.0,
    )
    optimizer, _ = train.make_optimizer(config, total_steps=100, steps_per_epoch=1)
    params = {"w": jnp.ones(3)}
    state = optimizer.init(params)
    sizes = []
    for _ in range(8):
        updates, state = optimizer.update({"w": jnp.ones(3)}, state, params, value=1.0)
        sizes.append(float(jnp.abs(updates["w"][0])))
    # a constant loss never improves: the scale halves every plateau_patience updates
    assert sizes[1] == pytest.approx(1e-3, rel=1e-4)
    assert sizes[-1] == pytest.approx(1e-3 * 0.5**3, rel=1e-4)
    assert train.plateau_scale(state) == 0.125


def test_stack_for_devices_groups_by_shape_and_blanks_the_rest(tiny_records):
    a = _batch(tiny_records[:1])
    b = _batch(tiny_records[1:2], batching.Budget(n_node=64, n_edge=256, n_graph=4))
    groups = train.stack_for_devices([a, b, a], 2)
    assert len(groups) == 2
    shapes = sorted(g["node_targets"].shape for g in groups)
    assert shapes[0][0] == 2 and shapes[1][0] == 2
    big = [g for g in groups if g["node_targets"].shape[1] == 64][0]
    assert big["node_labels"][0].any() and not big["node_labels"][1].any()  # blank filler


# ----------------------------------------------------------------- slow: compile the model
def _write_dataset(records, folder: Path) -> list[str]:
    from hamjax.io import dataset

    folder.mkdir(parents=True, exist_ok=True)
    return [str(dataset.save(r, folder / f"s{k}.npz")) for k, r in enumerate(records)]


def _tiny_config(paths, **changes):
    settings = dict(
        model=small_model_config(),
        data=tuple(paths[:2]),
        validation_data=tuple(paths[2:]),
        slice_width_angstrom=None,
        max_graphs_per_batch=2,
        epochs=300,
        checkpoint_every_epochs=100,
        learning_rate=1e-2,
        final_learning_rate=3e-4,
        warmup_steps=10,
        progress=False,
    )
    settings.update(changes)
    return train.TrainConfig(**settings)


@pytest.fixture(scope="module")
def trained(tiny_records, tmp_path_factory):
    """A model overfitted on the tiny dataset (its folder and config)."""
    folder = tmp_path_factory.mktemp("train")
    paths = _write_dataset(tiny_records, folder / "data")
    config = _tiny_config(paths)
    _, state = train.train(config, folder / "run", echo=None, return_state=True)
    return folder / "run", config, state


@pytest.mark.slow
def test_overfits_tiny_dataset(trained):
    run, _, _ = trained
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 301))
    first, last = log[0]["train_total_mae_meV"], log[-1]["train_total_mae_meV"]
    assert last < first / 10, (first, last)
    assert last < 300.0, last  # meV over every labelled H entry


@pytest.mark.slow
def test_checkpoint_round_trip_gives_identical_predictions(trained, tiny_records):
    from hamjax.inference import Predictor
    from hamjax.models import HamiltonianModel

    run, config, state = trained
    loaded_config, params, meta = train.load_checkpoint(run, "latest")
    assert loaded_config == config and meta["epoch"] == 300 and meta["step"] == 300
    saved = json.loads((run / "config.json").read_text())
    assert train.config_from_dict(saved) == config
    # the restored arrays are bit-identical to the final parameters in memory
    leaves, restored = jax.tree.leaves(state.params), jax.tree.leaves(params)
    assert len(leaves) == len(restored)
    for x, y in zip(leaves, restored, strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # ... and predict identically
    from_disk = Predictor.load(run, "latest").predict(tiny_records)
    in_memory = Predictor(config.model, state.params).predict(tiny_records)
    for a, b in zip(from_disk, in_memory, strict=True):
        np.testing.assert_array_equal(a.hamiltonian, b.hamiltonian)
    # the final training metric is reproduced by the restored model
    sums = train.make_eval_step(HamiltonianModel(config.model), config)(
        jax.tree.map(jnp.asarray, params),
        jax.tree.map(
            lambda x: np.asarray(x)[None], train.make_batches(tiny_records[2:], config)[0]
        ),
    )
    metrics = train.loss_and_mae_from_sums(sums)
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert metrics["total_mae_meV"] == pytest.approx(log[-1]["validation_total_mae_meV"], rel=1e-5)


@pytest.mark.slow
def test_train_step_compiles_once_per_bucket(tiny_records):
    from hamjax.models import HamiltonianModel

    config = train.TrainConfig(model=small_model_config(), slice_width_angstrom=None)
    budget = batching.Budget(n_node=16, n_edge=32, n_graph=3)
    batches = [_batch([r], budget, np.float32) for r in tiny_records]
    model = HamiltonianModel(config.model)
    optimizer, _ = train.make_optimizer(config, 10)
    params = model.init(jax.random.key(0), batches[0]["graph"])
    state = train.TrainState(params, optimizer.init(params), jnp.asarray(0), jnp.zeros(2))
    step = train.make_train_step(model, config, optimizer)
    for group in train.stack_for_devices(batches * 2, 1):
        state, _ = step(state, jax.tree.map(jnp.asarray, group))
    assert int(state.step) == 6
    assert step._cache_size() == 1


@pytest.mark.slow
def test_resume_after_kill_continues_without_lost_or_repeated_epochs(tiny_records, tmp_path):
    paths = _write_dataset(tiny_records, tmp_path / "data")
    config = _tiny_config(paths, epochs=40, checkpoint_every_epochs=1)
    cfg = tmp_path / "cfg.json"
    train.save_config(config, cfg)
    out = tmp_path / "run"
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    command = [
        sys.executable,
        "-m",
        "hamjax.cli",
        "train",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--quiet",
    ]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    checkpoints = out / "checkpoints"
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        if checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert 1 <= len(killed_log) < 40, "the run finished before it could be interrupted"
    saved = [int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()]
    resumed_from = max(saved)
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"at epoch {resumed_from}, step {resumed_from}" in result.stdout
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == list(range(1, 41))
    assert [r["step"] for r in log] == list(range(1, 41))
    # epochs before the interruption are the ones logged by the first run
    for a, b in zip(log[:resumed_from], killed_log[:resumed_from], strict=True):
        assert a == b


_DATA_PARALLEL_SCRIPT = r"""
import json, sys
import jax
import jax.numpy as jnp
import numpy as np
from hamjax import train
from hamjax.io import dataset
from hamjax.models import HamiltonianModel

assert len(jax.local_devices()) == 2, jax.local_devices()
config = train.load_config(sys.argv[1])
records = [dataset.load(p) for p in config.data]
batches = train.make_batches(records, config)
group = train.stack_for_devices(batches, 2)[0]
model = HamiltonianModel(config.model)
optimizer, _ = train.make_optimizer(config, 10)
params = jax.jit(model.init)(jax.random.key(0), jax.tree.map(lambda x: x[0], group)["graph"])
state = train.TrainState(params, optimizer.init(params), jnp.asarray(0), jnp.zeros(2, jnp.uint32))
step = train.make_train_step(model, config, optimizer)
placement = train.Placement(True)
sharded_state, sharded_sums = step(placement.replicate(state), placement.batch(group))
assert len(sharded_state.params["params"]["embedding"]["embedding"].sharding.device_set) == 2
single = jax.devices()[0]
one_state, one_sums = step(jax.device_put(state, single), jax.device_put(group, single))
diff = max(
    float(np.max(np.abs(np.asarray(a) - np.asarray(b))) / (np.max(np.abs(np.asarray(b))) + 1e-30))
    for a, b in zip(jax.tree.leaves(sharded_state.params), jax.tree.leaves(one_state.params))
)
print(json.dumps({
    "param_rel_diff": diff,
    "loss": [float(sharded_sums["loss_sum"]), float(one_sums["loss_sum"])],
    "count": [float(sharded_sums["node_count"]), float(one_sums["node_count"])],
}))
"""


@pytest.mark.slow
def test_data_parallel_step_equals_single_device(tiny_records, tmp_path):
    # two water molecules: one bucket, so each device gets a real structure
    paths = _write_dataset(tiny_records[0::2], tmp_path / "data")
    config = _tiny_config(paths, max_graphs_per_batch=1, validation_data=())
    cfg = tmp_path / "cfg.json"
    train.save_config(config, cfg)
    script = tmp_path / "dp.py"
    script.write_text(_DATA_PARALLEL_SCRIPT)
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
    }
    result = subprocess.run(
        [sys.executable, str(script), str(cfg)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["count"][0] == out["count"][1] > 0
    assert out["loss"][0] == pytest.approx(out["loss"][1], rel=1e-6)
    assert out["param_rel_diff"] < 1e-6


def test_slice_batches_label_every_block_once_in_exact_mode():
    """Training batches of slices: "exact" labels every node and edge of the structure once,
    "paper" drops the edges that cross a slice boundary."""
    from ase import Atoms

    from hamjax.inference import blocks_to_record

    rng = np.random.default_rng(5)
    base = np.array([[0.0, 0.0, 0.0], [0.76, 0.59, 0.0], [-0.76, 0.59, 0.0]])
    positions = np.concatenate([base + [2.9 * k + 1.0, 3.0, 3.0] for k in range(8)])
    atoms = Atoms(
        numbers=[8, 1, 1] * 8,
        positions=positions + rng.normal(0, 0.05, positions.shape),
        cell=np.diag([23.2, 7.0, 7.0]),
        pbc=True,
    )
    model = small_model_config(cutoff=3.0)
    graph = build_graph(atoms, 3.0, basis=BASIS)
    m = 4
    record = blocks_to_record(
        graph, rng.normal(size=(graph.n_node, m, m)), rng.normal(size=(graph.n_edge, m, m)), BASIS
    )
    counts = BASIS.orbital_counts(graph.numbers)
    entries = {
        "node": int((counts**2).sum()),
        "edge": int((counts[graph.senders] * counts[graph.receivers]).sum()),
    }
    labelled = {}
    for mode in ("exact", "paper"):
        config = train.TrainConfig(
            model=model, slice_width_angstrom=4.0, partition_mode=mode, max_graphs_per_batch=2
        )
        batches = train.make_batches([record], config)
        assert len(batches) >= 3
        sums = {"node": 0, "edge": 0}
        for batch in batches:
            zero = train.block_errors(
                jnp.zeros_like(batch["node_targets"]),
                jnp.zeros_like(batch["edge_targets"]),
                batch,
            )
            sums["node"] += int(zero["node_count"])
            sums["edge"] += int(zero["edge_count"])
        labelled[mode] = sums
    assert labelled["exact"] == entries
    assert labelled["paper"]["node"] == entries["node"]
    assert 0 < labelled["paper"]["edge"] < entries["edge"]


def test_mean_onsite_blocks_are_the_mean_over_atoms_of_each_element(tiny_records):
    """Against the blocks read straight from the records (two padded batches, padding and
    unlabelled atoms ignored)."""
    from hamjax.models import block_layout

    batches = [_batch(tiny_records[:2], dtype=np.float64), _batch(tiny_records[2:])]
    means = train.mean_onsite_blocks(batches, BASIS)
    layout = block_layout(BASIS)
    for s, z in enumerate(layout.elements):
        blocks = [
            r.block(k)
            for r in tiny_records
            for k, (i, j) in enumerate(r.pairs)
            if i == j and not r.shifts[k].any() and r.numbers[i] == z
        ]
        n = BASIS.n_orbitals(z)
        if not blocks:
            assert np.isnan(means[s]).all()
            continue
        np.testing.assert_allclose(means[s, :n, :n], np.mean(blocks, axis=0), atol=1e-12)


@pytest.mark.slow
def test_init_from_starts_at_the_saved_model(trained, tiny_records, tmp_path):
    # with a vanishing learning rate the first epoch evaluates the saved best parameters:
    # the validation error equals the one recorded at that checkpoint
    run, config, _ = trained
    best = train.load_checkpoint(run, "best")[2]
    record = best["history"][-1]
    finetune = dataclasses.replace(
        config, init_from=str(run), epochs=1, learning_rate=1e-30, final_learning_rate=1e-30
    )
    first = train.train(finetune, tmp_path / "finetune", echo=None)
    assert first["validation_total_mae_meV"] == pytest.approx(
        record["validation_total_mae_meV"], rel=1e-6
    )
    other = dataclasses.replace(finetune, model=small_model_config(channels=4))
    with pytest.raises(ValueError, match="channels"):
        train.train(other, tmp_path / "other", echo=None)


def test_steps_replace_epochs_and_the_schedule_spans_them(tiny_records, tmp_path):
    paths = _write_dataset(tiny_records, tmp_path / "data")
    config = _tiny_config(paths, epochs=1000, steps=3, warmup_steps=0, checkpoint_every_epochs=1)
    train.train(config, tmp_path / "run", echo=None)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    per_epoch = log[0]["step"]
    assert len(log) == -(-3 // per_epoch)  # whole epochs, the first to reach 3 steps
    assert 3 <= log[-1]["step"] < 3 + per_epoch
    # one cosine over exactly those steps: the logged rate is the one of the last step taken
    total = log[-1]["step"]
    lr0, lr1 = config.learning_rate, config.final_learning_rate
    expected = lr1 + (lr0 - lr1) * (1 + np.cos(np.pi * (total - 1) / total)) / 2
    assert log[-1]["learning_rate"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="steps"):
        dataclasses.replace(config, steps=0)


def test_training_in_sittings_equals_one_run(tiny_records, tmp_path):
    # stopped after epoch 2 and resumed, the run logs the same epochs as a run straight to 4
    paths = _write_dataset(tiny_records, tmp_path / "data")
    config = _tiny_config(paths, epochs=4, checkpoint_every_epochs=3)
    train.train(config, tmp_path / "straight", echo=None)
    train.train(config, tmp_path / "sittings", echo=None, until_epoch=2)
    first = (tmp_path / "sittings" / "log.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in first] == [1, 2]
    train.train(config, tmp_path / "sittings", echo=None)
    straight, sittings = (
        [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        for run in ("straight", "sittings")
    )
    assert [r["epoch"] for r in sittings] == [1, 2, 3, 4]
    for a, b in zip(straight, sittings, strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-9)
        assert b["validation_total_mae_meV"] == pytest.approx(
            a["validation_total_mae_meV"], rel=1e-9
        )
