"""Tensor products with the spherical harmonics of an edge, computed in the edge frame.

In a frame whose ``y`` axis (e3nn's polar axis) is the edge direction, ``Y_l(r)`` has a single
non-zero component (``m = 0``), so the Clebsch-Gordan product ``x_l1 (x) Y_l2 -> z_l3`` maps
component ``m`` of ``x`` to component ``+-m`` of ``z`` with one coefficient per ``|m|`` (the
SO(2) reduction of Passaro & Zitnick, ICML 2023; e3nn-jax's
``tensor_product_with_spherical_harmonics`` does the same per edge). Here every edge is rotated
once per ``l`` with batched Wigner matrices, all paths ``l1 -> l3`` that differ only in ``l2``
are summed with per-edge weights, the channel mixing is done in the frame, and only the
outputs are rotated back: ``O(E C sum_l (2l + 1)^2)`` for the rotations instead of dense
Clebsch-Gordan contractions. Parity follows the paths: ``(l1, p1) (x) Y_l2`` gives parity
``p1 (-1)^l2``, so the map is O(3)-equivariant, not only SO(3).
"""

from __future__ import annotations

import functools

import e3nn_jax as e3nn
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["edge_frames", "FrameTensorProduct", "frame_paths"]

# Rotation by +pi/2 about x: sends e3nn's y axis to z, away from the polar singularity.
_QUARTER_X = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def edge_frames(vectors: jax.Array, lmax: int) -> list[jax.Array]:
    """Wigner matrices ``D_l(Q_e)`` of a rotation ``Q_e`` with ``Q_e y = r_e / |r_e|``.

    Args:
        vectors: ``[n_edge, 3]`` non-zero vectors in e3nn's component order.
        lmax: largest ``l``.

    Returns:
        ``[D_0, ..., D_lmax]``, ``D_l`` of shape ``[n_edge, 2l + 1, 2l + 1]``. The roll about
        the edge is arbitrary (and may jump); every use below is invariant to it.
    """
    unit = vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    near_pole = jnp.abs(unit[:, 1]) > 0.9  # [n_edge]
    fallback = jnp.array([1.0, 0.0, 0.0], unit.dtype)
    # Both branches see only safe inputs (double where), so no NaN reaches a gradient.
    direct = jnp.where(near_pole[:, None], fallback, unit)
    turned = jnp.where(near_pole[:, None], unit @ jnp.asarray(_QUARTER_X.T, unit.dtype), fallback)
    alpha_d, beta_d = e3nn.xyz_to_angles(direct)
    alpha_t, beta_t = e3nn.xyz_to_angles(turned)
    alpha = jnp.where(near_pole, alpha_t, alpha_d)
    beta = jnp.where(near_pole, beta_t, beta_d)
    frames = []
    for l in range(lmax + 1):
        d = e3nn.Irrep(l, 1).D_from_angles(alpha, beta, jnp.zeros_like(alpha))  # [E, 2l+1, 2l+1]
        # Turned branch: R(alpha, beta) y = Q r, so Q^T R(alpha, beta) y = r.
        dq = jnp.asarray(_quarter_turn_wigner(l).T, d.dtype)
        frames.append(jnp.where(near_pole[:, None, None], dq @ d, d))
    return frames


@functools.lru_cache(maxsize=16)
def _quarter_turn_wigner(l: int) -> np.ndarray:
    """``D_l`` of :data:`_QUARTER_X` (host constant)."""
    with jax.ensure_compile_time_eval():
        return np.asarray(e3nn.Irrep(l, 1).D_from_matrix(jnp.asarray(_QUARTER_X)))


@functools.lru_cache(maxsize=256)
def frame_paths(
    irreps_in: e3nn.Irreps, irreps_out: e3nn.Irreps, sh_lmax: int
) -> tuple[tuple[int, int, int, bool, np.ndarray], ...]:
    """Static description of the in-frame products ``irreps_in (x) Y_{0..sh_lmax} -> irreps_out``.

    Returns:
        One entry per (input irrep index, output irrep index) group with at least one path:
        ``(i_in, i_out, k, flip, coef)``: ``k = min(l1, l3)``, ``flip`` whether ``m`` maps to
        ``-m``, and ``coef [n_path, 2k + 1]`` the in-frame coefficient of each ``l2`` path.
    """
    with jax.ensure_compile_time_eval():
        return _frame_paths(irreps_in, irreps_out, sh_lmax)


def _frame_paths(irreps_in, irreps_out, sh_lmax):
    groups = []
    for i_in, (_, ir1) in enumerate(irreps_in):
        for i_out, (_, ir3) in enumerate(irreps_out):
            rows, flip = [], None
            for l2 in range(abs(ir1.l - ir3.l), min(ir1.l + ir3.l, sh_lmax) + 1):
                if ir1.p * (-1) ** l2 != ir3.p:
                    continue
                k = min(ir1.l, ir3.l)
                y = np.asarray(
                    e3nn.spherical_harmonics(
                        l2, e3nn.IrrepsArray("1o", np.array([0.0, 1.0, 0.0])), normalize=True
                    ).array
                )[l2]  # the only non-zero component on the polar axis
                cg = np.sqrt(ir3.dim) * np.asarray(e3nn.clebsch_gordan(ir1.l, l2, ir3.l))
                block = cg[ir1.l - k : ir1.l + k + 1, l2, ir3.l - k : ir3.l + k + 1]
                diagonal = np.allclose(block, np.diag(np.diag(block)))
                if not diagonal:
                    block = block[::-1, :]
                    assert np.allclose(block, np.diag(np.diag(block)))
                assert flip is None or flip == (not diagonal)
                flip = not diagonal
                rows.append(y * np.diag(block))
            if rows:
                groups.append((i_in, i_out, min(ir1.l, ir3.l), flip, np.stack(rows)))
    return tuple(groups)


class FrameTensorProduct(nn.Module):
    """``Linear(w(edge) * (x (x) Y(r)))`` for every edge, computed in the edge frame.

    Attributes:
        irreps_out: output irreps (with multiplicities), e.g. ``16x0e + 16x1o + 16x1e``.
        sh_lmax: largest ``l`` of the spherical harmonics of the edge.
        radial_hidden: hidden widths of the MLP that gives one weight per path.
        dtype: computation dtype.
    """

    irreps_out: e3nn.Irreps
    sh_lmax: int
    radial_hidden: tuple[int, ...]
    dtype: str

    @nn.compact
    def __call__(
        self,
        x: e3nn.IrrepsArray,
        frames: list[jax.Array],
        edge_scalars: jax.Array,
    ) -> e3nn.IrrepsArray:
        """Args:
            x: ``[n_edge, irreps_in]`` edge inputs (global frame).
            frames: :func:`edge_frames` of the edges, up to at least the largest ``l``.
            edge_scalars: ``[n_edge, S]`` invariant edge features for the path weights
                (include the cutoff envelope in them or multiply the output by it).

        Returns:
            ``[n_edge, irreps_out]`` (global frame).
        """
        from hamjax.models.model import _MLP  # local import: shared helper, no cycle at load

        irreps_out = e3nn.Irreps(self.irreps_out)
        x = x.regroup()
        n_edge = x.shape[0]
        groups = frame_paths(x.irreps, irreps_out, self.sh_lmax)
        n_path = sum(coef.shape[0] for *_, coef in groups)
        path_weights = _MLP((*self.radial_hidden, n_path), self.dtype, name="path_weights")(
            edge_scalars
        )  # [n_edge, n_path]

        # Inputs in the edge frame: x_frame = D^T x.
        in_frame = [
            None if chunk is None else jnp.einsum("enm,ecn->ecm", frames[ir.l], chunk)
            for (_, ir), chunk in zip(x.irreps, x.chunks, strict=True)
        ]  # [n_edge, mul, 2l+1]

        per_output: list[list[jax.Array]] = [[] for _ in irreps_out]
        offset = 0
        for group_index, (i_in, i_out, k, flip, coef) in enumerate(groups):
            n = coef.shape[0]
            mul_in, ir1 = x.irreps[i_in]
            chunk = in_frame[i_in]
            weights = path_weights[:, offset : offset + n]  # [n_edge, n]
            offset += n
            if chunk is None:
                continue
            theta = self.param(f"path_{group_index}", nn.initializers.ones, (n, mul_in), self.dtype)
            scale = jnp.einsum(
                "ep,pc,pm->ecm", weights, theta, jnp.asarray(coef, self.dtype)
            ) / np.sqrt(n)  # [n_edge, mul_in, 2k+1]
            selected = chunk[:, :, ir1.l - k : ir1.l + k + 1]
            if flip:
                selected = selected[:, :, ::-1]
            per_output[i_out].append((selected * scale, k))

        chunks = []
        for i_out, (mul_out, ir3) in enumerate(irreps_out):
            parts = per_output[i_out]
            if not parts:
                chunks.append(None)
                continue
            fan_in = sum(p.shape[1] for p, _ in parts)
            out = jnp.zeros((n_edge, mul_out, ir3.dim), self.dtype)
            for index, (part, k) in enumerate(parts):
                w = self.param(
                    f"mix_{i_out}_{index}",
                    nn.initializers.normal(stddev=1.0),
                    (part.shape[1], mul_out),
                    self.dtype,
                )
                mixed = jnp.einsum("ecm,cd->edm", part, w) / np.sqrt(fan_in)
                out = out.at[:, :, ir3.l - k : ir3.l + k + 1].add(mixed)
            # Back to the global frame: z = D z_frame.
            chunks.append(jnp.einsum("emn,ecn->ecm", frames[ir3.l], out))
        return e3nn.from_chunks(irreps_out, chunks, (n_edge,), self.dtype)
