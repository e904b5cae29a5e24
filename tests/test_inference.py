"""Inference: exact slices equal the full graph, few compilations, record assembly, CLI.

The model runs with freshly initialised parameters (float32): the facts checked here hold for
any parameters. Tests that compile the model are marked slow.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from ase import Atoms

from hamjax import batching
from hamjax.basis import gfn1_xtb_basis
from hamjax.graph import build_graph

BASIS = gfn1_xtb_basis(["H", "N", "O"])


def _model_config():
    from hamjax.models import ModelConfig

    return ModelConfig(
        basis=BASIS,
        cutoff=3.0,
        max_ell=1,
        channels=8,
        heads=1,
        radial_hidden=(16,),
        attention_dim=4,
        radial_basis=6,
    )


def water_chain(n_molecules: int, seed: int, spacing: float = 2.9) -> Atoms:
    """Rattled water molecules along x in a periodic cell (x-length n * spacing, Angstrom)."""
    rng = np.random.default_rng(seed)
    base = np.array([[0.0, 0.0, 0.0], [0.76, 0.59, 0.0], [-0.76, 0.59, 0.0]])
    positions, numbers = [], []
    for k in range(n_molecules):
        positions.append(base + [k * spacing + 1.0, 3.0, 3.0 + 0.4 * (k % 2)])
        numbers += [8, 1, 1]
    positions = np.concatenate(positions) + rng.normal(0, 0.08, (3 * n_molecules, 3))
    cell = np.diag([n_molecules * spacing, 7.0, 7.0])
    return Atoms(numbers=numbers, positions=positions, cell=cell, pbc=True)


@pytest.fixture(scope="module")
def predictor():
    from hamjax.inference import Predictor
    from hamjax.models import HamiltonianModel

    config = _model_config()
    graph = build_graph(water_chain(2, 0), config.cutoff, basis=BASIS)
    graphs_tuple, _ = batching.batch_graphs([graph], dtype=np.float32)
    params = HamiltonianModel(config).init(jax.random.key(3), graphs_tuple)
    return Predictor(config, params)


@pytest.mark.slow
def test_exact_slices_equal_full_graph(predictor):
    atoms = water_chain(8, 1)  # 23.2 Angstrom along x: several 4-Angstrom slices
    full = predictor.predict([atoms])[0]
    sliced = predictor.predict([atoms], slices="exact", slice_width_angstrom=4.0)[0]
    from hamjax.partition import partition

    graph = build_graph(atoms, 3.0, basis=BASIS)
    pieces = partition(graph, 0, width=4.0, mode="exact")
    assert len(pieces) >= 4 and max(p.graph.n_node for p in pieces) < graph.n_node
    np.testing.assert_array_equal(full.pairs, sliced.pairs)
    np.testing.assert_array_equal(full.shifts, sliced.shifts)
    scale = np.abs(full.hamiltonian).max()
    assert scale > 1e-3
    assert np.abs(sliced.hamiltonian - full.hamiltonian).max() <= 1e-5 * scale
    assert sliced.metadata["inference"] == "exact slices"


@pytest.mark.slow
def test_record_has_every_graph_block_and_a_symmetric_gamma_matrix(predictor):
    atoms = water_chain(3, 2)
    record = predictor.predict([atoms])[0]
    graph = build_graph(atoms, 3.0, basis=BASIS)
    assert len(record.pairs) == graph.n_node + graph.n_edge
    assert record.n_orbitals == int(BASIS.orbital_counts(atoms.numbers).sum())
    # H_ji(-R) = H_ij(R)^T (the model's hermiticity) survives the assembly into the record
    h = record.to_dense()
    np.testing.assert_allclose(h, h.T, atol=1e-7)
    hk = record.to_dense(k=(0.3, 0.0, 0.0))
    np.testing.assert_allclose(hk, hk.conj().T, atol=1e-7)
    # one block per graph edge, equal to the model's edge block
    node, edge = jax.device_get(
        predictor.apply(batching.batch_graphs([graph], dtype=np.float32)[0])
    )
    counts = BASIS.orbital_counts(graph.numbers)
    index = {
        (int(i), int(j), tuple(s)): b
        for b, ((i, j), s) in enumerate(zip(record.pairs, record.shifts.tolist(), strict=True))
    }
    for e in range(0, graph.n_edge, 7):
        i, j = int(graph.senders[e]), int(graph.receivers[e])
        b = index[(i, j, tuple(int(x) for x in graph.shifts[e]))]
        np.testing.assert_array_equal(record.block(b), edge[e, : counts[i], : counts[j]])


@pytest.mark.slow
def test_one_compilation_per_bucket(predictor):
    from hamjax.inference import Predictor

    fresh = Predictor(predictor.config, predictor.params)  # its own jit cache
    moved = water_chain(4, 10)
    moved.positions += [0.3, -0.2, 0.1]  # same graph sizes, other coordinates
    structures = [water_chain(4, 10), moved, water_chain(4, 11), water_chain(8, 15)]
    budgets = set()
    for atoms in structures:
        graph = build_graph(atoms, 3.0, basis=BASIS)
        budgets.add(batching.budget_for(graph.n_node, graph.n_edge, 1, growth=1.25))
    assert len(budgets) < len(structures)
    for atoms in structures:  # one structure per call: the jit cache must carry over
        fresh.predict([atoms], max_graphs_per_batch=1, growth=1.25)
    assert fresh.n_traces == len(budgets)
    fresh.predict(structures, max_graphs_per_batch=1, growth=1.25)
    assert fresh.n_traces == len(budgets)


def test_bad_structure_names_the_atom():
    from hamjax.inference import Predictor

    # the check happens before the model runs, so no parameters are needed
    bare = Predictor(_model_config(), {})
    atoms = Atoms(numbers=[8, 1, 26], positions=[[0, 0, 0], [0.9, 0, 0], [3, 0, 0]])
    with pytest.raises(ValueError, match="structure 0: atom 2"):
        bare.predict([atoms])
    with pytest.raises(ValueError, match="slices"):
        bare.predict([atoms], slices="paper")


@pytest.mark.slow
def test_predict_cli_writes_dataset_and_cp2k(tmp_path):
    from ase.build import molecule

    from hamjax import train
    from hamjax.basis import to_hamjax_order
    from hamjax.cli import main
    from hamjax.io import dataset, read_csr
    from hamjax.reference import compute_reference

    record = compute_reference(molecule("H2O"), "tblite")
    data = dataset.save(record, tmp_path / "water.npz")
    config = train.TrainConfig(
        model=_model_config(),
        data=(str(data),),
        slice_width_angstrom=None,
        epochs=1,
        progress=False,
    )
    train.save_config(config, tmp_path / "cfg.json")
    assert (
        main(["train", "--config", str(tmp_path / "cfg.json"), "--out", str(tmp_path / "model")])
        == 0
    )
    molecule("H2O").write(tmp_path / "w.xyz")
    out = tmp_path / "pred.npz"
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "model"),
                "--structure",
                str(tmp_path / "w.xyz"),
                "--out",
                str(out),
                "--cp2k",
                str(tmp_path / "pred"),
            ]
        )
        == 0
    )
    predicted = dataset.load(out)
    assert predicted.overlap is None and len(predicted.pairs) == 9
    ks = read_csr(tmp_path / "pred-KS_SPIN_1-1_0.csr", predicted.n_orbitals)
    dense = to_hamjax_order(ks.toarray(), BASIS, predicted.numbers, "cp2k")
    np.testing.assert_allclose(dense, predicted.to_dense(), atol=1e-12)
    # from a dataset file the overlap is carried over
    assert (
        main(
            [
                "predict",
                "--model",
                str(tmp_path / "model"),
                "--structure",
                str(data),
                "--out",
                str(tmp_path / "pred2.npz"),
            ]
        )
        == 0
    )
    again = dataset.load(tmp_path / "pred2.npz")
    np.testing.assert_allclose(again.to_dense("overlap"), record.to_dense("overlap"), atol=1e-12)
    summary = json.loads((tmp_path / "model" / "log.jsonl").read_text().splitlines()[0])
    assert summary["epoch"] == 1


def test_cells_folded_unlike_the_training_set_are_flagged(tmp_path):
    """A model trained on Gamma-folded cells 4.2 A across (images within its cutoff) warns
    for a cell 8.4 A across and for a molecule, and not for another cell like its own."""
    import warnings

    from test_two_terminal import periodic_chain

    from hamjax.inference import Predictor
    from hamjax.train import FOLDED_CELLS_FILE, save_folded_cells

    # a Gamma-only chain with a 4.2 A period and one with explicit image shifts: only the
    # first folds images, so only its cell is recorded
    folded = periodic_chain(6, spacing=0.7, folded=True)
    unfolded = periodic_chain(12, spacing=0.7)
    save_folded_cells(tmp_path, [folded, unfolded], cutoff=3.0)
    saved = json.loads((tmp_path / FOLDED_CELLS_FILE).read_text())
    assert saved["multi_image_translations_angstrom"] == [[4.2, 4.2]]  # +-4.2; 8.4 > 2 x 3

    bare = Predictor(_model_config(), {})  # cutoff 3 A; no parameters needed for the check
    bare.folded_cells = [tuple(c) for c in saved["multi_image_translations_angstrom"]]
    same = folded.replace(positions=folded.positions + 0.05)
    wider = periodic_chain(12, spacing=0.7, folded=True)
    molecule = Atoms(numbers=[8, 1, 1], positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert bare.check_cells([same, wider, molecule]) == [1, 2]
    assert len(caught) == 2 and "structure 1" in str(caught[0].message)
    assert "not reliable" in str(caught[1].message)
    bare.folded_cells = []  # trained on unfolded references: nothing to warn about
    assert bare.check_cells([wider, molecule]) == []
