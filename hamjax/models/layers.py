"""Small Flax layers shared by the model's modules (:mod:`hamjax.models.model`,
:mod:`hamjax.models.frame`)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

__all__ = ["MLP"]


class MLP(nn.Module):
    """Scalar MLP (SiLU) with a linear last layer.

    Attributes:
        features: widths of the layers, the last one the output width.
        dtype: computation and parameter dtype.
    """

    features: Sequence[int]
    dtype: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for index, width in enumerate(self.features):
            x = nn.Dense(width, dtype=self.dtype, param_dtype=self.dtype)(x)
            if index < len(self.features) - 1:
                x = jax.nn.silu(x)
        return x
