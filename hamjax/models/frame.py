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

from hamjax.models.layers import MLP

__all__ = ["EdgeFrames", "edge_frames", "FrameTensorProduct", "frame_paths"]

# Rotation by +pi/2 about x: sends e3nn's y axis to z, away from the polar singularity.
_QUARTER_X = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class EdgeFrames:
    """Rotations of every edge into its frame, stored as angles (no per-edge matrices).

    With ``D_l = D_l(alpha, beta, 0) = Y(alpha) J Y(beta) J`` (e3nn's Euler form; ``Y`` a
    rotation about e3nn's ``y`` axis, sparse: a diagonal of cosines and an anti-diagonal of
    sines; ``J`` a constant matrix), a rotation is two element-wise products and two products
    with a constant matrix, which run as dense matrix products over all edges at once. Edges
    near the pole (``|y| > 0.9``) are first turned by a fixed quarter turn ``Q`` about ``x``,
    so the angles stay well conditioned; the roll about the edge is arbitrary and every use
    is invariant to it.

    Attributes:
        cos_alpha, sin_alpha, cos_beta, sin_beta: ``[n_edge, 2 lmax + 1]`` of ``cos(f phi)``,
            ``sin(f phi)`` for ``f = lmax .. -lmax``.
        near_pole: ``[n_edge]`` bool.
        lmax: largest ``l`` supported.
    """

    def __init__(self, cos_alpha, sin_alpha, cos_beta, sin_beta, near_pole, lmax):
        self.cos_alpha, self.sin_alpha = cos_alpha, sin_alpha
        self.cos_beta, self.sin_beta = cos_beta, sin_beta
        self.near_pole, self.lmax = near_pole, lmax

    def _trig(self, l: int):
        window = slice(self.lmax - l, self.lmax + l + 1)  # frequencies l .. -l
        return (
            self.cos_alpha[:, None, window],
            self.sin_alpha[:, None, window],
            self.cos_beta[:, None, window],
            self.sin_beta[:, None, window],
        )

    def to_frame(self, x: jax.Array, l: int) -> jax.Array:
        """``D_l^T x`` for ``x`` of shape ``[n_edge, mul, 2l + 1]``."""
        ca, sa, cb, sb = self._trig(l)
        j = jnp.asarray(_jd(l), x.dtype)
        q = jnp.asarray(_quarter_turn_wigner(l), x.dtype)
        x = jnp.where(self.near_pole[:, None, None], x @ q.T, x)  # Q x on the pole branch
        x = ca * x - sa * x[..., ::-1]  # Y(alpha)^T
        x = x @ j  # J^T (J symmetric)
        x = cb * x - sb * x[..., ::-1]  # Y(beta)^T
        return x @ j

    def from_frame(self, x: jax.Array, l: int) -> jax.Array:
        """``D_l x`` for ``x`` of shape ``[n_edge, mul, 2l + 1]``."""
        ca, sa, cb, sb = self._trig(l)
        j = jnp.asarray(_jd(l), x.dtype)
        q = jnp.asarray(_quarter_turn_wigner(l), x.dtype)
        x = x @ j.T
        x = cb * x + sb * x[..., ::-1]  # Y(beta)
        x = x @ j.T
        x = ca * x + sa * x[..., ::-1]  # Y(alpha)
        return jnp.where(self.near_pole[:, None, None], x @ q, x)  # Q^T y on the pole branch


def edge_frames(vectors: jax.Array, lmax: int) -> EdgeFrames:
    """Frames ``Q_e`` with ``Q_e y = r_e / |r_e|`` (``y`` is e3nn's polar axis).

    Args:
        vectors: ``[n_edge, 3]`` non-zero vectors in e3nn's component order.
        lmax: largest ``l`` the frames will rotate.

    Returns:
        :class:`EdgeFrames`.
    """
    unit = vectors / jnp.linalg.norm(vectors, axis=-1, keepdims=True)
    near_pole = jnp.abs(unit[:, 1]) > 0.9  # [n_edge]
    fallback = jnp.array([1.0, 0.0, 0.0], unit.dtype)
    # Both branches see only safe inputs (double where), so no NaN reaches a gradient.
    direct = jnp.where(near_pole[:, None], fallback, unit)
    turned = jnp.where(near_pole[:, None], unit @ jnp.asarray(_QUARTER_X.T, unit.dtype), fallback)
    alpha_d, beta_d = e3nn.xyz_to_angles(direct)
    alpha_t, beta_t = e3nn.xyz_to_angles(turned)
    alpha = jnp.where(near_pole, alpha_t, alpha_d)[:, None]  # [n_edge, 1]
    beta = jnp.where(near_pole, beta_t, beta_d)[:, None]
    frequencies = jnp.arange(lmax, -lmax - 1, -1, dtype=unit.dtype)  # [2 lmax + 1]
    trig = (
        jnp.cos(frequencies * alpha),
        jnp.sin(frequencies * alpha),
        jnp.cos(frequencies * beta),
        jnp.sin(frequencies * beta),
    )
    return EdgeFrames(*trig, near_pole, lmax)


@functools.lru_cache(maxsize=16)
def _jd(l: int) -> np.ndarray:
    from e3nn_jax._src.irreps import Jd  # not exported by e3nn: fails only where used

    return np.asarray(Jd[l], dtype=np.float64)


def _rotation_about_y(l: int, angle: float) -> np.ndarray:
    """Real-basis ``D_l`` of a rotation about e3nn's ``y`` axis (numpy, e3nn's convention)."""
    frequencies = np.arange(l, -l - 1, -1.0)
    matrix = np.zeros((2 * l + 1, 2 * l + 1))
    matrix[np.arange(2 * l + 1), np.arange(2 * l, -1, -1)] = np.sin(frequencies * angle)
    matrix[np.arange(2 * l + 1), np.arange(2 * l + 1)] = np.cos(frequencies * angle)
    return matrix


@functools.lru_cache(maxsize=16)
def _quarter_turn_wigner(l: int) -> np.ndarray:
    """``D_l`` of :data:`_QUARTER_X` as a host constant: ``J_l R_y(pi/2) J_l`` (e3nn's form)."""
    return _jd(l) @ _rotation_about_y(l, np.pi / 2) @ _jd(l)


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
                # Y_l2 on the polar axis: only m = 0, equal to sqrt(2 l2 + 1) (component norm.).
                y = np.sqrt(2 * l2 + 1)
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
        frames: EdgeFrames,
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
        irreps_out = e3nn.Irreps(self.irreps_out)
        x = x.regroup()
        n_edge = x.shape[0]
        groups = frame_paths(x.irreps, irreps_out, self.sh_lmax)
        n_path = sum(coef.shape[0] for *_, coef in groups)
        path_weights = MLP((*self.radial_hidden, n_path), self.dtype, name="path_weights")(
            edge_scalars
        )  # [n_edge, n_path]

        # Inputs in the edge frame: x_frame = D^T x.
        in_frame = [
            None if chunk is None else frames.to_frame(chunk, ir.l)
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
            # All paths into this output at once: zero-pad every |m| <= k part to 2 l3 + 1,
            # stack along the channel axis, one matrix product.
            stacked = jnp.concatenate(
                [jnp.pad(part, ((0, 0), (0, 0), (ir3.l - k, ir3.l - k))) for part, k in parts],
                axis=1,
            )  # [n_edge, sum of input multiplicities, 2 l3 + 1]
            w = self.param(
                f"mix_{i_out}",
                nn.initializers.normal(stddev=1.0),
                (stacked.shape[1], mul_out),
                self.dtype,
            )
            out = jnp.einsum("ecm,cd->edm", stacked, w) / np.sqrt(stacked.shape[1])
            # Back to the global frame: z = D z_frame.
            chunks.append(frames.from_frame(out, ir3.l))
        return e3nn.from_chunks(irreps_out, chunks, (n_edge,), self.dtype)
