"""E(3)-equivariant, strictly local Hamiltonian model (Flax linen + e3nn-jax).

Architecture (``C`` = ``config.channels``, ``L`` = ``config.max_ell``; hidden irreps
``C x (0e + 1o + 2e + ... + L(-1)^L)``):

1. Species embedding: ``C x 0e`` per node.
2. Edge geometry: ``r_ij = positions[j] + shift - positions[i]`` (Angstrom), permuted to
   ``(y, z, x)`` so that e3nn's ``l = 1`` equals the orbital order ``(p_y, p_z, p_x)``; a
   Bessel radial basis times a polynomial envelope that vanishes, with its first derivatives,
   at the cutoff; padded and zero-length edges are masked before any norm (double ``where``).
3. ``n_layers`` interaction layers: messages ``TP(W h_i, Y(r_ij))`` (SO(2)-reduced tensor
   product with the spherical harmonics, e3nn ``tensor_product_with_spherical_harmonics``)
   weighted per channel and irrep by an MLP of (radial basis, scalars of both ends);
   multi-head attention over the incoming edges of each node (softmax with the envelope as a
   weight and an always-present null slot, so an atom crossing the cutoff changes nothing
   discontinuously; padded edges have zero weight); gated node update with a self-connection.
4. Edge update: ``TP(W_s h_i + W_r h_j, Y(r_ij))`` restricted to the irreps the blocks need,
   mixed by a linear map and weighted by an MLP of (radial basis, scalars of both ends).
   Node features for the on-site blocks: ``h`` and the channel-wise tensor square
   ``(W_a h) x (W_b h)`` (which supplies the odd-``L`` pseudo-parity irreps of, e.g., p-d
   on-site blocks).
5. Heads: one equivariant linear map to the irreps of every shell-pair type (shared across
   elements, see :mod:`hamjax.models.layout`), one Clebsch-Gordan einsum per type, a static
   gather into padded ``M x M`` blocks, then exact symmetries: ``H_ii = (F + F^T) / 2`` and
   ``H_ij(R) = (F_ij(R) + F_ji(-R)^T) / 2`` through the graph's ``reverse`` edge index.

Everything is O(3) equivariant (parity included): a rigid motion ``pos -> pos @ R.T + t`` maps
the blocks to ``D_i H D_j^T`` with the orbital rotation matrices of
``hamjax.basis.orbital_rotation``.
"""

from __future__ import annotations

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from hamjax.models.config import ModelConfig
from hamjax.models.frame import FrameTensorProduct, edge_frames
from hamjax.models.layers import MLP
from hamjax.models.layout import BlockLayout, block_layout, pair_irreps

__all__ = [
    "HamiltonianModel",
    "EdgeGeometry",
    "edge_geometry",
    "hidden_irreps",
    "onsite_bias_for_blocks",
]

# Position of (y, z, x) in (x, y, z): e3nn's l = 1 components are then (p_y, p_z, p_x).
_YZX = (1, 2, 0)


def hidden_irreps(config: ModelConfig) -> e3nn.Irreps:
    """``C x (0e + 1o + 2e + ...)`` up to ``max_ell`` (natural parity)."""
    return e3nn.Irreps([(config.channels, (l, (-1) ** l)) for l in range(config.max_ell + 1)])


class EdgeGeometry:
    """Per-edge geometric quantities (all masked; safe for gradients).

    Attributes:
        vectors: ``[n_edge, 3]`` edge vectors in the ``(y, z, x)`` order (Angstrom); padded or
            zero-length edges carry a harmless unit vector instead.
        lengths: ``[n_edge]`` Angstrom.
        envelope: ``[n_edge]`` polynomial cutoff envelope, 0 on masked edges and beyond the
            cutoff.
        radial: ``[n_edge, radial_basis]`` Bessel basis times the envelope.
        sh: ``[n_edge, (max_ell + 1)^2]`` spherical harmonics (component normalisation).
        frames: Wigner matrices of the edge frames, ``[D_0, ..., D_lmax]`` (see
            :func:`hamjax.models.frame.edge_frames`).
    """

    def __init__(self, vectors, lengths, envelope, radial, sh, frames):
        self.vectors, self.lengths, self.envelope = vectors, lengths, envelope
        self.radial, self.sh, self.frames = radial, sh, frames


def edge_geometry(
    positions: jax.Array,
    shift_vectors: jax.Array,
    senders: jax.Array,
    receivers: jax.Array,
    edge_mask: jax.Array,
    config: ModelConfig,
) -> EdgeGeometry:
    """Edge vectors ``r_ij = pos[j] + shift - pos[i]`` and their radial/angular features.

    Args:
        positions: ``[n_node, 3]`` Angstrom.
        shift_vectors: ``[n_edge, 3]`` Angstrom (``shift @ cell``).
        senders, receivers: ``[n_edge]`` int (atom ``i`` and atom ``j`` of block ``(i, j)``).
        edge_mask: ``[n_edge]`` bool, False on padding.
        config: model configuration (cutoff, radial basis, envelope, ``max_ell``).
    """
    vectors = positions[receivers] + shift_vectors - positions[senders]  # [n_edge, 3]
    vectors = vectors[:, _YZX]
    length2 = jnp.sum(vectors**2, axis=-1)  # [n_edge]
    valid = edge_mask & (length2 > 1e-12)
    safe = jnp.where(valid[:, None], vectors, jnp.array([1.0, 0.0, 0.0], vectors.dtype))
    lengths = jnp.sqrt(jnp.sum(safe**2, axis=-1))  # never zero
    envelope = e3nn.poly_envelope(*config.envelope)(lengths / config.cutoff)
    envelope = jnp.where(valid, envelope, 0.0).astype(vectors.dtype)
    radial = e3nn.bessel(lengths, config.radial_basis, config.cutoff) * envelope[:, None]
    sh = e3nn.spherical_harmonics(
        range(config.max_ell + 1), e3nn.IrrepsArray("1o", safe), normalize=True
    )
    frames = edge_frames(safe, max(config.max_ell, 2 * block_layout(config.basis).max_shell_l))
    return EdgeGeometry(safe, lengths, envelope, radial, sh, frames)


def _segment_softmax_weights(
    logits: jax.Array, envelope: jax.Array, receivers: jax.Array, n_node: int
) -> jax.Array:
    """Attention weights over the incoming edges of each node.

    ``alpha_e = env_e exp(l_e) / (1 + sum_{e' -> j} env_e' exp(l_e'))``: the envelope weight
    makes edges fade in at the cutoff and the constant 1 (a null slot with logit 0) keeps the
    weights continuous when the first neighbour appears. Masked edges have ``env = 0``.

    Args:
        logits: ``[n_edge, heads]``.
        envelope: ``[n_edge]``, zero on padded edges.
        receivers: ``[n_edge]`` int.
        n_node: number of nodes (static).

    Returns:
        ``[n_edge, heads]``.
    """
    active = (envelope > 0)[:, None]
    masked = jnp.where(active, logits, -jnp.inf)
    peak = jax.ops.segment_max(masked, receivers, num_segments=n_node)  # [n_node, heads]
    peak = jax.lax.stop_gradient(jnp.maximum(peak, 0.0))  # includes the null slot's logit 0
    shifted = jnp.where(active, logits - peak[receivers], 0.0)
    weights = envelope[:, None] * jnp.exp(shifted)  # [n_edge, heads]
    denominator = jnp.exp(-peak) + jax.ops.segment_sum(weights, receivers, num_segments=n_node)
    return weights / denominator[receivers]


def _scalar_messages(
    x: jax.Array, sh: e3nn.IrrepsArray, mix: nn.Module, weight: jax.Array, hidden: e3nn.Irreps
) -> e3nn.IrrepsArray:
    """``weight * mix(x (x) Y)`` for scalar edge inputs ``x`` ``[n_edge, C]`` (first layer).

    With scalar inputs the tensor product is ``x_c Y_lm`` for every ``l`` (e3nn's path
    normalisation is 1 there), so the channel mixing ``mix`` (an e3nn Linear, one ``C x C``
    matrix per ``l``) acts on ``x`` alone: ``mix(x (x) Y)_ldm = (x M_l)_d Y_lm``. The matrices
    ``M_l`` are read off by applying ``mix`` to unit inputs, so its parameters are exactly
    those of the Linear on ``x (x) Y``; the messages are then one product per edge, never
    ``C x sum_l (2l + 1)`` values laid out for a channel contraction.

    Args:
        x: ``[n_edge, C]`` scalar edge inputs.
        sh: ``[n_edge, sum_l (2l + 1)]`` spherical harmonics ``l = 0 .. max_ell``.
        mix: ``e3nn.flax.Linear`` to ``hidden``.
        weight: ``[n_edge, hidden.num_irreps]`` per (irrep, channel) weights.
        hidden: ``C x (0e + 1o + ...)``.

    Returns:
        ``[n_edge, hidden]``.
    """
    channels = x.shape[1]
    # Unit inputs: row c carries 1 in channel c, component m = 0, of every l.
    unit = [
        jnp.zeros((channels, channels, ir.dim), x.dtype)
        .at[:, :, 0]
        .set(jnp.eye(channels, dtype=x.dtype))
        for _, ir in hidden
    ]
    probe = e3nn.from_chunks(hidden, unit, (channels,), x.dtype)
    response = mix(probe)  # [C, hidden]: chunk l at m = 0 is M_l
    matrices = jnp.concatenate([chunk[:, :, 0] for chunk in response.chunks], axis=1)
    coefficient = (x @ matrices) * weight  # [n_edge, num_irreps], (l, d) ordered
    chunks = [
        coefficient[:, i * channels : (i + 1) * channels, None] * y
        for i, y in enumerate(sh.chunks)  # y: [n_edge, 1, 2l + 1]
    ]
    return e3nn.from_chunks(hidden, chunks, (x.shape[0],), x.dtype)


class InteractionLayer(nn.Module):
    """Equivariant convolution + multi-head attention over incoming edges + gated update."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        h: e3nn.IrrepsArray,
        geometry: EdgeGeometry,
        senders: jax.Array,
        receivers: jax.Array,
    ) -> e3nn.IrrepsArray:
        cfg = self.config
        n_node = h.shape[0]
        n_edge = senders.shape[0]
        hidden = hidden_irreps(cfg)
        heads, key_dim = cfg.heads, cfg.attention_dim

        scalars = h.filter(keep="0e").array  # [n_node, C]
        edge_scalars = jnp.concatenate(
            [geometry.radial, scalars[senders], scalars[receivers]], axis=-1
        )  # [n_edge, R + 2C]

        # Attention: query from the receiver, key from the sender and the distance.
        q = nn.Dense(heads * key_dim, dtype=cfg.dtype, param_dtype=cfg.dtype, name="query")(
            scalars
        )[receivers].reshape(n_edge, heads, key_dim)
        k = MLP((*cfg.radial_hidden, heads * key_dim), cfg.dtype, name="key")(
            jnp.concatenate([geometry.radial, scalars[senders]], axis=-1)
        ).reshape(n_edge, heads, key_dim)
        logits = jnp.sum(q * k, axis=-1) / np.sqrt(key_dim)  # [n_edge, heads]
        alpha = _segment_softmax_weights(logits, geometry.envelope, receivers, n_node)

        # Messages: TP of the sender features with Y(r_ij), weighted by a radial/scalar MLP,
        # the envelope (zero beyond the cutoff) and the attention weight of their head.
        x = e3nn.flax.Linear(hidden, name="message_in")(h)[senders]  # [n_edge, hidden]
        if x.irreps.lmax == 0:
            mix = e3nn.flax.Linear(hidden, name="message_mix")
            w = MLP((*cfg.radial_hidden, hidden.num_irreps), cfg.dtype, name="message_radial")(
                edge_scalars
            )
            weight = (
                w
                * geometry.envelope[:, None]
                * jnp.tile(jnp.repeat(alpha, cfg.channels // heads, axis=1), (1, len(hidden)))
            )  # [n_edge, num_irreps]
            v = _scalar_messages(x.array, geometry.sh, mix, weight, hidden)
        else:
            v = FrameTensorProduct(
                hidden, cfg.max_ell, cfg.radial_hidden, cfg.dtype, name="message_tp"
            )(x, geometry.frames, edge_scalars)
            v = v * geometry.envelope[:, None]
            v = v.mul_to_axis(heads)  # [n_edge, heads, hidden / heads]
            v = v * alpha[:, :, None]
            v = v.axis_to_mul()  # [n_edge, hidden]
        aggregated = e3nn.IrrepsArray(
            v.irreps, jax.ops.segment_sum(v.array, receivers, num_segments=n_node)
        )  # [n_node, hidden]

        # Gated update with a self-connection.
        n_gates = hidden.filter(drop="0e").num_irreps
        update = e3nn.flax.Linear(
            e3nn.Irreps(f"{cfg.channels + n_gates}x0e") + hidden.filter(drop="0e"),
            name="update",
        )(e3nn.concatenate([h, aggregated]).regroup())
        return e3nn.gate(update) + e3nn.flax.Linear(
            hidden, force_irreps_out=True, name="self_connection"
        )(h)


def _assemble(head: e3nn.IrrepsArray, pair: jax.Array, layout: BlockLayout) -> jax.Array:
    """Head irreps ``[X, head_irreps]`` + element-pair index ``[X]`` -> blocks ``[X, M, M]``."""
    n = head.shape[0]
    chunk_of = {}
    for (mul, ir), chunk in zip(head.irreps, head.chunks, strict=True):
        chunk_of[ir] = (
            jnp.zeros((n, mul, ir.dim), head.dtype) if chunk is None else chunk
        )  # [X, mul, 2L+1]
    flat = []
    for t, (l1, l2) in enumerate(layout.types):
        k = layout.copies[t]
        parts = [
            chunk_of[ir][:, start : start + k, :]
            for ir, start in zip(pair_irreps(l1, l2), layout.chunk_start[t], strict=True)
        ]
        stacked = jnp.concatenate(parts, axis=-1)  # [X, K, sum_L (2L+1)]
        cg = jnp.asarray(layout.cg[t], head.dtype)  # [sum_L (2L+1), (2l1+1)(2l2+1)]
        flat.append(jnp.einsum("xkd,dm->xkm", stacked, cg).reshape(n, -1))
    flat.append(jnp.zeros((n, 1), head.dtype))
    flat = jnp.concatenate(flat, axis=-1)  # [X, flat_size + 1]
    index = jnp.asarray(layout.gather_index)[pair]  # [X, M*M]
    m = layout.n_orbitals_max
    return jnp.take_along_axis(flat, index, axis=1).reshape(n, m, m)


class HamiltonianModel(nn.Module):
    """Predict the on-site and hopping blocks of H (Hartree) from a padded graph.

    ``model.apply(params, graph) -> (node_blocks [n_node, M, M], edge_blocks [n_edge, M, M])``
    with the graph layout of :mod:`hamjax.graph` (``nodes = {species, positions, mask}``,
    ``edges = {shift_vectors, shifts, reverse, mask}``, senders = ``i``, receivers = ``j``).
    Rows and columns follow the basis order of each element's orbitals; entries of absent
    orbitals, padded nodes and padded edges are exactly zero. Node blocks are symmetric and
    ``edge_blocks[reverse[e]] == edge_blocks[e].T`` exactly.
    """

    config: ModelConfig

    @nn.compact
    def __call__(self, graph: jraph.GraphsTuple) -> tuple[jax.Array, jax.Array]:
        cfg = self.config
        layout = block_layout(cfg.basis)
        dtype = jnp.dtype(cfg.dtype)
        species = graph.nodes["species"]
        positions = jnp.asarray(graph.nodes["positions"], dtype)
        node_mask = graph.nodes["mask"]
        shift_vectors = jnp.asarray(graph.edges["shift_vectors"], dtype)
        edge_mask = graph.edges["mask"]
        reverse = graph.edges["reverse"]
        senders, receivers = graph.senders, graph.receivers
        n_node, n_edge = species.shape[0], senders.shape[0]
        assert positions.shape == (n_node, 3), positions.shape
        assert shift_vectors.shape == (n_edge, 3), shift_vectors.shape
        assert receivers.shape == reverse.shape == edge_mask.shape == (n_edge,)

        species_index = jnp.asarray(layout.species_index)[species]  # [n_node]
        geometry = edge_geometry(positions, shift_vectors, senders, receivers, edge_mask, cfg)
        hidden = hidden_irreps(cfg)
        needed = e3nn.Irreps([ir for _, ir in layout.head_irreps])

        embedding = nn.Embed(
            layout.n_species, cfg.channels, param_dtype=dtype, dtype=dtype, name="embedding"
        )(species_index)
        h = e3nn.IrrepsArray(f"{cfg.channels}x0e", embedding)  # [n_node, C x 0e]
        for layer in range(cfg.n_layers):
            h = InteractionLayer(cfg, name=f"interaction_{layer}")(
                h, geometry, senders, receivers
            )  # [n_node, hidden]
        scalars = h.filter(keep="0e").array  # [n_node, C]

        # Edge features from the updated nodes of both ends and the edge geometry.
        x = (
            e3nn.flax.Linear(hidden, name="edge_sender")(h)[senders]
            + e3nn.flax.Linear(hidden, name="edge_receiver")(h)[receivers]
        )  # [n_edge, hidden]
        edge_scalars = jnp.concatenate(
            [geometry.radial, scalars[senders], scalars[receivers]], axis=-1
        )
        # The in-frame mixing maps straight to the head irreps (K copies per shell-pair type):
        # a linear map after it would add nothing, and this keeps the rotated outputs small.
        edge_head = FrameTensorProduct(
            layout.head_irreps, cfg.max_ell, cfg.radial_hidden, cfg.dtype, name="edge_tp"
        )(x, geometry.frames, edge_scalars)
        edge_head = edge_head * geometry.envelope[:, None]  # vanishes at the cutoff
        edge_pair = species_index[senders] * layout.n_species + species_index[receivers]
        f_edge = _assemble(edge_head, edge_pair, layout)  # [n_edge, M, M]
        # An edge whose reverse is outside the graph (halo edge of a slice) points to itself and
        # keeps its one-sided prediction; a self-image edge (i, i, R) has a distinct reverse.
        self_reverse = (reverse == jnp.arange(n_edge))[:, None, None]
        edge_blocks = jnp.where(
            self_reverse, f_edge, 0.5 * (f_edge + jnp.swapaxes(f_edge[reverse], 1, 2))
        )
        edge_blocks = jnp.where(edge_mask[:, None, None], edge_blocks, 0.0)

        # On-site blocks: node features and their channel-wise tensor square.
        a = e3nn.flax.Linear(hidden, name="node_left")(h)
        b = e3nn.flax.Linear(hidden, name="node_right")(h)
        square = e3nn.elementwise_tensor_product(a, b, filter_ir_out=needed)
        node_features = e3nn.concatenate([h, square]).regroup()
        node_head = e3nn.flax.Linear(layout.head_irreps, force_irreps_out=True, name="node_head")(
            node_features
        )
        n_scalar = layout.head_irreps.count("0e")
        assert layout.head_irreps[0].ir == e3nn.Irrep("0e")  # scalars come first
        bias = nn.Embed(
            layout.n_species, n_scalar, param_dtype=dtype, dtype=dtype, name="onsite_bias"
        )(species_index)  # [n_node, n_scalar]
        node_head = node_head + e3nn.IrrepsArray(
            node_head.irreps,
            jnp.concatenate(
                [bias, jnp.zeros((n_node, node_head.irreps.dim - n_scalar), dtype)], axis=-1
            ),
        )
        node_pair = species_index * (layout.n_species + 1)
        f_node = _assemble(node_head, node_pair, layout)  # [n_node, M, M]
        node_blocks = 0.5 * (f_node + jnp.swapaxes(f_node, 1, 2))
        node_blocks = jnp.where(node_mask[:, None, None], node_blocks, 0.0)
        return node_blocks, edge_blocks


def onsite_bias_for_blocks(config: ModelConfig, mean_blocks: np.ndarray) -> np.ndarray:
    """The ``onsite_bias`` parameters whose on-site blocks best match ``mean_blocks``.

    The bias adds, per element, the scalar (``0e``) head channels of the on-site blocks: a
    constant for every pair of shells of equal ``l`` (times the identity on ``m``), the only
    part of an on-site block that does not depend on orientation. This returns the least-
    squares fit of those constants to ``mean_blocks`` (on the element's own orbitals), i.e.
    the rotation-invariant projection of the mean on-site block, so a model can start from
    the data's mean levels (Hartree: -0.7 for the O 1s level of GFN1-xTB, -18.7 in
    def2-SVP) instead of having to walk there in small optimiser steps.

    Args:
        config: the model configuration (basis, dtype).
        mean_blocks: ``[n_species, M, M]`` target on-site blocks (Hartree) in the order of
            ``block_layout(config.basis).elements``; NaN for an element without data (its
            bias stays zero).

    Returns:
        ``[n_species, n_scalar]`` float64, the value of ``params["onsite_bias"]["embedding"]``.
    """
    layout = block_layout(config.basis)
    irreps = layout.head_irreps
    n_scalar = irreps.count("0e")
    m = layout.n_orbitals_max
    mean_blocks = np.asarray(mean_blocks, np.float64)
    if mean_blocks.shape != (layout.n_species, m, m):
        raise ValueError(
            f"mean_blocks has shape {mean_blocks.shape}, expected {(layout.n_species, m, m)}"
        )
    unit = np.zeros((n_scalar, irreps.dim))
    unit[:, :n_scalar] = np.eye(n_scalar)  # scalars come first in the head irreps
    bias = np.zeros((layout.n_species, n_scalar))
    for s in range(layout.n_species):
        own = layout.orbital_mask[s]
        if not np.all(np.isfinite(mean_blocks[s][own][:, own])):
            continue
        pair = np.full(n_scalar, s * (layout.n_species + 1))
        with jax.default_device(jax.devices("cpu")[0]):
            blocks = np.asarray(
                _assemble(e3nn.IrrepsArray(irreps, jnp.asarray(unit)), jnp.asarray(pair), layout)
            )  # [n_scalar, M, M]
        blocks = 0.5 * (blocks + np.swapaxes(blocks, 1, 2))
        keep = np.outer(own, own).ravel()
        design = blocks.reshape(n_scalar, -1)[:, keep].T  # [entries, n_scalar]
        target = mean_blocks[s].reshape(-1)[keep]
        bias[s] = np.linalg.lstsq(design, target, rcond=None)[0]
    return bias
