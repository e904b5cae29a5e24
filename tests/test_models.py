"""Physics of the Hamiltonian model: O(3) equivariance, invariances, exact symmetries, padding,
smoothness at the cutoff, finite gradients, and dI/d(positions) against finite differences.

All graphs of one test model are padded to one budget, so the model compiles once per dtype.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.sparse as sp
from ase import Atoms

from hamjax.assemble import dense_hamiltonian, orbital_index
from hamjax.basis import Basis, basis_rotation_blocks, orbital_rotation
from hamjax.batching import Budget, batch_graphs
from hamjax.graph import build_graph
from hamjax.models import HamiltonianModel, ModelConfig, block_layout
from hamjax.sensitivity import position_chain, position_hamiltonian
from hamjax.two_terminal import TwoTerminal

BASIS = Basis.from_dict("test", {"Hf": (2, 0, 1), "O": (0, 1), "H": (0, 0)})
CONFIG = ModelConfig(
    basis=BASIS,
    cutoff=3.2,
    max_ell=2,
    channels=8,
    heads=2,
    radial_basis=6,
    radial_hidden=(16,),
    attention_dim=4,
    dtype="float64",
)
BUDGET = Budget(n_node=16, n_edge=160, n_graph=2)


def _atoms() -> Atoms:
    """A periodic HfO2H2 cell (periodic along x and y only), with an edge along z."""
    positions = np.array(
        [
            [0.0, 0.0, 0.0],  # Hf
            [0.0, 0.0, 2.05],  # O straight above Hf: an edge along z (the frame's pole)
            [1.85, 0.35, 0.2],  # O
            [-0.4, 1.7, -0.6],  # H
            [1.3, -1.2, 1.1],  # H
        ]
    )
    atoms = Atoms("HfO2H2", positions=positions, cell=np.diag([4.3, 4.6, 20.0]))
    atoms.pbc = (True, True, False)
    return atoms


def _graph(atoms, budget=BUDGET):
    graph = build_graph(atoms, CONFIG.cutoff, basis=BASIS)
    padded, _ = batch_graphs([graph], budget=budget)
    return graph, padded


def _with(padded, positions=None, shift_vectors=None):
    nodes, edges = dict(padded.nodes), dict(padded.edges)
    if positions is not None:
        nodes["positions"] = positions
    if shift_vectors is not None:
        edges["shift_vectors"] = shift_vectors
    return padded._replace(nodes=nodes, edges=edges)


@pytest.fixture(scope="module")
def model():
    net = HamiltonianModel(CONFIG)
    _, padded = _graph(_atoms())
    params = jax.jit(net.init)(jax.random.PRNGKey(0), padded)
    return jax.jit(net.apply), params


def _improper_rotation(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return -q if np.linalg.det(q) > 0 else q  # det = -1: a rotation times the inversion


def _dense(graph, padded, node_blocks, edge_blocks, k=None):
    index = orbital_index(BASIS, padded.nodes["species"], padded.nodes["mask"])
    return dense_hamiltonian(
        node_blocks,
        edge_blocks,
        padded.senders,
        padded.receivers,
        padded.edges["shifts"],
        padded.edges["mask"],
        index,
        k=k,
    )


def test_layout_covers_every_orbital_pair_once():
    """Every (row, column) orbital of every element pair is fed by exactly one head value."""
    layout = block_layout(BASIS)
    for a, za in enumerate(layout.elements):
        for b, zb in enumerate(layout.elements):
            na, nb = BASIS.n_orbitals(za), BASIS.n_orbitals(zb)
            index = layout.gather_index[a * layout.n_species + b].reshape(9, 9)
            used = index[:na, :nb]
            assert len(np.unique(used)) == na * nb  # no value feeds two entries
            assert (used < layout.flat_size).all()
            assert (index[na:, :] == layout.flat_size).all()  # absent orbitals -> the zero
            assert (index[:, nb:] == layout.flat_size).all()


def test_rotation_with_inversion(model):
    """H(pos @ R.T) = D H(pos) D^T block by block and for the dense matrix, det R = -1."""
    apply, params = model
    graph, padded = _graph(_atoms())
    rotation = _improper_rotation(3)
    node, edge = apply(params, padded)
    rotated = _with(
        padded,
        positions=padded.nodes["positions"] @ rotation.T,
        shift_vectors=padded.edges["shift_vectors"] @ rotation.T,
    )
    node_r, edge_r = apply(params, rotated)
    assert np.abs(node).max() > 1e-3 and np.abs(edge).max() > 1e-3  # not trivially zero

    # Block level, with the per-element Wigner blocks.
    d = basis_rotation_blocks(BASIS, rotation)
    numbers = graph.numbers
    for i, z in enumerate(numbers):
        n = d[z].shape[0]
        np.testing.assert_allclose(node_r[i, :n, :n], d[z] @ node[i, :n, :n] @ d[z].T, atol=1e-10)
    for e in range(graph.n_edge):
        zi, zj = numbers[graph.senders[e]], numbers[graph.receivers[e]]
        ni, nj = d[zi].shape[0], d[zj].shape[0]
        np.testing.assert_allclose(
            edge_r[e, :ni, :nj], d[zi] @ edge[e, :ni, :nj] @ d[zj].T, atol=1e-10
        )
    # Whole matrix at a Bloch vector, with the shared orbital rotation.
    big_d = orbital_rotation(BASIS, numbers, rotation)
    k = np.array([0.25, -0.1, 0.0])
    h = np.asarray(_dense(graph, padded, node, edge, k=k))
    h_r = np.asarray(_dense(graph, rotated, node_r, edge_r, k=k))
    np.testing.assert_allclose(h_r, big_d @ h @ big_d.T, atol=1e-10)


def test_translation_invariance(model):
    apply, params = model
    _, padded = _graph(_atoms())
    node, edge = apply(params, padded)
    moved = _with(padded, positions=padded.nodes["positions"] + np.array([0.7, -2.3, 5.1]))
    node_t, edge_t = apply(params, moved)
    np.testing.assert_allclose(node_t, node, atol=1e-11)
    np.testing.assert_allclose(edge_t, edge, atol=1e-11)


def test_permutation_permutes_blocks(model):
    """Relabelling atoms relabels blocks: compare block (i, j, shift) by its key."""
    apply, params = model
    atoms = _atoms()
    perm = np.array([3, 0, 4, 2, 1])
    graph, padded = _graph(atoms)
    graph_p, padded_p = _graph(atoms[perm])
    node, edge = apply(params, padded)
    node_p, edge_p = apply(params, padded_p)
    np.testing.assert_allclose(node_p[: len(perm)], node[perm], atol=1e-11)
    old_of_new = perm
    keys = {
        (old_of_new[s], old_of_new[r], tuple(t)): e
        for e, (s, r, t) in enumerate(
            zip(graph_p.senders, graph_p.receivers, graph_p.shifts, strict=True)
        )
    }
    assert len(keys) == graph.n_edge == graph_p.n_edge
    for e, (s, r, t) in enumerate(zip(graph.senders, graph.receivers, graph.shifts, strict=True)):
        np.testing.assert_allclose(edge_p[keys[(s, r, tuple(t))]], edge[e], atol=1e-11)


def test_exact_symmetries_and_hermiticity(model):
    """Node blocks symmetric, H_ji(-R) = H_ij(R)^T exactly, H(k) Hermitian, absent orbitals 0."""
    apply, params = model
    graph, padded = _graph(_atoms())
    node, edge = apply(params, padded)
    node, edge = np.asarray(node), np.asarray(edge)
    np.testing.assert_array_equal(node, np.swapaxes(node, 1, 2))
    rev = np.asarray(padded.edges["reverse"])
    np.testing.assert_array_equal(edge[rev], np.swapaxes(edge, 1, 2))
    assert not padded.edges["mask"][graph.n_edge :].any()
    assert (edge[graph.n_edge :] == 0).all() and (node[graph.n_node :] == 0).all()
    for i, z in enumerate(graph.numbers):  # O and H have fewer than M = 9 orbitals
        n = BASIS.n_orbitals(z)
        assert (node[i, n:, :] == 0).all() and (node[i, :, n:] == 0).all()
    for k in (None, np.array([0.3, 0.2, 0.0])):
        h = np.asarray(_dense(graph, padded, node, edge, k=k))
        np.testing.assert_allclose(h, h.conj().T, atol=1e-14)


def test_padding_budget_does_not_change_blocks(model):
    apply, params = model
    graph, padded = _graph(_atoms())
    _, bigger = _graph(_atoms(), budget=Budget(n_node=24, n_edge=200, n_graph=3))
    node, edge = apply(params, padded)
    node_b, edge_b = apply(params, bigger)
    np.testing.assert_allclose(node_b[: graph.n_node], node[: graph.n_node], atol=1e-12)
    np.testing.assert_allclose(edge_b[: graph.n_edge], edge[: graph.n_edge], atol=1e-12)


def test_atom_crossing_the_cutoff_changes_h_continuously(model):
    """An H atom moved from just inside to just outside the cutoff of every other atom."""
    apply, params = model
    atoms = _atoms()
    del atoms[[3, 4]]  # Hf, O, O: far from the probe
    base = atoms.positions[2]
    direction = np.array([0.0, 0.6, -0.8])

    def blocks(distance):
        probe = Atoms("H", positions=[base + distance * direction])
        graph, padded = _graph(atoms + probe)
        node, edge = apply(params, padded)
        pairs = {
            (s, r, tuple(t)): edge[e]
            for e, (s, r, t) in enumerate(
                zip(graph.senders, graph.receivers, graph.shifts, strict=True)
            )
        }
        return graph, node[: graph.n_node], pairs

    # Every other atom must be farther than the cutoff except O#2 (checked below).
    delta = 1e-3
    g_in, node_in, pairs_in = blocks(CONFIG.cutoff - delta)
    g_out, node_out, pairs_out = blocks(CONFIG.cutoff + delta)
    assert g_in.n_edge == g_out.n_edge + 2  # the pair (O#2, H) and its reverse
    new = [key for key in pairs_in if key not in pairs_out]
    assert sorted((s, r) for s, r, _ in new) == [(2, 3), (3, 2)]
    scale = np.abs(node_in).max()
    # The polynomial envelope vanishes with two derivatives: changes are O(delta^3).
    for key in new:
        assert np.abs(pairs_in[key]).max() < 1e-6 * scale
    np.testing.assert_allclose(node_in, node_out, atol=1e-6 * scale)
    for key, value in pairs_out.items():
        np.testing.assert_allclose(pairs_in[key], value, atol=1e-6 * scale)
    # ... whereas a displacement of the same size well inside the cutoff changes H at O(delta).
    _, node_a, _ = blocks(2.0)
    _, node_b, _ = blocks(2.0 + 2 * delta)
    assert np.abs(node_a - node_b).max() > 1e-3 * delta * scale


def test_gradients_finite_and_equal_to_finite_differences(model):
    """d/dpos of a scalar of H(k) (incl. the polar Hf-O edge) against central differences;
    gradients for parameters and positions are finite, and padded nodes get none."""
    apply, params = model
    graph, padded = _graph(_atoms())
    rng = np.random.default_rng(1)
    weights = rng.normal(size=(BASIS.orbital_counts(graph.numbers).sum(),) * 2)

    def energy(params, positions):
        node, edge = apply(params, _with(padded, positions=positions))
        h = _dense(graph, padded, node, edge, k=np.array([0.2, 0.1, 0.0]))
        return jnp.sum(weights * jnp.real(h)) + jnp.sum(jnp.imag(h) ** 2)

    positions = np.asarray(padded.nodes["positions"])
    g_params, grad = jax.jit(jax.grad(energy, argnums=(0, 1)))(params, positions)
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(g_params))
    assert max(np.abs(leaf).max() for leaf in jax.tree.leaves(g_params)) > 0
    grad = np.asarray(grad)
    assert np.isfinite(grad).all() and (grad[graph.n_node :] == 0).all()
    value = jax.jit(energy)
    step = 1e-5
    for atom, axis in [(0, 2), (1, 0), (1, 2), (3, 1)]:
        plus, minus = positions.copy(), positions.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        fd = (value(params, plus) - value(params, minus)) / (2 * step)
        np.testing.assert_allclose(grad[atom, axis], fd, rtol=1e-6, atol=1e-8)


def test_current_gradient_wrt_positions_matches_finite_differences():
    """dI/dR through model -> H (eV) -> RGF transmission -> Landauer current (float64)."""
    basis = Basis.from_dict("chain", {"H": (0,)})
    config = ModelConfig(
        basis=basis,
        cutoff=1.5,
        max_ell=1,
        channels=4,
        heads=2,
        radial_basis=4,
        radial_hidden=(8,),
        attention_dim=4,
        dtype="float64",
    )
    n_atoms = 8
    positions = np.zeros((n_atoms, 3))
    positions[:, 0] = np.arange(n_atoms) * 1.0
    positions[3:5, 1] = [0.12, -0.08]  # a kink in the middle scatters
    positions[4, 2] = 0.1
    # a molecule; the cell only gives the transport axis its length (no coupling is cut)
    atoms = Atoms(f"H{n_atoms}", positions=positions, cell=np.diag([20.0, 20.0, 20.0]))
    graph = build_graph(atoms, config.cutoff, basis=basis)
    net = HamiltonianModel(config)
    params = jax.jit(net.init)(jax.random.PRNGKey(2), graph.to_graphs_tuple())
    # One s orbital per atom, atoms already in transport order, orthogonal basis.
    device = TwoTerminal(
        hamiltonian=sp.csr_matrix((n_atoms, n_atoms)),  # unused: the model gives H
        overlap=sp.identity(n_atoms, format="csr"),
        layers=(1,) * n_atoms,
        order=np.arange(n_atoms),
        orbital_order=np.arange(n_atoms),
        atom_layer=np.arange(n_atoms),
        fermi_level_ev=None,
        dropped_max_ev=0.0,
    )
    x0 = np.asarray(graph.positions)

    # Choose energies and bias inside the band of the (model-predicted) lead chain.
    h = np.asarray(jax.jit(position_hamiltonian(config, graph, device))(params, x0))  # eV
    onsite, hopping = h[0, 0], h[0, 1]
    assert abs(hopping) > 1e-3  # a real band (energies and bias scale with it)
    energies = onsite + np.linspace(-1.0, 1.0, 41) * abs(hopping)
    bias = 0.4 * abs(hopping)
    chain = position_chain(
        config,
        graph,
        device,
        energies,
        bias,
        fermi_level=float(onsite),
        temperature=0.0,
    )
    current = jax.jit(lambda p: chain(params, p))
    grad = np.asarray(jax.grad(current)(x0))
    i0 = float(current(x0))
    assert i0 > 0
    step = 1e-5
    for atom, axis in [(3, 1), (4, 0), (4, 2), (5, 1)]:
        plus, minus = x0.copy(), x0.copy()
        plus[atom, axis] += step
        minus[atom, axis] -= step
        fd = (float(current(plus)) - float(current(minus))) / (2 * step)
        np.testing.assert_allclose(grad[atom, axis], fd, rtol=1e-5, atol=1e-9 * i0)
    assert np.abs(grad[3:6]).max() > 1e-6 * i0  # the kink matters (per Angstrom)


def test_config_round_trips_through_json():
    import json

    data = json.loads(json.dumps(CONFIG.to_dict()))
    assert ModelConfig.from_dict(data) == CONFIG
    with pytest.raises(ValueError, match="max_ell"):
        ModelConfig(basis=BASIS, max_ell=1)  # Hf has d shells
    with pytest.raises(ValueError, match="unknown model config keys"):
        ModelConfig.from_dict({**data, "chanels": 3})


def _rotation_average(block: np.ndarray, shells: tuple[int, ...]) -> np.ndarray:
    """Exact average of ``D B D^T`` over all rotations: per shell pair ``(a, b)``,
    ``tr(B_ab) / (2l + 1)`` times the identity when ``l_a == l_b``, else zero."""
    starts = np.concatenate([[0], np.cumsum([2 * l + 1 for l in shells])])
    out = np.zeros_like(block)
    for a, la in enumerate(shells):
        for b, lb in enumerate(shells):
            if la == lb:
                sa, sb, n = starts[a], starts[b], 2 * la + 1
                mean = np.trace(block[sa : sa + n, sb : sb + n]) / n
                out[sa : sa + n, sb : sb + n] = mean * np.eye(n)
    return out


def test_onsite_bias_reproduces_the_rotation_average_of_mean_blocks(model):
    """With the node head silenced, the fitted bias alone makes every on-site block the
    rotation average of the requested mean block (the orientation-free part of it)."""
    from hamjax.models import onsite_bias_for_blocks

    apply, params = model
    layout = block_layout(BASIS)
    m = layout.n_orbitals_max
    rng = np.random.default_rng(3)
    means = rng.normal(size=(layout.n_species, m, m))
    means = means + np.swapaxes(means, 1, 2)
    bias = onsite_bias_for_blocks(CONFIG, means)
    silenced = jax.tree.map(lambda x: x, params)
    silenced["params"]["node_head"] = jax.tree.map(jnp.zeros_like, params["params"]["node_head"])
    silenced["params"]["onsite_bias"]["embedding"] = jnp.asarray(bias)
    atoms = _atoms()
    _, padded = _graph(atoms)
    node_blocks, _ = apply(silenced, padded)
    for atom, z in enumerate(atoms.numbers):
        s = int(layout.species_index[z])
        shells = dict(BASIS.shells)[int(z)]
        n = sum(2 * l + 1 for l in shells)
        expected = _rotation_average(means[s, :n, :n], shells)
        np.testing.assert_allclose(np.asarray(node_blocks[atom, :n, :n]), expected, atol=1e-12)


@pytest.mark.parametrize(
    "irreps_out", ["3x0e + 2x1o + 1x1e + 3x2e + 1x3o + 2x4e", "8x0e + 8x1o + 8x2e"]
)
def test_frame_tensor_product_orders_agree_and_are_equivariant(irreps_out):
    """Both evaluation orders of the in-frame tensor product give the same edges' outputs from
    one set of parameters, and each is O(3) equivariant: rotating the inputs by e3nn's Wigner
    matrices and the edge vectors by R (det R = -1 here) rotates the outputs."""
    import e3nn_jax as e3nn

    from hamjax.models.frame import FrameTensorProduct, edge_frames

    irreps_in = e3nn.Irreps("8x0e + 8x1o + 8x2e + 8x3o + 8x4e")
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(12, 3))
    vectors[0] = [0.01, 1.0, -0.02]  # near e3nn's polar axis: the quarter-turn branch
    x = e3nn.IrrepsArray(irreps_in, rng.normal(size=(12, irreps_in.dim)))
    scalars = jnp.asarray(rng.normal(size=(12, 5)))

    def module(order):
        return FrameTensorProduct(e3nn.Irreps(irreps_out), 4, (16,), "float64", order=order)

    params = module("auto").init(
        jax.random.key(0), x, edge_frames(jnp.asarray(vectors), 4), scalars
    )
    params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params)  # theta != 1

    def apply(order, vec, inputs):
        return module(order).apply(params, inputs, edge_frames(jnp.asarray(vec), 4), scalars)

    mix_first = apply("mix_first", vectors, x)
    scale_first = apply("scale_first", vectors, x)
    assert np.abs(scale_first.array).max() > 1e-2
    np.testing.assert_allclose(mix_first.array, scale_first.array, atol=1e-11, rtol=1e-11)

    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    rotation = jnp.asarray(-q * np.sign(np.linalg.det(q)))  # improper, float64
    d_vec = np.asarray(e3nn.Irreps("1o").D_from_matrix(rotation))
    x_rotated = x.transform_by_matrix(rotation)
    for order, out in (("mix_first", mix_first), ("scale_first", scale_first)):
        rotated = apply(order, vectors @ d_vec.T, x_rotated)
        np.testing.assert_allclose(
            rotated.array, out.transform_by_matrix(rotation).array, atol=1e-10
        )
