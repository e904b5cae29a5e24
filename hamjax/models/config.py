"""Configuration of the Hamiltonian model: a frozen, hashable dataclass (jit-static)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from hamjax.basis import Basis

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of :class:`hamjax.models.HamiltonianModel`.

    Defaults follow the materials settings of the reference work (DESIGN §4): one layer,
    ``max_ell = 4``, 16 channels, 2 attention heads, 8 Angstrom cutoff, float32.

    Attributes:
        basis: orbital basis; fixes the block shapes ``M x M`` and the output irreps.
        cutoff: pair cutoff in Angstrom; features and their gradients vanish there.
        max_ell: largest ``l`` of the spherical harmonics and of the hidden node features;
            must be at least the largest shell ``l`` of the basis (the ``(l, l)`` blocks need
            irreps up to ``2 l``, reached as ``max_ell + max_ell``).
        channels: multiplicity of every irrep of the hidden features.
        heads: attention heads (must divide ``channels``).
        n_layers: message-passing layers (the receptive field is ``n_layers * cutoff`` for
            node blocks and ``(n_layers + 1) * cutoff`` around an edge for edge blocks).
        radial_basis: number of Bessel radial functions.
        radial_hidden: hidden widths of the radial/scalar MLPs.
        attention_dim: dimension of the query/key vectors of each head.
        envelope: ``(n0, n1)`` of the polynomial cutoff envelope (``n1`` derivatives vanish
            at the cutoff).
        dtype: floating dtype of the computation ("float32" or "float64").
    """

    basis: Basis
    cutoff: float = 8.0
    max_ell: int = 4
    channels: int = 16
    heads: int = 2
    n_layers: int = 1
    radial_basis: int = 8
    radial_hidden: tuple[int, ...] = (64,)
    attention_dim: int = 16
    envelope: tuple[int, int] = (5, 2)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.cutoff <= 0:
            raise ValueError(f"cutoff must be positive (Angstrom), got {self.cutoff}")
        if self.channels % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide channels ({self.channels})")
        if self.n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {self.n_layers}")
        lmax_orb = max(max(ls) for _, ls in self.basis.shells)
        if self.max_ell < lmax_orb:
            raise ValueError(
                f"max_ell={self.max_ell} is below the largest shell l={lmax_orb} of basis "
                f"{self.basis.name!r}; its blocks need irreps up to l={2 * lmax_orb}"
            )
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        object.__setattr__(self, "radial_hidden", tuple(int(h) for h in self.radial_hidden))
        object.__setattr__(self, "envelope", tuple(int(n) for n in self.envelope))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (the basis as ``{"name", "shells": {Z: [l, ...]}}``)."""
        data = asdict(self)
        data["basis"] = {
            "name": self.basis.name,
            "shells": {str(z): list(ls) for z, ls in self.basis.shells},
        }
        data["radial_hidden"] = list(self.radial_hidden)
        data["envelope"] = list(self.envelope)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise a ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
        data = dict(data)
        basis = data.pop("basis")
        if not isinstance(basis, Basis):
            shells = {int(z): tuple(ls) for z, ls in basis["shells"].items()}
            basis = Basis.from_dict(basis["name"], shells)
        for key in ("radial_hidden", "envelope"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(basis=basis, **data)
