"""Assembly of padded blocks into H: dense (Gamma, Bloch k), scipy.sparse and BCOO paths agree
with the block record's own dense conversion, and the chain to the current has dI/dH right."""

import jax
import jax.numpy as jnp
import numpy as np
from ase import Atoms

from hamjax.assemble import (
    bcoo_hamiltonian,
    current_from_hamiltonian,
    dense_hamiltonian,
    orbital_index,
    sparse_hamiltonian,
)
from hamjax.basis import Basis
from hamjax.batching import Budget, batch_graphs
from hamjax.blocks import BlockHamiltonian
from hamjax.graph import build_graph

BASIS = Basis.from_dict("test", {"Hf": (2, 0, 1), "O": (0, 1), "H": (0,)})


def _case(seed=0):
    """A small periodic cell thin along x (an atom meets its own images) with random blocks."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(
        "HfO2H",
        positions=[[0.0, 0.0, 0.0], [1.2, 1.5, 0.3], [0.4, -1.1, 1.4], [0.9, 0.8, -1.6]],
        cell=np.diag([2.6, 5.0, 12.0]),
        pbc=(True, True, False),
    )
    graph = build_graph(atoms, 3.0, basis=BASIS)
    padded, _ = batch_graphs([graph], budget=Budget(n_node=8, n_edge=128, n_graph=2))
    m = 9
    counts = BASIS.orbital_counts(graph.numbers)
    node = np.zeros((8, m, m))
    edge = np.zeros((128, m, m))
    for i, n in enumerate(counts):
        node[i, :n, :n] = rng.normal(size=(n, n))
    for e in range(graph.n_edge):
        edge[e, : counts[graph.senders[e]], : counts[graph.receivers[e]]] = rng.normal(
            size=(counts[graph.senders[e]], counts[graph.receivers[e]])
        )
    edge[graph.n_edge :] = rng.normal(size=(128 - graph.n_edge, m, m))  # padding: must vanish
    return graph, padded, node, edge, counts


def _record(graph, node, edge, counts) -> BlockHamiltonian:
    """The same blocks as a BlockHamiltonian (independent dense conversion)."""
    pairs = [(i, i) for i in range(graph.n_node)] + list(
        zip(graph.senders, graph.receivers, strict=True)
    )
    shifts = [(0, 0, 0)] * graph.n_node + [tuple(s) for s in graph.shifts]
    values = [node[i, : counts[i], : counts[i]].ravel() for i in range(graph.n_node)]
    values += [
        edge[e, : counts[graph.senders[e]], : counts[graph.receivers[e]]].ravel()
        for e in range(graph.n_edge)
    ]
    return BlockHamiltonian(
        numbers=graph.numbers,
        positions=graph.positions,
        cell=graph.cell,
        pbc=graph.pbc,
        basis=BASIS,
        pairs=np.asarray(pairs),
        shifts=np.asarray(shifts),
        hamiltonian=np.concatenate(values),
    )


def _args(padded):
    return (
        padded.senders,
        padded.receivers,
        padded.edges["shifts"],
        padded.edges["mask"],
        orbital_index(BASIS, padded.nodes["species"], padded.nodes["mask"]),
    )


def test_orbital_index_follows_the_basis_layout():
    graph, padded, *_ = _case()
    index = orbital_index(BASIS, padded.nodes["species"], padded.nodes["mask"])
    offsets = BASIS.orbital_offsets(graph.numbers)
    assert index.n_orbitals == offsets[-1] == 9 + 4 + 4 + 1
    for i in range(graph.n_node):
        n = offsets[i + 1] - offsets[i]
        np.testing.assert_array_equal(index.index[i, :n], np.arange(offsets[i], offsets[i + 1]))
        assert (index.index[i, n:] == index.n_orbitals).all()
    assert (index.index[graph.n_node :] == index.n_orbitals).all()


def test_dense_sparse_and_bcoo_match_the_block_record():
    graph, padded, node, edge, counts = _case()
    assert graph.n_edge > 0 and (graph.senders == graph.receivers).any()  # self-images
    record = _record(graph, node, edge, counts)
    args = _args(padded)
    for k in (None, np.array([0.31, -0.17, 0.0])):
        reference = record.to_dense(k=k)
        dense = np.asarray(
            jax.jit(dense_hamiltonian, static_argnames=("index",))(
                node, edge, *args[:4], index=args[4], k=k
            )
        )
        np.testing.assert_allclose(dense, reference, atol=1e-12)
        sparse = sparse_hamiltonian(node, edge, *args, k=k).toarray()
        np.testing.assert_allclose(sparse, reference, atol=1e-12)
        bcoo = np.asarray(
            bcoo_hamiltonian(jnp.asarray(node), jnp.asarray(edge), *args, k=k).todense()
        )
        np.testing.assert_allclose(bcoo, reference, atol=1e-12)


def test_dense_is_differentiable_in_the_blocks():
    """d tr(W^T H)/d blocks: the gradient of a linear functional is W gathered per block."""
    graph, padded, node, edge, counts = _case(1)
    args = _args(padded)
    n = args[-1].n_orbitals
    w = np.random.default_rng(5).normal(size=(n, n))
    grad_node, grad_edge = jax.grad(
        lambda a, b: jnp.sum(w * dense_hamiltonian(a, b, *args)), argnums=(0, 1)
    )(jnp.asarray(node), jnp.asarray(edge))
    offsets = BASIS.orbital_offsets(graph.numbers)
    for e in range(graph.n_edge):
        i, j = graph.senders[e], graph.receivers[e]
        expected = w[offsets[i] : offsets[i + 1], offsets[j] : offsets[j + 1]]
        np.testing.assert_allclose(grad_edge[e, : counts[i], : counts[j]], expected)
        assert (np.asarray(grad_edge[e, counts[i] :]) == 0).all()
    assert (np.asarray(grad_edge[graph.n_edge :]) == 0).all()
    np.testing.assert_allclose(grad_node[0, :9, :9], w[:9, :9])


def test_current_gradient_wrt_h_matches_finite_differences():
    """dI/dH of an impurity in a chain against central differences of a symmetric change."""
    n = 8
    h = -(np.eye(n, k=1) + np.eye(n, k=-1))
    h[4, 4] = 0.7  # impurity
    energies = np.linspace(-1.5, 1.5, 61)
    kwargs = dict(layers=[1] * n, energies=energies, bias=0.5, fermi_level=0.1, temperature=300.0)

    def current(hamiltonian):
        return current_from_hamiltonian(hamiltonian, None, **kwargs)[0]

    grad = np.asarray(jax.grad(current)(jnp.asarray(h)))
    rng = np.random.default_rng(0)
    direction = np.zeros((n, n))
    direction[2:6, 2:6] = rng.normal(size=(4, 4))
    direction = direction + direction.T
    step = 1e-5
    fd = (current(h + step * direction) - current(h - step * direction)) / (2 * step)
    np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-6)
    assert abs(fd) > 1e-8
