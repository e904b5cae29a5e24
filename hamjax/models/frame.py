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
    return EdgeFrames(*_materialised(trig), near_pole, lmax)


def _materialised(arrays: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    """``arrays`` unchanged, but computed once and stored.

    XLA:CPU otherwise fuses the cosines and sines into every rotation that reads them and
    evaluates them again for each channel (``(2l + 1) x mul`` times per edge instead of once:
    1.7x the time of a rotation at l = 4). An optimisation barrier does not stop it (XLA
    removes barriers before fusion); a product with the identity does, since a fusion never
    extends through a matrix product, and costs ``O(n_edge (2 lmax + 1)^2)``.
    """
    widths = [a.shape[-1] for a in arrays]
    stacked = jnp.concatenate(arrays, axis=-1)
    stacked = stacked @ jnp.eye(stacked.shape[-1], dtype=stacked.dtype)
    return tuple(jnp.split(stacked, np.cumsum(widths)[:-1], axis=-1))


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
        order: "scale_first" (per-edge path weights on the input channels, then the channel
            mixing), "mix_first" (the mixing folded into the path parameters first, then the
            path weights on the output channels) or "auto": the one that stores fewer values
            per edge (mix first for the few-channel Hamiltonian heads). All give the same
            result to round-off and share one set of parameters.
    """

    irreps_out: e3nn.Irreps
    sh_lmax: int
    radial_hidden: tuple[int, ...]
    dtype: str
    order: str = "auto"

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

        # Parameters, created in the same order and with the same shapes whichever way the
        # products are evaluated: ``path_g`` [n_paths, mul_in] per group, ``mix_o``
        # [sum of the input multiplicities reaching output o, mul_out] per output.
        theta, row = {}, {}
        rows_into = [0] * len(irreps_out)
        for group_index, (i_in, i_out, _, _, coef) in enumerate(groups):
            mul_in = x.irreps[i_in].mul
            if x.chunks[i_in] is None:
                continue
            theta[group_index] = self.param(
                f"path_{group_index}", nn.initializers.ones, (coef.shape[0], mul_in), self.dtype
            )
            row[group_index] = rows_into[i_out]
            rows_into[i_out] += mul_in
        mix = {
            i_out: self.param(
                f"mix_{i_out}", nn.initializers.normal(stddev=1.0), (rows, mul_out), self.dtype
            )
            / np.sqrt(rows)
            for i_out, ((mul_out, _), rows) in enumerate(zip(irreps_out, rows_into, strict=True))
            if rows
        }
        first_path = np.cumsum([0] + [coef.shape[0] for *_, coef in groups])

        # Inputs in the edge frame, m-major: D^T x as [n_edge, 2l + 1, mul]. Every channel
        # contraction below is then one plain matrix product over the last axis (with the
        # channels between the edges and m, XLA:CPU transposes whole edge arrays instead).
        in_frame = [
            None if chunk is None else jnp.swapaxes(frames.to_frame(chunk, ir.l), 1, 2)
            for (_, ir), chunk in zip(x.irreps, x.chunks, strict=True)
        ]
        if self.order not in ("auto", "mix_first", "scale_first"):
            raise ValueError(f"order must be auto, mix_first or scale_first, got {self.order!r}")
        mix_first = self.order == "mix_first" or (
            self.order == "auto" and _mix_first_is_smaller(x.irreps, irreps_out, groups)
        )
        if mix_first:
            accumulated = self._mix_then_scale(
                in_frame, groups, theta, row, mix, path_weights, first_path, x.irreps, irreps_out
            )
        else:
            accumulated = self._scale_then_mix(
                in_frame, groups, theta, mix, path_weights, first_path, x.irreps, irreps_out
            )
        chunks = [
            None if out is None else frames.from_frame(jnp.swapaxes(out, 1, 2), ir3.l)
            for (_, ir3), out in zip(irreps_out, accumulated, strict=True)
        ]  # back to the global frame: z = D z_frame
        return e3nn.from_chunks(irreps_out, chunks, (n_edge,), self.dtype)

    def _scale_then_mix(
        self, in_frame, groups, theta, mix, path_weights, first_path, irreps_in, irreps_out
    ):
        """Per-edge path weights on the ``mul_in`` input channels, then one channel mixing per
        output: ``sum_c w_o[c, d] sum_p a_ep coef_pm theta_pc x_emc`` (cheaper when the outputs
        have many channels). Returns the outputs in the frame, ``[n_edge, 2 l3 + 1, mul_out]``."""
        parts = [[] for _ in irreps_out]
        for group_index, (i_in, i_out, k, flip, coef) in enumerate(groups):
            if group_index not in theta:
                continue
            l1 = irreps_in[i_in].ir.l
            selected = _window(in_frame[i_in], l1, k, flip)  # [n_edge, 2k+1, mul_in]
            scale = _path_sum(
                path_weights[:, first_path[group_index] : first_path[group_index + 1]],
                coef,
                theta[group_index],
                self.dtype,
            )  # [n_edge, 2k+1, mul_in]
            parts[i_out].append((selected * scale, k))
        out = []
        for i_out, (mul_out, ir3) in enumerate(irreps_out):
            if not parts[i_out]:
                out.append(None)
                continue
            # All paths into this output at once: zero-pad every |m| <= k part to 2 l3 + 1,
            # stack along the channel axis, one matrix product.
            stacked = jnp.concatenate(
                [jnp.pad(p, ((0, 0), (ir3.l - k, ir3.l - k), (0, 0))) for p, k in parts[i_out]],
                axis=2,
            )  # [n_edge, 2 l3 + 1, sum of input multiplicities]
            n_edge = stacked.shape[0]
            mixed = stacked.reshape(-1, stacked.shape[2]) @ mix[i_out]
            out.append(mixed.reshape(n_edge, ir3.dim, mul_out))
        return out

    def _mix_then_scale(
        self, in_frame, groups, theta, row, mix, path_weights, first_path, irreps_in, irreps_out
    ):
        """Channel mixing first, folded with the path parameters into one matrix per input
        irrep, then the per-edge path weights on the ``mul_out`` output channels:
        ``sum_p a_ep coef_pm sum_c (theta_pc w_o[c, d]) x_emc`` (cheaper when the outputs have
        few channels, as the Hamiltonian heads do). Same result as :meth:`_scale_then_mix`
        to round-off."""
        columns = [[] for _ in irreps_in]  # per input: (group, path, mul_out) column blocks
        for group_index, (i_in, i_out, _, _, coef) in enumerate(groups):
            if group_index not in theta:
                continue
            mul_in = irreps_in[i_in].mul
            w = mix[i_out][row[group_index] : row[group_index] + mul_in]  # [mul_in, mul_out]
            t = theta[group_index] / np.sqrt(coef.shape[0])  # [n, mul_in]
            columns[i_in].append((group_index, (t[:, :, None] * w[None]).transpose(1, 0, 2)))
        projected = {}
        for i_in, blocks in enumerate(columns):
            if not blocks:
                continue
            matrix = jnp.concatenate([m.reshape(m.shape[0], -1) for _, m in blocks], axis=1)
            x = in_frame[i_in]  # [n_edge, 2 l1 + 1, mul_in]
            y = (x.reshape(-1, x.shape[2]) @ matrix).reshape(x.shape[0], x.shape[1], -1)
            # A split, not slices: its transpose (in the backward pass) is one concatenation,
            # where slices would each be padded to the whole array and summed.
            widths = [m.shape[1] * m.shape[2] for _, m in blocks]
            pieces = jnp.split(y, np.cumsum(widths)[:-1], axis=2)
            for (group_index, m), piece in zip(blocks, pieces, strict=True):
                projected[group_index] = piece.reshape(
                    x.shape[0], x.shape[1], m.shape[1], m.shape[2]
                )  # [n_edge, 2 l1 + 1, n, mul_out]
        out = [None] * len(irreps_out)
        for group_index, (i_in, i_out, k, flip, coef) in enumerate(groups):
            if group_index not in projected:
                continue
            l1, l3 = irreps_in[i_in].ir.l, irreps_out[i_out].ir.l
            y = _window(projected[group_index], l1, k, flip)  # [n_edge, 2k+1, n, mul_out]
            a = path_weights[:, first_path[group_index] : first_path[group_index + 1]]
            coef = jnp.asarray(coef, self.dtype)  # [n, 2k+1]
            # An explicit sum over the 1 to 3 paths: as a reduction XLA makes it a batched
            # matrix product, several times slower than this one fused loop.
            term = sum(
                (a[:, p, None] * coef[p])[:, :, None] * y[:, :, p] for p in range(coef.shape[0])
            )  # [n_edge, 2k+1, mul_out]
            term = jnp.pad(term, ((0, 0), (l3 - k, l3 - k), (0, 0)))
            out[i_out] = term if out[i_out] is None else out[i_out] + term
        return out


def _window(x: jax.Array, l: int, k: int, flip: bool) -> jax.Array:
    """Components ``|m| <= k`` of an m-major ``[n_edge, 2l + 1, ...]`` array, ``m -> -m``
    if ``flip``."""
    x = x[:, l - k : l + k + 1]
    return x[:, ::-1] if flip else x


def _path_sum(weights, coef, theta, dtype) -> jax.Array:
    """``sum_p a_ep coef_pm theta_pc / sqrt(n)`` as ``[n_edge, 2k + 1, mul_in]``, written as a
    sum of broadcast products (n is 1 to 3) so that it fuses into its consumer instead of
    being stored as a matrix product's output."""
    n = coef.shape[0]
    coef = jnp.asarray(coef, dtype)
    total = 0.0
    for p in range(n):
        total = total + (weights[:, p, None] * coef[p])[:, :, None] * theta[p]
    return total / np.sqrt(n)


def _mix_first_is_smaller(irreps_in, irreps_out, groups) -> bool:
    """Whether mixing channels before the path weights stores fewer values per edge: it
    keeps ``(2 l1 + 1) n mul_out`` values per group, the other order ``(2k + 1) mul_in``."""
    mix_first = sum(
        (2 * irreps_in[i].ir.l + 1) * c.shape[0] * irreps_out[o].mul for i, o, _, _, c in groups
    )
    scale_first = sum((2 * k + 1) * irreps_in[i].mul for i, _, k, _, _ in groups)
    return mix_first < scale_first
