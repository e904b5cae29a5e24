"""Gamma folding: predicted image blocks summed as a Gamma-point reference sums them.

A Gamma-point matrix holds, for atoms ``(i, j)``, the sum of the blocks of all images,
``H_ij(Gamma) = sum_S H_ij(S)``. When a periodic cell is thinner than twice the cutoff, several
images of a pair are graph edges and one reference block stands for all of them;
:func:`hamjax.targets.gather_targets` then keeps one representative edge per pair
(``BlockTargets.fold_edge``) and :func:`fold_gamma` sums a prediction the same way.
:func:`multi_image_translations` tells which cells fold at all.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from hamjax.graph import structure_arrays

__all__ = ["fold_gamma", "gamma_folded_cells", "is_gamma_only", "multi_image_translations"]


def is_gamma_only(record) -> bool:
    """Whether ``record`` is a Gamma-point matrix: periodic, and holding zero shifts only."""
    return bool(np.asarray(record.pbc).any() and not np.asarray(record.shifts).any())


def multi_image_translations(structure, cutoff: float) -> tuple[float, ...]:
    """Lengths (Angstrom, rounded to 0.1, sorted) of the lattice translations of
    ``structure`` (periodic axes only) shorter than twice ``cutoff``.

    These are the translations under which two atoms, or an atom and itself, meet more than
    once within the cutoff: the images that a Gamma-point reference of this cell sums into one
    block (:func:`hamjax.targets.gather_targets`). Empty for a molecule and for a cell at
    least two cutoffs across along every periodic axis. Two cells with different translations
    fold differently, so a model trained on the Gamma-folded blocks of one has learnt its image
    blocks only as those sums and does not transfer to the other
    (:class:`hamjax.inference.Predictor` warns).
    """
    _, _, cell, pbc = structure_arrays(structure)
    axes = np.flatnonzero(pbc)
    if not len(axes):
        return ()
    reach = 2.0 * float(cutoff)
    # multiples needed along each axis: the reach over the spacing of that axis' lattice planes
    reciprocal = np.linalg.inv(cell)  # cell @ reciprocal = 1: column k is normal to planes k
    counts = np.ceil(reach * np.linalg.norm(reciprocal[:, axes], axis=0)).astype(int)
    grids = np.meshgrid(*[np.arange(-n, n + 1) for n in counts], indexing="ij")
    multiples = np.stack([g.ravel() for g in grids], axis=1)  # [n, len(axes)]
    lengths = np.linalg.norm(multiples @ cell[axes], axis=1)
    keep = (lengths > 1e-9) & (lengths < reach)
    return tuple(float(v) for v in np.sort(np.round(lengths[keep], 1)))


def gamma_folded_cells(records, cutoff: float) -> list[tuple[float, ...]]:
    """The distinct :func:`multi_image_translations` of the Gamma-only periodic records among
    ``records`` that fold several images into a block (an empty list when none does)."""
    found = {multi_image_translations(r, cutoff) for r in records if is_gamma_only(r)}
    return sorted(found - {()})


def fold_gamma(node_blocks, edge_blocks, senders, fold_edge, edge_mask=None):
    """Sum predicted image blocks onto the slots of a Gamma-only reference.

    ``folded_node[i] = node[i] + sum_{e: fold_edge[e] = -1, senders[e] = i} edge[e]`` and
    ``folded_edge[r] = sum_{e: fold_edge[e] = r} edge[e]``; with ``fold_edge = arange`` (a
    k-resolved reference) it returns its inputs. Works with numpy and JAX arrays (under jit
    and grad; padded batches from :mod:`hamjax.batching` included).

    Args:
        node_blocks: ``[n_node, M, M]``.
        edge_blocks: ``[n_edge, M, M]``.
        senders: ``[n_edge]`` int.
        fold_edge: ``[n_edge]`` int (:attr:`BlockTargets.fold_edge`).
        edge_mask: optional ``[n_edge]`` bool; masked edges (padding) add nothing, even NaN.

    Returns:
        ``(folded_node [n_node, M, M], folded_edge [n_edge, M, M])``; compare them with the
        reference where ``node_mask`` / ``edge_mask`` of the targets hold.
    """
    n_node, n_edge = node_blocks.shape[0], edge_blocks.shape[0]
    to_node = fold_edge < 0
    if edge_mask is not None:
        edge_blocks = jnp.where(edge_mask[:, None, None], edge_blocks, 0)
    zero = jnp.zeros_like(edge_blocks)
    node_part = jnp.where(to_node[:, None, None], edge_blocks, zero)
    edge_part = jnp.where(to_node[:, None, None], zero, edge_blocks)
    target = jnp.where(to_node, jnp.arange(n_edge), fold_edge)
    folded_node = node_blocks + jax.ops.segment_sum(
        node_part, senders, num_segments=n_node, mode="drop"
    )
    folded_edge = jax.ops.segment_sum(edge_part, target, num_segments=n_edge, mode="drop")
    return folded_node, folded_edge
