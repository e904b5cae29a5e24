"""Equivariant neural-network models of the Hamiltonian (Flax linen + e3nn-jax).

``HamiltonianModel(config).apply(params, graph) -> (node_blocks, edge_blocks)`` in Hartree,
padded to ``M x M`` orbitals per atom; see :mod:`hamjax.models.model` for the architecture.
"""

from hamjax.models.config import ModelConfig
from hamjax.models.layout import BlockLayout, block_layout, pair_irreps
from hamjax.models.model import (
    HamiltonianModel,
    edge_geometry,
    hidden_irreps,
    onsite_bias_for_blocks,
)

__all__ = [
    "BlockLayout",
    "HamiltonianModel",
    "ModelConfig",
    "block_layout",
    "edge_geometry",
    "hidden_irreps",
    "onsite_bias_for_blocks",
    "pair_irreps",
]
