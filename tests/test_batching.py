"""Padded batching: padding changes nothing real, gives no NaN, and bounds the jit shapes."""

import e3nn_jax as e3nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np
import pytest
from ase.build import bulk, molecule

from hamjax.basis import Basis
from hamjax.batching import (
    Budget,
    batch_graphs,
    budget_for,
    count_shapes,
    ladder_size,
    pack,
    shape_signature,
)
from hamjax.folding import fold_gamma
from hamjax.graph import build_graph
from hamjax.targets import gather_targets

CUTOFF = 4.0


def structures():
    out = []
    for seed, rep in enumerate([(1, 1, 1), (2, 1, 1), (1, 2, 2)]):
        a = bulk("HfO2", "fluorite", a=5.1).repeat(rep)
        a.rattle(0.05, seed=seed)
        out.append(a)
    for name in ("H2O", "CH3CH2OH", "C6H6"):
        out.append(molecule(name))
    return out


@pytest.fixture(scope="module")
def graphs():
    return [build_graph(a, CUTOFF) for a in structures()]


def edge_vectors(g):
    """Edge vectors inside jit, with the double-where guard on padding."""
    pos = g.nodes["positions"]
    vec = pos[g.receivers] + g.edges["shift_vectors"] - pos[g.senders]
    mask = g.edges["mask"]
    safe = jnp.where(mask[:, None], vec, 1.0)
    length = jnp.where(mask, jnp.linalg.norm(safe, axis=-1), 0.0)
    return safe, length, mask


def radial(length, mask):
    """Smooth cosine cutoff, zero on padding."""
    return jnp.where(mask, 0.5 * (jnp.cos(jnp.pi * length / CUTOFF) + 1.0), 0.0)


def node_radial_sum(g):
    _, length, mask = edge_vectors(g)
    return jax.ops.segment_sum(
        radial(length, mask), g.receivers, num_segments=g.nodes["positions"].shape[0]
    )


def toy_equivariant(g):
    """Two rounds of e3nn message passing; returns rotation-invariant node scalars."""
    vec, length, mask = edge_vectors(g)
    n_node = g.nodes["positions"].shape[0]
    sh = e3nn.spherical_harmonics("0e + 1o + 2e", vec, normalize=True)
    w = radial(length, mask)[:, None]
    species = g.nodes["species"].astype(vec.dtype)
    first = sh * (w * jnp.sqrt(species[g.senders])[:, None])
    h = e3nn.scatter_sum(first, dst=g.receivers, output_size=n_node, mode="drop")
    # second round: neighbour features gated by their invariant norm and by the edge's l=1
    # spherical harmonic dotted into the neighbour's l=1 part (an invariant)
    hs = h[g.senders]
    gate = jnp.tanh(
        e3nn.norm(hs, squared=True).array.sum(-1)
        + (hs.filter("1o").array * sh.filter("1o").array).sum(-1)
    )
    msg = hs * (w * gate[:, None])
    h2 = e3nn.scatter_sum(msg, dst=g.receivers, output_size=n_node, mode="drop")
    out = e3nn.concatenate([h, h2])
    return e3nn.norm(out, squared=True).array.sum(-1) + jnp.tanh(h2.filter("0e").array[:, 0])


def unpadded(graphs):
    return jraph.batch_np([g.to_graphs_tuple() for g in graphs])


def test_ladder_is_small_and_monotone():
    sizes = [ladder_size(n) for n in range(1, 3000)]
    assert all(s >= n for s, n in zip(sizes, range(1, 3000), strict=True))
    assert np.all(np.diff(sizes) >= 0)
    assert sorted(set(sizes)) == [8 * 2**k for k in range(10)]
    fine = sorted({ladder_size(n, growth=1.25) for n in range(1, 3000)})
    assert len(fine) < 30 and max(b / a for a, b in zip(fine, fine[1:], strict=False)) <= 2.0


def test_jraph_padding_convention(graphs):
    batch, _ = batch_graphs(graphs[:3])
    n_real_node = sum(g.n_node for g in graphs[:3])
    assert batch.n_node.sum() == len(batch.nodes["mask"]) and batch.n_edge.sum() == len(
        batch.senders
    )
    np.testing.assert_array_equal(jraph.get_graph_padding_mask(batch), batch.globals["mask"])
    np.testing.assert_array_equal(jraph.get_node_padding_mask(batch), batch.nodes["mask"])
    np.testing.assert_array_equal(jraph.get_edge_padding_mask(batch), batch.edges["mask"])
    pad = ~batch.edges["mask"]
    assert np.all(batch.senders[pad] == n_real_node) and np.all(batch.receivers[pad] == n_real_node)
    np.testing.assert_array_equal(batch.edges["reverse"][pad], np.flatnonzero(pad))
    # reverse stays an involution and points at (j, i, -shift) after offsetting
    r = batch.edges["reverse"]
    np.testing.assert_array_equal(batch.senders[r], batch.receivers)
    np.testing.assert_array_equal(batch.edges["shifts"][r], -batch.edges["shifts"])


def test_same_values_under_two_budgets_and_unpadded(graphs):
    small, _ = batch_graphs(graphs)
    big_budget = Budget(small.n_node.sum() * 2 + 3, small.n_edge.sum() * 2 + 5, 11)
    big, _ = batch_graphs(graphs, budget=big_budget)
    assert len(small.senders) != len(big.senders)
    real = small.nodes["mask"].sum()
    for fn in (node_radial_sum, toy_equivariant):
        a = np.asarray(jax.jit(fn)(small))[:real]
        b = np.asarray(jax.jit(fn)(big))[:real]
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
        # all graphs batched without any padding
        alone = np.asarray(jax.jit(fn)(unpadded(graphs)))
        np.testing.assert_allclose(a, alone, rtol=1e-12, atol=1e-12)
    # independent reference for the radial sum: numpy on the host graph
    ref = np.concatenate(
        [
            np.bincount(
                g.receivers,
                0.5 * (np.cos(np.pi * g.edge_lengths / CUTOFF) + 1),
                minlength=g.n_node,
            )
            for g in graphs
        ]
    )
    np.testing.assert_allclose(np.asarray(node_radial_sum(small))[:real], ref, atol=1e-12)


def test_gradients_have_no_nan_and_ignore_padding(graphs):
    batch, _ = batch_graphs(graphs, budget=budget_for(200, 4000, 12))
    assert (~batch.edges["mask"]).sum() > 100

    def energy(positions, g):
        g = g._replace(nodes={**g.nodes, "positions": positions})
        return jnp.sum(jnp.where(g.nodes["mask"], toy_equivariant(g), 0.0))

    grad = jax.jit(jax.grad(energy))(batch.nodes["positions"], batch)
    assert np.all(np.isfinite(grad))
    real = batch.nodes["mask"]
    assert not np.asarray(grad)[~real].any()
    # matches the gradient of the unpadded graphs
    ref = unpadded(graphs)
    alone = jax.jit(jax.grad(energy))(ref.nodes["positions"], ref)
    np.testing.assert_allclose(np.asarray(grad)[real], alone, rtol=1e-10, atol=1e-12)


def test_distinct_shapes_bounded_by_buckets():
    rng = np.random.default_rng(0)
    dataset = []
    for _ in range(40):
        rep = tuple(int(x) for x in rng.integers(1, 3, size=3))
        a = bulk("HfO2", "fluorite", a=5.1).repeat(rep)
        a.rattle(0.05, seed=int(rng.integers(1000)))
        keep = rng.random(len(a)) < 0.85  # vacancies vary the sizes
        dataset.append(build_graph(a[keep], CUTOFF))
    batches = [batch_graphs([g])[0] for g in dataset]
    node_rungs = {ladder_size(g.n_node + 1) for g in dataset}
    edge_rungs = {ladder_size(g.n_edge) for g in dataset}
    sizes = {(g.n_node, g.n_edge) for g in dataset}
    assert len(sizes) > 20
    assert count_shapes(batches) <= len(node_rungs) * len(edge_rungs) <= 12


def test_no_recompilation_within_a_bucket(graphs):
    traces = []

    @jax.jit
    def f(g):
        traces.append(1)  # runs only when jax traces (compiles) the function
        return node_radial_sum(g).sum()

    budget = Budget(64, 2048, 4)
    b1, _ = batch_graphs(graphs[:1], budget=budget)
    b2, _ = batch_graphs(graphs[3:5], budget=budget)
    assert shape_signature(b1) == shape_signature(b2)
    f(b1).block_until_ready()
    f(b2).block_until_ready()
    assert len(traces) == 1
    b3, _ = batch_graphs(graphs[:1], budget=Budget(128, 2048, 4))
    f(b3).block_until_ready()
    assert len(traces) == 2


def test_budget_too_small_raises(graphs):
    with pytest.raises(ValueError, match="does not fit"):
        batch_graphs(graphs[:2], budget=Budget(graphs[0].n_node + graphs[1].n_node, 10**6, 4))
    with pytest.raises(ValueError, match="graph 1"):
        pack([(3, 10), (100, 10)], Budget(32, 64, 4))


def test_pack_respects_budget(graphs):
    budget = Budget(64, 1024, 4)
    sizes = [(g.n_node, g.n_edge) for g in graphs]
    groups = pack(sizes, budget)
    assert sorted(i for grp in groups for i in grp) == list(range(len(graphs)))
    for grp in groups:
        batch_graphs([graphs[i] for i in grp], budget=budget)  # fits, else raises


def test_targets_batched_with_offsets_and_folding():
    basis = Basis.from_dict("t", {"Hf": (0, 0, 1, 2), "O": (0, 1)})
    from test_graph import random_record  # noqa: PLC0415

    items = []
    for seed, rep in enumerate([(1, 1, 1), (2, 1, 1)]):
        a = bulk("HfO2", "fluorite", a=5.1).repeat(rep)
        a.rattle(0.05, seed=seed)
        record, _ = random_record(a, CUTOFF, seed=seed, basis=basis)
        g = build_graph(a, CUTOFF)
        from hamjax.blocks import BlockHamiltonian  # noqa: PLC0415

        gamma = BlockHamiltonian.from_dense(
            a.numbers, a.positions, a.cell.array, a.pbc, basis, record.to_dense()
        )
        items.append((g, gather_targets(g, record), gather_targets(g, gamma)))
    graphs = [i[0] for i in items]
    batch, full = batch_graphs(graphs, [i[1] for i in items])
    _, gam = batch_graphs(
        graphs,
        [i[2] for i in items],
        budget=budget_for(sum(g.n_node for g in graphs), sum(g.n_edge for g in graphs), 2),
    )
    eo = 0
    for g, t, _ in items:
        np.testing.assert_array_equal(
            full["edge_hamiltonian"][eo : eo + g.n_edge], t.edge_hamiltonian
        )
        eo += g.n_edge
    assert (
        not full["edge_mask"][eo:].any()
        and not full["node_mask"][batch.nodes["mask"].sum() :].any()
    )
    node, edge = fold_gamma(
        full["node_hamiltonian"],
        full["edge_hamiltonian"],
        batch.senders,
        gam["fold_edge"],
        batch.edges["mask"],
    )
    np.testing.assert_allclose(
        np.asarray(edge)[gam["edge_mask"]], gam["edge_hamiltonian"][gam["edge_mask"]], atol=1e-12
    )
    np.testing.assert_allclose(
        np.asarray(node)[gam["node_mask"]], gam["node_hamiltonian"][gam["node_mask"]], atol=1e-12
    )


def test_padding_alone_keeps_plain_norms_finite(graphs):
    """Even a model without the where-guard gets finite gradients from our padded edges."""
    batch, _ = batch_graphs(graphs[:2], budget=Budget(64, 512, 4))

    def plain(positions, g):
        vec = positions[g.receivers] + g.edges["shift_vectors"] - positions[g.senders]
        length = jnp.linalg.norm(vec, axis=-1)  # no guard
        sh = e3nn.spherical_harmonics("1o", vec, normalize=True).array
        return jnp.sum(g.edges["mask"][:, None] * sh * jnp.exp(-length)[:, None])

    grad = jax.grad(plain)(batch.nodes["positions"], batch)
    assert np.all(np.isfinite(grad))
    # the trap this avoids: zero-length padded edges make the same gradient NaN
    zero = batch._replace(
        edges={
            **batch.edges,
            "shift_vectors": np.where(
                batch.edges["mask"][:, None], batch.edges["shift_vectors"], 0.0
            ),
        }
    )
    assert np.isnan(np.asarray(jax.grad(plain)(zero.nodes["positions"], zero))).any()
